"""The package's shape: imports flow one way, cli -> commands -> train / models / data -> config.

Read from the source with `ast` (module-level and function-level imports alike), so a lazy import
inside a function counts too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"

# Each layer may import the layers after it, never the ones before (or, within a layer, in a cycle).
LAYERS = [
    {"aetrain.cli"},
    {"aetrain.fused"},  # fused sweeps: many jobs of one shape trained as one, each through the train command's parts
    {"aetrain.commands"},
    {"aetrain.train"},
    {"aetrain.checkpoint"},  # reading checkpoints: the model a checkpoint holds
    {"aetrain.models"},
    {"aetrain.data"},
    {"aetrain.doctor"},  # the training doctor's rules: torch-free, used by train (live) and commands (doctor)
    {"aetrain.config", "aetrain.rundir", "aetrain.registry", "aetrain.atomic", "aetrain.errors", "aetrain.launch"},
]
HYDRA_FREE = ["aetrain.fused", "aetrain.commands", "aetrain.train", "aetrain.checkpoint", "aetrain.models", "aetrain.data",
              "aetrain.config", "aetrain.rundir", "aetrain.doctor", "aetrain.launch"]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    graph = {}
    for path in SRC.joinpath("aetrain").rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[module_name(path)] = found
    return graph


def layer_of(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in layer):
            return i
    return None


def test_no_module_imports_a_layer_above_it() -> None:
    wrong = []
    for module, targets in imports().items():
        here = layer_of(module)
        for target in targets:
            there = layer_of(target)
            if here is not None and there is not None and there < here:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_the_import_graph_has_no_cycle() -> None:
    graph = imports()
    modules = set(graph)
    edges = {m: {t for t in targets if t in modules and t != m} for m, targets in graph.items()}
    # a package's __init__ re-exporting its submodules is not a cycle of code: drop parent -> child edges
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    visiting, done, cycles = set(), set(), []

    def visit(m: str, path: list[str]) -> None:
        if m in done:
            return
        if m in visiting:
            cycles.append(path[path.index(m):] + [m])
            return
        visiting.add(m)
        for t in sorted(edges[m]):
            visit(t, path + [t])
        visiting.discard(m)
        done.add(m)

    for m in sorted(edges):
        visit(m, [m])
    assert not cycles, cycles


def test_hydra_and_omegaconf_stay_in_the_cli() -> None:
    wrong = [f"{m} -> {t}" for m, targets in imports().items() for t in targets
             if t.split(".")[0] in ("hydra", "omegaconf") and any(m == h or m.startswith(h + ".") for h in HYDRA_FREE)]
    assert not wrong, wrong


def test_models_do_not_import_the_trainer() -> None:
    wrong = [f"{m} -> {t}" for m, targets in imports().items() for t in targets
             if m.startswith("aetrain.models") and t.startswith("aetrain.train")]
    assert not wrong, wrong


def test_load_model_imports_no_trainer_and_no_hydra(tmp_path: Path) -> None:
    from conftest import FAST, run_subprocess

    run = run_subprocess(*FAST, "outputs.plot_every=0", "outputs.tensorboard=false", cwd=tmp_path)
    assert run.returncode == 0, run.err
    code = (f"import sys, aetrain; m = aetrain.load_model({str(run.run_dir)!r}); "
            "print(sorted(n for n in sys.modules if n.startswith(('aetrain.train', 'aetrain.cli', 'aetrain.commands', "
            "'hydra', 'omegaconf', 'matplotlib', 'tensorboard'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out

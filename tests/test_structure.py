"""The package's shape: imports flow one way, cli -> commands -> train / models / data -> config; only the CLI
ends the process; the commands after training import no trainer, and the command registry no torch.

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
    {"aetrain.commands"},
    {"aetrain.train", "aetrain.fused"},  # fused: many jobs of one shape trained as one, each a run of train's parts
    {"aetrain.report"},  # report.html: read from a run's files; train's end-of-run callback and commands call it
    {"aetrain.checkpoint"},  # reading checkpoints: the model a checkpoint holds
    {"aetrain.models"},
    {"aetrain.data"},
    {"aetrain.device", "aetrain.drawing"},  # where a command runs, and the drawing every picture shares
    {"aetrain.doctor"},  # the training doctor's rules: torch-free, used by train (live) and commands (doctor)
    {"aetrain.config", "aetrain.rundir", "aetrain.registry", "aetrain.atomic", "aetrain.errors", "aetrain.launch",
     "aetrain.plugins", "aetrain.console"},
]
HYDRA_FREE = ["aetrain.fused", "aetrain.commands", "aetrain.train", "aetrain.report", "aetrain.checkpoint",
              "aetrain.models",
              "aetrain.data", "aetrain.config", "aetrain.rundir", "aetrain.doctor", "aetrain.launch", "aetrain.plugins"]


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


def test_load_model_imports_no_trainer_and_no_hydra(finished: Path) -> None:
    code = (f"import sys, aetrain; m = aetrain.load_model({str(finished)!r}); "
            "print(sorted(n for n in sys.modules if n.startswith(('aetrain.train', 'aetrain.cli', 'aetrain.commands', "
            "'hydra', 'omegaconf', 'matplotlib', 'tensorboard'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_commands_after_training_import_no_trainer(trained) -> None:
    """`aetrain eval|encode|score|export` use a trained model: they resolve devices and draw pictures without the
    trainer (aetrain.device, aetrain.drawing), so none of them imports an aetrain.train module."""
    run = trained(*__import__("conftest").FAST)
    code = ("import sys\nfrom aetrain.cli import main\n"
            "for args in (['eval', RUN, 'device=cpu', 'probe_samples=0'], ['encode', RUN, 'device=cpu'],\n"
            "             ['score', RUN, 'device=cpu'], ['export', RUN, 'format=torchscript']):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, (args, e.code)\n"
            "print(sorted(n for n in sys.modules if n.startswith('aetrain.train')))\n").replace("RUN", repr(str(run)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def exits(tree: ast.AST) -> list[ast.AST]:
    """Every `sys.exit(...)`, `os._exit(...)` and `raise SystemExit` in `tree`."""
    ends = (("sys", "exit"), ("os", "_exit"))
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and (n.func.value.id, n.func.attr) in ends]
    return found + [n for n in ast.walk(tree) if isinstance(n, ast.Raise) and "SystemExit" in ast.dump(n)]


def test_only_the_cli_ends_the_process() -> None:
    """Below the CLI, what stops a command is a typed error; the CLI alone turns it into a line and an exit code.
    The one exception is the process lifecycle's `aetrain.launch.leave`, the quiet exit of a launched process."""
    wrong = []
    for path in SRC.joinpath("aetrain").rglob("*.py"):
        module = module_name(path)
        if module.startswith("aetrain.cli") or module == "aetrain.__main__":  # the entry point is the CLI's too
            continue
        tree = ast.parse(path.read_text())
        leave = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "leave"
                 and module == "aetrain.launch"]
        allowed = {id(n) for f in leave for n in exits(f)}
        wrong += [f"{module}:{n.lineno}" for n in exits(tree) if id(n) not in allowed]
    assert not wrong, wrong


def test_the_command_registry_and_the_help_import_no_torch_and_no_hydra() -> None:
    """`aetrain --help` lists every command from its registry entry: that costs no torch; Hydra only for train's
    own keys (they are composed)."""
    code = ("import sys\nfrom aetrain.commands import COMMANDS\nfrom aetrain.cli.help import command_help\n"
            "command_help(COMMANDS['eval'], [])\n"
            "print(sorted({n.split('.')[0] for n in sys.modules if n.split('.')[0] in ('torch', 'hydra')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out

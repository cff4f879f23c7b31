"""Models of your own (`@aetrain.register_model`, `plugins=[file.py]`, entry points) and training from Python
(`aetrain.fit`): the worked example end to end, a broken plugin refused in one line before anything is written, a
plugin gone since its run, and fit's runs equal to the CLI's."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import aetrain
from aetrain.errors import CheckpointError, ConfigError
from conftest import assert_one_line_error, assert_same_run, call_main, metrics_rows, one_line_error

EXAMPLE = Path(__file__).parents[1] / "examples" / "signal_ae.py"
QUIET = ["trainer.device=cpu", "outputs.tensorboard=false"]
DIGITS = [*QUIET, "trainer.max_epochs=1", "data.batch_size=256", "outputs.plot_every=0", "diagnostics.enabled=false"]

# A dense model of one's own for the digits (1 x 8 x 8), with a hole to break it by: {broken} replaces a line.
TOY = '''
from dataclasses import dataclass
import torch
from torch import nn
import aetrain

@dataclass
class ToyConfig(aetrain.ModelConfig):
    width: int = 32  # hidden units

class Toy(nn.Module):
    def __init__(self, cfg, shape, *, code_width):
        super().__init__()
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(64, cfg.width), nn.ReLU(), nn.Linear(cfg.width, code_width))
        self.dec = nn.Sequential(nn.Linear(cfg.latent_dim, 64), nn.Unflatten(1, (1, 8, 8)))

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return self.dec(z)

{broken}
aetrain.register_model("{name}", config=ToyConfig)(Toy)
'''


def toy_plugin(folder: Path, name: str = "toy", broken: str = "") -> Path:
    path = folder / f"{name}_models.py"
    path.write_text(TOY.replace("{name}", name).replace("{broken}", broken))
    return path


def forget_own_models() -> None:
    """What plugins registered in this process (their models, modules and Hydra store entries) forgotten: as in a
    fresh process, where only the built-in models are known."""
    from hydra.core.config_store import ConfigStore

    from aetrain import plugins
    from aetrain.config import CHOICES
    from aetrain.models import FAMILIES, custom

    repo = ConfigStore.instance().repo
    for name in list(custom._origins):
        CHOICES["model"].pop(name, None)
        FAMILIES._entries.pop(name, None)
        repo.get("model", {}).pop(f"{name}.yaml", None)
        repo.get("schema", {}).get("model", {}).pop(f"{name}.yaml", None)
        del custom._origins[name]
    for path, module in list(plugins._files.items()):
        sys.modules.pop(module, None)
        del plugins._files[path]


@pytest.fixture(autouse=True)
def built_in_models_only():
    yield
    forget_own_models()


def no_hydra_state() -> bool:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    return not GlobalHydra.instance().is_initialized() and not HydraConfig.initialized()


def forget_hydra_state() -> None:
    """Hydra's global state as a fresh process has it: none (a CLI run in this process leaves its job's config)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


# --- the worked example, end to end ----------------------------------------------------------------------

def test_the_example_trains_like_the_cli_resumes_sweeps_and_goes_through_every_command(tmp_path: Path) -> None:
    data = tmp_path / "signals"
    args = [f"plugins=[{EXAMPLE}]", "model=signal_ae", "model.latent_dim=4", "model.channels=4", "data=tensor_file",
            f"data.path={data}/signals.npy", f"data.labels={data}/labels.npy", "data.batch_size=32", *QUIET]
    # as a user types it, in fresh processes: the example's data, then aetrain
    chain = f"{sys.executable} {EXAMPLE} {data} 160 32 && {sys.executable} -m aetrain {' '.join(args)} " \
            f"trainer.max_epochs=2 hydra.run.dir={tmp_path / 'cli'}"
    done = subprocess.run(["bash", "-c", chain], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli" / "reconstructions" / "epoch_002.png").is_file()  # the example's pictures, as a family's

    # from Python, twice in one process: the CLI's run, bit for bit, and nothing of Hydra left behind
    forget_hydra_state()
    first = aetrain.fit([*args, "trainer.max_epochs=2"], run_dir=tmp_path / "fit1")
    second = aetrain.fit([*args, "trainer.max_epochs=2"], run_dir=tmp_path / "fit2")
    assert no_hydra_state()
    for run in (first, second):
        assert_same_run(tmp_path / "cli", run.run_dir)
        assert sorted(os.listdir(run.run_dir)) == sorted(os.listdir(tmp_path / "cli"))
    assert first.summary["best_val_loss"] == pytest.approx(min(r["val/loss"] for r in first.metrics()), rel=1e-6)
    assert first.config.model.name == "signal_ae" and first.config.plugins == [str(EXAMPLE)]
    x = torch.randn(5, 32)
    assert first.model.reconstruct(x).shape == (5, 32) and first.model.encode(x).shape == (5, 4)

    # one epoch, then continued to two: the two-epoch run exactly
    aetrain.fit([*args, "trainer.max_epochs=1"], run_dir=tmp_path / "half")
    aetrain.fit([f"trainer.resume={tmp_path / 'half'}", "trainer.max_epochs=2"])
    assert_same_run(tmp_path / "cli", tmp_path / "half")

    # a sweep over the example's own key
    assert call_main([*args, "trainer.max_epochs=1", "outputs.plot_every=0", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                      "-m", "model.channels=2,4"]) == 0
    with open(tmp_path / "sweep" / "sweep_summary.csv", newline="") as f:
        jobs = list(csv.DictReader(f))
    assert [r["status"] for r in jobs] == ["ok", "ok"]
    assert sorted(o for r in jobs for o in r["overrides"].split() if o.startswith("model.channels")) == [
        "model.channels=2", "model.channels=4"]

    # a fresh process knows nothing of the example: each command imports it from what the run recorded
    script = textwrap.dedent("""
        import sys, aetrain
        from aetrain.cli import main
        for args in (['eval', RUN, 'device=cpu', 'probe_samples=100'], ['score', RUN, 'device=cpu'],
                     ['export', RUN, 'format=torchscript'], ['doctor', RUN]):
            try:
                main(args)
            except SystemExit as e:
                assert not e.code, (args, e.code)
        print(aetrain.load_model(RUN).net.__class__.__name__)
    """).replace("RUN", repr(str(first.run_dir)))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "SignalAE"
    assert "probe accuracy" in done.stdout and "verdict:" in done.stdout
    for written in ("eval/metrics.json", "score/scores.csv", "export/model.torchscript.pt", "doctor.json"):
        assert (first.run_dir / written).is_file(), written


def test_help_lists_a_plugin_model_and_its_keys_with_their_comments(capfd: pytest.CaptureFixture[str]) -> None:
    assert call_main(["--help", f"plugins=[{EXAMPLE}]", "model=signal_vae"]) == 0
    out = capfd.readouterr().out
    assert "signal_ae (plugin), signal_vae (plugin)" in out
    assert "channels: 16  # channels of both convolutions" in out
    assert "beta: 1.0  # weight of the KL term" in out  # the vae objective's keys, added to the example's


# --- what is refused, in one line, before a run dir exists -------------------------------------------------

BROKEN = {
    "import error": ("raise RuntimeError('no GPU here')",
                     f"importing it failed: line {TOY.splitlines().index('{broken}') + 1}: RuntimeError: no GPU here"),
    "no decode": ("del Toy.decode", "Toy has no method decode; a model needs encode(x) -> z and decode(z) -> x_hat"),
    "code of another width": ("Toy.encode = lambda self, x: self.enc(x)[:, :3]",
                              "model=toy: encode(x) of x of shape (2, 1, 8, 8) returned shape (2, 3); expected "
                              "(2, 16), (batch, model.latent_dim = 16)"),
    "reconstruction of another shape": ("Toy.decode = lambda self, z: self.dec[0](z)",
                                        "model=toy: decode(z) of z of shape (2, 16) returned shape (2, 64); expected "
                                        "(2, 1, 8, 8), the input's shape"),
    "encode fails": ("Toy.encode = lambda self, x: self.enc[1](x)",
                     "model=toy: encode(x) failed on x of shape (2, 1, 8, 8): RuntimeError: mat1 and mat2 shapes "
                     "cannot be multiplied"),
    "a built-in name": ("aetrain.register_model('conv_ae', config=ToyConfig)(Toy)",
                        "model=conv_ae is already registered (built in); choose another name"),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_plugin_is_one_line_before_any_run_dir(cli, tmp_path: Path, broken: str) -> None:
    line, message = BROKEN[broken]
    plugin = toy_plugin(tmp_path, broken=line)
    assert_one_line_error(cli(f"plugins=[{plugin}]", "model=toy", *DIGITS), message)


def test_a_model_lacking_a_method_is_named_alike_as_a_class_and_as_a_built_module() -> None:
    from aetrain.models.custom import missing_methods

    class NoDecode(torch.nn.Module):
        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return x

    contract = "; a model needs encode(x) -> z and decode(z) -> x_hat"
    assert missing_methods(NoDecode) == missing_methods(NoDecode()) == f"{NoDecode.__qualname__} has no method " \
        f"decode{contract}"
    assert missing_methods(torch.nn.Linear(1, 1)) == f"Linear has no method encode or decode{contract}"
    assert missing_methods(type("Both", (NoDecode,), {"decode": lambda self, z: z})) == ""


def test_fit_raises_the_cli_s_error_and_writes_nothing(tmp_path: Path, cli) -> None:
    plugin = toy_plugin(tmp_path, broken="Toy.encode = lambda self, x: self.enc(x)[:, :3]")
    forget_hydra_state()
    for args in ([f"plugins=[{plugin}]", "model=toy"], ["model.latent_dim=0"], ["model=nope"],
                 [f"plugins=[{tmp_path / 'missing.py'}]"]):
        with pytest.raises(ConfigError) as raised:
            aetrain.fit([*args, *DIGITS], run_dir=tmp_path / "fit")
        assert no_hydra_state()
        assert one_line_error(cli(*args, *DIGITS)) == f"aetrain: error: {raised.value}", args
        assert not (tmp_path / "fit").exists()
        forget_hydra_state()  # what the CLI's run in this process left
    with pytest.raises(ConfigError, match="not -m"):
        aetrain.fit(["-m", "model.latent_dim=2,4"])


def test_fit_takes_a_typed_config_of_a_model_imported_in_python(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    toy_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import toy_models  # as a notebook would: the decorator registers model=toy

    cfg = aetrain.Config(model=toy_models.ToyConfig(name="toy", width=8), plugins=["toy_models.py"])
    cfg.trainer.device, cfg.trainer.max_epochs, cfg.data.batch_size = "cpu", 1, 256
    cfg.outputs.plot_every, cfg.outputs.tensorboard, cfg.diagnostics.enabled = 0, False, False
    typed = aetrain.fit(config=cfg, run_dir="typed")
    assert typed.config.plugins == [str(tmp_path / "toy_models.py")]  # recorded where it is, for loading elsewhere
    assert (typed.run_dir / ".hydra" / "config.yaml").is_file()
    # the same file named as a plugin is the module imported already, not a second registration
    overrides = aetrain.fit(["plugins=[toy_models.py]", "model=toy", "model.width=8", *DIGITS], run_dir="overrides")
    assert_same_run(typed.run_dir, overrides.run_dir)


def test_a_plugin_file_under_a_launcher_of_other_processes_is_one_line(tmp_path: Path, cli) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    plugin = toy_plugin(tmp_path)
    result = cli.command(f"plugins=[{plugin}]", "model=toy", *DIGITS, f"hydra.sweep.dir={tmp_path / 'sweep'}", "-m",
                         "hydra/launcher=joblib", "model.width=4,8")
    assert one_line_error(result) == (
        f"aetrain: error: plugins=['{plugin}'] with the JoblibLauncher: its jobs run in processes of their own, which "
        "cannot import a plugin file; use the default launcher, or register the models from an installed package "
        "(an entry point in group aetrain.models)")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_a_plugin_model_trains_in_several_processes_each_importing_it(cli, tmp_path: Path) -> None:
    result = cli(f"plugins=[{toy_plugin(tmp_path)}]", "model=toy", "trainer.devices=2", *DIGITS)
    assert result.returncode == 0, result.err
    assert "2 processes" in (result.run_dir / "train.log").read_text()
    assert aetrain.load_model(result.run_dir).net.enc[1].out_features == 32


# --- a plugin gone since its run, a package's entry point, an objective of one's own ---------------------

def test_a_run_whose_plugin_is_gone_loads_and_resumes_with_one_line_naming_it(cli, tmp_path: Path) -> None:
    plugin = toy_plugin(tmp_path)
    run = cli(f"plugins=[{plugin}]", "model=toy", *DIGITS).run_dir
    forget_own_models()  # a new process: nothing registered
    moved = plugin.rename(tmp_path / "elsewhere.py")
    with pytest.raises(CheckpointError, match=f"model=toy comes from the run's plugin {plugin}: no such file; put it "
                                              "back, or register model=toy first"):
        aetrain.load_model(run)
    assert "model=toy comes from the run's plugin" in one_line_error(cli.command("eval", str(run)))
    assert one_line_error(cli.command(f"trainer.resume={run}", "trainer.max_epochs=2")) == (
        f"aetrain: error: trainer.resume={run}: the run's plugin {plugin}: no such file; put it back, or give "
        "plugins=[its file.py] now")
    doctor = cli.command("doctor", str(run))
    assert doctor.returncode == 0 and "the run's config cannot be read here (model=toy comes from" in doctor.out
    # named where it is now, it resumes (the file's place may change; the model may not)
    resumed = cli.command(f"trainer.resume={run}", "trainer.max_epochs=2", f"plugins=[{moved}]")
    assert resumed.returncode == 0, resumed.err
    assert [r["epoch"] for r in metrics_rows(run)] == ["1", "2"]


def test_a_package_registers_its_models_through_an_entry_point_imported_when_named(
        cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    package = tmp_path / "site" / "ep_toys"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    toy_plugin(package, name="ep_toy").rename(package / "models.py")
    (package / "broken.py").write_text("import no_such_module\n")
    info = tmp_path / "site" / "ep_toys-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-toys\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[aetrain.models]\nep_toy = ep_toys.models\nep_broken = ep_toys.broken\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    assert call_main(["--help"]) == 0
    assert "ep_broken (plugin), ep_toy (plugin)" in capfd.readouterr().out  # listed, not imported
    assert "ep_toys.models" not in sys.modules
    run = cli("model=ep_toy", "model.width=8", *DIGITS).run_dir
    assert run.joinpath("checkpoints", "best.pt").is_file()
    forget_own_models()
    sys.modules.pop("ep_toys.models")
    assert aetrain.load_model(run).net.enc[1].out_features == 8  # imported again, by the model's name
    assert_one_line_error(cli("model=ep_broken", *DIGITS, run_dir=tmp_path / "broken"),
                          "model=ep_broken: the plugin ep_toys.broken (entry point ep_broken in group aetrain.models "
                          "of the package ep-toys) failed to import: ModuleNotFoundError: No module named "
                          "'no_such_module'")


SMOOTH = '''
from aetrain.models import Objective
import torch.nn.functional as F

class Smooth(Objective):
    """Reconstruction plus a penalty on differences between neighbouring pixels of the reconstruction."""
    def __init__(self):
        self.names = ("loss", "reconstruction", "roughness")
    def __call__(self, model, x):
        z, x_hat = model(x)
        rec = F.mse_loss(x_hat, x)
        rough = (x_hat[..., 1:] - x_hat[..., :-1]).square().mean()
        return {"loss": rec + 0.1 * rough, "reconstruction": rec, "roughness": rough}

aetrain.register_model("smooth_toy", config=ToyConfig, objective=lambda cfg, spec: (Smooth(), Smooth()))(Toy)
aetrain.register_model("noisy_toy", config=ToyConfig, objective="denoising")(Toy)
'''


def test_an_objective_of_ones_own_names_its_terms_and_a_built_in_one_adds_its_keys(cli, tmp_path: Path) -> None:
    plugin = toy_plugin(tmp_path, broken=SMOOTH)
    result = cli(f"plugins=[{plugin}]", "model=smooth_toy", *DIGITS)
    assert result.returncode == 0, result.err
    columns = metrics_rows(result.run_dir)[0]
    assert {"train/loss", "train/reconstruction", "train/roughness", "val/roughness"} <= set(columns)
    noisy = cli(f"plugins=[{plugin}]", "model=noisy_toy", "model.noise.kind=masking", "model.noise.level=2", *DIGITS,
                run_dir=tmp_path / "noisy")
    assert_one_line_error(noisy, "model.noise.level=2.0 is out of range: must be a finite number >= 0 and <= 1 for "
                                 "masking noise")

"""Checkpoints are data: atomic writes, safe loading, clear refusals, never a non-finite model."""

from __future__ import annotations

import gc
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import aetrain
from aetrain import checkpoint as checkpoints
from aetrain.commands.train import run
from aetrain.config import Config, DataConfig, SGDConfig, TrainerConfig
from aetrain.errors import CheckpointError, DivergenceError, WriteError
from aetrain.train import checkpoint
from aetrain.train.callbacks import Checkpointer
from aetrain.train.engine import Callback, Engine
from conftest import FAST, metrics_rows, one_line_error, snapshot


class Evil:
    """Unpickling this would create `marker`: the shape of every pickle exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the hostile file is written with plain pickle
def test_a_checkpoint_that_needs_unpickling_is_refused_and_its_code_never_runs(tmp_path: Path, cli) -> None:
    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil.pt"
    torch.save({"format": checkpoints.FORMAT, "payload": Evil(marker)}, zipped)  # torch's zip format
    raw = tmp_path / "evil_raw.pt"
    raw.write_bytes(pickle.dumps(Evil(marker), protocol=2))  # a bare pickle, torch's legacy format
    for path in (zipped, raw):
        with pytest.raises(CheckpointError, match=r"refused to load: it references the Python object posix.mkdir"):
            aetrain.load_model(path)
        result = cli(f"trainer.resume={path}")
        assert result.returncode == 2 and "refused to load" in result.err and "Traceback" not in result.output
    framed = tmp_path / "evil_p4.pt"  # protocol 4 is turned away at its first opcode, before any global
    framed.write_bytes(pickle.dumps(Evil(marker), protocol=4))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        aetrain.load_model(framed)
    assert not marker.exists()


def test_truncated_empty_and_foreign_files_are_one_line_errors(tmp_path: Path, cli) -> None:
    good = cli(*FAST, run_dir=tmp_path / "good")
    data = (good.run_dir / "checkpoints/last.pt").read_bytes()
    cases = {"truncated.pt": (data[: len(data) // 2], "(truncated or damaged: PytorchStreamReader failed"),
             "empty.pt": (b"", "(the file is empty)"),
             "notes.pt": (b"hello", "(not a torch file: torch saves a zip archive, or before torch 1.6 a pickle")}
    for name, (content, why) in cases.items():
        (tmp_path / name).write_bytes(content)
        result = cli(f"trainer.resume={tmp_path / name}", run_dir=tmp_path / f"r-{name}")
        assert result.returncode == 2, name
        assert f"not a readable checkpoint {why}" in result.err and result.err.count("\n") == 1, result.err
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an aetrain checkpoint"):
        checkpoints.load(tmp_path / "other.pt")


def test_resuming_under_a_different_architecture_names_the_differing_keys(cli, tmp_path: Path) -> None:
    first = cli(*FAST)
    result = cli(f"trainer.resume={first.run_dir}", "model.latent_dim=4", "model.activation=gelu",
                 "trainer.max_epochs=3")
    assert result.returncode == 2
    assert "model.activation='relu', model.latent_dim=16" in result.err
    assert "model.activation='gelu', model.latent_dim=4" in result.err


def test_resuming_on_data_of_another_shape_is_refused(cli, tmp_path: Path) -> None:
    for name, shape in (("a.npy", (60, 5)), ("b.npy", (60, 7))):
        np.save(tmp_path / name, np.random.rand(*shape).astype(np.float32))
    first = cli(*FAST, "data=tensor_file", f"data.path={tmp_path / 'a.npy'}")
    assert first.returncode == 0, first.err
    result = cli(f"trainer.resume={first.run_dir}", f"data.path={tmp_path / 'b.npy'}", "trainer.max_epochs=3")
    assert result.returncode == 2 and "samples of shape (5,), data 'tensor_file' has (7,)" in result.err


def test_state_dicts_carry_no_wrapper_prefixes() -> None:
    class Wrapper(torch.nn.Module):  # what torch.compile and DataParallel leave behind
        def __init__(self) -> None:
            super().__init__()
            self._orig_mod = torch.nn.Linear(2, 2)
            self.module = torch.nn.Linear(2, 2)

    assert set(checkpoint.clean_state_dict(Wrapper())) == {"weight", "bias"}


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    run(tiny(max_epochs=1), tmp_path)
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()

    def disk_gone(fd: int) -> None:  # the new checkpoint's bytes are written, then the disk fails
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("aetrain.atomic.os.fsync", disk_gone)
    cfg = tiny(max_epochs=2)
    cfg.trainer.resume = str(tmp_path)
    with pytest.raises(WriteError, match=f"could not write {tmp_path / 'checkpoints' / 'last.pt'}: Input/output error"):
        run(cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before
    assert checkpoints.load(tmp_path)["state"]["epoch"] == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temp debris


def test_a_background_checkpoint_write_that_fails_fails_the_run(tmp_path: Path, monkeypatch) -> None:
    def disk_full(path: Path, data: object, *, durable: bool = False) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("aetrain.train.callbacks.write_atomic", disk_full)
    with pytest.raises(WriteError, match="No space left on device"):
        run(tiny(max_epochs=3), tmp_path)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_a_loadable_last_checkpoint(tmp_path: Path) -> None:
    rng = random.Random(0)
    run_dir = tmp_path / "run"
    base = [sys.executable, "-m", "aetrain", "model.hidden_dims=[1024,1024]", "trainer.checkpoint_every_n_steps=1",
            "trainer.max_epochs=50", f"hydra.run.dir={run_dir}"]
    steps = []
    for attempt in range(4):
        cmd = base if attempt == 0 else [*base, f"trainer.resume={run_dir}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
        last, deadline = run_dir / "checkpoints" / "last.pt", time.monotonic() + 120
        start = last.stat().st_mtime if last.exists() else 0
        while not last.exists() or last.stat().st_mtime == start:  # wait until this process writes checkpoints
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))  # then kill it somewhere, quite likely mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = checkpoints.load(run_dir)  # always a complete checkpoint
        assert ckpt["state"]["step"] > 0
        steps.append(ckpt["state"]["step"])
    assert steps == sorted(steps)  # every restart resumed and went further


class Sabotage(Callback):
    """After epoch 1, raise the learning rate absurdly: the next steps blow up."""

    def on_epoch_end(self, engine: Engine, record: dict) -> None:
        if record["epoch"] == 1:
            for group in engine.parts.optimizer.param_groups:
                group["lr"] = 1e12


def tiny(**trainer: object) -> Config:
    return Config(data=DataConfig(batch_size=128), optimizer=SGDConfig(lr=0.05, momentum=0.9, nesterov=False),
                  trainer=TrainerConfig(**{"max_epochs": 3, "device": "cpu", **trainer}))


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_finite_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(DivergenceError, match=r"non-finite loss at step 1[3-9] \(epoch 2\); likely causes: "
                                              r"optimizer.lr=0.05 too high") as info:
        run(tiny(), tmp_path, callbacks=[Sabotage()])
    assert "trainer.gradient_clip_val=1.0" in str(info.value) and "precision" not in str(info.value)
    for name in ("last.pt", "best.pt"):
        ckpt = checkpoints.load(tmp_path / "checkpoints" / name)
        assert ckpt["state"]["epoch"] == 1
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_skip_mode_drops_non_finite_updates_and_trains_on(tmp_path: Path) -> None:
    class Poisoned(torch.nn.Module):
        """The model as the training step calls it, fed NaN on its fifth batch."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net, self.calls = net, 0

        def forward(self, x: torch.Tensor):
            self.calls += 1
            return self.net(x * torch.nan if self.calls == 5 else x)

    class PoisonOneBatch(Callback):
        def on_fit_start(self, engine: Engine) -> None:
            engine.parts.step.net = Poisoned(engine.parts.step.net)

    result = run(tiny(on_nonfinite="skip"), tmp_path, callbacks=[PoisonOneBatch()])
    model = aetrain.load_model(tmp_path)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert np.isfinite(result["best_val_loss"]) and result["epochs"] == 3


def test_the_cli_reports_divergence_as_a_failed_run(cli) -> None:
    result = cli("optimizer=sgd", "optimizer.lr=1e3", "model.output_activation=identity", "trainer.max_epochs=2",
                 "trainer.device=cpu")
    assert result.returncode == 1
    assert result.err.startswith("aetrain: error: non-finite loss at step ") and result.err.count("\n") == 1
    assert not (result.run_dir / "checkpoints" / "best.pt").exists()


@pytest.mark.slow
def test_nothing_accumulates_across_epochs() -> None:
    class Census(Callback):
        def __init__(self) -> None:
            self.tensors: list[int] = []
            self.rss: list[float] = []

        def on_epoch_end(self, engine: Engine, record: dict) -> None:
            gc.collect()
            # type(o), not isinstance: isinstance reads __class__, which wakes deprecated module proxies
            self.tensors.append(sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor)))
            self.rss.append(record["memory_mb"])

    census = Census()
    cfg = Config(data=DataConfig(batch_size=256), trainer=TrainerConfig(max_epochs=40, device="cpu"))
    cfg.model.dropout = 0.1
    from aetrain.commands.train import build_parts

    Engine(build_parts(cfg), [census]).fit()
    assert len(set(census.tensors[2:])) == 1, census.tensors  # the same live tensors after every epoch
    assert census.rss[-1] - census.rss[5] < 10, census.rss  # MB: resident memory flat over 35 epochs


def test_save_top_k_keeps_the_k_best_epochs(cli) -> None:
    result = cli("trainer.max_epochs=5", "optimizer.lr=0.05", "trainer.save_top_k=2", "trainer.device=cpu")
    kept = sorted(p.name for p in (result.run_dir / "checkpoints").glob("epoch=*.pt"))
    val = {int(r["epoch"]): float(r["val/loss"]) for r in result.metrics()}
    best_two = sorted(val, key=val.get)[:2]
    assert [int(name[6:9]) for name in kept] == sorted(best_two)
    for name in kept:
        assert checkpoints.load(result.run_dir / "checkpoints" / name)["state"]["epoch"] == int(name[6:9])


def test_checkpoint_every_n_steps_writes_mid_epoch(tmp_path: Path) -> None:
    seen = []

    class Peek(Callback):
        def on_step(self, engine: Engine) -> None:
            if engine.state.step == 12:
                # written in the background
                next(cb for cb in engine.callbacks if isinstance(cb, Checkpointer)).wait(engine)
                seen.append(checkpoints.load(tmp_path)["state"])

    run(tiny(checkpoint_every_n_steps=5, max_epochs=2), tmp_path, callbacks=[Peek()])
    assert seen[0]["step"] == 10 and seen[0]["step_in_epoch"] == 10


# --- a failed checkpoint write stops the run at once, says which file, and the summary tells the truth --------------

def test_a_checkpoint_write_over_the_file_size_limit_stops_the_run_at_once(tmp_path: Path) -> None:
    import resource

    def limit_files() -> None:  # `ulimit -f 256`: the 1.2 MB checkpoint cannot be written, the small files can
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "aetrain", f"hydra.run.dir={run_dir}", "trainer.max_epochs=4",
                           "data.batch_size=32", "trainer.device=cpu", "outputs.tensorboard=false"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, preexec_fn=limit_files)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"aetrain: error: could not write {run_dir / 'checkpoints' / 'last.pt'}: File too large")
    assert "no checkpoint reached disk" in line
    assert len(metrics_rows(run_dir)) == 1  # it stopped inside epoch 2, not after more epochs
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "could not write" in summary["error"]
    assert summary["best_checkpoint"] is None and summary["best_epoch"] is None
    assert "best checkpoint" not in proc.stdout and not (run_dir / "checkpoints" / "best.pt").exists()


def test_after_a_failed_checkpoint_write_the_summary_names_the_best_checkpoint_on_disk(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    from aetrain import checkpoint as checkpoints
    from aetrain.atomic import write_atomic
    from aetrain.commands.train import run
    from aetrain.errors import AetrainError
    from conftest import digits_config

    writes = []

    def disk_full_after_the_first(path: Path, data, *, durable: bool = False) -> None:
        writes.append(path)
        if len(writes) > 2:  # epoch 1 writes last.pt and best.pt (a file of its own since #22.2)
            raise OSError(28, "No space left on device", str(path.with_name(f".{path.name}.tmp")))
        write_atomic(path, data, durable=durable)

    monkeypatch.setattr("aetrain.train.callbacks.write_atomic", disk_full_after_the_first)
    cfg = digits_config()
    cfg.trainer.max_epochs, cfg.data.batch_size = 4, 32
    with pytest.raises(AetrainError) as info:
        run(cfg, tmp_path)
    assert info.value.exit_code == 1
    assert str(info.value).startswith(f"could not write {tmp_path / 'checkpoints' / 'last.pt'}: No space left on "
                                      "device (the checkpoint of epoch 2)")
    assert "last.pt holds epoch 1, best.pt epoch 1" in str(info.value)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs"] == 2  # stopped in epoch 3, not after epoch 4
    assert summary["best_epoch"] == 1 and summary["best_checkpoint"] == "checkpoints/best.pt"
    assert checkpoints.load(tmp_path, prefer=("best.pt",))["state"]["epoch"] == 1
    assert summary["best_val_loss"] == pytest.approx(float(metrics_rows(tmp_path)[0]["val/loss"]), rel=1e-6)


# --- damaged checkpoints: one line on resume, a CheckpointError in the API ------------------------------------------

def _other_architecture(ckpt: dict) -> None:
    ckpt["model"] = {k: torch.zeros(3, *v.shape[1:]) if v.ndim else v for k, v in ckpt["model"].items()}


DAMAGE = {
    "no config": lambda c: c.pop("config"),
    "config not JSON": lambda c: c.update(config="{model: dense_ae"),
    "config JSON of a list": lambda c: c.update(config="[1, 2]"),
    "weights of another architecture": _other_architecture,
    "no weights": lambda c: c.pop("model"),
    "format_version as a string": lambda c: c.update(format_version="1"),
    "no training state": lambda c: c.pop("state"),
    "no data description": lambda c: c.pop("data_spec"),
    "a sample shape of text": lambda c: c["data_spec"].update(shape="1x8x8"),
    "a data scaling of text": lambda c: c["data_spec"].update(scale="1/16"),
    "a training state of another shape": lambda c: c.update(state={"epoch": "two"}),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_checkpoint_is_one_line_on_resume_and_a_checkpoint_error_in_the_api(
        finished: Path, tmp_path: Path, cli, damage: str) -> None:
    import aetrain
    from aetrain.errors import CheckpointError

    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    DAMAGE[damage](ckpt)
    torch.save(ckpt, last)
    before = snapshot(run_dir)
    line = one_line_error(cli(f"trainer.resume={last}", "trainer.max_epochs=3", run_dir=run_dir))
    assert str(last) in line and "damaged" in line or "do not fit" in line or "format_version" in line, line
    assert snapshot(run_dir) == before
    needs_all = damage in ("no training state", "a training state of another shape")  # a model loads without it
    if not needs_all:
        with pytest.raises(CheckpointError) as info:
            aetrain.load_model(last)
        assert "\n" not in str(info.value) and str(last) in str(info.value)


# --- trainer.init_from: another run's weights, a fresh optimizer, schedule and counters -----------------------------

def test_init_from_starts_from_the_other_runs_best_weights_with_fresh_counters(finished: Path, tmp_path: Path) -> None:
    from aetrain.commands.train import run
    from aetrain.train.engine import Callback
    from conftest import digits_config

    class Start(Callback):
        def on_fit_start(self, engine) -> None:
            self.weights = {k: v.clone() for k, v in engine.parts.model.state_dict().items()}
            self.optimizer_state = dict(engine.parts.optimizer.state)
            self.state = (engine.state.epoch, engine.state.step)

    cfg = digits_config()
    cfg.trainer.max_epochs, cfg.trainer.init_from = 1, str(finished)
    start = Start()
    run(cfg, tmp_path / "b", callbacks=[start])
    best = torch.load(finished / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert start.weights.keys() == best.keys()
    assert all(torch.equal(start.weights[k], best[k]) for k in best)
    assert start.optimizer_state == {} and start.state == (0, 0)
    assert [(int(r["epoch"]), int(r["step"])) for r in metrics_rows(tmp_path / "b")] == [(1, 12)]


def test_init_from_on_the_command_line_trains_on_from_where_the_other_run_was(finished: Path, tmp_path: Path,
                                                                             cli) -> None:
    fresh = cli(*FAST, "trainer.max_epochs=1", "outputs.plot_every=0", run_dir=tmp_path / "fresh")
    warm = cli(*FAST, "trainer.max_epochs=1", "outputs.plot_every=0", f"trainer.init_from={finished}",
               run_dir=tmp_path / "warm")
    assert fresh.returncode == 0 and warm.returncode == 0, warm.output
    assert f"  init    the weights of {finished}" in warm.out.splitlines()
    first = lambda r: float(metrics_rows(r.run_dir)[0]["val/loss"])  # noqa: E731
    best_before = float(json.loads((finished / "summary.json").read_text())["best_val_loss"])
    assert first(warm) < best_before < first(fresh)  # it went on from the other run's model


@pytest.mark.parametrize("args, message", [
    (["model.latent_dim=8"], "its weights do not fit this run's model"),
    (["model.hidden_dims=[128]"], "its weights do not fit this run's model"),
    (["data=tensor_file", "data.path=ROWS"], "its model was trained on samples of shape (1, 8, 8); data 'tensor_file' "
                                              "has (6,)"),
    (["trainer.init_from=nowhere"], "no such checkpoint file or run directory"),
])
def test_init_from_a_model_that_does_not_fit_is_one_line(finished: Path, tmp_path: Path, cli, args: list[str],
                                                        message: str) -> None:
    import numpy as np

    np.save(tmp_path / "rows.npy", np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32))
    args = [a.replace("ROWS", str(tmp_path / "rows.npy")) for a in args]
    line = one_line_error(cli(*FAST, f"trainer.init_from={finished}", *args))
    assert message in line and "trainer.init_from=" in line, line
    assert not (tmp_path / "run").exists()


def test_init_from_fits_a_family_with_the_same_weights(finished: Path, cli) -> None:
    result = cli(*FAST, "trainer.max_epochs=1", "model=denoising_ae", f"trainer.init_from={finished}",
                 "outputs.plot_every=0")
    assert result.returncode == 0, result.output


def test_rewriting_best_pt_in_place_leaves_last_pt_resumable(cli, tmp_path: Path) -> None:
    """Dropping the optimizer state from best.pt before sharing it (torch.save over the file, which rewrites it
    in place) must not touch last.pt: they are files of their own, not links to one inode."""
    first = cli(*FAST, "trainer.save_top_k=1")
    ckpts = first.run_dir / "checkpoints"
    assert first.returncode == 0 and (ckpts / "best.pt").read_bytes() == (ckpts / "last.pt").read_bytes()
    for name in ("best.pt", next(p.name for p in ckpts.glob("epoch=*.pt"))):
        assert not os.path.samefile(ckpts / name, ckpts / "last.pt"), name
    best = torch.load(ckpts / "best.pt", weights_only=True)
    slim = {k: v for k, v in best.items() if k not in ("optimizer", "scaler", "rng", "meter")}
    torch.save(slim, ckpts / "best.pt")
    assert "optimizer" in torch.load(ckpts / "last.pt", weights_only=True)
    resumed = cli(f"trainer.resume={first.run_dir}", "trainer.max_epochs=3", *FAST[1:])
    assert resumed.returncode == 0, resumed.err
    assert [int(r["epoch"]) for r in resumed.metrics()] == [1, 2, 3]

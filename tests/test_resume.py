"""Exact resume: a run stopped at an epoch boundary or mid-epoch and resumed ends bit-identical."""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aetrain.commands.train import run
from aetrain.config import (
    AdamConfig,
    Config,
    ConvAEConfig,
    DataConfig,
    DenoisingAEConfig,
    DenseAEConfig,
    ModelConfig,
    NoiseConfig,
    OutputsConfig,
    SparseAEConfig,
    SparsityConfig,
    TrainerConfig,
    VAEConfig,
    default_choice,
)
from aetrain.errors import CheckpointError, Interrupted
from aetrain.train.engine import Callback, Engine
from conftest import (
    FAST,
    assert_same_run,
    call_main,
    metrics_rows,
    one_line_error,
    snapshot,
    start,
    without_timing,
)

EPOCHS = 3


class StopAt(Callback):
    """Deliver a stop request (what the SIGINT handler does) after an epoch, a step, or halfway
    through an epoch."""

    def __init__(self, *, epoch: int | None = None, step: int | None = None, mid_epoch: int | None = None) -> None:
        self.epoch, self.step, self.mid_epoch = epoch, step, mid_epoch

    def on_step(self, engine: Engine) -> None:
        halfway = (engine.state.epoch + 1 == self.mid_epoch
                   and engine.state.step_in_epoch == len(engine.parts.windows) // 2)
        if engine.state.step == self.step or halfway:
            engine.interrupt.handle(signal.SIGINT)

    def on_epoch_end(self, engine: Engine, record: dict) -> None:
        if record["epoch"] == self.epoch:
            engine.interrupt.handle(signal.SIGTERM)


def results(run_dir: Path) -> list[dict[str, str]]:
    return without_timing(metrics_rows(run_dir))


def interrupted_then_resumed(cfg: Config, run_dir: Path, stop: StopAt) -> None:
    with pytest.raises(Interrupted) as info:
        run(cfg, run_dir, callbacks=[stop])
    assert "resume with: aetrain trainer.resume=" in str(info.value)
    cfg.trainer.resume = str(run_dir)
    run(cfg, run_dir)


def scheduler(name: str) -> object:
    s = default_choice("scheduler", name)
    for key, value in dict(step_size=1, gamma=0.7, patience=0, warmup_steps=5).items():
        if hasattr(s, key):
            setattr(s, key, value)
    return s


def cfg_for(model: ModelConfig, scheduler_name: str, **trainer: object) -> Config:
    # pictures and TensorBoard off: they cost time here, and test_outputs checks they leave the RNG alone
    return Config(model=copy.deepcopy(model), data=DataConfig(batch_size=128), scheduler=scheduler(scheduler_name),
                  optimizer=AdamConfig(lr=3e-3),
                  trainer=TrainerConfig(**{"max_epochs": EPOCHS, "deterministic": True, "device": "cpu", **trainer}),
                  outputs=OutputsConfig(plot_every=0, tensorboard=False))


FAMILIES = {
    "dense": DenseAEConfig(dropout=0.1),
    "conv": ConvAEConfig(batch_norm=True, dropout=0.1),
    "denoising": DenoisingAEConfig(backbone="conv", noise=NoiseConfig("salt_pepper", 0.2)),
    "sparse": SparseAEConfig(sparsity=SparsityConfig("kl", 1e-3, 0.1)),
    "vae": VAEConfig(backbone="conv", kl_warmup_epochs=2.5),  # resumed inside the warm-up: its weight must follow
}
CASES = [  # every family and every scheduler, with accumulation, clipping and fp16's scaler in the mix
    *[(family, "plateau", dict(accumulate_grad_batches=2, gradient_clip_val=0.5)) for family in FAMILIES],
    *[("denoising", s, dict(accumulate_grad_batches=3, gradient_clip_val=0.05, gradient_clip_algorithm="value"))
      for s in ("none", "step", "cosine", "onecycle", "exponential")],
    ("dense", "cosine", dict(precision="16-mixed")),
    ("conv", "onecycle", dict(precision="bf16-mixed", accumulate_grad_batches=2)),
]


@pytest.mark.parametrize("where", ["epoch_boundary", "mid_epoch"])
@pytest.mark.parametrize(("family", "scheduler", "trainer"), CASES,
                         ids=[f"{f}-{s}-{'-'.join(t)}" for f, s, t in CASES])
def test_resumed_run_is_bit_identical_to_uninterrupted(tmp_path: Path, straight_run, family: str, scheduler: str,
                                                        trainer: dict, where: str) -> None:
    straight, resumed = straight_run(family, scheduler, trainer), tmp_path / "resumed"
    stop = StopAt(epoch=1) if where == "epoch_boundary" else StopAt(mid_epoch=2)
    interrupted_then_resumed(cfg_for(FAMILIES[family], scheduler, **trainer), resumed, stop)
    assert_same_run(straight, resumed)


def test_raising_max_epochs_on_resume_continues_training(tmp_path: Path) -> None:
    cfg = cfg_for(FAMILIES["dense"], "step", max_epochs=2)
    run(cfg, tmp_path / "a")
    cfg.trainer.max_epochs, cfg.trainer.resume = EPOCHS, str(tmp_path / "a")
    run(cfg, tmp_path / "a")
    run(cfg_for(FAMILIES["dense"], "step"), tmp_path / "straight")
    assert_same_run(tmp_path / "straight", tmp_path / "a")


def test_per_step_schedules_refuse_a_longer_run_on_resume(tmp_path: Path) -> None:
    cfg = cfg_for(FAMILIES["dense"], "onecycle", max_epochs=2)
    run(cfg, tmp_path / "a")
    cfg.trainer.max_epochs, cfg.trainer.resume = 4, str(tmp_path / "a")
    with pytest.raises(CheckpointError, match="scheduler=onecycle was planned over trainer.max_epochs=2"):
        run(cfg, tmp_path / "a")


def test_resuming_into_another_dir_carries_the_history(tmp_path: Path) -> None:
    cfg = cfg_for(FAMILIES["dense"], "none")
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "a", callbacks=[StopAt(epoch=2)])
    cfg.trainer.resume = str(tmp_path / "a" / "checkpoints" / "last.pt")
    run(cfg, tmp_path / "b")
    run(cfg_for(FAMILIES["dense"], "none"), tmp_path / "straight")
    assert_same_run(tmp_path / "straight", tmp_path / "b")
    assert len(results(tmp_path / "a")) == 2  # the original is left as it was


def test_rows_written_after_the_last_checkpoint_are_not_duplicated(tmp_path: Path) -> None:
    cfg = cfg_for(FAMILIES["dense"], "none")
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "a", callbacks=[StopAt(epoch=2)])
    # a run that died after writing epoch 3's row but before its checkpoint landed
    path = tmp_path / "a" / "metrics.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines) + lines[-1].replace("2,", "3,", 1))
    cfg.trainer.resume = str(tmp_path / "a")
    run(cfg, tmp_path / "a")
    assert [r["epoch"] for r in results(tmp_path / "a")] == ["1", "2", "3"]


def test_early_stopping_counter_survives_a_resume(tmp_path: Path) -> None:
    def cfg() -> Config:
        c = cfg_for(FAMILIES["dense"], "none", max_epochs=12, early_stopping_patience=1)
        c.optimizer.lr = 0.05  # val/loss bounces, so patience runs out early
        return c

    run(cfg(), tmp_path / "straight")
    stopped_at = len(results(tmp_path / "straight"))
    assert stopped_at < 12
    c = cfg()
    with pytest.raises(Interrupted):
        run(c, tmp_path / "b", callbacks=[StopAt(epoch=stopped_at - 1)])
    c.trainer.resume = str(tmp_path / "b")
    run(c, tmp_path / "b")
    assert_same_run(tmp_path / "straight", tmp_path / "b")


ARGS = ["model=conv_ae", "data.batch_size=4", "trainer.device=cpu", "trainer.max_epochs=2", "scheduler=cosine",
        "scheduler.warmup_steps=20", "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=0.5",
        "outputs.plot_every=0"]  # no pictures at epoch 1's end: the signal below must land inside epoch 2


def aetrain(*args: str) -> list[str]:
    return [sys.executable, "-m", "aetrain", *ARGS, *args]


@pytest.fixture(scope="module")
def straight_cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run both signal tests compare against (the same command line, in this process)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert call_main([*ARGS, f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_saves_mid_epoch_and_the_resumed_run_is_identical(tmp_path: Path, signum: int,
                                                                        straight_cli_run: Path, monkeypatch) -> None:
    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen(aetrain(f"hydra.run.dir={run_dir}", "trainer.log_every_n_steps=1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.csv").exists():  # epoch 1 is done; the signal lands in epoch 2
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "resume with: aetrain trainer.resume=" in err
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["state"]
    assert state["epoch"] == 1 and state["step_in_epoch"] > 0  # stopped inside epoch 2
    monkeypatch.chdir(tmp_path)
    assert call_main([f"trainer.resume={run_dir}"]) == 0  # resumed by the CLI, in this process
    assert_same_run(straight_cli_run, run_dir)


def test_second_signal_aborts_at_once() -> None:
    from aetrain.train.signals import Interrupt

    interrupt = Interrupt()
    with interrupt.installed():
        interrupt.handle(signal.SIGINT)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.handle(signal.SIGINT)


# --- a resume writes into a dir only when it is the checkpoint's own run --------------------------------------------

def test_resuming_a_checkpoint_kept_outside_its_run_dir_leaves_that_folder_alone(
        finished: Path, tmp_path: Path, cli, monkeypatch) -> None:
    elsewhere = tmp_path / "dl2"
    (elsewhere / "checkpoints").mkdir(parents=True)
    shutil.copy(finished / "checkpoints" / "last.pt", elsewhere / "model.pt")
    (elsewhere / "summary.json").write_text('{"mine": true}\n')
    (elsewhere / "checkpoints" / "best.pt").write_bytes(b"my own best model")
    (elsewhere / "metrics.csv").write_text("when,what\n1,2\n")  # not aetrain's: no epoch column
    (elsewhere / "train.log").write_text("my notes\n")
    before = snapshot(elsewhere)

    monkeypatch.chdir(tmp_path)  # where dl2/ is, and a new run dir goes (outputs/)
    result = cli.command("train", "trainer.resume=dl2/model.pt", "trainer.max_epochs=3", *FAST[1:])
    assert result.returncode == 0, result.output
    assert snapshot(elsewhere) == before  # nothing of the folder the checkpoint was kept in was touched
    [new] = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]  # a new run dir of its own
    assert [int(r["epoch"]) for r in metrics_rows(new)] == [3]  # it continues after the checkpoint's epoch 2
    assert json.loads((new / "summary.json").read_text())["epochs"] == 3
    assert "not in the run dir it was written in" in result.out


def test_a_checkpoint_copied_into_another_runs_checkpoints_folder_does_not_continue_that_run(
        finished: Path, tmp_path: Path, cli) -> None:
    other = cli(*FAST, "trainer.max_epochs=1", run_dir=tmp_path / "other")
    assert other.returncode == 0
    shutil.copy(finished / "checkpoints" / "last.pt", other.run_dir / "checkpoints" / "theirs.pt")
    before = snapshot(other.run_dir)
    result = cli(f"trainer.resume={other.run_dir / 'checkpoints' / 'theirs.pt'}", "trainer.max_epochs=3", *FAST[1:],
                 run_dir=tmp_path / "continued")
    assert result.returncode == 0, result.output
    assert snapshot(other.run_dir) == before
    assert [int(r["epoch"]) for r in metrics_rows(tmp_path / "continued")] == [3]


def test_an_older_checkpoint_of_a_run_branches_into_a_new_dir_and_leaves_the_run_alone(
        tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the new run dir goes under outputs/ here
    first = cli(*FAST, "trainer.save_top_k=2", "outputs.plot_every=0", run_dir=tmp_path / "run")
    assert first.returncode == 0, first.output
    [older] = (first.run_dir / "checkpoints").glob("epoch=001-*.pt")  # epoch 1: the run went on to epoch 2
    before = snapshot(first.run_dir)

    line = one_line_error(cli(f"trainer.resume={older}", "trainer.max_epochs=3", run_dir=first.run_dir))
    assert line == f"aetrain: error: trainer.resume={older} holds epoch 1, and its run went on to epoch 2 (its " \
                   f"last.pt): continuing it in {first.run_dir} would overwrite what came after; leave out " \
                   "hydra.run.dir to continue it in a new run dir (or name a new one), or continue the run from its " \
                   f"newest with trainer.resume={first.run_dir}"

    branched = cli.command(f"trainer.resume={older}", "trainer.max_epochs=3")
    assert branched.returncode == 0, branched.output
    [new] = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert f"{older} holds epoch 1, and its run went on to epoch 2: continuing it in a new run dir, " \
           f"{new.relative_to(tmp_path)}, with the metrics up to epoch 1; {first.run_dir} is left as it is" \
           in branched.out
    assert snapshot(first.run_dir) == before  # the run keeps its epoch 2, its metrics and its checkpoints
    rows = metrics_rows(new)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and rows[0] == metrics_rows(first.run_dir)[0]


# --- a resume on other data is refused, naming what differs ---------------------------------------------------------

@pytest.fixture
def rows_run(tmp_path: Path, cli):
    """A run on a 200 x 6 .npy of rows (N(0, 1)), and a function that resumes it on other data."""
    import numpy as np

    rows = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    args = ("data=tensor_file", *FAST[1:], "outputs.plot_every=0")
    first = cli(*args, f"data.path={tmp_path / 'rows.npy'}", "trainer.max_epochs=1")
    assert first.returncode == 0, first.output

    def resume(data: np.ndarray | None, *extra: str):
        path = tmp_path / "other.npy"
        if data is not None:
            np.save(path, data)
        return cli(*args, f"data.path={path}", f"trainer.resume={first.run_dir}", "trainer.max_epochs=2", *extra)

    return rows, resume, first.run_dir


def test_resuming_on_more_samples_is_refused_naming_the_counts(rows_run) -> None:
    import numpy as np

    rows, resume, run_dir = rows_run
    line = one_line_error(resume(np.concatenate([rows, rows])))
    assert "the data differs from the checkpoint's" in line and "samples: 400 here, 200 in the checkpoint" in line
    assert len(metrics_rows(run_dir)) == 1  # nothing was appended


def test_resuming_on_other_data_of_the_same_shape_is_refused(rows_run) -> None:
    rows, resume, run_dir = rows_run
    line = one_line_error(resume(rows + 100))
    assert "the data differs from the checkpoint's: content (sha256 " in line and "samples" not in line
    assert len(metrics_rows(run_dir)) == 1


def test_resuming_on_the_same_data_moved_elsewhere_is_accepted(rows_run) -> None:
    rows, resume, run_dir = rows_run
    result = resume(rows.copy())
    assert result.returncode == 0, result.output
    assert [int(r["epoch"]) for r in metrics_rows(run_dir)] == [1, 2]


def test_a_checkpoint_without_a_data_fingerprint_resumes_with_a_warning(rows_run) -> None:
    rows, resume, run_dir = rows_run
    last = run_dir / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["data_fingerprint"]  # as written before fingerprints
    torch.save(ckpt, last)
    result = resume(rows.copy())
    assert result.returncode == 0, result.output
    assert "has no data fingerprint (written before aetrain stored one): only the shape of the samples was checked" \
        in result.out


# --- odd run-dir metadata, and run dirs whose names need quoting ----------------------------------------------------

def test_a_stray_resume_folder_in_hydra_metadata_is_ignored(finished: Path, tmp_path: Path, cli) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / ".hydra" / "resume-old").mkdir()  # a user's backup of an earlier resume, say
    (run_dir / ".hydra" / "resume-old" / "overrides.yaml").write_text("- model.latent_dim=3\n")
    result = cli(f"trainer.resume={run_dir}", "trainer.max_epochs=3", run_dir=run_dir)
    assert result.returncode == 0, result.output
    assert (run_dir / ".hydra" / "resume-1" / "overrides.yaml").is_file()  # numbered after the numbered ones


@pytest.mark.parametrize("content", ["[unclosed", "a: mapping\n", "- [nested, list]\n"])
def test_a_corrupt_overrides_file_is_one_line_naming_it(finished: Path, tmp_path: Path, cli, content: str) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / ".hydra" / "overrides.yaml").write_text(content)
    before = snapshot(run_dir)
    line = one_line_error(cli(f"trainer.resume={run_dir}", "trainer.max_epochs=3", run_dir=run_dir))
    assert f"{run_dir / '.hydra' / 'overrides.yaml'}" in line and "not a list of overrides" in line
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("content", ["{\"status\": \"runn", "[1, 2]\n"], ids=["cut", "a list"])
def test_a_corrupt_summary_is_one_line_naming_it_and_the_run_never_continues_elsewhere(
        finished: Path, tmp_path: Path, cli, monkeypatch, content: str) -> None:
    monkeypatch.chdir(tmp_path)  # where a new run dir would go: outputs/
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "summary.json").write_text(content)
    before = snapshot(run_dir)
    for resume in (run_dir, run_dir / "checkpoints" / "last.pt"):
        line = one_line_error(cli.command(f"trainer.resume={resume}", "trainer.max_epochs=3"))
        run_id = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["run_id"]
        assert line.startswith(f"aetrain: error: {run_dir / 'summary.json'} is damaged (") and \
            f'replace it with {{"run_id": "{run_id}"}} to continue the run in its dir' in line, line
    assert snapshot(run_dir) == before and not (tmp_path / "outputs").exists()


def test_an_edited_config_yaml_is_refused_on_resume_naming_the_keys_and_the_overrides_that_apply_it(
        finished: Path, tmp_path: Path, cli) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    config = run_dir / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("max_epochs: 2", "max_epochs: 3")
                      .replace("log_every_n_steps: 50", "log_every_n_steps: 5"))
    before = snapshot(run_dir)
    line = one_line_error(cli(f"trainer.resume={run_dir}", run_dir=run_dir))
    assert line == f"aetrain: error: {config} differs from the config the run's overrides compose " \
                   "(trainer.max_epochs: 3 in the file, 2 composed; trainer.log_every_n_steps: 5 in the file, 50 " \
                   "composed): a resume composes it from .hydra/overrides.yaml, so an edit of config.yaml would go " \
                   "unused; to use the file's values add trainer.max_epochs=3 trainer.log_every_n_steps=5, or undo " \
                   "the edit to keep the run's"
    assert snapshot(run_dir) == before
    resumed = cli(f"trainer.resume={run_dir}", "trainer.max_epochs=3", "trainer.log_every_n_steps=5", run_dir=run_dir)
    assert resumed.returncode == 0, resumed.output
    assert [int(r["epoch"]) for r in metrics_rows(run_dir)] == [1, 2, 3]


@pytest.mark.parametrize("name", ["a,b", "ünï 日本", "it's [x]=1"])
def test_a_run_dir_whose_name_needs_quoting_resumes_as_typed_and_quoted(tmp_path: Path, cli, monkeypatch,
                                                                        name: str) -> None:
    monkeypatch.chdir(tmp_path)  # the run dirs are named relative to it, as typed in a shell there
    quoted = "'" + name.replace("'", "\\'") + "'"  # how Hydra's grammar wants it on the command line
    first = cli.command("train", f"hydra.run.dir={quoted}", *FAST, "trainer.max_epochs=1", "outputs.plot_every=0")
    assert first.returncode == 0, first.output
    assert (tmp_path / name / "metrics.csv").is_file()
    unquoted = cli.command("train", f"hydra.run.dir={name}x", *FAST, "trainer.max_epochs=1", "outputs.plot_every=0")
    assert unquoted.returncode == 0 and (tmp_path / f"{name}x" / "metrics.csv").is_file(), unquoted.output
    for epochs, typed in ((2, name), (3, quoted)):  # the path as the shell passes it, and quoted for Hydra
        result = cli.command("train", f"trainer.resume={typed}", f"trainer.max_epochs={epochs}")
        assert result.returncode == 0, result.output
        assert [int(r["epoch"]) for r in metrics_rows(tmp_path / name)] == list(range(1, epochs + 1))


# --- a second Ctrl-C after the first: one line, exit 130, the checkpoint intact -------------------------------------

def test_a_second_ctrl_c_during_the_final_table_is_one_line_and_keeps_the_checkpoint(cli, monkeypatch) -> None:
    import signal

    from aetrain import checkpoint as checkpoints
    from aetrain.train.outputs.console import EpochLog

    log_epoch = EpochLog.on_epoch_end

    def first_ctrl_c(self, engine, record) -> None:  # what the SIGINT handler does when Ctrl-C is pressed
        log_epoch(self, engine, record)
        if record["epoch"] == 1:
            engine.interrupt.handle(signal.SIGINT)

    def second_ctrl_c(run_dir: Path) -> list[str]:  # the default handler is back once training stopped
        raise KeyboardInterrupt

    monkeypatch.setattr(EpochLog, "on_epoch_end", first_ctrl_c)
    monkeypatch.setattr("aetrain.commands.train.final_table", second_ctrl_c)
    result = cli(*FAST, "outputs.plot_every=0")
    line = one_line_error(result, code=130)
    assert line.startswith("aetrain: interrupted by SIGINT after epoch 1") and "saved" in line and "resume with" in line
    assert checkpoints.load(result.run_dir)["state"]["epoch"] == 1


def test_a_second_ctrl_c_prints_no_results_and_the_summary_agrees_with_last_pt(cli, monkeypatch) -> None:
    import signal

    from aetrain import checkpoint as checkpoints
    from aetrain.train.callbacks import EarlyStopping

    def two_ctrl_cs(self, engine, record) -> None:  # epoch 2 counted, its checkpoint not yet written
        if record["epoch"] == 2:
            engine.interrupt.handle(signal.SIGINT)
            engine.interrupt.handle(signal.SIGINT)  # the second: KeyboardInterrupt, at once

    monkeypatch.setattr(EarlyStopping, "on_epoch_end", two_ctrl_cs)
    result = cli(*FAST, "trainer.max_epochs=3", "outputs.plot_every=0")
    assert one_line_error(result, code=130).startswith("aetrain: interrupted by SIGINT")
    assert "finished" not in result.out and "stopped (" not in result.out and "best val/loss" not in result.out
    saved = checkpoints.load(result.run_dir)["state"]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert (saved["epoch"], saved["step"]) == (1, 12)
    assert (summary["ended"], summary["epochs"], summary["steps"]) == ("interrupted", 1, 12)
    assert summary["error"] == "Interrupted: aborted by a second SIGINT; last.pt holds after epoch 1, step 12 of " \
                               "the run"


@pytest.mark.slow
def test_two_real_ctrl_cs_at_any_distance_end_in_one_line_and_a_loadable_checkpoint(tmp_path: Path) -> None:
    import signal

    from aetrain import checkpoint as checkpoints

    # at once, while the run stops and saves, during the final table, and the last ones while Python shuts down
    for n, gap in enumerate((0.0, 0.05, 0.2, 0.4, 0.7, 1.2)):
        run_dir = tmp_path / f"run{n}"
        proc = start(f"hydra.run.dir={run_dir}", "trainer.max_epochs=50", "data.batch_size=32", "trainer.device=cpu",
                     "model.hidden_dims=[512,512]", cwd=tmp_path)
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.csv").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (gap, out, err)
        assert "Traceback" not in out + err and "Exception ignored" not in err, (gap, err)
        assert err.count("\n") == 1 and err.startswith("aetrain: interrupted by SIGINT"), (gap, err)
        saved = checkpoints.load(run_dir)["state"]  # the last complete checkpoint, whichever it is
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["ended"], summary["epochs"], summary["steps"]) == ("interrupted", saved["epoch"],
                                                                           saved["step"]), (gap, summary)
        assert "finished" not in out and "stopped (running)" not in out, (gap, out)


def test_the_interrupt_and_the_resume_name_the_same_point_in_the_same_words(cli, monkeypatch) -> None:
    import signal

    from aetrain.train.engine import Engine

    check = Engine.check_interrupt

    def ctrl_c_at_step_30(self) -> None:  # 12 steps an epoch: inside epoch 3
        if self.state.step == 30:
            self.interrupt.handle(signal.SIGINT)
        check(self)

    monkeypatch.setattr(Engine, "check_interrupt", ctrl_c_at_step_30)
    stopped = cli(*FAST, "trainer.max_epochs=4", "outputs.plot_every=0")
    monkeypatch.undo()
    line = one_line_error(stopped, code=130)
    point = "in epoch 3 (step 6 of 12), step 30 of the run"
    assert line.startswith(f"aetrain: interrupted by SIGINT {point}; saved "), line
    resumed = cli(f"trainer.resume={stopped.run_dir}")
    assert resumed.returncode == 0, resumed.output
    assert f"  resume  {point}" in resumed.out.splitlines()
    assert f"resuming {stopped.run_dir} {point}" in resumed.out
    assert "from epoch" not in resumed.out

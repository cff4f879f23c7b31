"""Defects found by using aetrain as a new user would and by attacking it (issue #16), one test or more per item.

Each test drives the CLI (in this process or as a subprocess) or the Python API the way a user does, and
names the item it reproduces. Tests of one item are grouped under its number.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST, call_main, metrics_rows, run_subprocess


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch run on the digits (dense_ae, batch 128, CPU), to copy from; never written to."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert call_main([f"hydra.run.dir={run_dir}", *FAST, "outputs.plot_every=0", "outputs.tensorboard=false"]) == 0
    return run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(result, code: int = 2) -> str:
    assert result.returncode == code, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aetrain: "), result.err
    return lines[0]


# --- 1. a resume writes into a dir only when it is the checkpoint's own run ------------------------------

def test_resuming_a_checkpoint_kept_outside_its_run_dir_leaves_that_folder_alone(finished: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "dl2"
    (elsewhere / "checkpoints").mkdir(parents=True)
    shutil.copy(finished / "checkpoints" / "last.pt", elsewhere / "model.pt")
    (elsewhere / "summary.json").write_text('{"mine": true}\n')
    (elsewhere / "checkpoints" / "best.pt").write_bytes(b"my own best model")
    (elsewhere / "metrics.csv").write_text("when,what\n1,2\n")  # not aetrain's: no epoch column
    (elsewhere / "train.log").write_text("my notes\n")
    before = snapshot(elsewhere)

    result = run_subprocess("trainer.resume=dl2/model.pt", "trainer.max_epochs=3", *FAST[1:], cwd=tmp_path,
                            command=("train",))
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


# --- 2. two runs started at once never share a run dir ----------------------------------------------------

def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aetrain", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_runs_into_one_explicit_dir_at_once_one_trains_the_other_is_refused(tmp_path: Path) -> None:
    args = ("hydra.run.dir=conc", "trainer.max_epochs=6", "outputs.plot_every=0", *FAST[1:])
    first, second = start(*args, cwd=tmp_path), start(*args, cwd=tmp_path)
    results = [(p.returncode, *p.communicate(timeout=300)) for p in (first, second)]
    results = [(p.returncode, out, err) for p, (_, out, err) in zip((first, second), results)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    [(_, _, err)] = [r for r in results if r[0] == 2]
    assert err.count("\n") == 1 and ("is in use by another aetrain process" in err or "already holds a run" in err), err
    assert [int(r["epoch"]) for r in metrics_rows(tmp_path / "conc")] == list(range(1, 7))
    assert sorted(p.name for p in (tmp_path / "conc" / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml",
                                                                                 "overrides.yaml"]


@pytest.mark.slow
def test_two_runs_started_together_into_the_default_dir_get_a_dir_each(tmp_path: Path) -> None:
    procs = [start("trainer.max_epochs=1", f"model.latent_dim={k}", "outputs.plot_every=0", *FAST[1:], cwd=tmp_path)
             for k in (3, 5)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
    dirs = sorted(p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir())
    assert len(dirs) == 2
    configs = [json.loads(torch.load(d / "checkpoints" / "last.pt", weights_only=True)["config"]) for d in dirs]
    assert sorted(c["model"]["latent_dim"] for c in configs) == [3, 5]
    assert all(len(metrics_rows(d)) == 1 for d in dirs)  # each its own epoch 1, nothing interleaved


def test_the_default_run_dir_of_a_second_taken_gets_a_suffix(tmp_path: Path) -> None:
    import datetime as dt

    now = dt.datetime.now()
    taken = [now + dt.timedelta(seconds=s) for s in range(-1, 40)]  # every name the run could pick in the next 40 s
    for t in taken:
        (tmp_path / "outputs" / t.strftime("%Y-%m-%d") / t.strftime("%H-%M-%S")).mkdir(parents=True, exist_ok=True)
        (tmp_path / "outputs" / t.strftime("%Y-%m-%d") / t.strftime("%H-%M-%S") / "summary.json").write_text("{}")
    result = run_subprocess("trainer.max_epochs=1", "outputs.plot_every=0", *FAST[1:], cwd=tmp_path,
                            command=("train",))
    assert result.returncode == 0, result.output
    fresh = [p.parent for p in (tmp_path / "outputs").glob("*/*/metrics.csv")]
    assert len(fresh) == 1 and fresh[0].name.rsplit("_", 1)[-1] == "2", fresh
    assert all((p / "summary.json").read_text() == "{}" for p in (tmp_path / "outputs").glob("*/*")
               if p != fresh[0])


def test_the_default_sweep_dir_of_a_second_taken_gets_a_suffix(tmp_path: Path) -> None:
    import datetime as dt

    now = dt.datetime.now()
    for s in range(-1, 40):
        t = now + dt.timedelta(seconds=s)
        used = tmp_path / "outputs" / "multirun" / t.strftime("%Y-%m-%d") / t.strftime("%H-%M-%S")
        used.mkdir(parents=True, exist_ok=True)
        (used / "sweep_summary.csv").write_text("job\n")
    result = run_subprocess("-m", "trainer.max_epochs=1", "model.latent_dim=3,4", "outputs.plot_every=0", *FAST[1:],
                            cwd=tmp_path, command=("train",))
    assert result.returncode == 0, result.output
    [fresh] = [p.parent for p in (tmp_path / "outputs" / "multirun").glob("*/*/0/metrics.csv")]
    assert fresh.parent.name.endswith("_2") and (fresh.parent / "1" / "metrics.csv").is_file()


def test_a_run_dir_held_by_a_live_process_is_refused_and_a_killed_runs_lock_is_not(tmp_path: Path, cli) -> None:
    held = tmp_path / "held"
    held.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(held / '.aetrain.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, b'pid 4242 on a-host')\n"
                               "print('held', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        line = one_line_error(cli(*FAST, "trainer.max_epochs=1", run_dir=held))
        assert "hydra.run.dir=" in line and "is in use by another aetrain process (pid 4242 on a-host)" in line
        assert not (held / "metrics.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (as after a kill -9): its lock file is left behind, but it no longer blocks
    assert (held / ".aetrain.lock").exists()
    result = cli(*FAST, "trainer.max_epochs=1", run_dir=held)
    assert result.returncode == 0, result.output
    assert not (held / ".aetrain.lock").exists()  # released at the end


@pytest.mark.slow
def test_two_sweeps_into_one_explicit_dir_at_once_one_runs_the_other_is_refused(tmp_path: Path) -> None:
    args = ("-m", "hydra.sweep.dir=sweep", "trainer.max_epochs=3", "model.latent_dim=3,4", "outputs.plot_every=0",
            *FAST[1:])
    procs = [start(*args, cwd=tmp_path), start(*args, cwd=tmp_path)]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    assert sorted(code for _, _, code in results) == [0, 2], results
    [err] = [err for _, err, code in results if code == 2]
    assert err == "aetrain: error: hydra.sweep.dir=sweep already holds a sweep (.aetrain-sweep); " \
                  "choose another hydra.sweep.dir\n"
    assert all(len(metrics_rows(tmp_path / "sweep" / job)) == 3 for job in ("0", "1"))


# --- 3. a resume on other data is refused, naming what differs ------------------------------------------

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


# --- 8. a failed write stops the run at once, says which file, and the summary tells the truth ----------

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


def _read_only(path: Path, on: bool) -> None:
    """Make a dir read-only, for root too (chattr +i: no entry may be added, removed or renamed)."""
    if os.geteuid() != 0:
        path.chmod(0o555 if on else 0o755)
    elif subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a dir read-only for root here (no chattr)")


@pytest.mark.slow
def test_an_output_dir_made_read_only_mid_run_is_one_line_and_a_failed_summary(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "aetrain", f"hydra.run.dir={run_dir}", "trainer.max_epochs=300",
                             "data.batch_size=32", "trainer.device=cpu", "outputs.plot_every=0"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.csv").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        _read_only(run_dir, True)
        out, err = proc.communicate(timeout=120)
    finally:
        _read_only(run_dir, False)
        proc.kill()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in out + err and "Logging error" not in out + err
    [line] = err.splitlines()
    assert line.startswith("aetrain: error: could not write ") and "; the run stopped after epoch " in line
    summary = json.loads((run_dir / "summary.json").read_text())  # rewritten in place: the dir takes no new file
    assert summary["status"] == "failed" and summary["error"].startswith("WriteError: could not write")


# --- 7. early stopping: its message after the epoch it refers to; the summary says why the run stopped ----

def test_early_stopping_is_reported_after_its_epoch_line_and_in_summary_json(cli) -> None:
    result = cli(*FAST, "trainer.max_epochs=12", "trainer.early_stopping_patience=1", "optimizer.lr=0.05",
                 "outputs.plot_every=0")
    assert result.returncode == 0, result.output
    lines = result.out.splitlines()
    epochs = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    stopped = [i for i, line in enumerate(lines) if line.startswith("early stopping: ")]
    assert len(epochs) < 12 and stopped == [epochs[-1] + 1], result.out  # right after the last epoch's line
    last = len(epochs)
    assert "no val/loss improvement for 1 epoch (" in lines[stopped[0]]  # not "1 epochs" (item 21)
    assert lines[stopped[0] + 1].startswith("aetrain: stopped early after")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert (summary["status"], summary["ended"], summary["epochs"]) == ("ok", "stopped_early", last)
    assert summary["stop_reason"] == lines[stopped[0]]
    assert any(" stopped " in line and lines[stopped[0]] in line for line in lines[stopped[0] + 1:])  # the table


# --- 13. damaged checkpoints and odd run-dir metadata: one line, from the CLI and the API -----------------

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


# --- 14. an output dir that cannot be created: one line, exit 2 ------------------------------------------

@pytest.mark.parametrize("where", ["a file", "under /proc", "in a read-only dir (default dir)",
                                   "in a read-only dir (sweep)"])
def test_an_output_dir_that_cannot_be_created_is_one_line(tmp_path: Path, where: str) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = [*FAST, "trainer.max_epochs=1"]
    if where == "a file":
        (cwd / "taken").write_text("a file, not a dir")
        args.append("hydra.run.dir=taken")
    elif where == "under /proc":
        args.append("hydra.run.dir=/proc/aetrain-run")
    elif where.endswith("(sweep)"):
        args += ["-m", "model.latent_dim=3,4"]
    _read_only(cwd, where.startswith("in a read-only dir"))
    try:
        before = sorted(cwd.rglob("*"))
        result = run_subprocess(*args, cwd=cwd, command=("train",))
        line = one_line_error(result)
        assert sorted(cwd.rglob("*")) == before
    finally:
        _read_only(cwd, False)
    assert "cannot create" in line, line
    assert ("taken" in line) if where == "a file" else True


# --- 15. run dirs whose names need quoting resume; Ctrl-C during start-up --------------------------------

@pytest.mark.parametrize("name", ["a,b", "ünï 日本", "it's [x]=1"])
def test_a_run_dir_whose_name_needs_quoting_resumes_as_typed_and_quoted(tmp_path: Path, name: str) -> None:
    quoted = "'" + name.replace("'", "\\'") + "'"  # how Hydra's grammar wants it on the command line
    first = run_subprocess(f"hydra.run.dir={quoted}", *FAST, "trainer.max_epochs=1", "outputs.plot_every=0",
                           cwd=tmp_path, command=("train",))
    assert first.returncode == 0, first.output
    assert (tmp_path / name / "metrics.csv").is_file()
    unquoted = run_subprocess(f"hydra.run.dir={name}x", *FAST, "trainer.max_epochs=1", "outputs.plot_every=0",
                              cwd=tmp_path, command=("train",))
    assert unquoted.returncode == 0 and (tmp_path / f"{name}x" / "metrics.csv").is_file(), unquoted.output
    for epochs, typed in ((2, name), (3, quoted)):  # the path as the shell passes it, and quoted for Hydra
        result = run_subprocess(f"trainer.resume={typed}", f"trainer.max_epochs={epochs}", cwd=tmp_path,
                                command=("train",))
        assert result.returncode == 0, result.output
        assert [int(r["epoch"]) for r in metrics_rows(tmp_path / name)] == list(range(1, epochs + 1))


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line_exit_130_and_leaves_nothing(tmp_path: Path) -> None:
    import signal

    for wait_for_dir in (False, True):  # while Python imports, and once the run dir exists (building the model)
        proc = start(*FAST, cwd=tmp_path)
        deadline = time.monotonic() + 120
        if wait_for_dir:
            while not list(tmp_path.glob("outputs/*/*")):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.01)
        else:
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, out + err
        assert "Traceback" not in out + err and err.count("\n") == 1 and err.startswith("aetrain: interrupted"), err
        assert not [p for p in tmp_path.glob("outputs/*/*")], "a run dir was left behind"


# --- 16. consoles that cannot show the run dir's name; HYDRA_FULL_ERROR=1 ----------------------------------

@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "PYTHONUTF8": "0"}],
                         ids=["PYTHONIOENCODING=ascii", "LC_ALL=C PYTHONUTF8=0"])
def test_a_unicode_run_dir_on_an_ascii_console_trains_and_logs_every_line(tmp_path: Path, env: dict) -> None:
    result = run_subprocess("hydra.run.dir='ünï 日本'", *FAST, "trainer.max_epochs=1", cwd=tmp_path,
                            env={k: v for k, v in env.items()}, command=("train",))
    assert result.returncode == 0, result.output
    assert result.err == "", result.err  # no "--- Logging error ---", no traceback
    assert "output  " in result.out and "epoch 1/1" in result.out and "aetrain: finished in" in result.out
    run_dir = tmp_path / "ünï 日本"
    assert len(metrics_rows(run_dir)) == 1
    log = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace")
    assert "epoch 1/1" in log and "aetrain: finished in" in log


def test_hydra_full_error_shows_the_traceback_behind_a_user_error(tmp_path: Path) -> None:
    plain = run_subprocess("optimizer.lr=-1", *FAST, cwd=tmp_path, command=("train",))
    assert one_line_error(plain) == "aetrain: error: optimizer.lr=-1.0 is out of range: must be a finite number > 0"
    full = run_subprocess("optimizer.lr=-1", *FAST, cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"}, command=("train",))
    assert full.returncode != 0 and "Traceback (most recent call last)" in full.err
    assert "aetrain.errors.ConfigError: optimizer.lr=-1.0 is out of range" in full.err
    assert not list(tmp_path.glob("outputs/*/*"))  # nothing written either way


# --- 17. a second Ctrl-C after the first: one line, exit 130, the checkpoint intact -----------------------

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


@pytest.mark.slow
def test_two_real_ctrl_cs_at_any_distance_end_in_one_line_and_a_loadable_checkpoint(tmp_path: Path) -> None:
    import signal

    from aetrain import checkpoint as checkpoints

    for n, gap in enumerate((0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.2)):  # the last ones: while Python shuts down
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
        checkpoints.load(run_dir)  # the last complete checkpoint, whichever it is


# --- 21. wording: one point of a run is named the same way everywhere; the package exposes its API only ----

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


def test_import_aetrain_exposes_its_api_and_nothing_else() -> None:
    out = subprocess.run([sys.executable, "-c", "import aetrain; print(sorted(n for n in dir(aetrain) if "
                          "not n.startswith('__')))"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['load_model']"


# --- 19. the learning-rate panel of loss_curve.png, for every schedule's shape --------------------------

def _rates(kind: str, epochs: int) -> list[float]:
    import math

    lr = 1e-3
    if kind == "cosine to 0":
        return [lr * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(1, epochs + 1)]
    if kind == "step":
        return [lr * 0.1 ** (e // 10) for e in range(epochs)]
    if kind == "onecycle":
        return [lr * (e / 12 if e < 12 else (1 + math.cos(math.pi * (e - 12) / (epochs - 12))) / 2) + 4e-8
                for e in range(1, epochs + 1)]
    if kind == "plateau":
        return [lr * 0.5 ** (e // 6) for e in range(epochs)]
    return [lr * 0.98 ** e for e in range(epochs)]  # exponential


@pytest.mark.parametrize("kind", ["cosine to 0", "step", "onecycle", "plateau", "exponential"])
def test_the_learning_rate_panel_shows_every_schedule_inside_its_axis_with_readable_ticks(kind: str) -> None:
    import numpy as np

    from aetrain.train.outputs.plots import LossCurve

    rates = _rates(kind, 40)
    records = [{"epoch": e, "train/loss": 1 / e, "val/loss": 1.1 / e, "lr": r} for e, r in enumerate(rates, 1)]
    curve = LossCurve(f"lr: {kind}", ["train/loss", "train/grad_norm", "val/loss"])
    for n in (1, 2, 15, 40):  # redrawn as a run goes on: the first draws see a constant rate
        curve.draw(records[:n])
    ax = curve.lr_ax
    xy = ax.transAxes.inverted().transform(ax.transData.transform(np.column_stack([range(1, 41), rates])))
    shown = (xy[:, 1] >= -1e-9) & (xy[:, 1] <= 1 + 1e-9) & np.isfinite(xy[:, 1])
    assert shown.mean() > 0.95, f"{(~shown).sum()} of 40 rates outside the panel"
    assert xy[shown, 1].max() - xy[shown, 1].min() > 0.4, "the rates are squeezed into a line"
    renderer = curve.fig.canvas.get_renderer()
    labels = [t.get_window_extent(renderer) for t in ax.get_yticklabels(which="both") if t.get_visible()
              and t.get_text() and ax.get_ylim()[0] <= t.get_position()[1] <= ax.get_ylim()[1]]
    assert len(labels) >= 2
    overlapping = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:] if a.overlaps(b)]
    assert not overlapping, f"{len(overlapping)} overlapping tick labels"


# --- 20. the progress bar shows the running loss of the epoch under way ---------------------------------

def test_the_progress_bar_shows_the_running_loss_of_the_epoch_under_way(tmp_path: Path) -> None:
    import re

    from test_console import run_in_terminal

    run_dir = tmp_path / "run"
    code, out = run_in_terminal(f"hydra.run.dir={run_dir}", *FAST, "outputs.plot_every=0", cwd=tmp_path)
    assert code == 0, out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    frames = re.findall(r"epoch (\d)/2 \S* *(\d+)/12 loss (\S+)", plain)  # every redraw of the bar
    shown = {(int(e), loss) for e, done, loss in frames if int(done) >= 1}
    assert {e for e, _ in shown} == {1, 2}, frames  # each epoch's bar shows a loss once a step is done
    assert all(loss != "-" for _, loss in shown), frames
    epoch_1 = f"{float(metrics_rows(run_dir)[0]['train/loss']):.5f}"
    assert (2, epoch_1) not in shown, frames  # not the previous epoch's loss


# --- 22. the Optuna preset does not search the code width; a code as wide as the input is flagged ----------

def test_the_optuna_preset_keeps_the_code_width_out_of_its_search(cli) -> None:
    result = cli("hparams_search=optuna", "--cfg", "hydra")
    assert result.returncode == 0, result.err
    import re

    params = re.search(r"\n    params:\n((?:      .*\n)+)", result.out).group(1)  # hydra.sweeper.params
    assert "optimizer.lr:" in params and "model.latent_dim" not in params


@pytest.mark.parametrize("model, latent, warned", [("dense_ae", 64, True), ("conv_ae", 80, True),
                                                   ("dense_ae", 63, False), ("sparse_ae", 64, False)])
def test_a_code_as_wide_as_the_input_is_warned_about_in_one_line(cli, model: str, latent: int, warned: bool) -> None:
    result = cli(*FAST, "trainer.max_epochs=1", f"model={model}", f"model.latent_dim={latent}", "outputs.plot_every=0")
    assert result.returncode == 0, result.output
    lines = [line for line in result.out.splitlines() if "the input (64 values a sample)" in line]
    assert len(lines) == int(warned), result.out
    if warned:
        wide = "as wide as" if latent == 64 else "wider than"
        assert lines[0].startswith(f"model.latent_dim={latent} is {wide} the input (64 values a sample): ")


# --- 24. trainer.init_from: another run's weights, a fresh optimizer, schedule and counters ------------------

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


# --- 25. a sweep's validation curves in one picture ------------------------------------------------------

def _job(sweep_dir: Path, job: int, overrides: list[str], val: list[float], status: str = "ok") -> None:
    run_dir = sweep_dir / str(job)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    rows = ["epoch,step,train/loss,val/loss,epoch_time_s", *(f"{e},{e},0.5,{v},0.1" for e, v in enumerate(val, 1))]
    (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "best_val_loss": min(val) if status == "ok"
                                                      else None, "epochs": len(val)}))


def _curve_colours(path: Path) -> set[tuple[int, int, int]]:
    """The saturated colours drawn in a picture (grey, black and white left out)."""
    from matplotlib.image import imread
    import numpy as np

    rgb = (imread(path)[..., :3] * 255).astype(int).reshape(-1, 3)
    saturated = rgb[(rgb.max(1) - rgb.min(1)) > 80]
    colours, counts = np.unique(saturated // 16, axis=0, return_counts=True)
    return {tuple(c) for c, n in zip(colours, counts) if n > 40}


def test_a_sweep_draws_every_jobs_validation_curve_in_one_picture_named_by_what_varies(tmp_path: Path) -> None:
    from aetrain.cli import sweep

    for job, lr in enumerate((1e-3, 3e-4, 1e-4)):
        _job(tmp_path, job, [f"optimizer.lr={lr}", "trainer.max_epochs=20"],
             [0.1 * (1 + 5 * lr) ** -e + 0.01 * job for e in range(20)])
    _job(tmp_path, 3, ["optimizer.lr=10", "trainer.max_epochs=20"], [0.5, float("nan")], status="failed")
    sweep.summarize(tmp_path)
    picture = tmp_path / "sweep_curves.png"
    assert picture.is_file()
    assert len(_curve_colours(picture)) >= 3  # a colour per job that trained


def test_the_sweep_curves_of_many_jobs_stay_readable(tmp_path: Path) -> None:
    import math

    from aetrain.cli import sweep

    for job in range(40):
        lr, dim = 10 ** (-4 + 2 * (job % 8) / 7), [4, 8, 16, 32, 64][job // 8]
        _job(tmp_path, job, [f"optimizer.lr={lr:.6g}", f"model.latent_dim={dim}", "trainer.max_epochs=30"],
             [0.02 + 0.5 * math.exp(-e * lr * 300) / math.sqrt(dim) for e in range(30)])
    results = sweep.summarize(tmp_path)
    picture = tmp_path / "sweep_curves.png"
    legend = sweep.curve_labels(results)
    assert len(legend) <= 11  # the best ten named, the rest summed up as one entry
    assert legend[0].startswith(f"job {results[0].job}: ") and legend[-1] == "30 other jobs"
    from matplotlib.image import imread

    assert imread(picture).shape[1] <= 1400  # legend beside the axes, not a picture the width of a wall


@pytest.mark.slow
def test_a_real_sweep_writes_its_curves_picture(tmp_path: Path) -> None:
    result = run_subprocess("-m", "hydra.sweep.dir=sweep", "model.latent_dim=3,6", "trainer.max_epochs=3",
                            "outputs.plot_every=0", "outputs.tensorboard=false", *FAST[1:], cwd=tmp_path,
                            command=("train",))
    assert result.returncode == 0, result.output
    assert (tmp_path / "sweep" / "sweep_curves.png").is_file() and "sweep_curves.png" in result.out

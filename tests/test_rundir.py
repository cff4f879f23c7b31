"""A run dir's life: allocated once (two runs started together get a dir each), held by one process, refused
when it holds a run, never made when it cannot be, left behind by no rejected or interrupted command;
`aetrain.rundir.RunDir` and `Status` from Python."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST, metrics_rows, one_line_error, read_only, run_subprocess, snapshot, start

# --- two runs started at once never share a run dir -----------------------------------------------------------------

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


def test_the_default_run_dir_of_a_second_taken_gets_a_suffix(tmp_path: Path, cli, monkeypatch) -> None:
    import datetime as dt

    now = dt.datetime.now()
    taken = [now + dt.timedelta(seconds=s) for s in range(-1, 40)]  # every name the run could pick in the next 40 s
    for t in taken:
        (tmp_path / "outputs" / t.strftime("%Y-%m-%d") / t.strftime("%H-%M-%S")).mkdir(parents=True, exist_ok=True)
        (tmp_path / "outputs" / t.strftime("%Y-%m-%d") / t.strftime("%H-%M-%S") / "summary.json").write_text("{}")
    monkeypatch.chdir(tmp_path)  # the default run dir is outputs/<date>/<time> under it
    result = cli.command("train", "trainer.max_epochs=1", "outputs.plot_every=0", *FAST[1:])
    assert result.returncode == 0, result.output
    fresh = [p.parent for p in (tmp_path / "outputs").glob("*/*/metrics.csv")]
    assert len(fresh) == 1 and fresh[0].name.rsplit("_", 1)[-1] == "2", fresh
    assert all((p / "summary.json").read_text() == "{}" for p in (tmp_path / "outputs").glob("*/*")
               if p != fresh[0])


def test_the_default_sweep_dir_of_a_second_taken_gets_a_suffix(tmp_path: Path, cli, monkeypatch) -> None:
    import datetime as dt

    now = dt.datetime.now()
    for s in range(-1, 40):
        t = now + dt.timedelta(seconds=s)
        used = tmp_path / "outputs" / "multirun" / t.strftime("%Y-%m-%d") / t.strftime("%H-%M-%S")
        used.mkdir(parents=True, exist_ok=True)
        (used / "sweep_summary.csv").write_text("job\n")
    monkeypatch.chdir(tmp_path)  # the default sweep dir is outputs/multirun/<date>/<time> under it
    result = cli.command("train", "-m", "trainer.max_epochs=1", "model.latent_dim=3,4", "outputs.plot_every=0",
                         *FAST[1:])
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


# --- a folder that is not a run's is never trained into -------------------------------------------------------------

def test_a_folder_that_holds_files_but_no_run_is_refused_naming_them_and_left_alone(cli, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "reconstructions").mkdir(parents=True)
    for name in ("notes.txt", "train.log", "split.json", "reconstructions/epoch_001.png"):
        (mine / name).write_text(f"the user's {name}")
    before = snapshot(mine)
    for command in ((), ("lr_find",)):
        line = one_line_error(cli.command(*command, f"hydra.run.dir={mine}", *FAST))
        assert f"hydra.run.dir={mine} is not empty and holds no aetrain run (notes.txt, reconstructions/, " \
               "split.json, train.log): a run writes only into a new or empty dir" in line, line
        assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == [
            "notes.txt", "reconstructions", "split.json", "train.log"]


@pytest.mark.parametrize("args", [["hydra.run.dir="], ["-m", "hydra.sweep.dir=", "model.latent_dim=3,4"]],
                         ids=["run", "sweep"])
def test_an_empty_dir_name_is_one_line_and_nothing_goes_into_the_working_dir(tmp_path: Path, cli, monkeypatch,
                                                                            args: list[str]) -> None:
    (tmp_path / "notes.txt").write_text("the working dir of a user whose $RUN_DIR was unset")
    monkeypatch.chdir(tmp_path)
    result = cli.command("train", *args, *FAST, "trainer.max_epochs=1")
    key = next(a for a in args if a.endswith("=")).rstrip("=")
    assert one_line_error(result) == f"aetrain: error: {key}= is empty: name the dir ({key}=DIR), or leave {key} " \
                                     "out for a new dir under outputs/"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# --- an output dir that cannot be created: one line, exit 2; Ctrl-C during start-up leaves nothing ------------------

@pytest.mark.parametrize("where", ["a file", "under /proc", "in a read-only dir (default dir)",
                                   "in a read-only dir (sweep)"])
def test_an_output_dir_that_cannot_be_created_is_one_line(tmp_path: Path, cli, monkeypatch, where: str) -> None:
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
    monkeypatch.chdir(cwd)
    read_only(cwd, where.startswith("in a read-only dir"))
    try:
        before = sorted(cwd.rglob("*"))
        result = cli.command("train", *args)
        line = one_line_error(result)
        assert sorted(cwd.rglob("*")) == before
    finally:
        read_only(cwd, False)
    assert "cannot create" in line, line
    assert ("taken" in line) if where == "a file" else True


@pytest.mark.parametrize("args", [["optimizer.lr=-1"], ["trainer.devices=2", "data=tensor_file",
                                                         "data.path=missing.npy"]], ids=["value", "data, 2 processes"])
def test_a_rejected_run_leaves_no_default_dir_behind(tmp_path: Path, args: list[str]) -> None:
    result = run_subprocess(*FAST, *args, cwd=tmp_path, command=("train",))
    one_line_error(result)
    assert list(tmp_path.iterdir()) == [], sorted(tmp_path.rglob("*"))  # not even an empty outputs/<date>/


@pytest.mark.parametrize(("args", "made"), [
    ([], "outputs/<date>"), (["hydra.run.dir=outputs/x"], "outputs/x"), (["-m", "model.latent_dim=3,4"],
    "outputs/multirun/<date>"), (["-m", "hydra.sweep.dir=outputs"], "outputs"), (["lr_find"], "outputs/lr_find/<date>"),
    (["lr_find", "hydra.run.dir=outputs/x"], "outputs/x"), (["lr_find", "hydra.run.dir=outputs"], "outputs")],
    ids=lambda v: " ".join(v) or "train" if isinstance(v, list) else "")
def test_a_file_named_outputs_in_the_way_is_one_line_naming_it(cli, tmp_path: Path, monkeypatch, args: list[str],
                                                               made: str) -> None:
    import re

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").write_text("a file, not a folder")
    key = "hydra.sweep.dir" if "-m" in args else "hydra.run.dir"
    line = one_line_error(cli.command(*args, *FAST))
    pattern = re.escape(f"aetrain: error: cannot create the output dir {made}: the file outputs is in the way; "
                        f"choose another with {key}=DIR").replace("<date>", r"\d{4}-\d\d-\d\d")
    assert re.fullmatch(pattern, line), line
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"] and (tmp_path / "outputs").is_file()


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line_exit_130_and_leaves_nothing(tmp_path: Path) -> None:
    import signal

    script = Path(sys.executable).with_name("aetrain")  # the installed command, whose entry point is aetrain.__main__'s
    # while Python imports (python -m aetrain, and the command), and once the run dir exists (building the model)
    for wait_for_dir, command in ((False, None), (False, script), (True, None)):
        proc = start(*FAST, cwd=tmp_path) if command is None else \
            subprocess.Popen([str(command), *FAST], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
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



def test_a_ctrl_c_that_lands_in_code_made_from_a_string_still_exits_130(tmp_path: Path) -> None:
    """CPython takes a KeyboardInterrupt that passed through exec() of a string (every dataclass's __init__ and
    jinja2's templates are made so) for an unhandled one, even once the CLI caught it, and would end `python -m
    aetrain` by SIGINT (returncode -2) instead of with 130: here a plugin's import is such a Ctrl-C, every time."""
    (tmp_path / "ctrl_c.py").write_text('exec("raise KeyboardInterrupt")\n')
    result = run_subprocess("plugins=[ctrl_c.py]", *FAST, cwd=tmp_path)
    assert (result.returncode, result.err) == (130, "aetrain: interrupted by SIGINT\n")
    assert not result.run_dir.exists(), "a run dir was left behind"

# --- RunDir and Status from Python (what a fused sweep's members and aetrain.fit will use) ------------------------

def test_allocate_takes_the_name_or_the_next_free_suffix_and_release_removes_only_what_it_made(tmp_path: Path) -> None:
    from aetrain.rundir import RunDir

    base = tmp_path / "outputs" / "day" / "10-00-00"
    first, second = RunDir.allocate(base), RunDir.allocate(base)
    assert (first.path, second.path) == (base, base.with_name("10-00-00_2"))
    (second.path / "metrics.csv").write_text("epoch\n")
    first.release()  # empty: it goes; its parent still holds the second run
    assert not first.path.exists() and second.path.exists()
    second.release()  # holds a file: nothing is removed
    assert (second.path / "metrics.csv").is_file()
    (second.path / "metrics.csv").unlink()
    second.release()  # empty now: it goes, and so do the parents allocate made for it (the first allocate made them)
    assert second.path.exists() is False and (tmp_path / "outputs" / "day").exists()
    third = RunDir.allocate(tmp_path / "fresh" / "a" / "run")
    third.release()
    assert not (tmp_path / "fresh").exists()


def test_what_was_run_is_recorded_as_text_and_read_back(tmp_path: Path) -> None:
    from aetrain.config import Config, VAEConfig, to_json
    from aetrain.rundir import Invocation, RunDir

    run_dir = RunDir(tmp_path / "run")
    run_dir.record(Invocation.of(Config(model=VAEConfig()), ("model.latent_dim=8", "hydra.run.dir='ünï, 日本'")))
    assert run_dir.saved_overrides() == ["model.latent_dim=8", "hydra.run.dir='ünï, 日本'"]
    assert run_dir.config() == Config(model=VAEConfig())
    resumed = run_dir.record(Invocation.of(Config(), ("trainer.max_epochs=400",)))  # a resume keeps the first
    assert resumed == run_dir.path / ".hydra" / "resume-1"
    assert run_dir.saved_overrides() == ["trainer.max_epochs=400"]
    assert run_dir.saved_overrides(latest=False) == ["model.latent_dim=8", "hydra.run.dir='ünï, 日本'"]
    assert run_dir.config() == Config(model=VAEConfig())  # the run's config: the first
    plain = RunDir(tmp_path / "json")
    plain.record(Invocation(json.dumps(json.loads(to_json(Config())))))  # JSON is YAML: its 1e-08 is a number
    assert plain.config() == Config()


def test_status_reads_summaries_old_and_new() -> None:
    from aetrain.rundir import Status

    assert Status.of({}) is None
    assert Status.of({"status": "running", "ended": None}) is Status.RUNNING
    assert Status.of({"status": "ok", "ended": "stopped_early"}) is Status.STOPPED_EARLY
    assert Status.of({"status": "failed", "ended": "interrupted"}) is Status.INTERRUPTED
    assert Status.of({"status": "ok"}) is Status.OK  # written before `ended` existed
    assert Status.of({"status": "failed", "error": "ConfigError: ..."}) is Status.FAILED  # a job that never trained
    assert Status.of({"status": "failed", "ended": "ok"}) is Status.FAILED  # a failure recorded after it ended well
    assert [s.outcome for s in Status] == ["running", "ok", "ok", "failed", "failed", "failed"]
    assert f"{Status.DIVERGED}" == "diverged" and json.dumps({"s": Status.OK}) == '{"s": "ok"}'


def test_a_sweeps_jobs_are_found_up_to_three_levels_down_and_numbered_dirs_without_a_record(tmp_path: Path) -> None:
    from aetrain.rundir import job_dirs

    for job in ("0", "lr=0.1/seed=1", "a/b/c", "a/b/c/d"):  # hydra.sweep.subdir may nest; four levels is too deep
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text("[]\n")
    (tmp_path / "1").mkdir()  # a job that ended before it wrote anything
    (tmp_path / "notes").mkdir()  # neither
    assert job_dirs(tmp_path) == [tmp_path / d for d in ("0", "1", "a/b/c", "lr=0.1/seed=1")]
    assert job_dirs(tmp_path / "missing") == []


def test_resuming_a_sweep_keeps_continues_or_starts_each_job_and_refuses_one_still_training(tmp_path: Path) -> None:
    from aetrain.rundir import CONTINUE, FINISHED, START, RunDir, RunDirInUse, prepare_resume, resuming

    jobs = {name: tmp_path / name for name in ("done", "stopped", "killed", "never")}
    for name, summary in (("done", {"status": "ok", "ended": "stopped_early"}),
                          ("stopped", {"status": "failed", "ended": "interrupted"}),
                          ("killed", {"status": "running", "ended": None})):  # kill -9 in its first epoch
        (jobs[name] / "checkpoints").mkdir(parents=True)
        (jobs[name] / "summary.json").write_text(json.dumps(summary))
        (jobs[name] / "train.log").write_text("the first attempt\n")
    (jobs["stopped"] / "checkpoints" / "last.pt").write_bytes(b"")
    assert [resuming(tmp_path, d) for d in jobs.values()] == [FINISHED, CONTINUE, START, START]
    assert sorted(p.name for p in jobs["killed"].iterdir()) == ["checkpoints", "summary.json", "train.log"]  # looked
    assert [prepare_resume(tmp_path, d) for d in jobs.values()] == [FINISHED, CONTINUE, START, START]
    assert [p.name for p in jobs["killed"].iterdir()] == ["train.log"]  # the attempt cleared, its log kept
    assert sorted(p.name for p in jobs["done"].iterdir()) == ["checkpoints", "summary.json", "train.log"]
    with RunDir(jobs["stopped"]).claimed(), pytest.raises(RunDirInUse) as refused:  # that sweep still runs
        resuming(tmp_path, jobs["stopped"])
    assert str(refused.value).startswith(f"hydra.sweep.dir={tmp_path}: {jobs['stopped']} is in use by another "
                                         "aetrain process (pid ")


def test_a_dir_that_holds_a_run_or_a_range_test_is_refused_naming_it(tmp_path: Path) -> None:
    from aetrain.rundir import RunDir, RunDirTaken

    RunDir(tmp_path).refuse_taken()  # empty: free
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(RunDirTaken, match=r"already holds a run \(checkpoints/last.pt\); continue it with "
                                          r"trainer.resume=.* or choose another hydra.run.dir"):
        RunDir(tmp_path).refuse_taken()
    (tmp_path / "lr_find.csv").write_text("step\n")
    with pytest.raises(RunDirTaken, match=r"already holds a run or a range test \(lr_find.csv\); choose another"):
        RunDir(tmp_path).refuse_taken(what="a run or a range test", resumable=False)

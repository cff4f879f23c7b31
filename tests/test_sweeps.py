"""Sweeps (`aetrain -m`): grids, Optuna, parallel launchers, failed jobs, and the summary at the end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread
from omegaconf import OmegaConf

from aetrain.commands import sweep
from aetrain.rundir import RunDir
from conftest import FAST, run_subprocess

# A second or so per job on the digits; pictures and TensorBoard (slow to import) are tested elsewhere.
TINY = ["trainer.max_epochs=1", "data.batch_size=256", "trainer.device=cpu", "outputs.plot_every=0",
        "outputs.tensorboard=false"]
# `-m` goes last: the fixtures put hydra.run.dir first, and argparse takes one block of overrides


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / sweep.SUMMARY_CSV, newline="") as f:
        return list(csv.DictReader(f))


def job_dirs(sweep_dir: Path) -> list[str]:
    return sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())


def assert_is_png(path: Path) -> None:
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.mark.slow
def test_grid_sweep_runs_every_combination_into_its_own_dir_and_ranks_them(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "grid"
    result = run_subprocess(*TINY, "optimizer.lr=1e-3,1e-2", "trainer.seed=0,1",
                            f"hydra.sweep.dir={sweep_dir}", "-m", cwd=tmp_path)
    assert result.returncode == 0, result.output
    assert job_dirs(sweep_dir) == ["0", "1", "2", "3"]
    for job in range(4):  # everything a single run writes
        for name in ("metrics.csv", "summary.json", "checkpoints/best.pt", "train.log", ".hydra/overrides.yaml"):
            assert (sweep_dir / str(job) / name).is_file(), (job, name)

    rows = summary_rows(sweep_dir)
    assert list(rows[0]) == sweep.COLUMNS
    assert [r["status"] for r in rows] == ["ok"] * 4
    losses = [float(r["best_val_loss"]) for r in rows]
    assert losses == sorted(losses) and len(set(losses)) == 4  # ranked; each seed gives its own numbers
    swept = [dict(o.split("=") for o in r["overrides"].split()) for r in rows]
    assert {(o["optimizer.lr"], o["trainer.seed"]) for o in swept} == {("0.001", "0"), ("0.001", "1"),
                                                                       ("0.01", "0"), ("0.01", "1")}
    for r in rows:
        job = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert float(r["best_val_loss"]) == pytest.approx(job["best_val_loss"])
        assert r["epochs"] == "1" and float(r["wall_time_s"]) > 0 and r["error"] == ""
        assert Path(r["run_dir"]) == (sweep_dir / r["job"]).resolve()
    assert_is_png(sweep_dir / sweep.OBJECTIVE_PNG)
    assert f"sweep {sweep_dir}: 4 ok, 0 failed" in result.out  # the table, plain text off a terminal
    assert "\x1b[" not in result.out


def test_failed_jobs_are_recorded_the_others_finish_and_the_exit_code_is_1(cli, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"  # job 1: a value out of range; job 2: diverges in its first epoch
    result = cli(*TINY, "optimizer=sgd", "optimizer.lr=0.1,-1,1e12,0.3", f"hydra.sweep.dir={sweep_dir}", "-m")
    assert result.returncode == 1, result.output
    rows = summary_rows(sweep_dir)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]  # failures last, by job number
    assert [r["job"] for r in rows[2:]] == ["1", "2"]
    assert float(rows[0]["best_val_loss"]) <= float(rows[1]["best_val_loss"])
    failed, diverged = rows[2:]
    assert failed["error"] == "ConfigError: optimizer.lr=-1.0 is out of range: must be a finite number > 0"
    assert diverged["error"].startswith("DivergenceError: non-finite loss")
    assert json.loads((sweep_dir / "2" / "summary.json").read_text())["steps"] > 0  # what the run wrote is kept
    assert "optimizer.lr=-1" in failed["overrides"] and failed["best_val_loss"] == ""
    job = sweep_dir / "1"  # kept, with what was run and why it failed
    assert json.loads((job / "summary.json").read_text())["status"] == "failed"
    assert "optimizer.lr=-1" in (job / ".hydra/overrides.yaml").read_text()
    assert "job 1 failed: ConfigError" in (job / "train.log").read_text()
    assert "Traceback" not in result.output
    assert "2 ok, 2 failed" in result.out


def test_a_bug_in_one_job_does_not_stop_the_sweep_and_its_traceback_is_logged(cli, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import aetrain.commands.train

    real_run = aetrain.commands.train.run

    def run(cfg: Any, out_dir: Path, **kwargs: Any) -> Any:
        if cfg.model.latent_dim == 3:
            raise RuntimeError("boom\nsecond line")
        return real_run(cfg, out_dir, **kwargs)

    monkeypatch.setattr(aetrain.commands.train, "run", run)  # the CLI looks `run` up when a job starts
    sweep_dir = tmp_path / "sweep"
    result = cli(*TINY, "model.latent_dim=3,4", f"hydra.sweep.dir={sweep_dir}", "-m")
    assert result.returncode == 1
    rows = {r["job"]: r for r in summary_rows(sweep_dir)}
    assert rows["0"]["status"] == "failed" and rows["0"]["error"] == "RuntimeError: boom second line"
    assert rows["1"]["status"] == "ok"
    log = (sweep_dir / "0" / "train.log").read_text()
    assert "Traceback" in log and "RuntimeError: boom" in log


def test_an_interrupted_job_stops_the_sweep_with_its_summary(cli, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import aetrain.commands.train
    from aetrain.errors import Interrupted

    real_run = aetrain.commands.train.run

    def run(cfg: Any, out_dir: Path, **kwargs: Any) -> Any:
        if cfg.model.latent_dim == 3:
            raise Interrupted("stopped by SIGINT", 2)
        return real_run(cfg, out_dir, **kwargs)

    monkeypatch.setattr(aetrain.commands.train, "run", run)
    sweep_dir = tmp_path / "sweep"
    result = cli(*TINY, "model.latent_dim=4,3,5", f"hydra.sweep.dir={sweep_dir}", "-m")
    assert result.returncode == 130, result.output  # 128 + SIGINT, as for a single run
    assert "stopped by SIGINT" in result.err
    assert job_dirs(sweep_dir) == ["0", "1"]  # job 2 never started
    assert [(r["job"], r["status"]) for r in summary_rows(sweep_dir)] == [("0", "ok"), ("1", "failed")]


def test_an_interrupted_sweep_is_finished_by_the_command_it_prints(cli, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex
    import signal

    from aetrain.train.engine import Engine
    from conftest import snapshot

    check = Engine.check_interrupt

    def ctrl_c_in_job_1(self: Engine) -> None:  # in its epoch 2, after epoch 1's last.pt
        if self.parts.cfg.model.latent_dim == 4 and self.state.step == 8:
            self.interrupt.handle(signal.SIGINT)
        check(self)

    monkeypatch.setattr(Engine, "check_interrupt", ctrl_c_in_job_1)
    sweep_dir = tmp_path / "sweep"
    args = [*TINY, "trainer.max_epochs=2", "model.latent_dim=3,4,5,6", f"hydra.sweep.dir={sweep_dir}", "-m"]
    stopped = cli.command(*args)
    monkeypatch.undo()
    assert stopped.returncode == 130, stopped.output
    said, _, command = stopped.err.strip().partition("; resume the sweep with: ")
    assert said.startswith("aetrain: interrupted by SIGINT in epoch 2") and command.endswith(
        f"hydra.sweep.dir={sweep_dir} hydra.launcher.resume=true"), stopped.err
    # job 2: as a process killed in its first epoch leaves it (no last.pt); job 3 never started
    attempt = sweep_dir / "2"
    (attempt / ".hydra").mkdir(parents=True)
    (attempt / ".hydra" / "overrides.yaml").write_text(
        (sweep_dir / "1" / ".hydra" / "overrides.yaml").read_text().replace("latent_dim=4", "latent_dim=5"))
    (attempt / "summary.json").write_text('{"status": "running", "ended": null, "epochs": 0}')
    (attempt / "train.log").write_text("the first attempt, killed\n")
    finished = snapshot(sweep_dir / "0")

    resumed = cli.command(*shlex.split(command)[1:])
    assert resumed.returncode == 0, resumed.output
    assert "job 0 finished before: kept" in resumed.out
    assert snapshot(sweep_dir / "0") == finished  # not trained again, not touched
    for job in ("1", "2", "3"):
        assert [int(r["epoch"]) for r in csv.DictReader(open(sweep_dir / job / "metrics.csv"))] == [1, 2], job
    assert "resuming" in (sweep_dir / "1" / "train.log").read_text()  # continued from its epoch 1
    assert (attempt / "train.log").read_text().startswith("the first attempt, killed\n")  # started again, log kept
    assert sorted((r["job"], r["status"]) for r in summary_rows(sweep_dir)) == [
        ("0", "ok"), ("1", "ok"), ("2", "ok"), ("3", "ok")]


@pytest.mark.parametrize("case", ["no dir named", "no sweep there", "another sweep's jobs", "optuna"])
def test_a_resume_that_cannot_finish_the_sweep_is_one_line_before_any_job_runs(cli, tmp_path: Path,
                                                                              case: str) -> None:
    sweep_dir = tmp_path / "sweep"
    args = [*TINY, "model.latent_dim=3,4", "hydra.launcher.resume=true", "-m"]
    if case != "no dir named":
        args.insert(0, f"hydra.sweep.dir={sweep_dir}")
    if case == "another sweep's jobs":
        (sweep_dir / "0" / ".hydra").mkdir(parents=True)
        (sweep_dir / "0" / ".hydra" / "overrides.yaml").write_text("- model.latent_dim=7\n")
        (sweep_dir / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: ['model.latent_dim=7,8']\n")
    if case == "optuna":
        sweep_dir.mkdir()
        args.insert(0, "hparams_search=optuna")
    before = sorted(tmp_path.rglob("*"))
    result = cli.command(*args)
    assert result.returncode == 2 and result.err.count("\n") == 1, result.output
    expected = {"no dir named": "hydra.launcher.resume=true finishes an interrupted sweep in its dir: name it with "
                                "hydra.sweep.dir=<the sweep's dir>",
                "no sweep there": f"hydra.sweep.dir={sweep_dir} holds no sweep to resume",
                "another sweep's jobs": f"hydra.sweep.dir={sweep_dir} holds a sweep of model.latent_dim=7,8, not of "
                                        "trainer.max_epochs=1 ",
                "optuna": "hydra.launcher.resume=true resumes a grid sweep; an Optuna search proposes new trials"}
    assert expected[case] in result.err, result.err
    assert sorted(tmp_path.rglob("*")) == before


def test_optuna_search_runs_the_asked_number_of_trials(cli, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "optuna"
    result = cli("hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY, f"hydra.sweep.dir={sweep_dir}", "-m")
    assert result.returncode == 0, result.output
    assert job_dirs(sweep_dir) == ["0", "1", "2"]
    rows = summary_rows(sweep_dir)
    assert [r["status"] for r in rows] == ["ok"] * 3
    for key in ("optimizer.lr=", "optimizer.weight_decay=", "model.noise.level="):
        assert all(key in r["overrides"] for r in rows), key
    assert not any("model.latent_dim=" in r["overrides"] for r in rows)  # the widest code would always win
    config = (sweep_dir / rows[0]["job"] / ".hydra/config.yaml").read_text()
    assert "name: denoising_ae" in config  # the preset tunes the denoiser: the noise level matters
    optuna_best = OmegaConf.load(sweep_dir / "optimization_results.yaml")  # Optuna's own report agrees
    assert optuna_best.best_value == pytest.approx(float(rows[0]["best_val_loss"]), rel=1e-6)
    assert "\x1b[" not in result.out  # Optuna's own coloured logger is routed through Hydra's


def test_optuna_trials_that_all_fail_are_recorded_and_the_exit_code_is_1(cli, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "optuna"
    result = cli("hparams_search=optuna", "hydra.sweeper.n_trials=2", "optimizer.lr=-1", *TINY,
                 f"hydra.sweep.dir={sweep_dir}", "-m")
    assert result.returncode == 1, result.output
    rows = summary_rows(sweep_dir)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "every job failed" in result.err and "Traceback" not in result.output


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes_with_their_own_logs(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "joblib"
    result = run_subprocess("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
                            "optimizer.lr=1e-3,-1", f"hydra.sweep.dir={sweep_dir}", "-m", cwd=tmp_path)
    assert result.returncode == 1, result.output  # the failing job fails in its worker, the other finishes
    assert "Joblib.Parallel" in result.output
    rows = {r["job"]: r for r in summary_rows(sweep_dir)}
    assert rows["0"]["status"] == "ok" and rows["1"]["status"] == "failed"
    assert "epoch 1/1" in (sweep_dir / "0" / "train.log").read_text()
    assert "job 1 failed" in (sweep_dir / "1" / "train.log").read_text()


@pytest.mark.parametrize("args", [["model=dense_ae,foo"], ["optimizer.lr=1e-3,abc"]], ids=" ".join)
def test_a_typo_in_a_sweep_is_one_line_exit_2_before_any_job_runs(cli, tmp_path: Path, args: list[str]) -> None:
    sweep_dir = tmp_path / "sweep"
    result = cli(*TINY, *args, f"hydra.sweep.dir={sweep_dir}", "-m")
    assert result.returncode == 2
    assert result.err.startswith("aetrain: error: ") and result.err.count("\n") == 1, result.err
    assert not sweep_dir.exists() or job_dirs(sweep_dir) == []


def test_a_second_sweep_into_the_same_dir_is_refused(cli, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "0" / ".hydra").mkdir(parents=True)
    (sweep_dir / "0" / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.1\n")
    before = sorted(p.name for p in sweep_dir.rglob("*"))
    result = cli(*TINY, "optimizer.lr=1e-3", f"hydra.sweep.dir={sweep_dir}", "-m")
    assert result.returncode == 2
    assert result.err == f"aetrain: error: hydra.sweep.dir={sweep_dir} already holds a sweep (0/); " \
                         f"choose another hydra.sweep.dir\n"
    assert sorted(p.name for p in sweep_dir.rglob("*")) == before


def test_slurm_preset_composes_with_the_submitit_launcher(cli) -> None:
    result = cli("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
                 "--cfg", "hydra")
    assert result.returncode == 0, result.err
    for line in ["_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
                 "partition: gpu", "timeout_min: 30", "gpus_per_node: 1", "hydra/launcher: slurm"]:
        assert line in result.out, line


def test_a_typo_in_a_launcher_key_is_one_line(cli) -> None:
    result = cli("hydra/launcher=slurm", "hydra.launcher.partitoin=gpu", "--cfg", "hydra")
    assert result.returncode == 2 and result.err.count("\n") == 1 and "partitoin" in result.err


# --- the summary, from job dirs written by hand ------------------------------------------------

def make_job(sweep_dir: Path, job: int, *, summary: dict | None = None, metrics: list[tuple[float, float]] = (),
             overrides: tuple[str, ...] = ()) -> None:
    run_dir = sweep_dir / str(job)
    run_dir.mkdir(parents=True)
    if overrides:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    if metrics:
        lines = ["epoch,step,train/loss,val/loss,epoch_time_s"]
        lines += [f"{i + 1},{i + 1},0.5,{val},{secs}" for i, (val, secs) in enumerate(metrics)]
        (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_summary_ranks_by_objective_puts_failures_last_and_reads_old_runs(tmp_path: Path) -> None:
    d = tmp_path
    make_job(d, 0, overrides=("optimizer.lr=0.1",),
             summary={"status": "ok", "best_val_loss": 0.5, "epochs": 3, "wall_time_s": 2.0})
    make_job(d, 1, overrides=("optimizer.lr=-1",), summary={"status": "failed", "error": "ConfigError: lr\nmore"})
    make_job(d, 2, overrides=("optimizer.lr=0.01",), metrics=[(0.3, 0.5), (0.2, 1.0), (0.25, 0.25)])  # no summary.json
    make_job(d, 3, overrides=("optimizer.lr=0.02",), summary={"status": "running", "best_val_loss": 0.01},
             metrics=[(0.01, 1.0)])  # killed mid-run: not ranked, however good
    make_job(d, 4)  # ended before it wrote anything
    make_job(d, 5, overrides=("optimizer.lr=0.001",),
             summary={"status": "ok", "best_val_loss": 0.1, "epochs": 2, "wall_time_s": 1.0})
    make_job(d, 6, overrides=("optimizer.lr=1",), summary={"status": "ok", "best_val_loss": None, "epochs": 2})

    results = sweep.summarize(d)
    assert [r.job for r in results] == [5, 2, 0, 1, 3, 4, 6]
    rows = summary_rows(d)
    assert [r["job"] for r in rows] == ["5", "2", "0", "1", "3", "4", "6"]
    assert rows[1] == {"job": "2", "overrides": "optimizer.lr=0.01", "status": "ok", "error": "",
                       "best_val_loss": "0.2", "epochs": "3", "wall_time_s": "1.75", "run_dir": str(d.resolve() / "2"),
                       "group": ""}  # not fused
    assert rows[3]["error"] == "ConfigError: lr more"  # one line
    assert rows[4]["status"] == "failed" and rows[4]["error"].startswith("did not finish")
    assert rows[5]["status"] == "failed" and rows[5]["error"].startswith("no result")
    assert rows[6]["status"] == "ok" and rows[6]["best_val_loss"] == ""
    assert_is_png(d / sweep.OBJECTIVE_PNG)


def test_record_failure_keeps_what_the_run_wrote(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"status": "running", "epochs": 4, "best_val_loss": 0.2}))
    RunDir(tmp_path).record_failure("DivergenceError: loss is nan")
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data == {"status": "failed", "error": "DivergenceError: loss is nan", "epochs": 4, "best_val_loss": 0.2}
    result = sweep.read_job(tmp_path)
    assert not result.ok and result.epochs == 4 and math.isclose(result.best_val_loss, 0.2)


def test_summary_of_a_sweep_without_jobs_writes_nothing(tmp_path: Path) -> None:
    assert sweep.summarize(tmp_path) == []
    assert not (tmp_path / sweep.SUMMARY_CSV).exists()


def test_a_sweep_across_model_families_runs_each_through_the_same_engine(cli, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "families"
    result = cli(*TINY, "model=dense_ae,vae", f"hydra.sweep.dir={sweep_dir}", "-m")
    assert result.returncode == 0, result.output
    rows = {r["overrides"].split("model=")[1].split()[0]: r for r in summary_rows(sweep_dir)}
    assert set(rows) == {"dense_ae", "vae"} and all(r["status"] == "ok" for r in rows.values())
    vae_columns = (Path(rows["vae"]["run_dir"]) / "metrics.csv").read_text().splitlines()[0]
    assert "train/kl" in vae_columns and "val/kl" in vae_columns


# --- aetrain sweep <dir>: the summary again, also of a sweep whose sweeper was killed -------------------

def test_aetrain_sweep_summarises_a_sweep_whose_sweeper_was_killed(cli, tmp_path: Path) -> None:
    d = tmp_path / "sweep"
    d.mkdir()
    (d / ".aetrain-sweep").write_text("a sweep started by pid 4242\n")  # the killed sweeper's marker, no summary
    make_job(d, 0, overrides=("optimizer.lr=0.1",),
             summary={"status": "ok", "ended": "ok", "best_val_loss": 0.5, "epochs": 3, "wall_time_s": 2.0})
    make_job(d, 1, overrides=("optimizer.lr=0.01",), summary={"status": "running", "best_val_loss": 0.2, "epochs": 1},
             metrics=[(0.2, 1.0)])  # its process was killed with the sweeper
    result = cli.command("sweep", str(d))
    assert result.returncode == 0, result.output
    rows = summary_rows(d)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "failed")]
    assert rows[1]["error"].startswith("did not finish")
    assert f"sweep {d}: 1 ok, 1 failed" in result.out and "did not finish" in result.out
    assert_is_png(d / sweep.OBJECTIVE_PNG) and (d / sweep.CURVES_PNG).is_file()


@pytest.mark.parametrize("where, message", [("missing", "no such sweep dir"), ("empty", "not a sweep dir"),
                                            ("a file", "not a directory; give the sweep dir")])
def test_aetrain_sweep_on_no_sweep_is_one_line_and_writes_nothing(cli, tmp_path: Path, where: str,
                                                                   message: str) -> None:
    target = tmp_path / where
    if where == "empty":
        target.mkdir()
    elif where == "a file":
        target.write_text("not a sweep\n")
    result = cli.command("sweep", str(target))
    assert result.returncode == 2 and result.err.count("\n") == 1 and message in result.err, result.err
    assert not (tmp_path / where / sweep.SUMMARY_CSV).exists() if target.is_dir() else True


# --- the Optuna preset does not search the code width ---------------------------------------------------------------

def test_the_optuna_preset_keeps_the_code_width_out_of_its_search(cli) -> None:
    result = cli("hparams_search=optuna", "--cfg", "hydra")
    assert result.returncode == 0, result.err
    import re

    params = re.search(r"\n    params:\n((?:      .*\n)+)", result.out).group(1)  # hydra.sweeper.params
    assert "optimizer.lr:" in params and "model.latent_dim" not in params


# --- a sweep's validation curves in one picture ---------------------------------------------------------------------

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
    import numpy as np
    from matplotlib.image import imread

    rgb = (imread(path)[..., :3] * 255).astype(int).reshape(-1, 3)
    saturated = rgb[(rgb.max(1) - rgb.min(1)) > 80]
    colours, counts = np.unique(saturated // 16, axis=0, return_counts=True)
    return {tuple(c) for c, n in zip(colours, counts) if n > 40}


def test_a_sweep_draws_every_jobs_validation_curve_in_one_picture_named_by_what_varies(tmp_path: Path) -> None:
    from aetrain.commands import sweep

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

    from aetrain.commands import sweep

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
def test_a_real_sweep_writes_its_curves_picture(tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # hydra.sweep.dir=sweep is under it
    result = cli.command("train", "-m", "hydra.sweep.dir=sweep", "model.latent_dim=3,6", "trainer.max_epochs=3",
                         "outputs.plot_every=0", "outputs.tensorboard=false", *FAST[1:])
    assert result.returncode == 0, result.output
    assert (tmp_path / "sweep" / "sweep_curves.png").is_file() and "sweep_curves.png" in result.out

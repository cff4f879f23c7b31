"""Data-parallel training (DDP): several processes train one model as one process would, write one run,
agree on every decision, and end together when one of them fails.

The fast tests check the pieces in this process (the sharded batches and their gradient weights,
the validation split's shares, the checksums, the resume rules, the command-line checks). The slow
ones run real processes on the CPU (gloo) through `torchrun` and through `aetrain trainer.devices=2`;
faults are injected by tests/ddp_hooks/sitecustomize.py, which the tests put on PYTHONPATH.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import aetrain
from aetrain import checkpoint as checkpoints
from aetrain import launch
from aetrain.commands.train import run
from aetrain.config import DataConfig, TrainerConfig
from aetrain.data import build_data
from aetrain.data.batches import BatchPlan
from aetrain.errors import CheckpointError, DataError, Interrupted, ProcessLost, ReplicaMismatch
from aetrain.train import checkpoint, distributed
from aetrain.train.engine import accumulation_windows
from conftest import FAST, assert_same_run, digits_config, metrics_rows, without_timing

CPU = torch.device("cpu")
HOOKS = Path(__file__).parent / "ddp_hooks"


# --- the pieces, in this process ----------------------------------------------------------------

@pytest.mark.parametrize(("num_samples", "batch_size", "world_size"), [(1438, 32, 2), (103, 10, 3), (65, 16, 2),
                                                                       (1000, 7, 4), (70, 16, 2)])
def test_the_processes_shares_make_up_the_single_process_batches(num_samples: int, batch_size: int,
                                                                 world_size: int) -> None:
    single = BatchPlan(num_samples, batch_size * world_size, seed=3)
    shares = [BatchPlan(num_samples, batch_size, seed=3, rank=r, world_size=world_size) for r in range(world_size)]
    assert len({len(p) for p in shares}) == 1  # every process takes as many steps
    rest = num_samples % (batch_size * world_size)
    # the single process's batches, but a trailing one with fewer than 2 samples per process (on every process)
    assert shares[0].global_sizes == (single.sizes[:-1] if 2 <= rest < 2 * world_size else single.sizes)
    for epoch in (0, 5):
        together = [torch.cat(batches) for batches in zip(*(p.epoch(epoch) for p in shares))]
        for mine, theirs in zip(together, single.epoch(epoch)):
            assert torch.equal(mine, theirs)
    assert all(n >= 2 for p in shares for n in p.sizes)


def test_too_few_samples_for_the_processes_is_a_data_error() -> None:
    with pytest.raises(DataError, match="too few for 2 processes"):
        BatchPlan(3, 4, seed=0, world_size=2)


def test_gradient_weights_make_the_processes_average_the_gradient_of_the_whole_window() -> None:
    """What DDP computes (the mean over processes of each one's weighted micro-batch gradients) equals
    the gradient of one batch holding every sample of the window: also for the short, unevenly split
    last batch (95 samples at 2 x 32 with accumulation 2: windows [64, 31] -> shares 32+16 and 32+15)."""
    torch.manual_seed(0)
    x, w = torch.randn(95, 5), torch.randn(5, requires_grad=True)
    loss = lambda idx: ((x[idx] @ w - 1.0) ** 2).mean()  # noqa: E731  a mean over the batch, like every objective

    def gradient(weights: list[float], batches: list[torch.Tensor]) -> torch.Tensor:
        w.grad = None
        for weight, idx in zip(weights, batches):
            (loss(idx) * weight).backward()
        return w.grad.clone()

    processes = []
    for rank in range(2):
        plan = BatchPlan(95, 32, seed=1, rank=rank, world_size=2)
        windows = accumulation_windows(plan.sizes, 2, global_sizes=plan.global_sizes, world_size=2)
        assert len(windows) == 1
        processes.append(gradient(windows[0], plan.epoch(0)))
    whole = gradient([1.0], [BatchPlan(95, 32, seed=1, rank=0, world_size=2).order(0)])
    torch.testing.assert_close((processes[0] + processes[1]) / 2, whole)  # DDP's average
    assert accumulation_windows([32, 16], 2, global_sizes=[64, 31], world_size=2) == [[64 / 95, 32 / 95]]


def test_the_processes_validate_shares_that_add_up_to_the_split() -> None:
    whole = build_data(DataConfig(), CPU, seed=0)
    shares = [torch.cat(list(build_data(DataConfig(), CPU, seed=0, rank=r, world_size=3).val_batches()))
              for r in range(3)]
    assert torch.equal(torch.cat(shares), torch.cat(list(whole.val_batches())))
    assert {len(s) for s in shares} <= {len(whole.val) // 3, len(whole.val) // 3 + 1}


def test_checksums_see_a_change_of_one_float_step_in_one_weight() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    names, before = distributed.checksums(model)
    assert names == list(model.state_dict())
    twin = copy.deepcopy(model)
    assert torch.equal(distributed.checksums(twin)[1], before)
    with torch.no_grad():
        w = twin[0].weight.view(-1)
        w[5] = torch.nextafter(w[5], torch.tensor(10.0))
    differs = (distributed.checksums(twin)[1] != before).nonzero().flatten().tolist()
    assert [names[i] for i in differs] == ["0.weight"]


def test_a_checkpoint_continues_with_another_number_of_processes_only_at_an_epoch_boundary(tmp_path: Path) -> None:
    cfg = digits_config(trainer=TrainerConfig(max_epochs=1))
    run(cfg, tmp_path / "a")
    ckpt = checkpoints.load(tmp_path / "a")
    spec = build_data(cfg.data, CPU, seed=0).spec
    boundary = {**ckpt, "world_size": 2}  # as if two processes had written it
    longer = copy.deepcopy(cfg)
    longer.trainer.max_epochs = 2
    checkpoint.check_resumable(longer, boundary, spec, per_step_schedule=False, world_size=1)  # fine
    checkpoint.check_resumable(longer, boundary, spec, per_step_schedule=False, world_size=3)  # fine
    with pytest.raises(CheckpointError, match="planned over its optimizer steps"):
        checkpoint.check_resumable(cfg, boundary, spec, per_step_schedule=True, world_size=1)
    mid = {**boundary, "state": {**ckpt["state"], "epoch": 0, "step_in_epoch": 3}}
    with pytest.raises(CheckpointError, match=r"middle of epoch 1 by 2 processes; resume it with 2 "
                                              r"\(trainer.devices=2\)"):
        checkpoint.check_resumable(cfg, mid, spec, per_step_schedule=False, world_size=1)
    checkpoint.check_resumable(cfg, mid, spec, per_step_schedule=True, world_size=2)  # the same processes: fine


@pytest.mark.parametrize(("args", "message"), [
    (["trainer.devices=0"], "trainer.devices=0 is out of range: must be >= 1, or -1"),
    (["trainer.devices=-1", "trainer.device=cpu"], "trainer.devices=-1 starts one process per visible GPU, and "
                                                    "this run has none"),
    (["trainer.ddp_timeout_s=0"], "trainer.ddp_timeout_s=0.0 is out of range"),
    (["trainer.replica_check_every_n_steps=0"], "trainer.replica_check_every_n_steps=0 is out of range"),
])
def test_bad_ddp_settings_are_one_line_and_nothing_is_written(cli, args: list[str], message: str) -> None:
    result = cli("trainer.device=cpu", *args)
    assert result.returncode == 2 and result.err.count("\n") == 1 and message in result.err, result.err
    assert not result.run_dir.exists()


def test_a_sweep_under_a_launcher_is_refused_in_one_line(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli.command("-m", "model.latent_dim=4,8")
    assert result.returncode == 2
    assert result.err == ("aetrain: error: -m under a launcher: every process would run the whole sweep; let each job "
                          "start its own processes instead: aetrain -m trainer.devices=N ...\n")


def test_what_every_process_raised_alike_is_reported_by_rank_0_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    alike = [Interrupted("stopped", signal.SIGTERM), ReplicaMismatch("differ"),
             launch.everywhere(DataError("missing"))]
    own = [ProcessLost("lost contact"), DataError("a file of this process's share is broken")]
    assert all(launch.reported_here(e) for e in alike + own)  # a single process reports everything
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not any(launch.reported_here(e) for e in alike)
    assert all(launch.reported_here(e) for e in own)


# --- real processes ------------------------------------------------------------------------------

ARGS = ["trainer.device=cpu", "trainer.max_epochs=3", "outputs.render_budget=0"]  # pictures at the first and last epoch


def env(**hooks: str) -> dict[str, str]:
    """The test's environment, with the fault hooks importable (and armed by `hooks`, if any)."""
    paths = [str(HOOKS), os.environ.get("PYTHONPATH", "")]
    extra = {"AETRAIN_TEST_HOOKS": ",".join(f"{k}={v}" for k, v in hooks.items())} if hooks else {}
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra}


def torchrun(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "-m", "aetrain", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env())


def aetrain_cli(*args: str, cwd: Path, timeout: float = 600, **hooks: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aetrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**env(**hooks), "AETRAIN_TEST_HOOKS_DIR": str(cwd)})


def aetrain_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("aetrain:")]


def files(run_dir: Path) -> list[str]:
    """The run dir's files; TensorBoard's event files (named by time and process id) as `<dir>/events`."""
    names = (p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file())
    return sorted((p.parent / "events").as_posix() if p.name.startswith("events.") else p.as_posix() for p in names)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two processes at batch 32 (torchrun, in an otherwise empty dir, choosing their own run dir) and one
    process at batch 64: the same seed, 3 epochs on the digits."""
    ddp_cwd, single = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("single") / "run"
    ddp = torchrun(2, *ARGS, "data.batch_size=32", cwd=ddp_cwd)
    plain = aetrain_cli(*ARGS, "data.batch_size=64", f"hydra.run.dir={single}", cwd=single.parent)
    assert ddp.returncode == 0, ddp.stderr
    assert plain.returncode == 0, plain.stderr
    dirs = [p for p in (ddp_cwd / "outputs").rglob("*") if p.is_dir() and (p / "metrics.csv").exists()]
    return {"ddp": ddp, "cwd": ddp_cwd, "dirs": dirs, "single": single}


@pytest.mark.slow
def test_two_processes_at_batch_32_match_one_process_at_batch_64(pair: dict) -> None:
    ddp_dir, single = pair["dirs"][0], pair["single"]
    a, b = metrics_rows(ddp_dir), metrics_rows(single)
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["23", "46", "69"]
    for ra, rb in zip(a, b):
        for key in ra:
            if key.startswith(("train/", "val/")):
                assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-9), (ra["epoch"], key)
    wa, wb = (torch.load(d / "checkpoints/last.pt", weights_only=True)["model"] for d in (ddp_dir, single))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_ddp_run_writes_one_run_dir_one_set_of_files_and_one_console(pair: dict) -> None:
    assert len(pair["dirs"]) == 1  # both processes in one dir: rank 0's
    ddp_dir = pair["dirs"][0]
    assert {p.relative_to(pair["cwd"]).parts[0] for p in pair["cwd"].iterdir()} == {"outputs"}
    assert files(ddp_dir) == files(pair["single"])  # .hydra/, checkpoints, metrics, pictures, one event file, ...
    out, log = pair["ddp"].stdout, (ddp_dir / "train.log").read_text()
    for text in (out, log):
        assert text.count("aetrain: dense_ae on digits for 3 epochs") == 1
        assert "ddp     2 processes (2 on this machine), DistributedDataParallel over gloo; global batch 64 " \
               "(32 per process)" in text
        assert re.findall(r"epoch (\d/3)  train", text) == ["1/3", "2/3", "3/3"]
    assert not aetrain_lines(pair["ddp"].stderr)


@pytest.mark.slow
def test_a_ddp_checkpoint_loads_as_a_model_and_continues_in_one_process(pair: dict, tmp_path: Path) -> None:
    ddp_dir = pair["dirs"][0]
    ckpt = torch.load(ddp_dir / "checkpoints/last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    model = aetrain.load_model(ddp_dir)
    assert model.reconstruct(torch.rand(4, 1, 8, 8)).shape == (4, 1, 8, 8)
    more = aetrain_cli(f"trainer.resume={ddp_dir}", f"hydra.run.dir={tmp_path / 'more'}", "trainer.max_epochs=4",
                       cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    rows = without_timing(metrics_rows(tmp_path / "more"))
    assert len(rows) == 4 and rows[:3] == without_timing(metrics_rows(ddp_dir))


@pytest.mark.slow
def test_sigterm_to_the_launcher_saves_once_mid_epoch_and_two_processes_resume_exactly(pair: dict,
                                                                                        tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # rank 0 sends SIGTERM to `aetrain trainer.devices=2` (the launcher) at step 5 of epoch 2
    stopped = aetrain_cli(*ARGS, "data.batch_size=32", "trainer.devices=2", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                          term_launcher="0@2.5")
    assert stopped.returncode == 143, stopped.stderr
    lines = aetrain_lines(stopped.stderr)
    assert len(lines) == 1 and lines[0].startswith("aetrain: interrupted by SIGTERM in epoch 2 "), stopped.stderr
    assert lines[0].endswith(f"resume with: aetrain trainer.resume={run_dir}")
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["state"]
    assert state["epoch"] == 1 and state["step_in_epoch"] > 0
    resumed = aetrain_cli(f"trainer.resume={run_dir}", cwd=tmp_path)  # its saved overrides: trainer.devices=2
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "2 processes" in resumed.stdout
    assert_same_run(pair["dirs"][0], run_dir)


@pytest.mark.slow
def test_a_killed_process_ends_the_other_in_a_bounded_time_and_last_pt_resumes(pair: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # rank 1 kills itself (SIGKILL) at step 5 of epoch 2; last.pt holds epoch 1
    failed = aetrain_cli(*ARGS, "data.batch_size=32", "trainer.devices=2", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                         kill="1@2.5")
    ended = time.time()
    assert failed.returncode == 1, failed.stderr
    assert ended - float((tmp_path / "killed_at").read_text()) < 60
    lines = aetrain_lines(failed.stderr)
    assert len(lines) == 1 and lines[0].startswith("aetrain: error: lost contact with the other processes"), lines
    assert f"resume with: aetrain trainer.resume={run_dir}" in lines[0]
    assert torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["state"]["epoch"] == 1
    resumed = aetrain_cli(f"trainer.resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(pair["dirs"][0], run_dir)


@pytest.mark.slow
def test_a_hung_process_ends_the_run_after_the_collective_timeout(tmp_path: Path) -> None:
    """Rank 1 stops responding (and ignores SIGTERM): rank 0 gives up after trainer.ddp_timeout_s, and the
    launcher, seeing it end, kills the hung one after its 30 s grace period."""
    result = aetrain_cli(*ARGS, "data.batch_size=32", "trainer.devices=2", "trainer.ddp_timeout_s=5",
                         f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, hang="1@2.5")
    ended = time.time()
    assert result.returncode == 1, result.stderr
    assert ended - float((tmp_path / "hung_at").read_text()) < 5 + 30 + 25  # the timeout, the grace period, slack
    lines = aetrain_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("aetrain: error: lost contact with the other processes"), lines


@pytest.mark.slow
def test_a_perturbed_replica_is_caught_by_the_replica_check(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # rank 1 adds 1e-3 to one weight after step 3; the check runs every 2 steps
    result = aetrain_cli(*ARGS, "trainer.devices=2", "trainer.replica_check_every_n_steps=2",
                         f"hydra.run.dir={run_dir}", cwd=tmp_path, perturb="1@3")
    assert result.returncode == 1, result.stderr
    lines = aetrain_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aetrain: error: the processes' models differ at step 4: encoder.1.weight on rank 1 "
                               "is not rank 0's (replica check)")
    assert not (run_dir / "checkpoints/last.pt").exists()


@pytest.mark.slow
def test_one_process_under_torchrun_gives_the_plain_run_bit_for_bit(tmp_path: Path, finished: Path) -> None:
    one = torchrun(1, *FAST, "outputs.plot_every=0", "outputs.tensorboard=false", f"hydra.run.dir={tmp_path / 'one'}",
                   cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert "DistributedDataParallel over gloo" in one.stdout
    assert_same_run(tmp_path / "one", finished)  # the same command line, trained plainly


@pytest.mark.slow
def test_batch_norm_on_several_cpu_processes_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    result = aetrain_cli("trainer.device=cpu", "trainer.devices=2", "model.batch_norm=true",
                         f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert aetrain_lines(result.stderr) == [
        "aetrain: error: model.batch_norm=true with several processes needs CUDA: batch norm is synchronized across "
        "processes by torch's SyncBatchNorm, which has no CPU kernels; train on GPUs, in one process, or without batch "
        "norm"]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("launch", [["trainer.devices=2"],
                                    ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2"]],
                         ids=["devices", "slurm_tasks"])
def test_each_job_of_a_sweep_can_be_a_ddp_run(tmp_path: Path, launch: list[str]) -> None:
    """`-m` with trainer.devices=2 (each job launches two processes) and with the submitit launcher's
    tasks_per_node=2 (each SLURM job's two tasks are the processes; here run locally by submitit)."""
    sweep_dir = tmp_path / "sweep"
    result = aetrain_cli("-m", *launch, f"hydra.sweep.dir={sweep_dir}", "trainer.device=cpu", "trainer.max_epochs=2",
                         "outputs.plot_every=0", "model.latent_dim=4,8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 ok, 0 failed" in result.stdout
    for job in ("0", "1"):
        log = (sweep_dir / job / "train.log").read_text()
        assert log.count("ddp     2 processes") == 1 and log.count("epoch 2/2") == 1
        assert len(metrics_rows(sweep_dir / job)) == 2
        assert f"num: {job}" in (sweep_dir / job / ".hydra/hydra.yaml").read_text()

"""`aetrain lr_find`: the learning-rate range test, with the same overrides as training."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from aetrain.commands.lr_find import SKIP_BEGIN, centered_average, suggest
from conftest import metrics_rows, run_subprocess

CPU = "trainer.device=cpu"


def suggested(out: str) -> float:
    found = re.search(r"suggested optimizer\.lr=([0-9.e-]+)", out)
    assert found, out
    return float(found.group(1))


def test_lr_find_on_the_default_model_suggests_a_rate_near_the_default(tmp_path: Path) -> None:
    """Run as a user would, without hydra.run.dir: the files go to outputs/lr_find/<date>/<time>/."""
    result = run_subprocess(CPU, cwd=tmp_path, command=("lr_find",))
    assert result.returncode == 0, result.err
    lr = suggested(result.out)
    assert 1e-4 <= lr <= 1e-2  # within 10x of the default 1e-3
    (out_dir,) = tmp_path.glob("outputs/lr_find/*/*")
    saved = json.loads((out_dir / "lr_find.json").read_text())
    assert math.isclose(saved["suggested_lr"], lr, rel_tol=0.05) and saved["model"] == "dense_ae"
    with open(out_dir / "lr_find.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-7) and all(b > a for a, b in zip(lrs, lrs[1:]))  # rising exponentially
    assert len(rows) <= 100 and saved["steps"] == len(rows)
    assert (out_dir / "lr_find.png").stat().st_size > 10_000
    assert (out_dir / ".hydra" / "config.yaml").is_file()
    assert str(out_dir.relative_to(tmp_path) / "lr_find.png") in result.out  # where the plot is, as typed


def test_lr_find_takes_the_training_overrides_and_its_own_keys(cli, tmp_path: Path) -> None:
    out_dir = tmp_path / "find"
    result = cli.command("lr_find", CPU, "model=conv_ae", "optimizer=sgd", "data.batch_size=32",
                         "lr_find.num_steps=30", "lr_find.max_lr=10", f"hydra.run.dir={out_dir}")
    assert result.returncode == 0, result.output
    saved = json.loads((out_dir / "lr_find.json").read_text())
    assert (saved["model"], saved["optimizer"], saved["settings"]["num_steps"]) == ("conv_ae", "sgd", 30)
    assert saved["steps"] <= 30


@pytest.mark.parametrize("args, message", [
    (["lr_find.num_steps=5"], "lr_find.num_steps=5 is out of range: must be >= 20"),
    (["lr_find.max_lr=1e-9"], "lr_find.max_lr=1e-09 is out of range"),
    (["lr_find.warmup=3"], "lr_find.warmup: unknown key"),
    (["model=foo"], "model=foo is not one of"),
    (["optimizer.lr=-1"], "optimizer.lr=-1.0 is out of range"),
    (["-m"], "takes overrides (key=value), not -m"),
    (["outputs/run"], "'outputs/run' is not one"),
])
def test_lr_find_mistakes_are_one_line_errors_that_leave_nothing(cli, tmp_path: Path, args: list[str],
                                                                 message: str) -> None:
    result = cli.command("lr_find", CPU, f"hydra.run.dir={tmp_path / 'find'}", *args)
    assert result.returncode == 2, result.output
    assert result.err.startswith("aetrain: error: ") and message in result.err and result.err.count("\n") == 1
    assert not (tmp_path / "find").exists()


@pytest.mark.parametrize("held", ["lr_find.csv", ".hydra/config.yaml"], ids=["range_test", "training_run"])
def test_lr_find_refuses_a_directory_that_holds_a_run_or_a_range_test(cli, tmp_path: Path, held: str) -> None:
    out_dir = tmp_path / "find"
    (out_dir / held).parent.mkdir(parents=True)
    (out_dir / held).write_text("keep me\n")
    result = cli.command("lr_find", CPU, f"hydra.run.dir={out_dir}", "lr_find.num_steps=20")
    assert result.returncode == 2 and f"already holds a run or a range test ({held})" in result.err
    assert (out_dir / held).read_text() == "keep me\n"


def test_the_suggestion_is_where_the_loss_falls_fastest_before_its_lowest_point() -> None:
    lrs = np.geomspace(1e-6, 1.0, 100)
    # a loss that is flat, falls fastest around 1e-3, flattens, spikes at 0.2 and falls back from the spike
    loss = 1.0 - 0.8 / (1 + np.exp(-3 * (np.log10(lrs) + 3)))
    loss = loss + np.where((lrs > 0.2) & (lrs < 0.5), 3.0, 0.0)
    noisy = loss + np.random.default_rng(0).normal(0, 0.02, len(lrs))  # step-to-step noise the average removes
    assert suggest(lrs.tolist(), noisy.tolist())[0] == pytest.approx(1e-3, rel=0.3)  # not the fall after the spike
    assert suggest(lrs[: SKIP_BEGIN + 2].tolist(), loss[: SKIP_BEGIN + 2].tolist())[0] is None  # too few steps
    flat, why = suggest(lrs.tolist(), (1 + np.random.default_rng(1).normal(0, 0.02, len(lrs))).tolist())
    assert flat is None and why == "the loss did not fall by 5% from where it started"


def test_a_range_where_the_loss_does_not_fall_gives_no_suggestion_in_one_line(cli, tmp_path: Path) -> None:
    result = cli.command("lr_find", CPU, "optimizer=sgd", "lr_find.min_lr=1e3", "lr_find.max_lr=1e6",
                         "lr_find.num_steps=20", f"hydra.run.dir={tmp_path / 'find'}")
    assert result.returncode == 1, result.output
    assert result.err.startswith("aetrain: lr_find: no suggestion: the loss did not fall by 5% from where it "
                                 "started over ") and \
        result.err.count("\n") == 1, result.err
    assert json.loads((tmp_path / "find" / "lr_find.json").read_text())["suggested_lr"] is None
    assert (tmp_path / "find" / "lr_find.png").is_file()  # the curve shows what happened


@pytest.mark.slow
def test_the_suggested_rate_trains_the_default_model_at_least_as_well_as_the_default(cli, shared,
                                                                                     tmp_path: Path) -> None:
    found = cli.command("lr_find", CPU, f"hydra.run.dir={tmp_path / 'find'}")
    assert found.returncode == 0, found.output
    lr = suggested(found.out)
    assert 1e-4 <= lr <= 1e-2
    default = shared("model=dense_ae")  # the default run, shared with test_doctor and test_eval
    tuned = cli(CPU, "outputs.plot_every=0", "outputs.tensorboard=false", f"optimizer.lr={lr}",
                run_dir=tmp_path / "tuned")
    assert tuned.returncode == 0
    best = {name: min(float(r["val/loss"]) for r in metrics_rows(run_dir))
            for name, run_dir in (("default", default), ("tuned", tuned.run_dir))}
    assert best["tuned"] <= best["default"], best


def test_lr_find_into_a_dir_another_process_is_using_is_refused(cli, tmp_path: Path) -> None:
    from aetrain.rundir import RunDir

    out_dir = tmp_path / "find"
    with RunDir(out_dir).claimed():  # what a training run or a range test holds while it writes there
        result = cli.command("lr_find", CPU, f"hydra.run.dir={out_dir}", "lr_find.num_steps=20")
    assert result.returncode == 2 and "is in use by another aetrain process" in result.err, result.output
    assert result.err.count("\n") == 1 and not out_dir.exists()  # the holder's dir, left as the holder leaves it


def test_the_range_test_runs_on_the_engine_and_ends_mid_epoch_after_its_steps(tmp_path: Path) -> None:
    """The digits at batch 128 take 9 steps an epoch: 20 steps end in the third epoch, at the 20th rate."""
    from aetrain.commands.lr_find import run
    from aetrain.config import LRFindConfig
    from conftest import digits_config

    result = run(digits_config(), LRFindConfig(num_steps=20), tmp_path)
    assert len(result.losses) == 20 and not result.stopped_early and all(math.isfinite(v) for v in result.losses)
    assert result.lrs == np.geomspace(1e-7, 1.0, 20).tolist()
    assert {p.name for p in tmp_path.iterdir()} == {"lr_find.csv", "lr_find.png", "lr_find.json"}  # no checkpoints


def test_a_test_shorter_than_the_averaging_window_gives_a_reason_not_a_crash() -> None:
    # 3 steps, a window of 9: each step is averaged with the neighbours there are
    assert centered_average([], 9) == []
    assert centered_average([1.0, 2.0, 6.0], 9) == [3.0, 3.0, 3.0]
    assert suggest([1e-7, 1e-6], [1.0, 0.5]) == (
        None, "only 2 steps with a finite loss, too few to read a slope from (it takes 13)")


def test_a_range_test_that_stops_before_its_average_fills_is_one_line(cli, tmp_path: Path) -> None:
    # a divergence threshold this tight stops the test within a few steps, before the 9-step average fills
    result = cli.command("lr_find", CPU, "lr_find.divergence=1.001", f"hydra.run.dir={tmp_path / 'find'}")
    assert result.returncode == 1, result.output
    assert result.err.startswith("aetrain: lr_find: no suggestion: only ") and \
        "steps with a finite loss, too few to read a slope from (it takes 13)" in result.err, result.err
    assert result.err.count("\n") == 1
    saved = json.loads((tmp_path / "find" / "lr_find.json").read_text())
    assert saved["suggested_lr"] is None and saved["stopped_early"] and saved["steps"] < 9


def test_lr_find_with_graphed_steps_suggests_what_it_suggests_eagerly(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A graphed step computes its terms in update(): the range test reads each step's loss after it (the CUDA
    path through the CPU stand-in of tests/test_graphs.py; on a GPU: tests/test_cuda.py)."""
    from aetrain.commands import lr_find, train
    from aetrain.train.graphs import GraphedTrainStep
    from conftest import digits_config
    from test_graphs import PythonGraphs

    find = lr_find.LRFindConfig(min_lr=1e-5, max_lr=0.3, num_steps=40)  # a short test that still finds a rate
    monkeypatch.setattr(lr_find, "_write", lambda *args: None)  # the numbers are the point here, not the files
    eager = lr_find.run(digits_config(), find, tmp_path / "eager")
    steps: list[GraphedTrainStep] = []

    def graphed(cfg, step, device, batch_sizes, **_):  # noqa: ANN001, ANN003 - build_step's signature
        steps.append(GraphedTrainStep(step, PythonGraphs(), batch_size=max(batch_sizes),
                                      accumulate=cfg.trainer.accumulate_grad_batches, strict=True))
        return steps[-1]

    monkeypatch.setattr(train, "build_step", graphed)
    result = lr_find.run(digits_config(), find, tmp_path / "graphed")
    assert result.losses == eager.losses and result.suggestion == eager.suggestion is not None
    assert steps[0].replays > 0 and steps[0].off is None

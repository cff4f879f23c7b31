"""The engine: one loop for every combination, with accumulation, AMP, clipping and schedules."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aetrain.commands.train import build_parts
from aetrain.config import (
    Config,
    CosineSchedulerConfig,
    DataConfig,
    ExponentialSchedulerConfig,
    OneCycleSchedulerConfig,
    PlateauSchedulerConfig,
    SchedulerConfig,
    SGDConfig,
    StepSchedulerConfig,
    TensorFileDataConfig,
    TrainerConfig,
    default_choice,
)
from aetrain.models import FAMILIES
from aetrain.train.engine import Callback, Engine, accumulation_windows
from aetrain.train.precision import build_clip
from conftest import digits_config as config


class LrLog(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.records: list[dict] = []

    def on_log(self, engine: Engine, metrics: dict[str, float]) -> None:
        self.lrs.append(metrics["lr"])

    def on_epoch_end(self, engine: Engine, record: dict) -> None:
        self.records.append(record)


def fit(cfg: Config) -> tuple[Engine, LrLog]:
    log = LrLog()
    engine = Engine(build_parts(cfg), [log])
    engine.fit()
    return engine, log


def weights(engine: Engine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.parts.model.parameters()]


def test_accumulation_windows_weight_micro_batches_by_their_samples() -> None:
    assert accumulation_windows([32, 32, 32, 10], 2) == [[0.5, 0.5], [32 / 42, 10 / 42]]
    assert accumulation_windows([8, 8, 8], 2) == [[0.5, 0.5], [1.0]]  # the short window at the epoch's end
    assert accumulation_windows([8, 8], 1) == [[1.0], [1.0]]


def test_accumulating_two_batches_of_32_equals_one_batch_of_64(tmp_path: Path) -> None:
    # 133 samples -> 106 train: batch 64 gives [64, 42]; batch 32 x 2 gives windows [32, 32], [32, 10]
    path = tmp_path / "rows.npy"
    np.save(path, np.random.default_rng(0).random((133, 12), dtype=np.float32))
    data = lambda bs: TensorFileDataConfig(path=str(path), batch_size=bs, val_fraction=0.2)  # noqa: E731
    sgd = SGDConfig(lr=0.5, momentum=0.0, nesterov=False)
    big, _ = fit(config(data=data(64), optimizer=sgd, trainer=TrainerConfig(max_epochs=3)))
    small, _ = fit(config(data=data(32), optimizer=sgd,
                          trainer=TrainerConfig(max_epochs=3, accumulate_grad_batches=2)))
    assert big.state.step == small.state.step == 6
    for a, b in zip(weights(big), weights(small)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def mean_predictor_mse(cfg: Config) -> float:
    """Validation MSE of predicting every pixel by its training mean: what a model that learned nothing gets."""
    data = build_parts(cfg).data
    return torch.nn.functional.mse_loss(data.train.data.mean(0, keepdim=True).expand_as(data.val), data.val).item()


FAMILY_CASES = [(f, b) for f in FAMILIES.names() for b in ("dense", "conv")
                if hasattr(default_choice("model", f), "backbone") or f == f"{b}_ae"]


@pytest.mark.parametrize(("family", "backbone"), FAMILY_CASES)
def test_every_model_family_learns_on_digits(family: str, backbone: str) -> None:
    m = default_choice("model", family)
    if hasattr(m, "backbone"):
        m.backbone = backbone
    cfg = config(model=m, data=DataConfig(batch_size=32), trainer=TrainerConfig(max_epochs=15))
    engine, log = fit(cfg)
    data, model = engine.parts.data, engine.parts.model.eval()
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(model(data.val)[1], data.val).item()  # the mean code for a VAE
    baseline = mean_predictor_mse(cfg)
    # far better than knowing nothing about each digit; a VAE's code of 4, 5 epochs past its KL warm-up, is at
    # 0.59x (its default trades reconstruction for samples, tests/test_vae.py; 0.33x after 200 epochs)
    assert mse < (0.65 if family == "vae" else 0.5) * baseline, (mse, baseline)
    val = [r["val/loss"] for r in log.records]
    # a VAE's bce cannot fall below the grey pixels' own entropy (val/loss 0.35 after 200 epochs): less room to fall
    assert val[-1] < (0.9 if family == "vae" else 0.8) * val[0], val
    for name in engine.parts.objective.names:  # every term the objective names is in the records
        assert f"train/{name}" in log.records[-1]
    if family in ("sparse_ae", "vae"):  # the regulariser is active
        assert log.records[-1]["train/" + ("penalty" if family == "sparse_ae" else "kl")] > 0


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_runs_the_same_loop_on_cpu(precision: str) -> None:
    parts_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[precision]
    engine = Engine(build_parts(config(trainer=TrainerConfig(max_epochs=3, precision=precision))))
    seen = []
    engine.parts.model.encoder[1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    log = LrLog()
    engine.callbacks.append(log)
    engine.fit()
    assert parts_dtype in seen  # the matmuls ran in reduced precision
    assert engine.parts.precision.scaler.is_enabled() == (precision == "16-mixed")
    val = [r["val/loss"] for r in log.records]
    assert val[-1] < val[0] and all(math.isfinite(v) for v in val)


def test_clipping_by_norm_and_value_and_measuring_without_clipping() -> None:
    def params() -> list[torch.Tensor]:
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(10)) for _ in range(3)]
        for p in ps:
            p.grad = torch.randn(10) * 5
        return ps

    ps = params()
    before = torch.linalg.vector_norm(torch.cat([p.grad for p in ps]))
    torch.testing.assert_close(build_clip(None, "norm")(ps), before)  # measured, grads untouched
    torch.testing.assert_close(torch.linalg.vector_norm(torch.cat([p.grad for p in ps])), before)
    ps = params()
    torch.testing.assert_close(build_clip(1.0, "norm")(ps), before)  # returns the norm before clipping
    assert torch.linalg.vector_norm(torch.cat([p.grad for p in ps])).item() == pytest.approx(1.0, rel=1e-4)
    ps = params()
    build_clip(0.1, "value")(ps)
    assert max(p.grad.abs().max().item() for p in ps) == pytest.approx(0.1)  # float32(0.1)


def lrs_for(scheduler: SchedulerConfig, epochs: int = 3) -> tuple[list[float], int]:
    cfg = config(scheduler=scheduler, trainer=TrainerConfig(max_epochs=epochs, log_every_n_steps=1))
    engine, log = fit(cfg)
    return log.lrs, len(engine.parts.windows)


def test_epoch_schedules_hold_the_rate_within_an_epoch() -> None:
    lrs, per_epoch = lrs_for(StepSchedulerConfig(step_size=1, gamma=0.5))
    epochs = [lrs[i * per_epoch : (i + 1) * per_epoch] for i in range(3)]
    assert [set(e) for e in epochs] == [{1e-3}, {5e-4}, {2.5e-4}]
    lrs, per_epoch = lrs_for(ExponentialSchedulerConfig(gamma=0.9))
    assert lrs[per_epoch * 2] == pytest.approx(1e-3 * 0.81)


def test_step_schedules_move_every_optimizer_step() -> None:
    lrs, per_epoch = lrs_for(CosineSchedulerConfig(warmup_steps=5, min_lr=1e-5))
    assert lrs[:6] == pytest.approx([2e-4, 3.6e-4, 5.2e-4, 6.8e-4, 8.4e-4, 1e-3])  # linear warm-up over 5 steps
    assert lrs[5:] == sorted(lrs[5:], reverse=True) and len(set(lrs[5:])) == len(lrs[5:])  # decays every step
    assert lrs[-1] == pytest.approx(1e-5, abs=5e-6)  # close to min_lr at the last step
    lrs, per_epoch = lrs_for(OneCycleSchedulerConfig(pct_start=0.3))
    peak = lrs.index(max(lrs))
    assert 0.2 < peak / len(lrs) < 0.4 and max(lrs) == pytest.approx(1e-3, rel=0.05)
    assert lrs[-1] < 1e-6


def test_plateau_schedule_reacts_to_validation_loss_only() -> None:
    parts = build_parts(config(scheduler=PlateauSchedulerConfig(patience=0, factor=0.5)))
    lr = lambda: parts.optimizer.param_groups[0]["lr"]  # noqa: E731
    parts.schedule.after_step()
    parts.schedule.after_epoch(1.0)
    assert lr() == 1e-3
    parts.schedule.after_epoch(2.0)  # no improvement, patience 0
    assert lr() == 5e-4


def test_no_schedule_keeps_the_rate() -> None:
    lrs, _ = lrs_for(SchedulerConfig(), epochs=2)
    assert set(lrs) == {1e-3}


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    runs = [fit(config(trainer=TrainerConfig(max_epochs=2, seed=s)))[0] for s in (1, 1, 2)]
    a, b, c = (weights(e) for e in runs)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_a_cosine_warm_up_as_long_as_the_run_is_refused_naming_the_runs_steps(cli) -> None:
    """It used to be cut to the run silently: the run ended at the peak rate, never decayed."""
    result = cli("trainer.max_epochs=2", "data.batch_size=128", "trainer.device=cpu", "scheduler=cosine")
    assert result.returncode == 2 and result.err.count("\n") == 1, result.output
    assert ("scheduler.warmup_steps=100 is not shorter than the run, which takes 24 optimizer steps" in result.err
            and "below 24" in result.err)
    assert not result.run_dir.exists()
    result = cli("trainer.max_epochs=2", "data.batch_size=128", "trainer.device=cpu", "scheduler=cosine",
                 "scheduler.warmup_steps=23", "outputs.plot_every=0")
    assert result.returncode == 0, result.err

"""Optimizers and schedules by name: every registered optimizer's traits (its state, its fused kernel, its
capture in a CUDA graph) and the schedules' handling of the optimizer's own settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aetrain.config import CHOICES, Config, validate
from aetrain.train.optim import OPTIMIZERS, build_optimizer
from conftest import choose, digits_config

CONFIGS = Path(__file__).parents[1] / "configs"



# --- schedules ------------------------------------------------------------------------------------------------------

def test_onecycle_keeps_the_optimizers_momentum_when_told_not_to_cycle_it() -> None:
    import torch

    from aetrain.config import AdamConfig, OneCycleSchedulerConfig
    from aetrain.train.optim import build_optimizer, build_schedule

    cfg = Config(optimizer=AdamConfig(betas=[0.8, 0.99]), scheduler=OneCycleSchedulerConfig(cycle_momentum=False))
    validate(cfg)
    opt = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(3))])
    schedule = build_schedule(cfg.scheduler, opt, total_steps=10)
    for _ in range(5):
        opt.step()
        schedule.after_step()
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    cycled = build_optimizer(AdamConfig(), [torch.nn.Parameter(torch.zeros(3))])
    build_schedule(OneCycleSchedulerConfig(), cycled, total_steps=10)  # the default: torch's 1cycle momentum
    assert cycled.param_groups[0]["betas"][0] == pytest.approx(0.95)


# --- every optimizer of the registry --------------------------------------------------------------------------------

def test_every_optimizer_is_a_choice_with_a_preset() -> None:
    presets = {p.stem for p in (CONFIGS / "optimizer").glob("*.yaml")}
    assert set(OPTIMIZERS) == set(CHOICES["optimizer"]) == presets


def variants(name: str) -> list[dict]:
    """The optimizer's settings whose state differs: with and without momentum, where it has one."""
    return [{"momentum": 0.0, "nesterov": False}, {"momentum": 0.9}] if name == "sgd" else \
        [{"momentum": 0.0}, {"momentum": 0.9}] if name == "rmsprop" else [{}]


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_each_optimizer_keeps_the_state_its_kind_says(name: str) -> None:
    """`states` feeds the up-front memory estimate: the parameter-sized tensors the optimizer keeps after a step."""
    kind = OPTIMIZERS.get(name)
    for keys in variants(name):
        cfg = choose("optimizer", name, **keys)
        weight = torch.nn.Parameter(torch.randn(7, 5))
        optimizer = build_optimizer(cfg, [weight])
        weight.grad = torch.randn_like(weight)
        optimizer.step()
        sized = [v for v in optimizer.state[weight].values() if torch.is_tensor(v) and v.shape == weight.shape]
        assert len(sized) == kind.states(cfg), (name, keys)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_each_optimizers_capture_trait_decides_whether_its_step_can_be_graphed(name: str) -> None:
    """The one home of "can be captured": the optimizer's kind; the CUDA-graph check reads it (checked here on the
    CPU for a CUDA device: the check is a plain function of the run's parts)."""
    from aetrain.commands.train import build_parts
    from aetrain.train.graphs import graph_blockers

    cfg = digits_config(optimizer=choose("optimizer", name))
    parts = build_parts(cfg)
    blockers = graph_blockers(cfg, torch.device("cuda"), parts.step, parts.data.train.plan.sizes)
    assert (f"optimizer={name} has not been checked under capture" in blockers) is not OPTIMIZERS.get(name).capturable

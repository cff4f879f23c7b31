"""Training objectives: a model and a batch in, named loss terms out.

An objective returns a dict of 0-d tensors, `"loss"` (what is optimised, or for validation what
the best checkpoint and the plateau schedule follow) first, then its parts under their own names
(`reconstruction`, `penalty`, `kl`, ...). `names` lists them in that order, and every writer
(the meter, metrics.csv, TensorBoard, the loss curve, summary.json) takes its columns from
those names, prefixed `train/` or `val/`.

Regularisers are objects built once from the config: denoising is a corruption of the input
(identity when off), sparsity a penalty on the code. The engine calls `objective(model, x)` the
same way for every family, and `set_progress(epochs)` before every optimizer step, which
objectives with a schedule of their own (the VAE's KL warm-up) use and others ignore.

`objective(model, x)` is `objective.terms(x, model(objective.corrupt(x)))`: the model's run and
the terms computed from its outputs are two steps, so a fused sweep (`aetrain.fused`), which runs
many members' models as one batched network, computes each member's terms with that member's own
objective on its slice of the outputs: the same code, the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from aetrain.config import OUTPUT_RANGES, ModelConfig, NoiseConfig, SparsityConfig
from aetrain.data.spec import DataSpec
from aetrain.errors import ConfigError
from aetrain.registry import Registry

Terms = dict[str, torch.Tensor]  # name -> 0-d tensor on the device; "loss" first
Corruption = Callable[[torch.Tensor], torch.Tensor]
Penalty = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES: Registry[LossFn] = Registry("model.loss")
LOSSES.add("mse", F.mse_loss)
LOSSES.add("l1", F.l1_loss)
LOSSES.add("smooth_l1", F.smooth_l1_loss)
LOSSES.add("bce", F.binary_cross_entropy)

NOISE: Registry[Callable[[NoiseConfig, DataSpec], Corruption]] = Registry("model.noise.kind")
SPARSITY: Registry[Callable[[SparsityConfig], Penalty]] = Registry("model.sparsity.kind")


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


@NOISE.register("gaussian")
def _gaussian(cfg: NoiseConfig, spec: DataSpec) -> Corruption:
    return lambda x: x + cfg.level * torch.randn_like(x)


@NOISE.register("masking")
def _masking(cfg: NoiseConfig, spec: DataSpec) -> Corruption:
    return lambda x: x * (torch.rand_like(x) >= cfg.level)  # zero a `level` share of the entries


@NOISE.register("salt_pepper")
def _salt_pepper(cfg: NoiseConfig, spec: DataSpec) -> Corruption:
    def corrupt(x: torch.Tensor) -> torch.Tensor:
        u = torch.rand_like(x)  # half of the hit entries go to the data's minimum, half to its maximum
        return torch.where(u < cfg.level / 2, spec.low, torch.where(u < cfg.level, spec.high, x))

    return corrupt


def no_penalty(z: torch.Tensor) -> torch.Tensor:
    return z.new_zeros(())


@SPARSITY.register("l1")
def _l1(cfg: SparsityConfig) -> Penalty:
    return lambda z: cfg.weight * z.abs().sum(dim=1).mean()  # (B, latent) -> (): L1 per sample, batch mean


@SPARSITY.register("kl")
def _kl(cfg: SparsityConfig) -> Penalty:
    rho = cfg.target

    def penalty(z: torch.Tensor) -> torch.Tensor:
        rho_hat = torch.sigmoid(z).mean(dim=0).clamp(1e-6, 1 - 1e-6)  # (B, latent) -> (latent,) mean activation
        kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
        return cfg.weight * kl.sum()

    return penalty


def output_activation(cfg: ModelConfig, spec: DataSpec) -> str:
    """The output activation `model.output_activation` names; `auto` is sigmoid for data in [0, 1], else identity."""
    if cfg.output_activation == "auto":
        return "sigmoid" if spec.unit_interval else "identity"
    return cfg.output_activation


def check_output_range(cfg: ModelConfig, spec: DataSpec) -> None:
    """Refuse an output activation whose range cannot hold the training data (in model units): sigmoid cannot
    output the negative half of standardized data, tanh nothing beyond +-1, and the run would train a model that
    cannot reconstruct (val/loss 88x auto's on standardized rows). Checked when training builds its objectives,
    not when a model is loaded: checkpoints of such runs still load."""
    name = output_activation(cfg, spec)
    lo, hi = OUTPUT_RANGES.get(name, (-math.inf, math.inf))
    if spec.low < lo or spec.high > hi:
        units = "values in [0, 1]" if spec.unit_interval else "standardized"
        fit = "auto (identity here), or identity" if not spec.unit_interval else "auto (sigmoid here), or identity"
        raise ConfigError(f"model.output_activation={cfg.output_activation}: "
                          f"{name} outputs values in ({lo:g}, {hi:g}), "
                          f"but the training data of '{spec.name}' spans [{spec.low:.3g}, {spec.high:.3g}] in model "
                          f"units ({units}), which its reconstructions could never reach; use "
                          f"model.output_activation={fit}")


def loss_function(cfg: ModelConfig, spec: DataSpec) -> LossFn:
    """The reconstruction loss `model.loss` names; `auto` is bce for data in [0, 1], mse otherwise."""
    name = ("bce" if spec.unit_interval else "mse") if cfg.loss == "auto" else cfg.loss
    if name not in LOSSES:
        raise ConfigError(f"model.loss={cfg.loss!r} is not one of: auto, {', '.join(LOSSES.names())}")
    if name == "bce" and not spec.unit_interval:
        raise ConfigError(f"model.loss=bce needs data in [0, 1]; data '{spec.name}' is standardized: use mse, l1 or "
                          "smooth_l1")
    return LOSSES.get(name)


class Objective:
    """Base of every objective: the names of its terms, a no-op progress hook."""

    names: tuple[str, ...] = ("loss",)
    corrupt: Corruption = staticmethod(identity)  # what training does to the inputs first (denoising); none here

    def __call__(self, model: torch.nn.Module, x: torch.Tensor) -> Terms:
        return self.terms(x, model(self.corrupt(x)))

    def terms(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> Terms:
        """The named terms for the clean batch `x` and what the model returned for its (corrupted) inputs."""
        raise NotImplementedError

    def set_progress(self, epochs: float) -> None:
        """Called before each optimizer step with the training progress in epochs (this step included)."""

    def to(self, device: torch.device) -> Objective:
        """Move tensors the objective holds to the training device (none by default)."""
        return self


class Reconstruction(Objective):
    """corrupt -> reconstruct -> loss against the clean input (+ a penalty on the code).

    Training returns `loss` = reconstruction + penalty, `reconstruction`, `penalty`. Validation
    (clean inputs) returns `loss` = the reconstruction loss alone, which best.pt and the plateau
    schedule follow, and `penalty`.
    """

    def __init__(self, loss_fn: LossFn, corrupt: Corruption, penalty: Penalty, *, validation: bool) -> None:
        self.loss_fn, self.corrupt, self.penalty, self.validation = loss_fn, corrupt, penalty, validation
        self.names = ("loss", "penalty") if validation else ("loss", "reconstruction", "penalty")

    def terms(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> Terms:
        z, x_hat, *_ = outputs  # of the corrupted inputs; the loss compares against the clean input
        with torch.autocast(x.device.type, enabled=False):  # losses in fp32; bce refuses autocast
            rec = self.loss_fn(x_hat.float(), x.float())
            pen = self.penalty(z.float())
        if self.validation:
            return {"loss": rec, "penalty": pen}
        return {"loss": rec + pen, "reconstruction": rec, "penalty": pen}


def build_reconstruction(cfg: ModelConfig, spec: DataSpec, *, corrupt: Corruption = identity,
                         penalty: Penalty = no_penalty) -> tuple[Objective, Objective]:
    """(training objective, validation objective). Validation sees clean inputs."""
    check_output_range(cfg, spec)
    loss_fn = loss_function(cfg, spec)
    return (Reconstruction(loss_fn, corrupt, penalty, validation=False),
            Reconstruction(loss_fn, identity, penalty, validation=True))

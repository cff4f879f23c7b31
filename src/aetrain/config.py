"""Typed run configuration: the dataclasses every module below the CLI takes.

The CLI composes YAML presets (configs/) over these schemas with Hydra and hands a `Config`
to `aetrain.train.run`. The dataclasses hold every default; presets only override. Nothing here
imports Hydra, OmegaConf or torch, so `aetrain --help` stays fast and the config can be rebuilt
from a checkpoint's JSON without either.

Choice-valued fields (activation, init, loss, optimizer, ...) are validated against their
registries when components are built, so the list of allowed values has one home.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from aetrain.errors import ConfigError


@dataclass
class NoiseConfig:
    """Input corruption of the denoising autoencoder, applied to training batches only."""

    kind: str = "none"  # none | gaussian | masking | salt_pepper; none = inputs pass through
    level: float = 0.0  # gaussian: std in data units; masking / salt_pepper: fraction of entries hit


@dataclass
class SparsityConfig:
    """Penalty on the latent code of the sparse autoencoder."""

    kind: str = "none"  # none | l1 | kl; none = no penalty (a zero term)
    weight: float = 0.0  # multiplier of the penalty in the training loss; 0 = off
    target: float = 0.05  # kl only: target mean activation rho in (0, 1) of sigmoid(latent)


@dataclass
class ModelConfig:
    """Architecture, regularisers and reconstruction loss. Presets: configs/model/."""

    name: str = "dense_ae"  # preset name, for logs and summaries (set by the model= choice)
    backbone: str = "dense"  # dense | conv: the encoder/decoder family the regularisers wrap
    latent_dim: int = 16  # size of the code z
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])  # dense: encoder widths; decoder mirrors
    channels: list[int] = field(default_factory=lambda: [32, 64])  # conv: encoder widths, each stride 2
    kernel_size: int = 3  # conv: odd kernel size of every conv layer
    activation: str = "relu"  # hidden activation: relu, leaky_relu, prelu, elu, gelu, selu, silu, tanh, sigmoid
    output_activation: str = "auto"  # auto = sigmoid for data in [0, 1], identity for standardized data
    init: str = "default"  # weight init: default (PyTorch's), xavier_*, kaiming_*, orthogonal
    batch_norm: bool = False  # BatchNorm after each hidden layer; False = none
    dropout: float = 0.0  # dropout probability after each hidden layer; 0 = off
    loss: str = "mse"  # reconstruction loss: mse | l1 | bce | smooth_l1 (mean over elements)
    noise: NoiseConfig = field(default_factory=NoiseConfig)  # denoising_ae sets it
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)  # sparse_ae sets it


@dataclass
class DataConfig:
    """Which data, where it lives, and how it is split and batched. Presets: configs/data/."""

    name: str = "digits"  # digits | mnist | fashion_mnist | cifar10 | image_folder | tensor_file
    root: str = "data"  # torchvision datasets: directory holding (or receiving) the files
    download: bool = False  # torchvision datasets: fetch the files when they are missing
    path: str | None = None  # image_folder: a directory of images; tensor_file: a .npy or .pt array
    image_size: int = 64  # image_folder: images are resized to image_size x image_size pixels
    grayscale: bool = False  # image_folder: convert to one channel
    batch_size: int = 64  # samples per micro-batch
    val_fraction: float = 0.2  # share of samples held out for validation, in (0, 1)
    split_seed: int = 0  # seed of the train/val split; fixed apart from trainer.seed so sweeps compare alike
    num_workers: int = 2  # image_folder: DataLoader worker processes; 0 = load in the main process


@dataclass
class OptimizerConfig:
    """Optimizer and its hyperparameters. Presets: configs/optimizer/. Unused fields are ignored."""

    name: str = "adam"  # adam | adamw | sgd | rmsprop
    lr: float = 1e-3  # (peak) learning rate, > 0
    weight_decay: float = 0.0  # L2 (adam, sgd, rmsprop) or decoupled (adamw) decay; 0 = off
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    eps: float = 1e-8  # adam, adamw, rmsprop
    momentum: float = 0.0  # sgd, rmsprop; 0 = none
    nesterov: bool = False  # sgd: Nesterov momentum (needs momentum > 0)


@dataclass
class SchedulerConfig:
    """Learning-rate schedule. Each is stepped in its own unit (documented per field)."""

    name: str = "none"  # none | step | cosine | onecycle | plateau | exponential
    step_size: int = 30  # step: epochs between decays
    gamma: float = 0.1  # step, exponential: multiplicative decay per step_size epochs / per epoch
    warmup_steps: int = 0  # cosine: optimizer steps of linear warm-up from 0; 0 = none
    min_lr: float = 0.0  # cosine: final learning rate
    pct_start: float = 0.3  # onecycle: share of optimizer steps spent rising to optimizer.lr
    factor: float = 0.5  # plateau: multiply lr by this when val/loss stalls
    patience: int = 5  # plateau: epochs without improvement before decaying


@dataclass
class TrainerConfig:
    """The engine's knobs, named as Lightning's Trainer names them."""

    max_epochs: int = 200  # epochs to train (resume may raise it)
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    precision: str = "32"  # 32 | 16-mixed (fp16 autocast + GradScaler) | bf16-mixed (bf16 autocast)
    gradient_clip_val: float | None = None  # max grad norm (or |value|); None = no clipping, norm still logged
    gradient_clip_algorithm: str = "norm"  # norm | value
    accumulate_grad_batches: int = 1  # micro-batches per optimizer step; 1 = none
    seed: int = 0  # seeds python, numpy and torch; weights, batch order, noise and dropout follow it
    deterministic: bool = False  # force deterministic kernels (needed for bit-exact CUDA runs); CPU is deterministic anyway
    log_every_n_steps: int = 50  # optimizer steps between progress updates (the only host syncs in the loop)
    resume: str | None = None  # a checkpoint file or run dir to continue from; None = start fresh
    checkpoint_every_n_steps: int | None = None  # also write last.pt every N optimizer steps; None = per epoch only
    save_top_k: int = 0  # also keep the k best epochs as checkpoints/epoch=NNN-val_loss=X.pt; 0 = off
    early_stopping_patience: int | None = None  # stop after N epochs without a val/loss improvement; None = off
    on_nonfinite: str = "stop"  # a NaN/Inf loss: stop (the run ends with an error) | skip (drop that update)
    compile: bool = False  # torch.compile the model for training and validation; False = eager
    channels_last: bool = True  # conv models: NHWC memory format (measured 25% faster steps on CPU; cuDNN's tensor-core layout); False = NCHW. Dense models ignore it


@dataclass
class OutputsConfig:
    """What a run writes for people to look at, besides checkpoints and metrics.csv.

    Pictures (loss_curve.png, reconstructions/) are drawn at the first and last epoch and every
    `plot_every` epochs in between while drawing stays within `render_budget` of the run's time;
    TensorBoard scalars and summary.json are cheap and written every epoch.
    """

    plot_every: int = 1  # epochs between redraws of loss_curve.png and the reconstructions; 0 = no pictures
    render_budget: float = 0.02  # share of the run's time pictures may take; 0 = first and last epoch only, 1 = no limit
    num_samples: int = 16  # validation samples in each reconstruction picture, the same ones every epoch
    sample_seed: int = 0  # picks those samples (a private generator: the run's RNG is untouched)
    grid_zoom_to: int = 32  # pixels: smaller images are enlarged by a whole factor (nearest); 0 = native size
    tensorboard: bool = True  # tensorboard/: scalars every epoch and log interval, pictures when drawn; false = none
    progress: bool = True  # a live progress bar per epoch when stdout is a terminal; false = epoch lines only


@dataclass
class Config:
    """One training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)


def _require(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range: must be {allowed}")


def validate(cfg: Config) -> None:
    """Check ranges a type cannot express; raises ConfigError naming the key and what is allowed."""
    m, d, o, s, t = cfg.model, cfg.data, cfg.optimizer, cfg.scheduler, cfg.trainer
    _require(m.backbone in ("dense", "conv"), "model.backbone", "dense or conv", m.backbone)
    _require(m.latent_dim >= 1, "model.latent_dim", ">= 1", m.latent_dim)
    _require(all(w >= 1 for w in m.hidden_dims), "model.hidden_dims", "a list of widths >= 1", m.hidden_dims)
    _require(len(m.channels) >= 1 and all(c >= 1 for c in m.channels), "model.channels",
             "a non-empty list of widths >= 1", m.channels)
    _require(m.kernel_size >= 1 and m.kernel_size % 2 == 1, "model.kernel_size", "an odd number >= 1", m.kernel_size)
    _require(0.0 <= m.dropout < 1.0, "model.dropout", "in [0, 1)", m.dropout)
    _require(m.noise.level >= 0.0, "model.noise.level", ">= 0", m.noise.level)
    if m.noise.kind in ("masking", "salt_pepper"):
        _require(m.noise.level <= 1.0, "model.noise.level", f"in [0, 1] for {m.noise.kind} noise", m.noise.level)
    _require(m.sparsity.weight >= 0.0, "model.sparsity.weight", ">= 0", m.sparsity.weight)
    _require(0.0 < m.sparsity.target < 1.0, "model.sparsity.target", "in (0, 1)", m.sparsity.target)

    _require(d.batch_size >= 1, "data.batch_size", ">= 1", d.batch_size)
    _require(0.0 < d.val_fraction < 1.0, "data.val_fraction", "in (0, 1)", d.val_fraction)
    _require(d.image_size >= 1, "data.image_size", ">= 1", d.image_size)
    _require(d.num_workers >= 0, "data.num_workers", ">= 0", d.num_workers)

    _require(o.lr > 0.0 and math.isfinite(o.lr), "optimizer.lr", "a finite number > 0", o.lr)
    _require(o.weight_decay >= 0.0, "optimizer.weight_decay", ">= 0", o.weight_decay)
    _require(len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas), "optimizer.betas",
             "two numbers in [0, 1)", o.betas)
    _require(o.eps > 0.0, "optimizer.eps", "> 0", o.eps)
    _require(o.momentum >= 0.0, "optimizer.momentum", ">= 0", o.momentum)
    _require(not o.nesterov or o.momentum > 0.0, "optimizer.nesterov", "false unless optimizer.momentum > 0",
             o.nesterov)

    _require(s.step_size >= 1, "scheduler.step_size", ">= 1", s.step_size)
    _require(0.0 < s.gamma <= 1.0, "scheduler.gamma", "in (0, 1]", s.gamma)
    _require(s.warmup_steps >= 0, "scheduler.warmup_steps", ">= 0", s.warmup_steps)
    _require(0.0 <= s.min_lr < o.lr, "scheduler.min_lr", f"in [0, optimizer.lr={o.lr})", s.min_lr)
    _require(0.0 < s.pct_start < 1.0, "scheduler.pct_start", "in (0, 1)", s.pct_start)
    _require(0.0 < s.factor < 1.0, "scheduler.factor", "in (0, 1)", s.factor)
    _require(s.patience >= 0, "scheduler.patience", ">= 0", s.patience)

    _require(t.max_epochs >= 1, "trainer.max_epochs", ">= 1", t.max_epochs)
    _require(t.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", ">= 1", t.accumulate_grad_batches)
    _require(t.gradient_clip_val is None or t.gradient_clip_val > 0, "trainer.gradient_clip_val",
             "> 0, or null for no clipping", t.gradient_clip_val)
    _require(t.gradient_clip_algorithm in ("norm", "value"), "trainer.gradient_clip_algorithm", "norm or value",
             t.gradient_clip_algorithm)
    _require(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", ">= 1", t.log_every_n_steps)
    _require(t.checkpoint_every_n_steps is None or t.checkpoint_every_n_steps >= 1, "trainer.checkpoint_every_n_steps",
             ">= 1, or null for once per epoch", t.checkpoint_every_n_steps)
    _require(t.save_top_k >= 0, "trainer.save_top_k", ">= 0", t.save_top_k)
    _require(t.early_stopping_patience is None or t.early_stopping_patience >= 1, "trainer.early_stopping_patience",
             ">= 1, or null for no early stopping", t.early_stopping_patience)
    _require(t.on_nonfinite in ("stop", "skip"), "trainer.on_nonfinite", "stop or skip", t.on_nonfinite)

    u = cfg.outputs
    _require(u.plot_every >= 0, "outputs.plot_every", ">= 0 (0 = no pictures)", u.plot_every)
    _require(0.0 <= u.render_budget <= 1.0, "outputs.render_budget", "in [0, 1] (a share of the run's time)",
             u.render_budget)
    _require(1 <= u.num_samples <= 64, "outputs.num_samples", "in 1..64", u.num_samples)
    _require(u.grid_zoom_to >= 0, "outputs.grid_zoom_to", ">= 0 (0 = native size)", u.grid_zoom_to)


def to_json(cfg: Config) -> str:
    """The config as JSON text: what checkpoints store (plain data, safe under weights_only)."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def from_json(text: str) -> Config:
    """Rebuild a Config from `to_json` text. Keys this version does not know are ignored."""
    return _from_dict(Config, json.loads(text))


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        kwargs[f.name] = _from_dict(hint, value) if dataclasses.is_dataclass(hint) else value
    return cls(**kwargs)

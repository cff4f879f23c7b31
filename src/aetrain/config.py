"""Typed run configuration: the dataclasses every module below the CLI takes.

The CLI composes YAML presets (configs/) over these schemas with Hydra and hands a `Config`
to `aetrain.commands.train.run`. Nothing here imports Hydra, OmegaConf or torch, so
`aetrain --help` stays fast and a config can be rebuilt from a checkpoint's JSON without either.

**One home for defaults.** Each choice of a group (`model=conv_ae`, `optimizer=sgd`,
`scheduler=cosine`, `data=mnist`) has its own shape, registered in `CHOICES` under its name:
the dataclass holds every default and the keys that choice uses, no others. The YAML preset
only names its schema, so editing a default here changes the preset, and a key the chosen
component does not use (`scheduler=step scheduler.patience=3`) is refused when the config is
composed. Allowed values of choice-valued keys (activation, init, loss, ...) live in the
registries of the components that use them and are checked when those are built.

**One home for each key's range.** A dataclass declares the range of its own fields in `RANGES`,
right below them: a check and what is allowed, in words. A subclass inherits the ranges of the
fields it inherits and declares those of its new fields; a field without a range has none (the
tests require one for every number), and never borrows another key's of the same name. `validate`
applies them, then the checks that span several keys. (`RANGES` is a plain class attribute, not a
field: dataclasses, OmegaConf and checkpoints never see it.) Each field's comment (on its line, or the
lines right above it) is its documentation: `--help` prints it (`field_comments`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import math
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aetrain import plugins
from aetrain.errors import ConfigError

Range = tuple[Callable[[Any], bool], str]  # (is the value allowed?, what is allowed, in words)


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed takes


def _seed(value: Any) -> bool:
    return isinstance(value, int) and SEED_RANGE[0] <= value <= SEED_RANGE[1]


# ranges many keys share
AT_LEAST_1: Range = (lambda v: v >= 1, ">= 1")
AT_LEAST_0: Range = (lambda v: v >= 0, ">= 0")
POSITIVE: Range = (lambda v: _finite(v) and v > 0.0, "a finite number > 0")
NON_NEGATIVE: Range = (lambda v: _finite(v) and v >= 0.0, "a finite number >= 0")
OPEN_UNIT: Range = (lambda v: 0.0 < v < 1.0, "in (0, 1)")
SEED: Range = (_seed, "an integer in [-2**63, 2**64 - 1]")
WIDTHS: Range = (lambda v: all(w >= 1 for w in v), "a list of widths >= 1")
CHANNELS: Range = (lambda v: len(v) >= 1 and all(c >= 1 for c in v), "a non-empty list of widths >= 1")
ODD: Range = (lambda v: v >= 1 and v % 2 == 1, "an odd number >= 1")

# group -> choice name -> factory of that choice's default config. Filled by `choice` below; the CLI
# registers every entry with Hydra (`schema/<group>/<name>`), configs/<group>/<name>.yaml names it.
CHOICES: dict[str, dict[str, Callable[[], Any]]] = {"model": {}, "data": {}, "optimizer": {}, "scheduler": {}}


def choice(group: str, name: str, **defaults: Any) -> Callable[[type], type]:
    """Register a dataclass (with `defaults` overriding its field defaults) as `group=name`."""

    def register(cls: type) -> type:
        CHOICES[group][name] = lambda: cls(**{"name": name, **defaults})
        return cls

    return register


# --- model ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CodeConstraint:
    """What keeps a family's code from copying its input (input noise, a sparsity penalty, a KL term): said by the
    family's config (`ModelConfig.code_constraint`), read by the training doctor and the wide-code warning."""

    what: str  # in words, with its setting: "gaussian input noise (model.noise.level=0.2)"
    loosen: tuple[str, ...] = ()  # overrides that weaken it, for a run where it switched the whole code off
    prunes_units: bool = False  # it switches off the code units it does not need by design (a VAE's KL term)
    blurs: bool = False  # its reconstructions are blurry by design (a VAE's sampled code)


@dataclass
class ModelConfig:
    """What every model family has, built in or registered by your own code (`aetrain.register_model`).
    Families: configs/model/, `aetrain.models.FAMILIES`."""

    name: str = "dense_ae"  # the model family, set by model=<name>: dense_ae | conv_ae | denoising_ae | sparse_ae | vae
    # | a registered one
    latent_dim: int = 16  # size of the code z
    output_activation: str = "auto"  # auto = sigmoid for data in [0, 1], identity for standardized data; or sigmoid,
    # tanh, identity (one whose range, OUTPUT_RANGES, cannot hold the training data is refused)
    loss: str = "mse"  # reconstruction loss: mse | l1 | bce | smooth_l1 (mean over elements)

    RANGES = {"latent_dim": AT_LEAST_1}

    def code_constraint(self) -> CodeConstraint | None:
        """What keeps this model's code from copying its input; None: nothing (a plain autoencoder, or a family
        whose constraint is switched off), so a code as wide as the input can copy it."""
        return None


@dataclass
class LayersConfig(ModelConfig):
    """The layer keys of the built-in backbones (dense, conv)."""

    activation: str = "relu"  # hidden activation: relu, leaky_relu, prelu, elu, gelu, selu, silu, tanh, sigmoid
    init: str = "default"  # weight init: default (PyTorch's), xavier_*, kaiming_*, orthogonal
    batch_norm: bool = False  # BatchNorm after each hidden layer; False = none
    dropout: float = 0.0  # dropout probability after each hidden layer; 0 = off

    RANGES = {"dropout": (lambda v: 0.0 <= v < 1.0, "in [0, 1)")}


# the open interval each model.output_activation produces (models.blocks builds them; the doctor judges runs by them)
OUTPUT_RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "identity": (-math.inf, math.inf)}


@choice("model", "dense_ae")
@dataclass
class DenseAEConfig(LayersConfig):
    """An MLP autoencoder."""

    name: str = "dense_ae"

    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])  # encoder widths; the decoder mirrors them

    RANGES = {"hidden_dims": WIDTHS}


@choice("model", "conv_ae")
@dataclass
class ConvAEConfig(LayersConfig):
    """A convolutional autoencoder for images of any size."""

    name: str = "conv_ae"

    channels: list[int] = field(default_factory=lambda: [32, 64])  # encoder widths, one stride-2 conv each
    kernel_size: int = 3  # odd kernel size of every conv layer

    RANGES = {"channels": CHANNELS, "kernel_size": ODD}


@dataclass
class BackboneModelConfig(LayersConfig):
    """A family that wraps either backbone: the keys of the one not chosen must keep their defaults."""

    backbone: str = "dense"  # dense | conv
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])  # backbone=dense: encoder widths
    channels: list[int] = field(default_factory=lambda: [32, 64])  # backbone=conv: encoder widths, stride 2 each
    kernel_size: int = 3  # backbone=conv: odd kernel size

    RANGES = {"hidden_dims": WIDTHS, "channels": CHANNELS, "kernel_size": ODD}


# The keys a built-in objective adds to a family's config (`aetrain.models.OBJECTIVES`): the built-in denoising,
# sparse and variational families have them, and so does a model of your own registered with that objective
# (`aetrain.register_model(name, config=..., objective="vae")` adds them to its config). Mixins, listed first
# among a config's bases: their fields come after the family's own, and their `code_constraint` is the family's.

@dataclass
class NoiseConfig:
    """Input corruption of the denoising autoencoder, applied to training batches only."""

    kind: str = "gaussian"  # gaussian (std `level` in model units) | masking | salt_pepper (a `level` share of entries)
    level: float = 0.2  # gaussian: std; masking / salt_pepper: fraction of entries hit, in [0, 1]

    RANGES = {"level": NON_NEGATIVE}  # and <= 1 for a share of entries (`validate`)


@dataclass
class DenoisingKeys:
    """objective=denoising: corrupt the training inputs, reconstruct the clean ones."""

    noise: NoiseConfig = field(default_factory=NoiseConfig)  # the corruption of the training inputs

    def code_constraint(self) -> CodeConstraint | None:
        if self.noise.level <= 0:
            return None
        return CodeConstraint(f"{self.noise.kind} input noise (model.noise.level={self.noise.level:g})")


@dataclass
class SparsityConfig:
    """Penalty on the latent code of the sparse autoencoder."""

    kind: str = "l1"  # l1 (weight x batch mean of sum |z|) | kl (weight x sum KL(target || mean sigmoid(z)))
    weight: float = 1e-3  # multiplier of the penalty in the training loss, >= 0
    target: float = 0.05  # kl only: target mean activation rho in (0, 1) of sigmoid(latent)

    RANGES = {"weight": NON_NEGATIVE, "target": OPEN_UNIT}


@dataclass
class SparsityKeys:
    """objective=sparse: a penalty on the code."""

    sparsity: SparsityConfig = field(default_factory=SparsityConfig)  # the penalty on the code

    def code_constraint(self) -> CodeConstraint | None:
        if self.sparsity.weight <= 0:
            return None
        penalty = f"a {self.sparsity.kind} sparsity penalty (model.sparsity.weight={self.sparsity.weight:g})"
        return CodeConstraint(penalty, loosen=("model.sparsity.weight=1e-4",))


@dataclass
class VariationalKeys:
    """objective=vae: a Gaussian code, sampled with the reparameterisation trick, and its KL term."""

    loss: str = "auto"  # auto = bce for data in [0, 1] (a Bernoulli decoder), mse otherwise; or mse | l1 | bce |
    # smooth_l1
    beta: float = 1.0  # weight of the KL term; 1 = the ELBO, > 1 = beta-VAE, 0 = a plain autoencoder with a noisy code
    kl_warmup_epochs: float = 10.0  # the KL weight rises linearly from 0 to beta over this many epochs; 0 = from the
    # start

    RANGES = {"beta": NON_NEGATIVE, "kl_warmup_epochs": (
        lambda v: _finite(v) and v >= 0.0, "a finite number >= 0 (0 = no warm-up)")}

    def code_constraint(self) -> CodeConstraint | None:
        if self.beta <= 0:  # no KL term: the encoder can make its code exact, a plain autoencoder's
            return None
        return CodeConstraint("a sampled code and its KL term", loosen=("model.beta=0.25", "model.kl_warmup_epochs=50"),
                              prunes_units=True, blurs=True)


@choice("model", "denoising_ae")
@dataclass
class DenoisingAEConfig(DenoisingKeys, BackboneModelConfig):
    """Corrupt the training inputs, reconstruct the clean ones."""

    name: str = "denoising_ae"


@choice("model", "sparse_ae")
@dataclass
class SparseAEConfig(SparsityKeys, BackboneModelConfig):
    """Penalise the latent code."""

    name: str = "sparse_ae"


@choice("model", "vae")
@dataclass
class VAEConfig(VariationalKeys, BackboneModelConfig):
    """Variational autoencoder: a Gaussian code, sampled with the reparameterisation trick."""

    name: str = "vae"
    # a small code and a deeper MLP: decoded draws from the prior look like digits (README "Variational"; with
    # the other families' 16 and [256, 128], 200 epochs on the digits gave 39% recognisable samples, these 55-61%)
    latent_dim: int = 4  # size of the code z
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256, 128])  # backbone=dense: encoder widths


# --- data ----------------------------------------------------------------------------------------

@dataclass
class DataConfig:
    """What every dataset has. Datasets: configs/data/, `aetrain.data.SOURCES`."""

    name: str = "digits"  # the dataset, set by data=<name>
    batch_size: int = 64  # samples per micro-batch
    val_fraction: float = 0.2  # share of samples held out for validation, in (0, 1)
    split_seed: int = 0  # seed of the train/val split; fixed apart from trainer.seed so sweeps compare alike
    test_fraction: float = 0.0  # share held out as a test split that training never sees, in [0, 1); 0 = none
    classes: list[int] | None = None  # train on samples with these labels only (labelled data); None = every sample

    RANGES = {
        "batch_size": AT_LEAST_1, "val_fraction": OPEN_UNIT, "split_seed": SEED,
        "test_fraction": (lambda v: 0.0 <= v < 1.0, "in [0, 1) (0 = no test split)"),
        "classes": (lambda v: v is None or (len(v) >= 1 and len(set(v)) == len(v)),
                    "a non-empty list of distinct labels, or null for every sample"),
    }


choice("data", "digits")(DataConfig)  # scikit-learn's bundled digits: nothing to configure


@choice("data", "mnist")
@choice("data", "fashion_mnist")
@choice("data", "cifar10")
@dataclass
class TorchvisionDataConfig(DataConfig):
    """A torchvision dataset (its training split) under `root`: mnist, fashion_mnist or cifar10."""

    name: str = "mnist"
    batch_size: int = 256
    val_fraction: float = 0.1

    root: str = "data"  # directory holding (or receiving) the files
    download: bool = True  # fetch the files when they are missing


@choice("data", "image_folder")
@dataclass
class ImageFolderDataConfig(DataConfig):
    """Every image under a directory (recursively), resized and center-cropped to a square."""

    name: str = "image_folder"
    val_fraction: float = 0.1

    path: str | None = None  # the directory of images (required)
    image_size: int = 64  # images are resized to image_size x image_size pixels
    grayscale: bool = False  # convert to one channel
    num_workers: int = 2  # DataLoader worker processes; 0 = load in the main process

    RANGES = {"image_size": AT_LEAST_1, "num_workers": AT_LEAST_0}


@choice("data", "tensor_file")
@dataclass
class TensorFileDataConfig(DataConfig):
    """Your own array: N x C x H x W images or N x D rows."""

    name: str = "tensor_file"

    path: str | None = None  # a .npy or .pt file (required)
    layout: str = "auto"  # 4-d image arrays: nchw (N x C x H x W) | nhwc (N x H x W x C, converted) | auto = nhwc when
    # the last axis has <= 4 entries and axis 1 more, nchw when the reverse or both have more; ambiguous = an error
    labels: str | None = None  # a .npy or .pt file of N integer labels, one per sample; None = unlabelled


# --- optimizer -----------------------------------------------------------------------------------

@dataclass
class OptimizerConfig:
    """What every optimizer has. Optimizers: configs/optimizer/, `aetrain.train.optim.OPTIMIZERS`."""

    name: str = "adam"  # set by optimizer=<name>
    lr: float = 1e-3  # (peak) learning rate, > 0
    weight_decay: float = 0.0  # L2 (adam, sgd, rmsprop) or decoupled (adamw) decay; 0 = off

    RANGES = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE}


@choice("optimizer", "adam")
@choice("optimizer", "adamw", weight_decay=1e-2)
@dataclass
class AdamConfig(OptimizerConfig):
    """Adam, and AdamW (decoupled weight decay, default 1e-2)."""

    name: str = "adam"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # decay rates of the moment estimates, in [0, 1)
    eps: float = 1e-8  # added to the denominator, > 0

    RANGES = {
        "betas": (lambda v: len(v) == 2 and all(0.0 <= b < 1.0 for b in v), "two numbers in [0, 1)"), "eps": POSITIVE}


@choice("optimizer", "sgd")
@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    lr: float = 1e-2
    momentum: float = 0.9  # 0 = plain SGD
    nesterov: bool = True  # Nesterov momentum (needs momentum > 0)

    RANGES = {"momentum": NON_NEGATIVE}


@choice("optimizer", "rmsprop")
@dataclass
class RMSpropConfig(OptimizerConfig):
    name: str = "rmsprop"
    alpha: float = 0.99  # smoothing constant of the squared-gradient average, in [0, 1)
    eps: float = 1e-8  # added to the denominator, > 0
    momentum: float = 0.0  # 0 = none

    RANGES = {"alpha": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"), "eps": POSITIVE, "momentum": NON_NEGATIVE}


# --- scheduler -----------------------------------------------------------------------------------

@choice("scheduler", "none")
@dataclass
class SchedulerConfig:
    """A learning-rate schedule; each is stepped in its own unit. Schedules: configs/scheduler/."""

    name: str = "none"  # set by scheduler=<name>; none = a constant learning rate


@choice("scheduler", "step")
@dataclass
class StepSchedulerConfig(SchedulerConfig):
    name: str = "step"
    step_size: int = 30  # epochs between decays
    gamma: float = 0.1  # multiplicative decay every step_size epochs, in (0, 1]

    RANGES = {"step_size": AT_LEAST_1, "gamma": (lambda v: 0.0 < v <= 1.0, "in (0, 1]")}


@choice("scheduler", "exponential")
@dataclass
class ExponentialSchedulerConfig(SchedulerConfig):
    name: str = "exponential"
    gamma: float = 0.98  # multiplicative decay per epoch, in (0, 1]

    RANGES = {"gamma": (lambda v: 0.0 < v <= 1.0, "in (0, 1]")}


@choice("scheduler", "cosine")
@dataclass
class CosineSchedulerConfig(SchedulerConfig):
    name: str = "cosine"
    warmup_steps: int = 100  # optimizer steps of linear warm-up from lr/warmup_steps to lr, fewer than the run has;
    # 0 = none
    min_lr: float = 0.0  # the rate at the last optimizer step, in [0, optimizer.lr)

    RANGES = {"warmup_steps": AT_LEAST_0, "min_lr": NON_NEGATIVE}  # and < lr (`validate`)


@choice("scheduler", "onecycle")
@dataclass
class OneCycleSchedulerConfig(SchedulerConfig):
    name: str = "onecycle"
    pct_start: float = 0.3  # share of the run's optimizer steps spent rising to optimizer.lr, in (0, 1)
    cycle_momentum: bool = True  # also cycle the momentum (Adam's beta1, SGD/RMSprop momentum) from 0.95 down to 0.85
    # and back, against the rate (torch's OneCycleLR); false = keep the optimizer's own momentum

    RANGES = {"pct_start": OPEN_UNIT}


@choice("scheduler", "plateau")
@dataclass
class PlateauSchedulerConfig(SchedulerConfig):
    name: str = "plateau"
    factor: float = 0.5  # multiply the rate by this when val/loss stalls, in (0, 1)
    patience: int = 5  # epochs without improvement before decaying, >= 0

    RANGES = {"factor": OPEN_UNIT, "patience": AT_LEAST_0}


# --- trainer and outputs -------------------------------------------------------------------------

@dataclass
class TrainerConfig:
    """The engine's knobs, named as Lightning's Trainer names them."""

    max_epochs: int = 200  # epochs to train (resume may raise it)
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps
    precision: str = "32"  # 32 | 16-mixed (fp16 autocast + GradScaler) | bf16-mixed (bf16 autocast)
    gradient_clip_val: float | None = None  # max grad norm (or |value|); None = no clipping, norm still logged
    gradient_clip_algorithm: str = "norm"  # norm | value
    accumulate_grad_batches: int = 1  # micro-batches per optimizer step; 1 = none
    seed: int = 0  # seeds python, numpy and torch; weights, batch order, noise and dropout follow it
    deterministic: bool = False  # force deterministic kernels (needed for bit-exact CUDA runs); CPU is deterministic
    # anyway
    num_threads: int = 0  # CPU threads torch computes with (intra-op); 0 = torch's default: OMP_NUM_THREADS if set,
    # else one per core. Lower it on a busy or shared machine
    log_every_n_steps: int = 50  # optimizer steps between progress updates (the only host syncs in the loop)
    resume: str | None = None  # a checkpoint file or run dir to continue from; None = start fresh
    init_from: str | None = None  # a run dir (its best.pt, else last.pt) or checkpoint file whose model weights this
    # run starts from, with a fresh optimizer, schedule and counters; None = freshly initialised weights
    checkpoint_every_n_steps: int | None = None  # also write last.pt every N optimizer steps; None = per epoch only
    save_top_k: int = 0  # also keep the k best epochs as checkpoints/epoch=NNN-val_loss=X.pt; 0 = off
    early_stopping_patience: int | None = None  # stop after N epochs without a val/loss improvement; None = off
    on_nonfinite: str = "stop"  # a NaN/Inf loss: stop (the run ends with an error) | skip (drop that update)
    compile: bool = False  # torch.compile the model for training and validation; False = eager
    compile_mode: str = "default"  # with compile=true: default | reduce-overhead | max-autotune |
    # max-autotune-no-cudagraphs
    cuda_graphs: str = "auto"  # CUDA: one captured graph per training step: auto (whenever the run allows it; else
    # eager, logged) | true (an error if it cannot) | false (eager)
    channels_last: bool = True  # conv models: NHWC memory format (measured 25% faster steps on CPU; cuDNN's tensor-core
    # layout); False = NCHW. Dense models ignore it
    devices: int = 1  # data-parallel processes (DDP, one GPU each on CUDA): 1 = this process alone; N > 1 = launch N;
    # -1 = one per visible GPU. Under torchrun: 1 (or -1, or its --nproc_per_node) takes torchrun's processes
    replica_check_every_n_steps: int | None = 200  # DDP: compare a checksum of every process's weights every N
    # optimizer steps (and before every checkpoint); None = before checkpoints only. One process: nothing to compare
    ddp_timeout_s: float = 120.0  # DDP: seconds a process waits for the others at a collective before the run fails (a
    # hung or lost process), > 0

    RANGES = {
        "max_epochs": AT_LEAST_1, "seed": SEED, "accumulate_grad_batches": AT_LEAST_1,
        "num_threads": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 1, or 0 for torch's default "
                        "(OMP_NUM_THREADS if set, else one per core)"),
        "gradient_clip_val": (lambda v: v is None or (_finite(v) and v > 0), "a finite number > 0, or null for no "
                              "clipping"),
        "log_every_n_steps": AT_LEAST_1,
        "checkpoint_every_n_steps": (lambda v: v is None or v >= 1, ">= 1, or null for once per epoch"),
        "save_top_k": AT_LEAST_0,
        "early_stopping_patience": (lambda v: v is None or v >= 1, ">= 1, or null for no early stopping"),
        "devices": (lambda v: v >= 1 or v == -1, ">= 1, or -1 for one process per visible GPU"),
        "replica_check_every_n_steps": (lambda v: v is None or v >= 1, ">= 1, or null to check before checkpoints "
                                        "only"),
        "ddp_timeout_s": (lambda v: _finite(v) and v > 0, "a finite number of seconds > 0"),
    }


@dataclass
class OutputsConfig:
    """What a run writes for people to look at, besides checkpoints and metrics.csv.

    Pictures (loss_curve.png, reconstructions/, and a family's own such as samples/) are drawn at
    the first and last epoch and every `plot_every` epochs in between while drawing stays within
    `render_budget` of the run's time; TensorBoard scalars and summary.json are cheap and written
    every epoch.
    """

    plot_every: int = 1  # epochs between redraws of loss_curve.png and the pictures; 0 = no pictures
    render_budget: float = 0.02  # share of the run's time pictures may take; 0 = first and last epoch only, 1 = no
    # limit
    num_samples: int = 16  # validation samples in each reconstruction picture (and prior samples), the same ones every
    # epoch
    sample_seed: int = 0  # picks those samples (a private generator: the run's RNG is untouched)
    grid_zoom_to: int = 64  # pixels: smaller images are enlarged by a whole factor (nearest); 0 = native size
    figure_format: str = "png"  # png | svg | pdf: svg and pdf also write the loss curve as vector graphics
    # (loss_curve.svg / .pdf)
    tensorboard: bool = True  # tensorboard/: scalars every epoch and log interval, pictures when drawn; false = none
    progress: bool = True  # a live progress bar per epoch when stdout is a terminal; false = epoch lines only
    report: bool = True  # report.html, one page to open (aetrain report), at a run's and a sweep's end; false: none

    RANGES = {
        "plot_every": (lambda v: v >= 0, ">= 0 (0 = no pictures)"),
        "render_budget": (lambda v: 0.0 <= v <= 1.0, "in [0, 1] (a share of the run's time)"),
        "num_samples": (lambda v: 1 <= v <= 64, "in 1..64"), "sample_seed": SEED,
        "grid_zoom_to": (lambda v: v >= 0, ">= 0 (0 = native size)"),
        "figure_format": (lambda v: v in FIGURE_FORMATS, "one of: png, svg, pdf"),
    }


FIGURE_FORMATS = ("png", "svg", "pdf")  # outputs.figure_format: matplotlib writes each without another library


@dataclass
class DiagnosticsConfig:
    """The training doctor's measurements (README "Training doctor"): per-layer statistics on sampled
    steps, a check of the reconstructions every epoch, and a one-line message when a finding first holds.

    Sampling reads nothing back in the step: the statistics stay on the device and are read with
    the engine's own metric reads, and the run's numbers are the same with diagnostics on or off.
    """

    enabled: bool = True  # false = no statistics, no diagnostics.csv, no diag/ scalars, no live findings
    # optimizer steps between sampled steps (the run's first step is always sampled); 0 = auto: half an epoch's
    # optimizer steps, at least 10 (the rules judge per-epoch medians: two samples an epoch keep them fed, and a
    # large dataset's sampling stays cheap; 10 on the digits, where the rules were calibrated)
    every_n_steps: int = 0

    RANGES = {
        "every_n_steps": (lambda v: v >= 0, ">= 0 (0 = auto; diagnostics.enabled=false turns sampling off)")}


@dataclass
class Config:
    """One training run. The default of each group is its default choice."""

    model: ModelConfig = field(default_factory=DenseAEConfig)  # the model family and its keys: model=<name>
    data: DataConfig = field(default_factory=DataConfig)  # the dataset and its keys: data=<name>
    optimizer: OptimizerConfig = field(default_factory=AdamConfig)  # the optimizer and its keys: optimizer=<name>
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)  # the schedule: scheduler=<name>
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # the engine's knobs
    outputs: OutputsConfig = field(default_factory=OutputsConfig)  # what a run writes for people to look at
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)  # the training doctor's measurements
    plugins: list[str] = field(default_factory=list)  # Python files that register models of your own
    # (@aetrain.register_model), imported before the config is composed; kept as absolute paths; [] = none


GROUPS = tuple(CHOICES)  # the sections whose shape depends on their choice


def default_choice(group: str, name: str) -> Any:
    """The default config of `group=name`; ConfigError listing the choices for an unknown name. A model name
    nothing registered yet is looked up among the installed packages' entry points (`aetrain.plugins`)."""
    if group == "model" and name not in CHOICES[group]:
        require_model(name)
    try:
        return CHOICES[group][name]()
    except KeyError:
        raise ConfigError(f"{group}={name!r} is not one of: {', '.join(sorted(CHOICES[group]))}") from None


def require_model(name: Any, files: list[str] | None = None) -> None:
    """Make `model=name` registered: by an installed entry point of that name, else by importing `files` (a run's
    `plugins`). PluginError (one line, naming the plugin) when that fails or does not register it; nothing for a
    name no plugin claims (the caller's lookup says which names there are)."""
    if not isinstance(name, str) or name in CHOICES["model"]:
        return
    loaded = plugins.load_entry_point(name)
    if not loaded and files:
        try:
            plugins.load_files(files)
        except plugins.PluginError as e:  # the run's own plugin, gone or broken since
            raise plugins.PluginError(
                f"model={name} comes from the run's plugin {e.file}: {e.reason}; put it back, or register "
                f"model={name} first (plugins=[its file.py] on the command line, or import its module in Python)",
                file=e.file, reason=e.reason) from None
        loaded = True
    if loaded and name not in CHOICES["model"]:
        source = f"plugins={_typed_list(files)}" if files else f"the entry point {name} (group {plugins.GROUP})"
        raise plugins.PluginError(f"model={name}: {source} did not register it; decorate its model with "
                                  f"@aetrain.register_model({name!r})")


def _typed_list(items: list[str] | None) -> str:
    return "[" + ",".join(items or []) + "]"


def keys_of(section: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(section)]


# --- validation ----------------------------------------------------------------------------------

def _require(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range: must be {allowed}")


def ranges_of(cls: type) -> dict[str, Range]:
    """The range of each field of `cls` that has one: those `cls` declares and those its bases declare."""
    found: dict[str, Range] = {}
    for klass in reversed(cls.__mro__):
        found.update(vars(klass).get("RANGES", {}))
    return found


def check_ranges(section: Any, prefix: str) -> None:
    """Every field of `section` (a config dataclass) within the range its class declares, nested sections too;
    ConfigError naming the first key that is not (`<prefix>.<key>=<value> is out of range: must be ...`)."""
    ranges = ranges_of(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{prefix}.{f.name}")
        elif f.name in ranges:
            ok, allowed = ranges[f.name]
            _require(ok(value), f"{prefix}.{f.name}", allowed, value)


def validate(cfg: Config) -> None:
    """Check ranges and combinations a type cannot express; raises ConfigError naming the key."""
    for group in GROUPS:
        section = getattr(cfg, group)
        expected = type(default_choice(group, section.name))
        if type(section) is not expected:  # `optimizer.name=sgd` under optimizer=adam: the keys would be adam's
            raise ConfigError(f"{group}.name={section.name!r} does not match the {group} keys given; choose it with "
                              f"{group}={section.name}")
    m, o, s = cfg.model, cfg.optimizer, cfg.scheduler
    check_ranges(m, "model")
    validate_data(cfg.data)
    check_ranges(o, "optimizer")
    check_ranges(s, "scheduler")
    if isinstance(m, BackboneModelConfig):
        _check_backbone_keys(m)
    if isinstance(m, DenoisingKeys) and m.noise.kind != "gaussian":
        _require(m.noise.level <= 1.0, "model.noise.level", f"a finite number >= 0 and <= 1 for {m.noise.kind} noise",
                 m.noise.level)
    if isinstance(m, SparsityKeys) and m.sparsity.kind != "kl" and m.sparsity.target != SparsityConfig().target:
        raise ConfigError(f"model.sparsity.target={m.sparsity.target!r} is used by model.sparsity.kind=kl only; "
                          f"this model has model.sparsity.kind={m.sparsity.kind}")
    if isinstance(o, SGDConfig):
        _require(not o.nesterov or o.momentum > 0.0, "optimizer.nesterov", "false unless optimizer.momentum > 0",
                 o.nesterov)
    if isinstance(s, OneCycleSchedulerConfig) and s.cycle_momentum:
        _check_cycled_momentum(o)
    if isinstance(s, CosineSchedulerConfig):
        _require(0.0 <= s.min_lr < o.lr, "scheduler.min_lr", f"in [0, optimizer.lr={o.lr:g})", s.min_lr)

    if getattr(m, "batch_norm", False) and cfg.data.batch_size < 2:
        raise ConfigError(f"model.batch_norm=true needs data.batch_size >= 2 (batch norm normalises over the batch; "
                          f"data.batch_size={cfg.data.batch_size} gives it one sample); raise it or set "
                          "model.batch_norm=false")

    check_ranges(cfg.trainer, "trainer")
    if not cfg.trainer.compile and cfg.trainer.compile_mode != "default":  # it would be silently ignored
        raise ConfigError(f"trainer.compile_mode={cfg.trainer.compile_mode!r} is used only with trainer.compile=true")
    check_ranges(cfg.outputs, "outputs")
    check_ranges(cfg.diagnostics, "diagnostics")


def _check_cycled_momentum(o: OptimizerConfig) -> None:
    """scheduler=onecycle (cycle_momentum) overwrites beta1 / momentum every step: a value set for it would be lost."""
    default = default_choice("optimizer", o.name)
    if hasattr(o, "betas") and o.betas[0] != default.betas[0]:
        raise ConfigError(f"optimizer.betas={o.betas!r}: scheduler=onecycle cycles beta1 between 0.85 and 0.95, "
                          "replacing yours; set scheduler.cycle_momentum=false to keep it")
    if hasattr(o, "momentum") and o.momentum != default.momentum:
        raise ConfigError(f"optimizer.momentum={o.momentum!r}: scheduler=onecycle cycles the momentum between 0.85 "
                          "and 0.95, replacing yours; set scheduler.cycle_momentum=false to keep it")


def validate_data(data: DataConfig) -> None:
    """The data section's ranges (training and every command that takes data overrides)."""
    check_ranges(data, "data")
    _require(data.val_fraction + data.test_fraction < 1.0, "data.test_fraction",
             f"below 1 - data.val_fraction = {1.0 - data.val_fraction:g} (training needs samples)", data.test_fraction)


BACKBONE_KEYS = {"dense": ("hidden_dims",), "conv": ("channels", "kernel_size")}


def _check_backbone_keys(m: BackboneModelConfig) -> None:
    """A key of the backbone not chosen would be silently ignored: refuse it unless it is at its default."""
    defaults = type(m)()  # the family's own defaults (the VAE's dense widths differ)
    for backbone, keys in BACKBONE_KEYS.items():
        for key in keys:
            if backbone != m.backbone and getattr(m, key) != getattr(defaults, key):
                raise ConfigError(f"model.{key}={getattr(m, key)!r} is used by model.backbone={backbone} only; this "
                                  f"model has model.backbone={m.backbone}")


# --- JSON ------------------------------------------------------------------------------------------

def typed(value: Any) -> str:
    """A config value as it is typed on the command line: null, true, [256,128]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(typed, value)) + "]"
    return str(value)


def to_json(cfg: Config) -> str:
    """The config as JSON text: what checkpoints store (plain data, safe under weights_only)."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def from_json(text: str) -> Config:
    """Rebuild a Config from `to_json` text, each group in the shape of its choice.

    Keys the choice does not have are ignored, so configs written before a key moved or was
    dropped (checkpoint format 1 had one flat shape per group) still load.
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"a config is a JSON object, not a {type(data).__name__}")
    files = data.get("plugins")
    files = files if isinstance(files, list) and all(isinstance(f, str) for f in files) else []
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        name = model["name"]
        require_model(name, files)  # a model of your own: its plugin first, as the run had it
        if name not in CHOICES["model"]:
            raise plugins.PluginError(
                f"model={name} is not registered in this process: a model of your own is registered by importing "
                f"its module (@aetrain.register_model({name!r})), by its file (plugins=[my_models.py]) or by its "
                f"package's entry point (group {plugins.GROUP}); built in: {', '.join(sorted(CHOICES['model']))}")
    cfg = Config()
    for f in dataclasses.fields(Config):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "plugins":
            cfg.plugins = list(files)
            continue
        section = default_choice(f.name, value.get("name")) if f.name in CHOICES else getattr(cfg, f.name)
        setattr(cfg, f.name, _update(section, value))
    return cfg


def _update(obj: Any, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in data:
            value = data[f.name]
            is_section = dataclasses.is_dataclass(hints[f.name]) and isinstance(value, dict)
            setattr(obj, f.name, _update(getattr(obj, f.name), value) if is_section else value)
    return obj


# --- commands after training -----------------------------------------------------------------------
# `aetrain eval|encode|score|export <run dir> [key=value ...]`: each command's own section. Their data
# section is the run's own (from its checkpoint) unless data=<name> or data.<key>=<value> is given.

SPLITS = ("auto", "train", "val", "test", "all")  # which samples a command works on; auto is each command's own
SPLIT: Range = (lambda v: v in SPLITS, f"one of: {', '.join(SPLITS)}")


@dataclass
class EvalConfig:
    """`aetrain eval`: reconstruction errors against PCA of the same size, and the codes as features."""

    split: str = "auto"  # auto (the run's validation split; every sample of data given here) | train | val | test | all
    num_worst: int = 16  # samples in worst.png, the worst reconstructed first, in 1..64
    probe_samples: int = 10000  # most training samples the logistic-regression probes fit on; 0 = no probes
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps
    out: str | None = None  # the folder to write into; null = <run dir>/eval

    RANGES = {"split": SPLIT, "num_worst": (lambda v: 1 <= v <= 64, "in 1..64"),
              "probe_samples": (lambda v: v >= 0, ">= 0 (0 = no probes)")}


@dataclass
class EncodeConfig:
    """`aetrain encode`: the code of every sample, and a 2-D map of the codes."""

    split: str = "auto"  # auto (every sample) | train | val | test | all
    map: str = "auto"  # codes.png's 2-D view: auto (the codes themselves when 2-d, else pca) | pca | tsne
    map_samples: int = 5000  # most samples drawn in codes.png (a seeded subset, >= 2); codes.npy holds every sample
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps
    out: str | None = None  # the folder to write into; null = <run dir>/encode

    RANGES = {
        "split": SPLIT, "map": (lambda v: v in ("auto", "pca", "tsne"), "one of: auto, pca, tsne"),
        "map_samples": (lambda v: v >= 2, ">= 2")}


@dataclass
class ScoreConfig:
    """`aetrain score`: reconstruction error as an anomaly score, with a threshold and, given labels, AUROC."""

    split: str = "auto"  # auto (the run's test split, else its validation split, plus every sample of a class not
    # trained on; every sample of data given here) | train | val | test | all
    quantile: float = 0.99  # threshold = this quantile of the errors on the run's validation split, in (0, 1]
    normal_classes: list[int] | None = None  # labels that are normal for AUROC and AP; null = the classes trained on
    seed: int = 0  # IsolationForest's random_state, in [0, 2**32 - 1]
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps
    out: str | None = None  # the folder to write into; null = <run dir>/score

    RANGES = {
        "split": SPLIT, "quantile": (lambda v: _finite(v) and 0.0 < v <= 1.0, "in (0, 1]"),
        "normal_classes": (lambda v: v is None or (len(v) >= 1 and len(set(v)) == len(v)),
                           "a non-empty list of distinct labels, or null for the classes trained on"),
        "seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32 - 1] (what IsolationForest takes)")}


@dataclass
class ExportConfig:
    """`aetrain export`: the model, its encoder and its decoder for inference outside aetrain, checked."""

    format: str = "onnx"  # onnx | torchscript | exported_program
    check_samples: int = 64  # real samples (the run's validation split, or data given here) to check the export on, >=
    # 1
    tolerance: float = 1e-4  # largest difference from PyTorch allowed, in model units (a fraction of data.scale); above
    # = the export fails
    out: str | None = None  # the folder to write into; null = <run dir>/export

    RANGES = {
        "format": (lambda v: v in ("onnx", "torchscript", "exported_program"),
                   "one of: onnx, torchscript, exported_program"),
        "check_samples": AT_LEAST_1, "tolerance": POSITIVE}


@dataclass
class LRFindConfig:
    """`aetrain lr_find`: the learning-rate range test's own settings (`lr_find.num_steps=200 ...`)."""

    min_lr: float = 1e-7  # the learning rate of the first step, > 0
    max_lr: float = 1.0  # the learning rate of the last step, > min_lr
    num_steps: int = 100  # optimizer steps over which the rate rises exponentially, >= 20
    divergence: float = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum, > 1

    RANGES = {
        "min_lr": POSITIVE, "max_lr": POSITIVE, "num_steps": (lambda v: v >= 20, ">= 20"),
        "divergence": (lambda v: _finite(v) and v > 1, "a finite number > 1")}


def validate_command(name: str, section: Any) -> None:
    """Check a command's own section (`name` is its prefix on the command line: eval, encode, lr_find, ...)."""
    check_ranges(section, name)
    if isinstance(section, LRFindConfig):
        _require(section.max_lr > section.min_lr, "lr_find.max_lr", f"a finite number > lr_find.min_lr="
                 f"{section.min_lr:g}", section.max_lr)


# --- documentation ---------------------------------------------------------------------------------

def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment, from the source of the dataclass that declares it (a subclass's own first): the
    comment on the field's line, continued by the comment lines right below it (unless they stand right above a
    field without a comment of its own: then they are that field's); or, for a field whose line has none, the
    comment lines right above it. A field redeclared without a comment keeps its base's. Fields without any are
    missing from the result (tests keep every field documented)."""
    found: dict[str, str] = {}
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            for name, comment in _module_comments(klass.__module__).get(klass.__qualname__, {}).items():
                found.setdefault(name, comment)
    return found


@functools.cache
def _module_comments(module: str) -> dict[str, dict[str, str]]:
    """class qualname -> field -> comment, for every class of `module` (its source read and tokenized once)."""
    try:
        source = inspect.getsource(sys.modules[module])
    except (KeyError, OSError, TypeError):  # no source shipped: keys and defaults only
        return {}
    lines = source.splitlines()
    out: dict[str, dict[str, str]] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                out[prefix + node.name] = _field_comments(node, lines)
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(node.body, f"{prefix}{node.name}.<locals>.")

    visit(ast.parse(source).body, "")
    return out


def _field_comments(cls: ast.ClassDef, lines: list[str]) -> dict[str, str]:
    def comment(i: int) -> str | None:  # the text of line i when it is a comment line
        text = lines[i].strip() if 0 <= i < len(lines) else ""
        return text.lstrip("#").strip() if text.startswith("#") else None

    fields = [node for node in cls.body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)]
    trailing = {node.end_lineno - 1: lines[node.end_lineno - 1][node.end_col_offset:].strip() for node in fields}
    found = {}
    for node in fields:
        first, last = node.lineno - 1, node.end_lineno - 1
        text = []
        if trailing[last].startswith("#"):  # on the field's line (after its code), and the comment lines below
            text.append(trailing[last].lstrip("#").strip())
            below = last + 1
            while comment(below) is not None:
                below += 1
            if not (below in trailing and not trailing[below].startswith("#")):  # unless they are above (and so
                text += [comment(i) for i in range(last + 1, below)]  # belong to) a field without a comment of its own
        else:  # above the field
            above = first - 1
            while comment(above) is not None:
                above -= 1
            text = [comment(i) for i in range(above + 1, first)]
        if text:
            found[node.target.id] = " ".join(text)
    return found

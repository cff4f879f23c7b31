"""Per-layer statistics of training, sampled every `diagnostics.every_n_steps` optimizer steps.

`LayerProbe` hangs off `TrainStep`'s `GradientProbe` seam. On a sampled step it measures, for
every module that has parameters of its own (named as in `model.named_modules()`):
- the gradient norm (unscaled, before clipping),
- the weight norm (before the update) and the update-to-weight ratio ||w_after - w_before|| / ||w_before||;
and, through forward hooks that exist only for the sampled step's forward pass:
- for each hidden ReLU / ReLU6, the share of dead units: units (one per output element of a
  sample: a feature, or a channel at a position) that output zero for every sample of the batch;
- for each hidden sigmoid / tanh, the share of saturated outputs: outputs where the function's
  slope is below 5% of its peak (sigmoid within 0.0127 of 0 or 1, tanh within 0.025 of +-1);
- for the code (the encoder's output; a VAE's mean), each unit's variance across the batch and
  the mean |z|.
With gradient accumulation, activations are those of the step's first micro-batch.

Nothing here reads a number back to the host: each sampled step leaves one flat tensor on the
device, and `read` turns all of them into numbers in one transfer, which the diagnostics output
does right after the engine's own metric reads (log interval, epoch end). The statistics are pure
reads of tensors the step computed anyway: no global RNG is drawn, no tensor the step uses is
changed, so a run's numbers are bit-identical with diagnostics on or off (tested).

Hooks registered on the modules of a `torch.compile`d model after it was compiled are not run by
the compiled code, so with `trainer.compile=true` the activation and code statistics are missing
(NaN); gradients, weights and updates are measured on the parameters and always present.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aetrain.config import DiagnosticsConfig
from aetrain.data import Data
from aetrain.train.step import GradientProbe, TrainStep

# hidden activations with a flat region: where a unit can die (zero output and zero slope for every sample)
DEAD_KINDS = (nn.ReLU, nn.ReLU6)
# where the slope falls below 5% of its peak: sigmoid' = s(1 - s) < 0.0125 for s < 0.0127 or s > 0.9873,
# tanh' = 1 - t^2 < 0.05 for |t| > 0.9747
SIGMOID_MARGIN = 0.0127
TANH_MARGIN = 0.0253
MAX_PENDING = 10_000  # sampled steps kept on the device until read; older ones are dropped beyond this


@dataclass(frozen=True)
class Column:
    """One number of a sampled step: which layer, which statistic."""

    layer: str
    kind: str  # the module's class name (Linear, Conv2d, ReLU, Sigmoid, ...), or "code"
    stat: str  # grad_norm | weight_norm | update_ratio | dead_share | saturated_share | mean_abs | unit_var


class LayerProbe(GradientProbe):
    """Samples per-layer statistics every `every_n_steps` optimizer steps (see the module docstring), from
    `start` on: an engine without the diagnostics output to read them (the Python API's own callbacks)
    measures nothing and keeps nothing."""

    def __init__(self, model: nn.Module, every_n_steps: int, *, latent_dim: int) -> None:
        self.every = every_n_steps
        self.latent_dim = latent_dim
        self.layers: list[tuple[str, nn.Module]] = [
            (name, m) for name, m in model.named_modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))]
        self.params: list[torch.Tensor] = []
        layer_of_param: list[int] = []
        for i, (_, m) in enumerate(self.layers):
            for p in m.parameters(recurse=False):
                if p.requires_grad:
                    self.params.append(p)
                    layer_of_param.append(i)
        device = self.params[0].device if self.params else torch.device("cpu")
        self.layer_index = torch.tensor(layer_of_param, dtype=torch.long, device=device)  # (params,)
        self.activations: list[tuple[str, nn.Module, str]] = [
            (name, m, "dead_share" if isinstance(m, DEAD_KINDS) else "saturated_share")
            for name, m in model.named_modules()
            if isinstance(m, (*DEAD_KINDS, nn.Sigmoid, nn.Tanh)) and name != "output"]  # output: the data's range
        self.encoder: nn.Module | None = getattr(model, "encoder", None)
        names = [name for name, _ in model.named_modules()]
        encoder_end = max((i for i, n in enumerate(names) if n == "encoder" or n.startswith("encoder.")),
                          default=len(names))
        # network order for the rows of a sampled step: each layer as named_modules() lists it, the code after
        # the encoder's last module
        self.order: dict[str, float] = {**{n: float(i) for i, n in enumerate(names)}, "code": encoder_end + 0.5}
        self.columns = self._columns()
        self.next_step = 0  # 0-based index of the next optimizer step
        self.started = False  # measuring only once the diagnostics output reads it (`start`)
        self.sampling = False
        self.pending: list[tuple[int, torch.Tensor]] = []  # (steps taken after the sampled step, its numbers)
        self.captured: dict[str, torch.Tensor] = {}
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.before: list[torch.Tensor] = []
        self.grad_norms: torch.Tensor | None = None

    def _columns(self) -> list[Column]:
        cols = [Column(name, type(m).__name__, stat) for stat in ("grad_norm", "weight_norm", "update_ratio")
                for name, m in self.layers]
        cols += [Column(name, type(m).__name__, stat) for name, m, stat in self.activations]
        cols.append(Column("code", "code", "mean_abs"))
        cols += [Column("code", "code", "unit_var")] * self.latent_dim
        return cols

    # --- the step's seam -----------------------------------------------------------------------------

    def start(self, step: int) -> None:
        """Training starts (or resumes) with `step` optimizer steps already taken."""
        self.next_step = step
        self.started = True
        self.pending.clear()
        self._arm(step % self.every == 0)

    def before_update(self, step: TrainStep) -> None:
        if not self.sampling:
            return
        self._disarm()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]  # unused: no gradient
        self.grad_norms = self._per_layer(torch.stack(torch._foreach_norm(grads)).float())
        self.before = [p.detach().clone() for p in self.params]

    def after_update(self, step: TrainStep) -> None:
        if self.sampling:
            if len(self.pending) >= MAX_PENDING:  # nobody reads them (an engine without the diagnostics output)
                del self.pending[: MAX_PENDING // 2]
            self.pending.append((self.next_step + 1, self._row()))
            self.before, self.captured = [], {}
        self.next_step += 1
        self._arm(self.started and self.next_step % self.every == 0)

    # --- measuring ----------------------------------------------------------------------------------

    def _per_layer(self, norms: torch.Tensor) -> torch.Tensor:
        """Per-parameter norms (params,) -> per-layer norms (layers,): the root of the sum of squares."""
        sums = torch.zeros(len(self.layers), device=norms.device).index_add_(0, self.layer_index, norms.square())
        return sums.sqrt()

    def _row(self) -> torch.Tensor:
        with torch.no_grad():
            params = [p.detach() for p in self.params]
            weights = self._per_layer(torch.stack(torch._foreach_norm(self.before)).float())  # before the update
            updates = self._per_layer(torch.stack(torch._foreach_norm(torch._foreach_sub(params, self.before))).float())
            nan = torch.full((), math.nan, device=weights.device)
            acts = [self.captured.get(name, nan) for name, _, _ in self.activations]
            code = self.captured.get("code")
            code = code if code is not None else torch.full((1 + self.latent_dim,), math.nan, device=weights.device)
            return torch.cat([self.grad_norms, weights, updates / weights.clamp_min(1e-30),
                              torch.stack(acts) if acts else weights[:0], code])

    def _arm(self, sampling: bool) -> None:
        self.sampling = sampling
        if not sampling or self.hooks:
            return
        for name, module, stat in self.activations:
            self.hooks.append(module.register_forward_hook(self._activation_hook(name, stat)))
        if self.encoder is not None:
            self.hooks.append(self.encoder.register_forward_hook(self._code_hook))

    def _disarm(self) -> None:
        for handle in self.hooks:
            handle.remove()
        self.hooks = []

    def _activation_hook(self, name: str, stat: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not module.training or name in self.captured:  # validation and pictures run in eval mode
                return
            with torch.no_grad():
                y = _rows(output.detach())  # (B, units)
                if stat == "dead_share":
                    alive = y.amax(dim=0) > 0  # (units,): positive for some sample
                    value = 1.0 - torch.count_nonzero(alive) / alive.numel()
                elif isinstance(module, nn.Sigmoid):
                    value = torch.count_nonzero((y < SIGMOID_MARGIN) | (y > 1 - SIGMOID_MARGIN)) / y.numel()
                else:
                    value = torch.count_nonzero(y.abs() > 1 - TANH_MARGIN) / y.numel()
            self.captured[name] = value.float()

        return hook

    def _code_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not module.training or "code" in self.captured:
            return
        with torch.no_grad():
            z = output.detach().float()[:, : self.latent_dim]  # (B, latent_dim); a VAE's encoder emits [mean, logvar]
            self.captured["code"] = torch.cat([z.abs().mean()[None], z.var(dim=0, unbiased=False)])

    # --- reading ------------------------------------------------------------------------------------

    def read(self) -> list[tuple[int, list[float]]]:
        """The sampled steps since the last read: (steps taken, numbers in `columns` order). One transfer."""
        if not self.pending:
            return []
        steps = [s for s, _ in self.pending]
        values = torch.stack([v for _, v in self.pending]).tolist()
        self.pending.clear()
        return list(zip(steps, values))


def _rows(y: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, units), a view where the layout allows: channels_last images are read as (B, H, W, C),
    whose rows are contiguous (a reduction over the batch of the NCHW view is 40x slower on a CPU)."""
    if y.dim() == 4 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last):
        y = y.permute(0, 2, 3, 1)
    return y.reshape(y.shape[0], -1)


EFFECT_SAMPLES = 64  # samples whose reconstructions the code-unit check shuffles each unit across
AUTO_MIN_INTERVAL = 10  # diagnostics.every_n_steps=0: half an epoch's optimizer steps, at least this many


def sampling_interval(cfg: DiagnosticsConfig, steps_per_epoch: int) -> int:
    """Optimizer steps between sampled steps: `every_n_steps`, or for 0 (auto) half an epoch, at least 10.

    Measured with benchmarks/throughput.py on the 2-core CPU (batch 256, 234 steps an epoch):
    sampling every 10 steps cost 4-5% of the epoch, so a fixed 10 would tax large datasets; half an
    epoch (117) costs under 1%, and on the digits (12 steps an epoch) auto is the 10 the rules were
    calibrated with. Each sampled step of a CUDA-graphed run runs eagerly, which the rare sampling
    of auto keeps cheap too."""
    return cfg.every_n_steps or max(AUTO_MIN_INTERVAL, steps_per_epoch // 2)


def build_probe(cfg: DiagnosticsConfig, model: nn.Module, *, latent_dim: int, steps_per_epoch: int) -> GradientProbe:
    """The probe the step calls: a `LayerProbe`, or the one that does nothing when diagnostics are off."""
    if not cfg.enabled:
        return GradientProbe()
    return LayerProbe(model, sampling_interval(cfg, steps_per_epoch), latent_dim=latent_dim)


class ReconstructionCheck:
    """What the model reconstructs, on a fixed set of up to `num` validation samples.

    - `data_error`: the reconstruction error (MSE) of the samples relative to that of their mean
      image, the best a model that ignores its input can do: 0 = perfect, 1 = no better than the mean.
    - `noise_error`: the same for "noise": the samples with every feature shuffled independently
      across samples, so each pixel keeps its distribution (and the mean image its error) but the
      structure between pixels is gone. A model that learned the data reconstructs such noise
      hardly better than the mean image (near 1); one that copies its input reconstructs it as
      well as data (near 0).
    - `hf_ratio` (images): the high-frequency energy of the reconstructions over that of the
      originals; "high" is every spatial frequency above half the Nyquist limit (radius > 0.25
      cycles per pixel of the 2-D FFT). 1 = as sharp as the data; blurry reconstructions score low.
    - `code_unit_effect`: for each code unit, how much the reconstructions of the first
      `num_effect` samples change when that unit alone is shuffled across them (mean squared
      change, relative to the same data variance as above). A unit the decoder ignores scores 0,
      whatever the scale of the code: a code shrunk by a sparsity penalty and rescaled by the
      decoder, or a VAE's collapsed posterior, is judged by what it does, not by its variance.
      A code wider than EFFECT_UNITS_MAX is judged on a seeded sample of that many units (the same
      every epoch; NaN for the others), and the shuffled codes are decoded in chunks
      (`unit_chunk`): measuring every unit of a 100,000-unit code at once took latent^2 x 64 x 4
      bytes (2.6 TB), and even chunked, its 6.4 million decodes would cost far more than an epoch.

    The samples and the shuffles come from private generators; the model runs in eval mode under
    inference mode, so the run's random streams and numbers are untouched.
    """

    def __init__(self, data: Data, *, num: int = 256, num_effect: int = EFFECT_SAMPLES, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        n = min(num, data.num_val)
        idx = torch.randperm(data.num_val, generator=generator)[:n].sort().values
        if isinstance(data.val, torch.Tensor):
            x = data.val[idx.to(data.val.device)]
        else:  # an image folder: load just these
            x = torch.stack([data.val[i] for i in idx.tolist()])
        x = x.to(data.device)  # (n, *shape), model units
        flat = x.flatten(1).cpu()  # (n, D)
        shuffle = torch.rand(flat.shape, generator=generator).argsort(dim=0)  # an independent order per feature
        self.samples = x
        self.noise = flat.gather(0, shuffle).reshape(x.shape).to(x.device, memory_format=_format_of(x))
        self.image = data.spec.is_image
        m = min(num_effect, n)
        self.effect_order = torch.randperm(m, generator=generator).to(x.device)  # how a unit is shuffled
        self.num_effect = m
        self.seed = seed
        self.preset: dict[str, Any] | None = None  # the next `measure`'s numbers, when measured elsewhere

    @torch.inference_mode()
    def measure(self, model: nn.Module) -> dict[str, float]:
        """{"data_error", "noise_error"[, "hf_ratio" for images], "code_unit_effect"}; one host read."""
        if self.preset is not None:  # measured already, with the other members of a fused group
            numbers, self.preset = self.preset, None
            return numbers
        was_training = model.training
        model.eval()
        try:
            x_hat = model(self.samples)[1]  # (n, *shape) -> (n, *shape)
            noise_hat = model(self.noise)[1]
            z = model.code(self.samples[: self.num_effect]).float()  # (m, latent); a VAE's mean
            base = model.generate(z)  # (m, *shape)
            change = self.unit_change(z, base, model.generate)  # (latent,)
        finally:
            model.train(was_training)
        return self.numbers(x_hat, noise_hat, change)

    def numbers(self, x_hat: torch.Tensor, noise_hat: torch.Tensor, change: torch.Tensor) -> dict[str, Any]:
        """The check's numbers from the model's reconstructions of the samples and of the noise and the code
        units' effect (`unit_change`)."""
        x_hat, noise_hat = x_hat.float(), noise_hat.float()
        x, noise = self.samples.float(), self.noise.float()
        baseline = (x - x.mean(dim=0)).square().mean().clamp_min(1e-30)  # the mean image's error; the noise's too
        values = {"data_error": (x_hat - x).square().mean() / baseline,
                  "noise_error": (noise_hat - noise).square().mean() / baseline}
        if self.image:
            values["hf_ratio"] = high_frequency_energy(x_hat) / high_frequency_energy(x).clamp_min(1e-30)
        numbers = torch.cat([torch.stack(list(values.values())), change / baseline]).tolist()  # one read
        return {**dict(zip(values, numbers)), "code_unit_effect": numbers[len(values):]}

    def unit_change(self, z: torch.Tensor, base: torch.Tensor,
                    decode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Per code unit: the mean squared change of the reconstructions `base` (m, *shape) of the codes `z`
        (m, latent) when that unit alone is shuffled across them (NaN for the units of a wide code that are not
        measured, see `measured_units`). `decode`: codes (k * m, latent) -> their reconstructions."""
        change = torch.full((z.shape[1],), math.nan, device=z.device)
        for units in self.unit_chunks(z.shape[1], z.device):
            self.add_change(change, units, decode(self.shuffled(z, units)), base)
        return change

    @staticmethod
    def add_change(change: torch.Tensor, units: torch.Tensor, out: torch.Tensor, base: torch.Tensor) -> None:
        """`change[units]` from the reconstructions `out` (k * m, *shape) of `shuffled(z, units)`."""
        m = base.shape[0]
        out = out.float().reshape(len(units), m, -1)  # (k, m, D)
        change[units] = (out - base.float().reshape(m, -1)).square().mean(dim=(1, 2))

    def unit_chunks(self, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The measured code units (`measured_units`) in chunks decoded together: k units make k * m decodes,
        bounded memory (`unit_chunk`)."""
        return measured_units(width, self.seed).to(device).split(unit_chunk(width, self.num_effect))

    def shuffled(self, z: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """(m, latent) -> (k * m, latent): block i is `z` with unit units[i] alone shuffled across the samples."""
        m, width = z.shape
        k = len(units)
        codes = z.expand(k, m, width).clone()  # (k, m, latent)
        codes[torch.arange(k, device=z.device), :, units] = z[self.effect_order][:, units].T  # (k, m)
        return codes.reshape(k * m, width)


# The code-unit check measures at most this many units (a seeded sample of a wider code, the same every epoch):
# each costs EFFECT_SAMPLES (64) decodes through a decoder whose first layer grows with the code. Measured on the
# 2-core VM (dense_ae, digits, one thread): 16 units (every preset, measured whole) 8 ms against a 120 ms epoch;
# with 256 units of a 4096-unit code the check took 0.74 s against a 0.70 s epoch, and of a 100,000-unit code
# 24 s against 12 s; with 64 units (this) 0.27 s against 1.1 s and 7.7 s against 21 s (the VM busier).
EFFECT_UNITS_MAX = 64
# A chunk of the check decodes at most this many shuffled codes at once (the 16 x 64 codes of a 16-unit code, as
# the check always did in one go) and holds at most CHUNK_ELEMENTS of them.
CHUNK_DECODES = 1024
CHUNK_ELEMENTS = 16 * 2**20  # 64 MB of float32 codes


def measured_units(width: int, seed: int = 0) -> torch.Tensor:
    """The code units the check measures, sorted: all of a code of up to EFFECT_UNITS_MAX units, else a seeded
    sample of that many."""
    if width <= EFFECT_UNITS_MAX:
        return torch.arange(width)
    return torch.randperm(width, generator=torch.Generator().manual_seed(seed))[:EFFECT_UNITS_MAX].sort().values


def unit_chunk(width: int, num_effect: int) -> int:
    """Code units shuffled and decoded together: k of them make k * num_effect codes of `width` (>= 1)."""
    return max(1, min(width, CHUNK_DECODES // max(num_effect, 1), CHUNK_ELEMENTS // max(num_effect * width, 1)))


def unit_check_elements(width: int, num_effect: int, per_sample: int) -> int:
    """Elements one chunk of the code-unit check holds at its peak: the shuffled codes and, for each, the model's
    layer outputs (`per_sample`, an upper bound of the decoder's). For the memory estimate (train/memory.py)."""
    codes = unit_chunk(width, num_effect) * num_effect
    return codes * (width + per_sample)


def high_frequency_energy(x: torch.Tensor) -> torch.Tensor:
    """Total power of images (n, C, H, W) at spatial frequencies above half the Nyquist limit."""
    power = torch.fft.fft2(x.float()).abs().square()  # (n, C, H, W)
    fy = torch.fft.fftfreq(x.shape[-2], device=x.device)[:, None]  # cycles per pixel, in [-0.5, 0.5)
    fx = torch.fft.fftfreq(x.shape[-1], device=x.device)[None, :]
    high = (fy.square() + fx.square()).sqrt() > 0.25  # (H, W)
    return (power * high).sum()


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format

"""K autoencoders of one shape as one batched network, whose weights are the members' own.

`FusedAutoencoder.of(models)` takes K models built exactly as their jobs alone build them (each
from its own seed), stacks each layer's weights into one tensor and points every member's
parameters and buffers at its slice of the stack. The members stay complete `Autoencoder`s,
always holding the current weights without a copy: checkpoints, pictures, the training doctor's
reconstruction check and every command after training use them as they use any run's model.

Activations travel in one of two layouts:
- members: (K, B, *features), member k's batch at [k] (dense layers, the code, the outputs);
- grouped: (B, K*C, H, W) in the model's memory format, member k's channels at k*C:(k+1)*C
  (convolutions: one grouped convolution with groups=K runs every member's).
Each fused layer takes the layout it needs, converting when the previous layer gave the other.

Per layer: `Linear` -> `torch.baddbmm` over the stacked weights; `Conv2d`/`ConvTranspose2d` ->
a grouped convolution; `BatchNorm1d/2d` -> one batch norm over K*C channels (each member's
statistics are its own channels'); activations apply to the whole stack (every one aetrain
offers is elementwise and parameter-free, PReLU aside, which is not fused); `Dropout` draws each
member's mask from that member's own random stream (`Streams`), exactly as its job alone draws
it, and the VAE's code noise likewise.

Exactness on the CPU (measured with torch 2.14, MKL, 1 and 2 threads): baddbmm gives bit for bit
the numbers of each member's own `F.linear`, forward and backward, except for very small layers
(in x out x batch under 400, where torch takes a loop of its own) and wide ones with several
threads (784 x 512: MKL splits a single matrix product differently); batch norm over K*C channels
gives each member's own statistics and gradients bit for bit; grouped convolutions give the same
outputs and input gradients, and the same weight gradients on one thread; with several threads
the weight gradient of a one-channel layer (the first and last layer of an image model) is summed
in another order (float rounding). Elementwise functions give the same bits as long as each
member's part of a tensor is a whole number of SIMD vectors (16 floats with AVX-512), which the
digits' shapes are.

Diagnostics: on a step the training doctor samples, the members' own forward hooks (registered
on their modules by `aetrain.train.diagnostics.LayerProbe`) are called with each member's slice
of the fused layer's output, so dead units, saturation and the code's statistics are measured as
in a job alone.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aetrain.models import Autoencoder, VariationalAutoencoder
from aetrain.models.base import sample_code

MEMBERS, GROUPED = "members", "grouped"
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity)


class Unfusable(ValueError):
    """A model with a layer the fused network does not batch (then the job trains alone)."""


@dataclass
class RngState:
    """One member's random streams: torch's CPU (and CUDA) generator states, Python's and numpy's."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None
    python: Any
    numpy: Any

    @classmethod
    def current(cls, device: torch.device) -> RngState:
        """The global generators' states now (what a job alone would continue from)."""
        return cls(torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                   random.getstate(), np.random.get_state())

    def install(self, device: torch.device, *, torch_only: bool = False) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, device)
        if not torch_only:
            random.setstate(self.python)
            np.random.set_state(self.numpy)

    def keep_torch(self, device: torch.device) -> None:
        """Take torch's current states as this member's (after it drew)."""
        self.cpu = torch.get_rng_state()
        if self.cuda is not None:
            self.cuda = torch.cuda.get_rng_state(device)


class Streams:
    """Each member's random streams, swapped into torch's global generators while that member draws: its
    noise, dropout masks and VAE draws are then the very numbers its job alone draws from the global
    generators, in the same order, whatever the other members draw. Swapping costs about 2 microseconds.

    Python's and numpy's generators are not drawn from while training; `scope` installs them too, for a
    member's callbacks that save them (checkpoints)."""

    def __init__(self, states: Sequence[RngState], device: torch.device) -> None:
        self.states = list(states)
        self.device = device

    @contextlib.contextmanager
    def of(self, k: int, *, torch_only: bool = True) -> Iterator[None]:
        """Member k's streams are the global ones inside; its own have advanced by what was drawn after."""
        state = self.states[k]
        outer_cpu = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state(self.device) if state.cuda is not None else None
        state.install(self.device, torch_only=torch_only)
        try:
            yield
        finally:
            state.keep_torch(self.device)
            torch.set_rng_state(outer_cpu)
            if outer_cuda is not None:
                torch.cuda.set_rng_state(outer_cuda, self.device)


class FusedLayer(nn.Module):
    """One layer of every member. `takes`: the layout it needs (None: either); `members`: the member
    modules it stands for (not registered: their parameters are views of this layer's)."""

    takes: str | None = None

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.__dict__["members"] = list(modules)

    def adopt(self) -> None:
        """Point the members' parameters and buffers at their slices of this layer's."""

    def release(self) -> None:
        """Give the members' parameters and buffers storage of their own again (a member leaving the group)."""
        for module in self.members:
            for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                t.data = t.data.clone()

    def hooked(self) -> bool:
        return any(m._forward_hooks for m in self.members)


def _stack(tensors: Sequence[torch.Tensor], *, cat: bool = False) -> torch.Tensor:
    return (torch.cat if cat else torch.stack)([t.detach() for t in tensors])


class BatchedLinear(torch.autograd.Function):
    """y = x W^T + b for every member: (K, B, in), (K, out, in), (K, out) -> (K, B, out).

    The backward pass is written out so that the weights' gradient comes out as (K, out, in) contiguous, the
    layout of the stacked weight (autograd's own would be a transposed view, which it copies before keeping);
    each member's part is what `F.linear`'s backward computes for it (checked bit for bit). Under autocast the
    product runs in the autocast dtype, as a linear layer's does, and the gradients return in the weights' dtype.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.dtypes = (x.dtype, weight.dtype)
        with torch.autocast(device, enabled=False):
            return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad = grad.to(x.dtype)
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = torch.bmm(grad, weight) if need_x else None  # (K, B, out) @ (K, out, in)
        grad_w = torch.bmm(grad.transpose(1, 2), x) if need_w else None  # (K, out, B) @ (K, B, in)
        grad_b = grad.sum(1) if need_b else None
        return grad_x, grad_w, grad_b


class FusedLinear(FusedLayer):
    takes = MEMBERS

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__(layers)
        self.weight = nn.Parameter(_stack([m.weight for m in layers]))  # (K, out, in)
        self.bias = nn.Parameter(_stack([m.bias for m in layers]))  # (K, out)

    def adopt(self) -> None:
        for k, m in enumerate(self.members):
            m.weight.data, m.bias.data = self.weight.data[k], self.bias.data[k]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return BatchedLinear.apply(h, self.weight, self.bias)  # (K, B, in) -> (K, B, out)


class FusedConv(FusedLayer):
    """Conv2d or ConvTranspose2d of every member as one grouped convolution (groups = K)."""

    takes = GROUPED

    def __init__(self, layers: Sequence[nn.Conv2d | nn.ConvTranspose2d], memory_format: torch.memory_format) -> None:
        super().__init__(layers)
        first = layers[0]
        self.transposed = isinstance(first, nn.ConvTranspose2d)
        self.rows = first.weight.shape[0]  # each member's block of the stacked weight (out, or in when transposed)
        self.outputs = first.bias.shape[0]  # and of the stacked bias
        self.stride, self.padding, self.dilation = first.stride, first.padding, first.dilation
        self.output_padding = first.output_padding
        self.weight = nn.Parameter(_stack([m.weight for m in layers], cat=True).contiguous(memory_format=memory_format))
        self.bias = nn.Parameter(_stack([m.bias for m in layers], cat=True))  # (K * out,)

    def adopt(self) -> None:
        n, c = self.rows, self.outputs
        for k, m in enumerate(self.members):
            m.weight.data, m.bias.data = self.weight.data[k * n : (k + 1) * n], self.bias.data[k * c : (k + 1) * c]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k = len(self.members)
        if self.transposed:  # (B, K * in, H, W) -> (B, K * out, H', W')
            return F.conv_transpose2d(h, self.weight, self.bias, self.stride, self.padding, self.output_padding, k,
                                      self.dilation)
        return F.conv2d(h, self.weight, self.bias, self.stride, self.padding, self.dilation, k)


class FusedBatchNorm(FusedLayer):
    """BatchNorm1d (members layout) or BatchNorm2d (grouped) of every member as one over K*C channels."""

    def __init__(self, layers: Sequence[nn.BatchNorm1d | nn.BatchNorm2d]) -> None:
        super().__init__(layers)
        first = layers[0]
        self.takes = MEMBERS if isinstance(first, nn.BatchNorm1d) else GROUPED
        self.momentum, self.eps, self.channels = first.momentum, first.eps, first.num_features
        self.weight = nn.Parameter(_stack([m.weight for m in layers], cat=True))  # (K * C,)
        self.bias = nn.Parameter(_stack([m.bias for m in layers], cat=True))
        self.register_buffer("running_mean", _stack([m.running_mean for m in layers], cat=True))
        self.register_buffer("running_var", _stack([m.running_var for m in layers], cat=True))
        self.register_buffer("num_batches_tracked", _stack([m.num_batches_tracked for m in layers]))  # (K,)

    def adopt(self) -> None:
        c = self.channels
        for k, m in enumerate(self.members):
            part = slice(k * c, (k + 1) * c)
            m.weight.data, m.bias.data = self.weight.data[part], self.bias.data[part]
            m.running_mean.data, m.running_var.data = self.running_mean.data[part], self.running_var.data[part]
            m.num_batches_tracked.data = self.num_batches_tracked.data[k]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)  # what nn.BatchNorm counts (read only when momentum is None)
        if self.takes == GROUPED:
            return F.batch_norm(h, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                                self.momentum, self.eps)
        k, b, c = h.shape  # (K, B, C) -> (B, K * C): each member's features are K * C channels of one batch norm
        y = F.batch_norm(h.transpose(0, 1).reshape(b, k * c), self.running_mean, self.running_var, self.weight,
                         self.bias, self.training, self.momentum, self.eps)
        return y.view(b, k, c).transpose(0, 1).contiguous()


class FusedElementwise(FusedLayer):
    """A parameter-free activation: the same function on the whole stack."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.members[0].forward(h)  # not __call__: member 0's own hooks must see member 0's slice alone


class FusedDropout(FusedLayer):
    """Dropout with each member's own rate and its own mask, drawn from its own stream as its job alone draws it:
    on the CPU `empty_like(x).bernoulli_(1 - p).div_(1 - p)` (torch's dropout), on CUDA torch's fused kernel's
    mask. `view(h, k)` gives member k's activation in the layout its job alone has."""

    def __init__(self, layers: Sequence[nn.Dropout], streams: Callable[[], Streams],
                 view: Callable[[torch.Tensor, int], torch.Tensor],
                 write: Callable[[torch.Tensor, int, torch.Tensor], None]
                 ) -> None:
        super().__init__(layers)
        self.rates = [m.p for m in layers]
        self.streams, self.view, self.write = streams, view, write

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return h
        mask = torch.empty_like(h)
        streams = self.streams()
        for k, p in enumerate(self.rates):
            with streams.of(k):
                self.write(mask, k, dropout_mask(self.view(h, k), p))
        return h * mask


def dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """The scaled keep-mask torch's dropout multiplies `x` by, drawn as torch draws it on x's device."""
    if x.device.type == "cuda":
        return torch.native_dropout(x, p, True)[1].to(x.dtype) * (1.0 / (1.0 - p))
    return torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)


class MemberFlatten(FusedLayer):
    takes = MEMBERS

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(2)  # (K, B, *features) -> (K, B, features)


class MemberUnflatten(FusedLayer):
    takes = MEMBERS

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.unflatten(2, self.members[0].unflattened_size)  # (K, B, features) -> (K, B, C, H, W)


class Layouts:
    """Conversions between the members and the grouped layout for K members in `memory_format`."""

    def __init__(self, k: int, memory_format: torch.memory_format) -> None:
        self.k, self.format = k, memory_format

    def grouped(self, h: torch.Tensor) -> torch.Tensor:
        """(K, B, C, H, W) -> (B, K * C, H, W) in the memory format: one copy."""
        k, b, c, hh, ww = h.shape
        out = torch.empty((b, k * c, hh, ww), dtype=h.dtype, device=h.device, memory_format=self.format)
        out.unflatten(1, (k, c)).copy_(h.transpose(0, 1))
        return out

    def members(self, h: torch.Tensor) -> torch.Tensor:
        """(B, K * C, H, W) -> (K, B, C, H, W), each member's batch in the memory format its job alone has."""
        b, kc, hh, ww = h.shape
        c = kc // self.k
        out = torch.empty((self.k * b, c, hh, ww), dtype=h.dtype, device=h.device, memory_format=self.format)
        out = out.view(self.k, b, c, hh, ww)  # a view: splitting the batch axis keeps each sample's layout
        out.copy_(h.unflatten(1, (self.k, c)).transpose(0, 1))
        return out

    def member_view(self, h: torch.Tensor, k: int, layout: str) -> torch.Tensor:
        """Member k's part of `h` (a view), shaped as in its job alone."""
        if layout == MEMBERS:
            return h[k]
        c = h.shape[1] // self.k
        return h[:, k * c : (k + 1) * c]

    def member_copy(self, h: torch.Tensor, k: int, layout: str) -> torch.Tensor:
        """Member k's part of `h` as a tensor laid out as its job alone lays it out (for random draws)."""
        part = self.member_view(h, k, layout)
        return part.contiguous(memory_format=self.format) if part.dim() == 4 else part.contiguous()

    def write(self, h: torch.Tensor, k: int, part: torch.Tensor, layout: str) -> None:
        self.member_view(h, k, layout).copy_(part)


class FusedSequential(nn.Module):
    """A member Sequential's layers, fused, with the layout conversions between them."""

    def __init__(self, sequentials: Sequence[nn.Sequential], layouts: Layouts, streams: Callable[[], Streams],
                 layout: str) -> None:
        super().__init__()
        self.layouts = layouts
        self.entry = layout  # the layout the input comes in
        self.layers = nn.ModuleList()
        self.plan: list[str] = []  # the layout each layer works in
        for modules in zip(*(s.children() for s in sequentials)):
            layer = self._fuse(list(modules), streams, lambda: self.plan[-1] if self.plan else layout)
            self.layers.append(layer)
            layout = layer.takes or layout
            self.plan.append(layout)
        self.exit = layout  # the layout of the output
        self.__dict__["members"] = list(sequentials)

    def _fuse(self, modules: list[nn.Module], streams: Callable[[], Streams], layout: Callable[[], str]) -> FusedLayer:
        first, layouts = modules[0], self.layouts
        if any(type(m) is not type(first) for m in modules):
            raise Unfusable(f"the members' layers differ: {sorted({type(m).__name__ for m in modules})}")
        if isinstance(first, nn.Linear):
            return FusedLinear(modules)
        if isinstance(first, (nn.Conv2d, nn.ConvTranspose2d)):
            return FusedConv(modules, layouts.format)
        if isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return FusedBatchNorm(modules)
        if isinstance(first, nn.Dropout):
            here = layout()  # dropout works in whatever layout the previous layer gave
            return FusedDropout(modules, streams, lambda h, k: layouts.member_copy(h, k, here),
                                lambda h, k, part: layouts.write(h, k, part, here))
        if isinstance(first, nn.Flatten):
            return MemberFlatten(modules)
        if isinstance(first, nn.Unflatten):
            return MemberUnflatten(modules)
        if isinstance(first, ELEMENTWISE):
            return FusedElementwise(modules)
        raise Unfusable(f"a {type(first).__name__} layer is not fused")

    def forward(self, h: torch.Tensor, *, hooks: bool = False) -> torch.Tensor:
        layout = self.entry
        for layer, wanted in zip(self.layers, self.plan):
            if wanted != layout:
                h = self.layouts.grouped(h) if wanted == GROUPED else self.layouts.members(h)
                layout = wanted
            x = h
            h = layer(h)
            if hooks and layer.hooked():
                _call_hooks(layer.members, self.layouts, x, h, layout)
        return h


def _call_hooks(modules: Sequence[nn.Module], layouts: Layouts, x: torch.Tensor, y: torch.Tensor, layout: str) -> None:
    """Each member module's forward hooks, with its own slices of the fused layer's input and output."""
    for k, module in enumerate(modules):
        for hook in list(module._forward_hooks.values()):
            hook(module, (layouts.member_view(x, k, layout),), layouts.member_view(y, k, layout))


class FusedAutoencoder(nn.Module):
    """K members' `Autoencoder.forward` as one: (K, B, *shape) in model units -> the members' outputs, each
    (K, B, ...): (code, reconstruction) and for a VAE also (mean, log-variance)."""

    def __init__(self, models: Sequence[Autoencoder], memory_format: torch.memory_format,
                 streams: Callable[[], Streams]) -> None:
        super().__init__()
        if len({type(m) for m in models}) != 1:
            raise Unfusable("the members are of different model classes")
        self.__dict__["models"] = list(models)
        self.layouts = Layouts(len(models), memory_format)
        self.vae = isinstance(models[0], VariationalAutoencoder)
        self.streams = streams
        self.encoder = FusedSequential([m.encoder for m in models], self.layouts, streams, MEMBERS)
        self.decoder = FusedSequential([m.decoder for m in models], self.layouts, streams, MEMBERS)
        output = [m.output for m in models]
        if not isinstance(output[0], ELEMENTWISE) or any(type(o) is not type(output[0]) for o in output):
            raise Unfusable("the output activation is not fused")
        self.__dict__["output"] = output[0]  # a member's module (not this network's): called without its hooks
        self.hooks = False  # the training doctor samples this step: call the members' forward hooks
        for layer in self.fused_layers():
            layer.adopt()
        self.train(models[0].training)

    @classmethod
    def of(cls, models: Sequence[Autoencoder], memory_format: torch.memory_format,
           streams: Callable[[], Streams]) -> FusedAutoencoder:
        return cls(models, memory_format, streams)

    @property
    def size(self) -> int:
        return len(self.models)

    def fused_layers(self) -> list[FusedLayer]:
        return [m for m in self.modules() if isinstance(m, FusedLayer)]

    def release(self) -> None:
        """The members take their weights with them (this network is about to be replaced)."""
        for layer in self.fused_layers():
            layer.release()

    def train(self, mode: bool = True) -> FusedAutoencoder:
        super().train(mode)
        for model in self.models:  # their modules' forward hooks look at `training`
            model.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hooks = self.hooks
        h = self._encode(x, hooks)  # (K, B, *shape) -> (K, B, code) [VAE: (K, B, 2 * latent)]
        if self.vae:
            mu, logvar = h.chunk(2, dim=2)  # 2 x (K, B, latent)
            z = sample_code(mu, logvar, self._code_noise(mu)) if self.training else mu
        else:
            z = h
        x_hat = self.generate(z, hooks=hooks)
        return (z, x_hat, mu, logvar) if self.vae else (z, x_hat)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's `Autoencoder.code`: (K, B, *shape) -> (K, B, latent); a VAE's posterior mean."""
        h = self._encode(x, False)
        return h.chunk(2, dim=2)[0] if self.vae else h

    def generate(self, z: torch.Tensor, *, hooks: bool = False) -> torch.Tensor:
        """Every member's `Autoencoder.generate`: codes (K, B, latent) -> reconstructions (K, B, *shape)."""
        y = self.decoder(z, hooks=hooks)
        y = y if self.decoder.exit == MEMBERS else self.layouts.members(y)  # (K, B, *shape)
        return self.output.forward(y)

    def _encode(self, x: torch.Tensor, hooks: bool) -> torch.Tensor:
        h = self.encoder(x, hooks=hooks)
        h = h if self.encoder.exit == MEMBERS else self.layouts.members(h)
        if hooks:
            _call_hooks([m.encoder for m in self.models], self.layouts, x, h, MEMBERS)
        return h

    def _code_noise(self, mu: torch.Tensor) -> torch.Tensor:
        """Each member's N(0, I) draws for its code, as `VariationalAutoencoder.forward` draws them."""
        streams = self.streams()
        draws = []
        for k in range(self.size):
            with streams.of(k):
                draws.append(torch.randn_like(mu[k]))
        return torch.stack(draws)  # (K, B, latent)

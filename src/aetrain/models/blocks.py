"""Building blocks shared by the backbones: activations and weight inits, chosen by name."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from aetrain.registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("model.activation")
for _name, _cls in {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU, "elu": nn.ELU, "gelu": nn.GELU,
    "selu": nn.SELU, "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
}.items():
    ACTIVATIONS.add(_name, _cls)

OUTPUT_ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("model.output_activation")
OUTPUT_ACTIVATIONS.add("sigmoid", nn.Sigmoid)
OUTPUT_ACTIVATIONS.add("tanh", nn.Tanh)
OUTPUT_ACTIVATIONS.add("identity", nn.Identity)

# torch.nn.init.calculate_gain knows these; the rest are ReLU-like enough to share its gain.
_GAIN_NAME = {"relu": "relu", "leaky_relu": "leaky_relu", "selu": "selu", "tanh": "tanh", "sigmoid": "sigmoid"}

InitFn = Callable[[torch.Tensor, str], None]  # (weight, activation name) -> in-place init
INITS: Registry[InitFn | None] = Registry("model.init")
INITS.add("default", None)  # keep PyTorch's per-layer defaults
INITS.add("xavier_uniform",
          lambda w, act: nn.init.xavier_uniform_(w, gain=nn.init.calculate_gain(_GAIN_NAME.get(act, "relu"))))
INITS.add("xavier_normal",
          lambda w, act: nn.init.xavier_normal_(w, gain=nn.init.calculate_gain(_GAIN_NAME.get(act, "relu"))))
INITS.add("kaiming_uniform", lambda w, act: nn.init.kaiming_uniform_(w, nonlinearity=_kaiming_name(act)))
INITS.add("kaiming_normal", lambda w, act: nn.init.kaiming_normal_(w, nonlinearity=_kaiming_name(act)))
INITS.add("orthogonal", lambda w, act: nn.init.orthogonal_(w, gain=nn.init.calculate_gain(_GAIN_NAME.get(act, "relu"))))


def _kaiming_name(activation: str) -> str:
    return "leaky_relu" if activation == "leaky_relu" else "relu"


def init_weights(module: nn.Module, init: str, activation: str) -> None:
    """Apply a named init to every linear and conv weight; biases start at zero."""
    fn = INITS.get(init)
    if fn is None:
        return
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            fn(layer.weight, activation)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def hidden_block(layer: nn.Module, width: int, *, activation: str, batch_norm: bool, dropout: float,
                 conv: bool) -> list[nn.Module]:
    """layer -> [BatchNorm] -> activation -> [Dropout]; the optional parts are left out when off."""
    norm = (nn.BatchNorm2d if conv else nn.BatchNorm1d)(width) if batch_norm else None
    drop = nn.Dropout(dropout) if dropout > 0 else None
    return [m for m in (layer, norm, ACTIVATIONS.get(activation)(), drop) if m is not None]

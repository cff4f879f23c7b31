"""Model families of your own: `aetrain.register_model`, and the contract a model of yours meets.

The contract (README, "Your own model"), checked when the model is built, before a run writes anything:
- `@aetrain.register_model(name, config=MyConfig, objective="reconstruction")` on an `nn.Module` class, or on a
  function returning one. It is called as `build(cfg, shape, code_width=...)`: `cfg` is the run's `model` section
  (an instance of `MyConfig`, a dataclass deriving from `aetrain.ModelConfig`: `latent_dim`, `loss`,
  `output_activation` and the keys you declare), `shape` one sample's shape in the data (`(D,)` for rows,
  `(C, H, W)` for images), `code_width` the width `encode` returns.
- The module has `encode(x)`: `(B, *shape) -> (B, code_width)`, and `decode(z)`: `(B, latent_dim) -> (B, *shape)`,
  both in model units (the data scaled as aetrain trains on it). `code_width` is `latent_dim`, or `2 * latent_dim`
  with `objective="vae"` (the mean, then the log-variance of each code unit). `decode` returns the reconstruction
  before the output activation (`model.output_activation`, auto: sigmoid for data in [0, 1]), which aetrain applies.
- `objective` is a built-in objective (`aetrain.models.OBJECTIVES`: reconstruction, denoising, sparse, vae; its
  keys, such as `model.noise` or `model.beta`, are added to your config), or a function `(cfg, spec) ->
  (training, validation)` of `aetrain.models.Objective`s returning named terms, `"loss"` first.
- The weights are initialised by your code (from the run's seed); they are saved under `net.` in checkpoints, which
  hold the registered name and the config, never your classes.

Around it aetrain puts what every family has (`Autoencoder`): the data scaling, the output activation, `encode`
and `decode` in data units, and `encoder` / `decoder` modules (views of your methods) that the training doctor
hooks. Registering a name twice from the same class or function (a notebook cell run again, a module reloaded, a
file imported both as a plugin and by `import`) replaces it; from another, or a built-in name, is an error.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from aetrain.config import CHOICES, ModelConfig
from aetrain.data.spec import DataSpec
from aetrain.errors import ConfigError
from aetrain.models.base import Autoencoder, Scaling, VariationalAutoencoder
from aetrain.models.families import FAMILIES, OBJECTIVES, Family, build_output
from aetrain.models.objective import Objective
from aetrain.plugins import PluginError, describe

Builder = Callable[..., nn.Module]  # (cfg, shape, *, code_width) -> a module with encode and decode
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
CHECK_BATCH = 2  # samples in the batch the contract is checked on
METHODS = ("encode", "decode")  # the methods the contract asks of a model of yours

_origins: dict[str, str] = {}  # registered name -> where it was registered from (`_origin` of the builder)


def register_model(name: str, *, config: type[ModelConfig] = ModelConfig,
                   objective: str | Callable[[Any, DataSpec], tuple[Objective, Objective]] = "reconstruction"
                   ) -> Callable[[Builder], Builder]:
    """Register a model of your own as `model=<name>` (see the module docstring for the contract). Decorates a
    class or a function and returns it unchanged. PluginError (one line) for what cannot be registered."""

    def register(build: Builder) -> Builder:
        where = f"@aetrain.register_model({name!r})"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise PluginError(f"{where}: the name must be letters, digits and _, starting with a letter")
        origin = _origin(build)
        if name in FAMILIES and _origins.get(name, "") != origin:
            by = f"by {_origins[name]}" if name in _origins else "built in"
            raise PluginError(f"{where} on {getattr(build, '__qualname__', build)}: model={name} is already registered "
                              f"({by}); choose another name")
        if not (isinstance(config, type) and dataclasses.is_dataclass(config) and issubclass(config, ModelConfig)):
            raise PluginError(f"{where}: config={config!r} is not a dataclass deriving from aetrain.ModelConfig")
        if isinstance(build, type):
            if not issubclass(build, nn.Module):
                raise PluginError(f"{where}: {build.__qualname__} is not a torch.nn.Module")
            if lacking := missing_methods(build):
                raise PluginError(f"{where}: {lacking}")
        elif not callable(build):
            raise PluginError(f"{where}: decorate an nn.Module class or a function returning one")
        family, keys = _family(name, build, objective, where)
        schema = _with_keys(config, keys, objective) if keys is not None and not issubclass(config, keys) else config
        CHOICES["model"][name] = lambda: schema(name=name)
        FAMILIES.replace(name, family)
        _origins[name] = origin
        return build

    return register


def missing_methods(model: type | nn.Module) -> str:
    """What a model class of yours (at registration) or the module its builder returned (at build time) lacks of
    the contract's methods, said as the end of a one-line error ("MyAE has no method decode; ..."); "" when it has
    both."""
    cls = model if isinstance(model, type) else type(model)
    missing = [m for m in METHODS if not callable(getattr(model, m, None))]
    if not missing:
        return ""
    return (f"{cls.__qualname__} has no method {' or '.join(missing)}; a model needs encode(x) -> z and "
            "decode(z) -> x_hat")


def _origin(build: Builder) -> str:
    """Where `build` was defined: its file and name (`/home/me/my_models.py:MyAE`), so that the same file imported
    twice (as a plugin, and by `import my_models`) is one origin; its module's name where it has no file."""
    module = sys.modules.get(getattr(build, "__module__", ""), None)
    file = getattr(module, "__file__", None)
    where = os.path.realpath(file) if isinstance(file, str) else getattr(build, "__module__", "?")
    return f"{where}:{getattr(build, '__qualname__', repr(build))}"


def _family(name: str, build: Builder, objective: Any, where: str) -> tuple[Family, type | None]:
    """The family of a model of yours: its builder with the contract checked, and its objectives."""
    if callable(objective):
        variational, keys, galleries, objectives = False, None, (), _checked_objectives(name, objective)
    elif isinstance(objective, str) and objective in OBJECTIVES:
        kind = OBJECTIVES.get(objective)
        variational, keys, galleries, objectives = kind.variational, kind.keys, kind.galleries, kind.objectives
    else:
        raise PluginError(f"{where}: objective={objective!r} is not one of: {', '.join(OBJECTIVES.names())}, or a "
                          "function (cfg, spec) -> (training, validation) objectives")
    cls = VariationalAutoencoder if variational else Autoencoder

    def make(cfg: ModelConfig, spec: DataSpec) -> Autoencoder:
        output = build_output(cfg, spec)
        code_width = 2 * cfg.latent_dim if variational else cfg.latent_dim
        shape = tuple(spec.shape)
        try:
            net = build(cfg, shape, code_width=code_width)
        except Exception as e:  # the user's code: one line saying where, not a traceback
            raise ConfigError(f"model={name}: building it failed: {describe(e)}") from e
        if not isinstance(net, nn.Module):
            raise ConfigError(f"model={name}: its builder returned a {type(net).__name__}, not a torch.nn.Module")
        if lacking := missing_methods(net):
            raise ConfigError(f"model={name}: {lacking}")
        if torch.empty(()).device.type != "meta":  # building for the memory estimate: shapes are checked for real
            check_shapes(name, net, shape, code_width, cfg.latent_dim)
        model = cls(MethodView(net, "encode"), MethodView(net, "decode"), output, Scaling(spec.shift, spec.scale),
                    latent_dim=cfg.latent_dim, spec=spec)
        model.net = net  # the weights, once (the views do not own them)
        return model

    return Family(make, objectives, galleries, own=True), keys


def check_shapes(name: str, net: nn.Module, shape: tuple[int, ...], code_width: int, latent_dim: int) -> None:
    """encode and decode of a batch of zeros give the shapes the contract says; ConfigError naming what does not.
    In eval mode, without gradients, and with the random state put back: the run trains as if nothing ran."""
    x = torch.zeros(CHECK_BATCH, *shape)  # (B, *shape)
    was_training = net.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            net.eval()
            z = _call(name, net, "encode", x, f"x of shape {tuple(x.shape)}")
            expected = (CHECK_BATCH, code_width)
            if not isinstance(z, torch.Tensor) or tuple(z.shape) != expected:
                got = f"shape {tuple(z.shape)}" if isinstance(z, torch.Tensor) else f"a {type(z).__name__}"
                what = f"(batch, 2 x model.latent_dim = {code_width}): the mean, then the log-variance" \
                    if code_width != latent_dim else f"(batch, model.latent_dim = {latent_dim})"
                raise ConfigError(f"model={name}: encode(x) of x of shape {tuple(x.shape)} returned {got}; expected "
                                  f"{expected}, {what}")
            code = z[:, :latent_dim]  # (B, code_width) -> (B, latent_dim): a VAE decodes its mean
            x_hat = _call(name, net, "decode", code, f"z of shape {tuple(code.shape)}")
            if not isinstance(x_hat, torch.Tensor) or tuple(x_hat.shape) != tuple(x.shape):
                got = f"shape {tuple(x_hat.shape)}" if isinstance(x_hat, torch.Tensor) else f"a {type(x_hat).__name__}"
                raise ConfigError(f"model={name}: decode(z) of z of shape {tuple(code.shape)} returned {got}; expected "
                                  f"{tuple(x.shape)}, the input's shape")
    finally:
        net.train(was_training)


def _call(name: str, net: nn.Module, method: str, arg: torch.Tensor, what: str) -> Any:
    try:
        return getattr(net, method)(arg)
    except Exception as e:
        raise ConfigError(f"model={name}: {method}({what[0]}) failed on {what}: {describe(e)}") from e


def _checked_objectives(name: str, objectives: Callable[[Any, DataSpec], tuple[Objective, Objective]]
                        ) -> Callable[[Any, DataSpec], tuple[Objective, Objective]]:
    """A family objective of yours, checked to be (training, validation) objectives naming "loss" first."""

    def build(cfg: ModelConfig, spec: DataSpec) -> tuple[Objective, Objective]:
        try:
            pair = objectives(cfg, spec)
        except Exception as e:
            raise ConfigError(f"model={name}: building its objectives failed: {describe(e)}") from e
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(o, Objective) for o in pair)):
            raise ConfigError(f"model={name}: its objective function returned {type(pair).__name__}; expected "
                              "(training, validation), two aetrain.models.Objective")
        for o in pair:
            names = tuple(getattr(o, "names", ()))
            if not names or names[0] != "loss":
                raise ConfigError(f"model={name}: {type(o).__name__}.names={names!r}; the terms are named, "
                                  "\"loss\" (what is optimised) first")
        return pair

    return build


def _with_keys(config: type, keys: type, objective: str) -> type:
    """`config` with the keys a built-in objective adds (a dataclass deriving from both)."""
    cls = type(f"{config.__name__}_{objective}", (keys, config), {"__module__": config.__module__})
    return dataclasses.dataclass(cls)


class MethodView(nn.Module):
    """One method of a model of yours as a module of its own (the run's `encoder` or `decoder`): what the training
    doctor hooks to see the code. It does not own the model (a tuple holds it): its weights are saved once, as the
    model's (`net.`)."""

    def __init__(self, owner: nn.Module, method: str) -> None:
        super().__init__()
        self.owner = (owner,)
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.owner[0], self.method)(x)

    def extra_repr(self) -> str:
        return f"{type(self.owner[0]).__name__}.{self.method}"


__all__ = ["MethodView", "check_shapes", "register_model"]

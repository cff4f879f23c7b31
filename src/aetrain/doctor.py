"""The training doctor's rules: from what a run measured to findings, each with the overrides to try.

Torch-free and Hydra-free: the same rules run live during training (`aetrain.train.outputs.diagnostics`
announces a finding the first time it holds) and afterwards on a run dir (`aetrain doctor`), from
metrics.csv (one row per epoch) and diagnostics.csv (one row per layer per sampled step, and the
reconstruction check once per epoch). A run without diagnostics.csv still gets every rule that
metrics.csv alone can decide.

Each rule answers "does it hold at epoch e?" from what was measured up to and including epoch e,
so the live messages and the report agree. A rule over sampled steps judges the median of each
statistic over that epoch's sampled steps (one odd batch proves nothing).

Every threshold sits next to its rule with the runs it was chosen from (bundled digits, 2-core
CPU, sampling every 10 steps: what `diagnostics.every_n_steps=0`, auto, gives there): the healthy
references are the default run and every model preset at its defaults (dense_ae, conv_ae, denoising_ae,
sparse_ae, vae, 200 epochs); the bad references are the runs named in each rule. README "Training doctor"
lists the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aetrain.config import OUTPUT_RANGES, CodeConstraint, Config, default_choice
from aetrain.rundir import Status

# --- findings --------------------------------------------------------------------------------------

@dataclass
class Finding:
    """One problem: a stable `code`, the layers and epochs it concerns, the numbers behind it, what to try."""

    code: str
    layers: list[str]
    epochs: list[int]
    evidence: dict[str, Any]  # named numbers (and layer names) that show it
    suggestion: list[str]  # command-line overrides to try, the most direct first; each one a whole alternative
    message: str  # one sentence with the evidence
    gone_by: int | None = None  # the report of a run: the first later epoch at which it no longer held; None = holds

    def line(self) -> str:
        """The one line announced during training (and kept in train.log)."""
        where = f" in {', '.join(_short(self.layers))}" if self.layers else ""
        tries = f"; try: {' | '.join(self.suggestion)}" if self.suggestion else ""
        return (f"{self.code}{where} (epoch {self.epochs[0]}): {self.message}{tries}"
                "  [aetrain doctor <run dir> for the report]")

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "layers": self.layers, "epochs": self.epochs, "evidence": self.evidence,
                "suggestion": self.suggestion, "message": self.message, "gone_by": self.gone_by}


def epoch_ranges(epochs: list[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> "1-3, 7, 9-10"."""
    spans: list[list[int]] = []
    for e in sorted(set(epochs)):
        if spans and e == spans[-1][1] + 1:
            spans[-1][1] = e
        else:
            spans.append([e, e])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def _short(items: list[str], limit: int = 4) -> list[str]:
    return items if len(items) <= limit else [*items[:limit], f"... ({len(items)} in all)"]


# --- what the rules know about a run --------------------------------------------------------------

@dataclass
class Facts:
    """The parts of a run's config and data the rules need (not its numbers)."""

    model: str = "?"
    latent_dim: int | None = None
    input_size: int | None = None  # elements per sample; None when unknown (no checkpoint to read it from)
    image: bool | None = None  # None when unknown
    activation: str = "relu"
    loss: str = "mse"
    constraint: CodeConstraint | None = None  # what keeps the code from copying the input (the family says)
    optimizer: str = "adam"
    lr: float = math.nan
    default_lr: float = math.nan  # the optimizer choice's default learning rate
    max_epochs: int | None = None
    model_keys: frozenset[str] | None = None  # the model's keys (model.<key>); None = unknown: every suggestion stays
    output_activation: str = "auto"
    unit_interval: bool | None = None  # the data in model units lies in [0, 1]; None when unknown
    data_range: tuple[float, float] | None = None  # the training split's smallest and largest model-unit value

    @classmethod
    def of(cls, cfg: Config, shape: tuple[int, ...] | None = None, *, unit_interval: bool | None = None,
           data_range: tuple[float, float] | None = None) -> Facts:
        m = cfg.model
        return cls(model=m.name, latent_dim=m.latent_dim, input_size=math.prod(shape) if shape else None,
                   image=None if shape is None else len(shape) == 3, activation=getattr(m, "activation", ""),
                   loss=m.loss, constraint=m.code_constraint(), optimizer=cfg.optimizer.name, lr=cfg.optimizer.lr,
                   default_lr=default_choice("optimizer", cfg.optimizer.name).lr, max_epochs=cfg.trainer.max_epochs,
                   model_keys=frozenset(f.name for f in dataclasses.fields(m)),
                   output_activation=getattr(m, "output_activation", "auto"), unit_interval=unit_interval,
                   data_range=data_range)

    def can_set(self, suggestion: str) -> bool:
        """Whether every `model.<key>=...` a suggestion sets is a key of this model (a model of your own has only
        the keys its config declares: no model.activation, no model.batch_norm)."""
        keys = [o.partition("=")[0] for o in suggestion.split() if o.startswith("model.")]
        return self.model_keys is None or all(k.split(".")[1] in self.model_keys for k in keys)


@dataclass
class Trace:
    """What a run measured so far: metrics.csv's epochs and diagnostics.csv's rows, indexed by epoch."""

    epochs: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch, in order
    # epoch -> step -> layer -> row
    steps: dict[int, dict[int, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    checks: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch -> the reconstruction check's row
    status: Status | None = None  # how the run ended; None = running
    failed_epoch: int | None = None  # the epoch under way when it diverged or failed
    first_grads: dict[str, float] = field(default_factory=dict)  # each layer's gradient norm in the first sampled epoch
    first_epoch_sampled: int | None = None
    # epoch -> (what, stat) -> value: per-epoch summaries the rules ask for at every later epoch; an epoch's
    # entries are dropped when rows of it arrive. Without it the live rules cost O(epochs) each epoch.
    memo: dict[int, dict[tuple[str, str], Any]] = field(default_factory=dict, repr=False)

    def add_epoch(self, record: dict[str, Any]) -> None:
        self.epochs.append(record)

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            epoch, step = row.get("epoch"), row.get("step")
            if not isinstance(epoch, int) or not isinstance(step, int):
                continue
            if row.get("layer") == "reconstruction":
                self.checks[epoch] = row
            else:
                self.steps.setdefault(epoch, {}).setdefault(step, {})[row["layer"]] = row
            self.memo.pop(epoch, None)
        if self.first_epoch_sampled is None and self.steps:
            self.first_epoch_sampled = min(self.steps)
        if self.first_epoch_sampled is not None and not self.first_grads:
            self._reference_grads()

    def _reference_grads(self) -> None:
        """Each layer's median gradient norm over the first sampled epoch: what exploding is measured against."""
        points = list(self.steps[self.first_epoch_sampled].values())
        for layer in points[0]:
            values = [_num(p.get(layer, {}).get("grad_norm")) for p in points]
            values = [v for v in values if math.isfinite(v)]
            if values:
                self.first_grads[layer] = statistics.median(values)

    def points(self, epoch: int) -> list[dict[str, dict[str, Any]]]:
        """The sampled steps of `epoch`, in order: each a dict layer -> row."""
        steps = self.steps.get(epoch, {})
        return [steps[s] for s in sorted(steps)]

    def medians(self, epoch: int, stat: str) -> dict[str, float]:
        """layer -> the median of `stat` over `epoch`'s sampled steps (layers that have it)."""
        memo = self.memo.setdefault(epoch, {})
        if ("medians", stat) not in memo:
            memo["medians", stat] = self._medians(epoch, stat)
        return memo["medians", stat]

    def _medians(self, epoch: int, stat: str) -> dict[str, float]:
        values: dict[str, list[float]] = {}
        for point in self.points(epoch):
            for layer, row in point.items():
                value = _num(row.get(stat))
                if math.isfinite(value):
                    values.setdefault(layer, []).append(value)
        return {layer: statistics.median(v) for layer, v in values.items()}

    def metric(self, epoch: int, key: str) -> float:
        """A metrics.csv value of `epoch` (1-based); NaN when there is none."""
        if 1 <= epoch <= len(self.epochs) and self.epochs[epoch - 1].get("epoch") == epoch:
            return _num(self.epochs[epoch - 1].get(key))
        row = next((r for r in self.epochs if r.get("epoch") == epoch), None)
        return _num(row.get(key)) if row else math.nan

    def epoch_numbers(self) -> list[int]:
        found = ({r["epoch"] for r in self.epochs if isinstance(r.get("epoch"), int)}
                 | set(self.steps) | set(self.checks))
        if self.failed_epoch is not None:
            found.add(self.failed_epoch)
        return sorted(found)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _lower_lr(facts: Facts) -> str:
    return f"optimizer.lr={facts.lr / 10:g}" if math.isfinite(facts.lr) else "optimizer.lr=<a tenth of it>"


def _fmt(x: float) -> str:
    return f"{x:.2g}" if math.isfinite(x) and x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4) else f"{x:.3g}"


# --- the rules ------------------------------------------------------------------------------------
# Each: (trace, facts, epoch) -> Finding | None, from what was measured up to and including `epoch`.

# A layer whose gradient norm is below this share of the largest layer's has vanishing gradients.
# Healthy: the smallest share in any sampled step of the six healthy references is 0.032 (encoder.1
# of the default run at its first step, before the code carries anything), 0.09 later. Bad: the deep
# sigmoid MLP (model.hidden_dims=[256,256,256,256,256,256] model.activation=sigmoid) has 1e-11 at
# encoder.1 rising to 4e-4 at decoder.4, at every sampled step, and never learns. 1e-3 leaves a
# factor of 30 to the healthy runs.
VANISHING_SHARE = 1e-3


def vanishing_gradients(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    shares: dict[str, list[float]] = {}
    largest: dict[str, int] = {}
    for point in trace.points(epoch):
        grads = {layer: _num(row.get("grad_norm")) for layer, row in point.items()
                 if math.isfinite(_num(row.get("grad_norm")))}
        top = max(grads.values(), default=0.0)
        if top <= 0:
            continue
        name = max(grads, key=grads.get)
        largest[name] = largest.get(name, 0) + 1
        for layer, g in grads.items():
            if g > 0:  # exactly 0 is no gradient at all: dead units (or a frozen layer), not a vanishing one
                shares.setdefault(layer, []).append(g / top)
    median = {layer: statistics.median(values) for layer, values in shares.items()}
    layers = [layer for layer, share in median.items() if share < VANISHING_SHARE]
    if not layers:
        return None
    worst = min(layers, key=median.get)
    top_layer = max(largest, key=largest.get)
    suggestion = (["model.activation=relu model.init=kaiming_normal", "model.batch_norm=true"]
                  if facts.activation in ("sigmoid", "tanh")
                  else ["model.init=kaiming_normal", "model.batch_norm=true"])
    return Finding("vanishing_gradients", layers, [epoch],
                   {"share_of_largest": {layer: float(f"{median[layer]:.3g}") for layer in layers},
                    "largest": top_layer, "threshold": VANISHING_SHARE},
                   suggestion,
                   f"{len(layers)} layer(s) get less than {VANISHING_SHARE:g} of the gradient norm of {top_layer}; "
                   f"{worst} gets {_fmt(median[worst])} of it" +
                   (f" (model.activation={facts.activation} passes at most a quarter of the gradient per layer)"
                    if facts.activation == "sigmoid" else ""))


# Exploding: the total gradient norm (metrics.csv's train/grad_norm, the epoch's mean; or from the
# sampled steps, the root of the layers' squares) this many times the median of its earlier epochs,
# or not finite. The layers named are those whose own norm grew as much (or became infinite), else
# the one that grew most. Judged on the total, not per layer, so that a layer recovering from
# small initial gradients (a sigmoid MLP's encoder.1 grows 110x over 40 epochs while the total
# stays flat) is not taken for an explosion. Healthy: the total grows at most 20x over its
# history (SGD at lr 5, which trains well; the default run 1.7x). Bad: a conv_ae with an unbounded
# output (model.output_activation=identity) under SGD at lr 5 reaches inf at step 4 and diverges.
EXPLODING_GROWTH = 100.0


def exploding_gradients(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    totals = {e: trace.metric(e, "train/grad_norm") for e in range(1, epoch + 1)}
    sampled = {e: _total_grad(trace, e) for e in sorted(trace.steps) if e <= epoch}
    evidence: dict[str, Any] = {}
    for name, series in (("train/grad_norm", totals), ("sampled_grad_norm", sampled)):
        now = series.get(epoch, math.nan)
        past = [v for e, v in series.items() if e < epoch and math.isfinite(v) and v > 0]
        if math.isinf(now) or (past and now > EXPLODING_GROWTH * statistics.median(past)):
            evidence[name] = {"earlier_median": float(f"{statistics.median(past):.4g}") if past else None,
                              f"epoch_{epoch}": _json_number(now)}
    if not evidence:
        return None
    growth: dict[str, float] = {}
    now_layers = trace.medians(epoch, "grad_norm") if epoch in trace.steps else {}
    history = [trace.medians(e, "grad_norm") for e in sorted(trace.steps) if e < epoch]
    for point in trace.points(epoch):
        for layer, row in point.items():
            if "grad_norm" in row and not math.isfinite(_num(row.get("grad_norm"))):
                growth[layer] = math.inf
    for layer, value in now_layers.items():
        past = [h[layer] for h in history if h.get(layer, 0) > 0]
        if layer not in growth and past:
            growth[layer] = value / statistics.median(past)
    layers = [name for name, g in growth.items() if g > EXPLODING_GROWTH] or \
        ([max(growth, key=growth.get)] if growth else [])
    if growth:
        evidence["layer_growth"] = {layer: _json_number(growth[layer]) for layer in layers}
    key = next(iter(evidence))
    value, base = evidence[key][f"epoch_{epoch}"], evidence[key]["earlier_median"]
    message = (f"the gradient norm stopped being finite (inf or NaN) in epoch {epoch}" if value == "inf" else
               f"the gradient norm rose to {_fmt(value)} from a median of {_fmt(base)} in the epochs before")
    if layers:
        message += f" (most in {layers[0]})"
    return Finding("exploding_gradients", layers, [epoch], {**evidence, "threshold": EXPLODING_GROWTH},
                   ["trainer.gradient_clip_val=1.0", _lower_lr(facts), "model.batch_norm=true"],
                   message)


def _total_grad(trace: Trace, epoch: int) -> float:
    """The median over `epoch`'s sampled steps of the whole model's gradient norm; inf when any sampled
    step's gradient was not finite (NaN or inf: it overflowed, or the weights already had)."""
    memo = trace.memo.setdefault(epoch, {})
    if ("total", "grad_norm") not in memo:
        memo["total", "grad_norm"] = _total_grad_of(trace, epoch)
    return memo["total", "grad_norm"]


def _total_grad_of(trace: Trace, epoch: int) -> float:
    totals = []
    for point in trace.points(epoch):
        grads = [_num(row.get("grad_norm")) for row in point.values() if "grad_norm" in row]
        if grads:
            totals.append(math.sqrt(sum(g * g for g in grads)))
    if any(not math.isfinite(t) for t in totals):
        return math.inf
    return statistics.median(totals) if totals else math.nan


def _json_number(x: float) -> float | str:
    return float(f"{x:.4g}") if math.isfinite(x) else ("inf" if x > 0 else "nan")


# Dead and saturated units are judged over the last SUSTAINED_EPOCHS sampled epochs (the layer's
# epoch median at or above the threshold in each): a unit that is silent for a while and comes back
# was not dead. In every healthy reference the decoder's ReLUs start with half their units silent
# (the code is still tiny) and recover within a few epochs.
SUSTAINED_EPOCHS = 10

# A ReLU layer with at least DEAD_SHARE of its units zero for every sample of the batch (measured on
# the training batch: with a smaller batch a rarely active unit is more often counted). Healthy:
# over any 10 epochs, at most 0.6 (sparse_ae at its defaults, encoder.4, whose L1 penalty leaves
# few units busy; 0.68 in one epoch), the default run 0.48. Bad: Adam at lr 0.01 kills 0.71 of
# encoder.2 for the whole run (and ends 25% worse than at lr 1e-3), at lr 0.05 and 0.1 0.68-0.70 of
# three layers within 10 steps; SGD at lr 20 and 50: 0.93-0.98.
DEAD_SHARE = 0.65


def dead_units(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    return _share_rule(trace, facts, epoch, "dead_share", DEAD_SHARE, "dead_units",
                       "of the units output zero for every sample",
                       ["model.activation=leaky_relu", _lower_lr(facts),
                        "model.init=kaiming_normal model.batch_norm=true"])


# A hidden sigmoid/tanh layer with at least SATURATED_SHARE of its outputs in the flat tails (slope
# below 5% of its peak). Healthy: model.activation=tanh at its defaults, which trains as well as
# ReLU, reaches 0.46 (decoder.3, late in training); a sigmoid MLP 0.63. Bad: tanh with Adam at lr
# 0.03: 0.86-1.0 in every layer from the first epoch on, and the loss never improves again.
SATURATED_SHARE = 0.75


def saturated_units(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    return _share_rule(trace, facts, epoch, "saturated_share", SATURATED_SHARE, "saturated_units",
                       "of the outputs sit where the slope is below 5% of its peak",
                       ["model.activation=leaky_relu model.init=kaiming_normal", "model.batch_norm=true",
                        _lower_lr(facts)])


def _share_rule(trace: Trace, facts: Facts, epoch: int, stat: str, threshold: float, code: str, what: str,
                suggestion: list[str]) -> Finding | None:
    """Layers whose median `stat` reached `threshold` in each of the last SUSTAINED_EPOCHS sampled epochs."""
    sampled = [e for e in sorted(trace.steps) if e <= epoch][-SUSTAINED_EPOCHS:]
    if len(sampled) < SUSTAINED_EPOCHS or sampled[-1] != epoch:
        return None
    medians = [trace.medians(e, stat) for e in sampled]  # per epoch: layer -> median share
    layers = [layer for layer in medians[-1] if all(m.get(layer, -1.0) >= threshold for m in medians)]
    if not layers:
        return None
    now = medians[-1]
    worst = max(layers, key=now.get)
    message = (f"in {worst}, {now[worst]:.0%} {what} (threshold {threshold:.0%}, held for {len(sampled)} sampled "
               "epochs)")
    last = trace.points(epoch)[-1]
    if all(_num(row.get("grad_norm")) == 0 for row in last.values() if "grad_norm" in row):
        message += "; no layer gets any gradient: the network has stopped learning"
    return Finding(code, layers, [epoch], {stat: {layer: round(now[layer], 3) for layer in layers},
                                           "threshold": threshold, "sustained_epochs": len(sampled)},
                   suggestion, message)


# A code unit carries nothing when shuffling it alone across samples changes the reconstructions by
# less than UNUSED_EFFECT of the data's variance (the reconstruction check's code_unit_effect), in
# every check of the last UNUSED_SHARE_OF_RUN of the run's epochs (at least SUSTAINED_EPOCHS): early
# in training every unit is still near zero. Healthy: the least effective unit of any healthy
# reference from epoch 20 on moves 6.5e-4 of the variance (a 64-unit code; the default run 3.1e-3).
# Bad: a VAE with model.beta=8 and a sparse_ae with model.sparsity.weight=0.05 switch the whole code
# off (every unit below 1e-8 from epoch 10 on, the reconstructions are the mean image). The code's
# per-unit variance and mean |z| (the code rows) are not used for this: a sparsity penalty shrinks
# every unit alike while the decoder scales them back up, so no variance threshold tells a small
# code from a dead one. A VAE is judged only on the whole code: its KL term switches off the units it
# does not need (the default VAE keeps 2-4 of its 16 units busy), which is what it is for.
UNUSED_EFFECT = 1e-4
UNUSED_SHARE_OF_RUN = 0.1  # a unit must carry nothing this share of the run's epochs (at least SUSTAINED_EPOCHS)


def unused_units(effects: list[float]) -> list[int]:
    """The code units (indices) whose effect on the reconstructions is below UNUSED_EFFECT."""
    return [i for i, e in enumerate(effects) if math.isfinite(e) and e < UNUSED_EFFECT]


def unused_code_units(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    needed = max(SUSTAINED_EPOCHS, math.ceil(UNUSED_SHARE_OF_RUN * (facts.max_epochs or 0)))
    checked = [e for e in sorted(trace.checks) if e <= epoch and trace.checks[e].get("code_unit_effect")]
    checked = checked[-needed:]
    if len(checked) < needed or checked[-1] != epoch:
        return None
    units = set.intersection(*(set(unused_units(trace.checks[e]["code_unit_effect"])) for e in checked))
    if not units:
        return None
    units_ = sorted(units)
    effects = trace.checks[epoch]["code_unit_effect"]
    width = len(effects)
    finite = [e for e in effects if math.isfinite(e)]  # a code wider than the check measures: a sample of its units
    measured = len(finite)
    evidence = {"unused_units": units_, "latent_dim": width, "largest_effect": float(f"{max(finite):.3g}"),
                "threshold": UNUSED_EFFECT, **({"measured_units": measured} if measured < width else {})}
    of = f" of the {measured} measured (of {width})" if measured < width else ""
    if len(units_) == measured:  # the decoder ignores the code: a narrower code would not help
        constraint = facts.constraint
        if constraint is None and _holds(trace, facts, epoch, vanishing_gradients, dead_units, saturated_units,
                                         lr_too_low, lr_too_high):
            return None  # a symptom of that finding, whose suggestion is the fix
        fix = list(constraint.loosen) if constraint is not None and constraint.loosen else \
            ["aetrain lr_find", "model.init=kaiming_normal model.batch_norm=true"]
        return Finding("unused_code_units", ["code"], [epoch], evidence, fix,
                       f"all{of or f' {width}'} code units are ignored: shuffling any of them changes the "
                       "reconstructions by "
                       f"less than {UNUSED_EFFECT:g} of the data's variance, so the decoder draws the same picture "
                       f"for every input" + (f" ({constraint.what} switched the code off)" if constraint else ""))
    if facts.constraint is not None and facts.constraint.prunes_units:  # by design (a VAE's active units)
        return None
    used = width - round(len(units_) * width / measured)  # estimated from the sample of a wide code
    return Finding("unused_code_units", ["code"], [epoch], evidence, [f"model.latent_dim={max(used, 1)}"],
                   f"{len(units_)}{of or f' of {width}'} code units carry nothing "
                   "(shuffling one changes the reconstructions by "
                   f"less than {UNUSED_EFFECT:g} of the data's variance): unit{'s' if len(units_) > 1 else ''} "
                   f"{', '.join(map(str, units_[:8]))}{' ...' if len(units_) > 8 else ''}")


# Without a regulariser (input noise, a sparsity penalty, a VAE's KL term), a code at least as wide
# as the input can copy it; so can a model that reconstructs structure-free noise (the check's
# samples with every pixel shuffled across samples) so well that it reproduces more than half of
# its variance: noise_error below IDENTITY_NOISE_ERROR in each of the last SUSTAINED_EPOCHS checks.
# Healthy: every preset stays at 0.66 or above from epoch 5 on (the default run 0.75; a
# latent_dim=64 MLP too: 0.68, it models the digits). Bad: a linear autoencoder
# (model.hidden_dims=[]) with a 64-unit code falls to 0.26 by epoch 100 (below 0.5 from epoch 45),
# with 48 units to 0.35.
IDENTITY_NOISE_ERROR = 0.5


def identity_mapping(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    if facts.constraint is not None:
        return None
    narrower = f"model.latent_dim={max(1, (facts.input_size or 4 * (facts.latent_dim or 1)) // 4)}"
    suggestion = [narrower, "model=denoising_ae", "model=sparse_ae"]
    if facts.input_size is not None and facts.latent_dim is not None and facts.latent_dim >= facts.input_size:
        return Finding("identity_mapping", ["code"], [epoch],
                       {"latent_dim": facts.latent_dim, "input_size": facts.input_size}, suggestion,
                       f"the code (model.latent_dim={facts.latent_dim}) is as wide as the input ({facts.input_size} "
                       "values) and nothing (input noise, sparsity) stops the model from copying it")
    checks = [e for e in sorted(trace.checks) if e <= epoch][-SUSTAINED_EPOCHS:]
    if len(checks) < SUSTAINED_EPOCHS or checks[-1] != epoch:
        return None
    noise = [_num(trace.checks[e].get("noise_error")) for e in checks]
    data = _num(trace.checks[epoch].get("data_error"))
    if not (all(n < IDENTITY_NOISE_ERROR for n in noise) and data < noise[-1]):
        return None
    return Finding("identity_mapping", ["code"], [epoch],
                   {"noise_error": round(noise[-1], 4), "data_error": round(data, 4),
                    "threshold": IDENTITY_NOISE_ERROR},
                   suggestion,
                   f"it reproduces {1 - noise[-1]:.0%} of the variance of noise (the data with each pixel shuffled "
                   f"across samples; data: {1 - data:.0%}): it copies its input rather than modelling the data")


# Images: the reconstructions keep less than BLURRY_HF_RATIO of the originals' high-frequency energy
# (the median of the last SUSTAINED_EPOCHS checks), once training has levelled off (val/loss improved
# less than PLATEAU over the last PLATEAU_EPOCHS epochs: every model is blurry while it learns) and
# only when the model reconstructs at least half of the data's variance (data_error < 0.5; below
# that the problem is another). Healthy: every preset keeps at least 0.84 by the time it levels off
# (the default run 0.92 at the end). Bad: a 2-unit code (model.latent_dim=2) levels off at 0.63-0.69
# (its reconstructions are averages of similar digits). Not judged for a VAE: its reconstructions are
# blurry by design (the default VAE keeps 0.60, its beta weighs sharpness against the KL term).
BLURRY_HF_RATIO = 0.7
PLATEAU = 0.02
PLATEAU_EPOCHS = 20


def blurry_reconstructions(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    checks = [e for e in sorted(trace.checks) if e <= epoch][-SUSTAINED_EPOCHS:]
    if not facts.image or (facts.constraint is not None and facts.constraint.blurs) \
            or len(checks) < SUSTAINED_EPOCHS or checks[-1] != epoch or epoch <= PLATEAU_EPOCHS:
        return None
    hf = statistics.median(_num(trace.checks[e].get("hf_ratio")) for e in checks)
    err = _num(trace.checks[epoch].get("data_error"))
    earlier = [v for v in (trace.metric(e, "val/loss") for e in range(1, epoch - PLATEAU_EPOCHS + 1))
               if math.isfinite(v)]
    now = trace.metric(epoch, "val/loss")
    levelled = bool(earlier) and now >= (1 - PLATEAU) * min(earlier)
    if not (hf < BLURRY_HF_RATIO and err < 0.5 and levelled):
        return None
    suggestion = [f"model.latent_dim={2 * (facts.latent_dim or 8)}", "model=conv_ae"]
    if facts.loss in ("mse", "smooth_l1"):
        suggestion.insert(1, "model.loss=l1")
    return Finding("blurry_reconstructions", [], [epoch],
                   {"hf_ratio": round(hf, 3), "data_error": round(err, 3), "threshold": BLURRY_HF_RATIO}, suggestion,
                   f"the reconstructions keep {hf:.0%} of the originals' high-frequency energy (fine detail), and "
                   f"val/loss has levelled off")


# Overfitting: over the last OVERFIT_WINDOW epochs, the median val/loss is at least OVERFIT_RISE above
# its best, and the median train/loss below the train/loss of the best epoch, at least
# OVERFIT_EPOCHS after it. Medians over a window, so that one noisy epoch (Adam at lr 0.01 on the
# digits: +12% for one epoch) is not a trend. Healthy: no run on the digits rose more than 6%
# (SGD at lr 5: +5.7% 90 epochs after its best). Autoencoders on the digits hardly overfit this way:
# with 36 training digits, a 1024-1024 MLP and 600 epochs (train/loss 6.6e-5) val/loss ends 3%
# above its best; the rule is tested on the numbers of such a curve (tests/test_doctor.py).
OVERFIT_RISE = 0.1
OVERFIT_EPOCHS = 10
OVERFIT_WINDOW = 5


def overfitting(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    vals = [(e, trace.metric(e, "val/loss")) for e in range(1, epoch + 1)]
    vals = [(e, v) for e, v in vals if math.isfinite(v)]
    if len(vals) < OVERFIT_EPOCHS + 1:
        return None
    best_epoch, best = min(vals, key=lambda ev: ev[1])
    window = range(epoch - OVERFIT_WINDOW + 1, epoch + 1)
    val_now = statistics.median(trace.metric(e, "val/loss") for e in window)
    train_now = statistics.median(trace.metric(e, "train/loss") for e in window)
    train_best = trace.metric(best_epoch, "train/loss")
    if not (epoch - best_epoch >= OVERFIT_EPOCHS and val_now >= (1 + OVERFIT_RISE) * best and train_now < train_best):
        return None
    return Finding("overfitting", [], [epoch],
                   {"best_epoch": best_epoch, "best_val_loss": best, "val_loss": val_now,
                    "train_loss_at_best": train_best, "train_loss": train_now, "threshold": OVERFIT_RISE},
                   ["trainer.early_stopping_patience=10", "model.dropout=0.1", "optimizer=adamw", "model=denoising_ae"],
                   f"val/loss rose {val_now / best - 1:.0%} above its best ({_fmt(best)} at epoch {best_epoch}; median "
                   f"of the last {OVERFIT_WINDOW} epochs) while train/loss fell from {_fmt(train_best)} to "
                   f"{_fmt(train_now)}")


# The output activation cannot produce the data: the training split's values in model units (from the run's
# checkpoint) reach beyond the activation's range (OUTPUT_RANGES). Sigmoid on standardized data cannot output
# the negative half of any feature: on standardized rows it ended at val/loss 0.579 against 0.0066 with auto (88x),
# with every other finding silent. Training refuses such a setting; this judges runs made before it did.
def output_range(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    if facts.data_range is None or facts.unit_interval is None:
        return None
    name = facts.output_activation
    if name == "auto":
        name = "sigmoid" if facts.unit_interval else "identity"
    lo, hi = OUTPUT_RANGES.get(name, (-math.inf, math.inf))
    low, high = facts.data_range
    if lo <= low and high <= hi:
        return None
    fit = "model.output_activation=auto"
    return Finding("output_range", ["output"], [epoch],
                   {"output_activation": name, "output_range": [lo, hi], "data_range": [low, high]}, [fit],
                   f"model.output_activation={facts.output_activation} outputs values in ({lo:g}, {hi:g}), but the "
                   f"training data spans [{low:.3g}, {high:.3g}] in model units: the reconstructions can never reach "
                   "the values outside")


# lr_too_high holds at an epoch when any of these does:
# - the run diverged in it (a NaN or infinite loss stopped it);
# - a sampled step changed the weights by more than UPDATE_RATIO_HIGH of their norm (the median of
#   ||w_after - w_before|| / ||w_before|| over the layers with parameters). Healthy: at most 0.044
#   (Adam at lr 3e-3, the first step; the default run 0.015, SGD at lr 5 0.037). Bad: Adam at lr
#   0.01 0.15 (it kills 71% of encoder.2 and ends 25% worse than the default), at lr 0.05 0.73 (it
#   kills the network within 10 steps), Adam with tanh at lr 0.03 0.59 (saturates every layer);
# - train/loss climbed to more than CLIMB times its lowest so far, giving back more than GIVE_BACK
#   of what it had gained since epoch 1 (near zero loss, Adam's noise alone moves it by half:
#   0.0019 -> 0.0030 on standardized rows whose loss started at 0.99). Healthy: at most 1.17
#   (one noisy epoch of SGD at lr 5); bad: SGD at lr 50 1.43, at lr 20 2.9.
UPDATE_RATIO_HIGH = 0.1
CLIMB = 1.3
GIVE_BACK = 0.5


def lr_too_high(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    evidence: dict[str, Any] = {}
    reasons = []
    if trace.status == "diverged" and epoch == trace.failed_epoch:
        evidence["diverged_in_epoch"] = epoch
        reasons.append(f"the loss became NaN or infinite in epoch {epoch}")
    ratios = [r for r in (_median_update_ratio(p) for p in trace.points(epoch)) if math.isfinite(r)]
    if ratios and max(ratios) > UPDATE_RATIO_HIGH:
        evidence["update_ratio"] = round(max(ratios), 4)
        reasons.append(f"a step changed the weights by {max(ratios):.2g} of their norm (median over layers; above "
                       f"{UPDATE_RATIO_HIGH:g} is too big a step)")
    lowest = min((v for v in (trace.metric(e, "train/loss") for e in range(1, epoch)) if math.isfinite(v)),
                 default=math.nan)
    first, now = trace.metric(1, "train/loss"), trace.metric(epoch, "train/loss")
    if math.isfinite(lowest) and now > CLIMB * lowest and now - lowest > GIVE_BACK * (first - lowest):
        evidence["train_loss"] = {"lowest": lowest, "now": now}
        reasons.append(f"train/loss climbed to {_fmt(now)} from {_fmt(lowest)}")
    if not reasons:
        return None
    return Finding("lr_too_high", [], [epoch], {**evidence, "lr": facts.lr},
                   [_lower_lr(facts), "trainer.gradient_clip_val=1.0", "aetrain lr_find"],
                   f"optimizer.lr={facts.lr:g}: " + "; ".join(reasons))


def _holds(trace: Trace, facts: Facts, epoch: int, *rules: Callable[[Trace, Facts, int], Finding | None]) -> bool:
    return any(rule(trace, facts, epoch) is not None for rule in rules)


def _median_update_ratio(point: dict[str, dict[str, Any]]) -> float:
    ratios = [_num(row.get("update_ratio")) for row in point.values()]
    ratios = [r for r in ratios if math.isfinite(r)]
    return statistics.median(ratios) if ratios else math.nan


# lr_too_low holds from epoch LOW_EPOCHS on, while gradients flow (a dead or vanishing network is
# another finding) and the configured rate is in effect (not decayed by a schedule), when:
# - with diagnostics: train/loss moved less than LOW_PROGRESS (relative) over the last LOW_WINDOW
#   epochs and the update-to-weight ratio (median over layers and the epoch's sampled steps) is
#   below UPDATE_RATIO_LOW. Healthy: at least 5.9e-4 in any epoch from the third on (sigmoid MLP,
#   end of training; the default run 7.6e-4). Bad: optimizer.lr=1e-7 1.3e-6; SGD at its default
#   lr 0.01 1.2e-5-3.9e-4: its loss reaches the mean image's in 50 epochs and stays there;
# - from metrics.csv alone: train/loss moved less than LOW_PROGRESS since epoch 1 (1e-7: 0.03% in
#   10 epochs; every healthy run: more than 40% by epoch 3).
LOW_EPOCHS = 3
LOW_WINDOW = 10
LOW_PROGRESS = 0.01
UPDATE_RATIO_LOW = 1e-4


def lr_too_low(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    grad, lr = trace.metric(epoch, "train/grad_norm"), trace.metric(epoch, "lr")
    if epoch < LOW_EPOCHS or not grad > 0 or (math.isfinite(lr) and lr < 0.5 * facts.lr):
        return None
    ratios = [r for r in (_median_update_ratio(p) for p in trace.points(epoch)) if math.isfinite(r)]
    since = 1 if not ratios else max(1, epoch - LOW_WINDOW)
    before, now = trace.metric(since, "train/loss"), trace.metric(epoch, "train/loss")
    if not (before > 0 and math.isfinite(now)):
        return None
    progress = (before - now) / before
    if abs(progress) >= LOW_PROGRESS:  # it fell (learning) or rose (see lr_too_high)
        return None
    evidence: dict[str, Any] = {f"train_loss_epoch_{since}": before, f"train_loss_epoch_{epoch}": now}
    if ratios:
        ratio = statistics.median(ratios)
        if ratio >= UPDATE_RATIO_LOW or _holds(trace, facts, epoch, vanishing_gradients, dead_units, saturated_units):
            return None  # the weights do move, or the gradient does not reach them: another finding
        evidence["update_ratio"] = float(f"{ratio:.3g}")
    better = facts.default_lr if facts.lr < facts.default_lr / 10 else facts.lr * 10
    higher = f"optimizer.lr={better:g}" if math.isfinite(better) else "optimizer.lr=<ten times it>"
    return Finding("lr_too_low", [], [epoch], {**evidence, "lr": facts.lr}, [higher, "aetrain lr_find"],
                   f"optimizer.lr={facts.lr:g}: train/loss moved {abs(progress):.2%} from epoch {since} to {epoch}"
                   + (f"; each step changes the weights by {evidence['update_ratio']:.2g} of their norm"
                      if "update_ratio" in evidence else ""))


# Every rule, in the report's order. A rule is named after the finding it makes: the finding codes (CODES, which
# `aetrain doctor --help` lists) are its names, so a new rule is one function and its entry here.
RULES: tuple[Callable[[Trace, Facts, int], Finding | None], ...] = (
    output_range, lr_too_high, exploding_gradients, vanishing_gradients, dead_units, saturated_units, lr_too_low,
    identity_mapping, unused_code_units, blurry_reconstructions, overfitting)
CODES = tuple(rule.__name__ for rule in RULES)


# What each rule judges from: metrics.csv's epochs, the sampled steps or the reconstruction checks of
# diagnostics.csv (or the config alone: nothing). A finding of the whole run is past when its rule had that
# evidence at a later epoch than its last and no longer held there (`Finding.gone_by`): vanishing gradients at
# the first step of a conv net whose encoder.0 gradient then grows 2e-5 -> 0.012 are history, not a verdict.
# Judged per kind of evidence, so that a diagnostics.csv cut short is not taken for a problem that went away.
EVIDENCE = {"output_range": (), "lr_too_high": ("epochs", "steps"), "exploding_gradients": ("epochs", "steps"),
            "vanishing_gradients": ("steps",), "dead_units": ("steps",), "saturated_units": ("steps",),
            "lr_too_low": ("epochs",), "identity_mapping": ("checks",), "unused_code_units": ("checks",),
            "blurry_reconstructions": ("checks",), "overfitting": ("epochs",)}


def _gone_by(trace: Trace, finding: Finding) -> int | None:
    """The first epoch after the finding's last at which its rule had evidence (and so did not hold); None when
    there is none: it holds to the end of what was measured."""
    kinds = {"epochs": [r["epoch"] for r in trace.epochs if isinstance(r.get("epoch"), int)],
             "steps": list(trace.steps), "checks": list(trace.checks)}
    later = [e for kind in EVIDENCE.get(finding.code, ()) for e in kinds[kind] if e > max(finding.epochs)]
    return min(later, default=None)


def diagnose(trace: Trace, facts: Facts, *, at: int | None = None) -> list[Finding]:
    """The findings that hold at epoch `at`; or, without it, over the whole run: each finding once, with
    every epoch it held in, the union of its layers, the evidence of the latest epoch it held in, and
    `gone_by` for one that stopped holding."""
    if at is not None:
        return [_settable(f, facts) for rule in RULES if (f := rule(trace, facts, at)) is not None]
    merged: dict[str, Finding] = {}
    for epoch in trace.epoch_numbers():
        for rule in RULES:
            found = rule(trace, facts, epoch)
            if found is None:
                continue
            if found.code not in merged:
                merged[found.code] = found
                continue
            kept = merged[found.code]
            kept.epochs.append(epoch)
            kept.layers += [layer for layer in found.layers if layer not in kept.layers]
            kept.evidence, kept.message, kept.suggestion = found.evidence, found.message, found.suggestion
    for finding in merged.values():
        finding.gone_by = _gone_by(trace, finding)
    return [_settable(merged[code], facts) for code in CODES if code in merged]


def _settable(finding: Finding, facts: Facts) -> Finding:
    """The finding with only the suggestions this run's model can take (its keys)."""
    finding.suggestion = [s for s in finding.suggestion if facts.can_set(s)]
    return finding


def verdict(trace: Trace, findings: list[Finding]) -> str:
    """healthy | learning with problems | not learning | diverged | too early to judge. Findings that stopped
    holding (`gone_by`) are history, not part of the verdict."""
    current = [f for f in findings if f.gone_by is None]
    losses = [trace.metric(e, "val/loss") for e in range(1, len(trace.epochs) + 1)]
    if trace.status == "diverged" or any(math.isinf(v) for v in losses) or \
            any(math.isnan(_num(r.get("train/loss"))) and "train/loss" in r for r in trace.epochs):
        return "diverged"
    if too_early(trace) is not None and not current:
        return "too early to judge"
    finite = [v for v in losses if math.isfinite(v)]
    if len(finite) >= 2 and (min(finite[1:]) > (1 - NOT_LEARNING) * finite[0] or finite[-1] > finite[0]):
        return "not learning"
    last = trace.checks[max(trace.checks)] if trace.checks else {}
    if _num(last.get("data_error")) >= MEAN_IMAGE:
        return "not learning"
    return "healthy" if not current else "learning with problems"


# A verdict needs VERDICT_EPOCHS finished epochs: the rules over sustained windows (dead and saturated units,
# unused code units, identity mapping, blurry reconstructions) need SUSTAINED_EPOCHS of them, and a healthy run
# may not yet show the progress the "not learning" test asks for. The default run (23 optimizer steps an epoch)
# reads "not learning" after 2 and 3 epochs by that test (val/loss 7% and 9% below epoch 1's, the reconstructions
# at 1.01 and 0.99 of the mean image's error); from epoch 4 on it passes (20% below, 0.87), and by epoch 10 its
# val/loss is 64% below epoch 1's.
VERDICT_EPOCHS = SUSTAINED_EPOCHS


def too_early(trace: Trace) -> str | None:
    """Why the run is too short for a verdict, with what it shows so far; None when it is long enough."""
    epochs = [r["epoch"] for r in trace.epochs if isinstance(r.get("epoch"), int)]
    done = max(epochs, default=0)
    if done >= VERDICT_EPOCHS:
        return None
    val = [v for v in (trace.metric(e, "val/loss") for e in range(1, done + 1)) if math.isfinite(v)]
    progress = (f"; so far val/loss is {1 - min(val[1:]) / val[0]:.0%} below epoch 1's" if len(val) >= 2 and val[0] > 0
                else "")
    last = trace.checks[max(trace.checks)] if trace.checks else {}
    error = _num(last.get("data_error"))
    if math.isfinite(error):
        progress += f"{';' if not progress else ','} the reconstructions are at {error:.2f} of the mean image's error"
    return (f"{done} epoch{'s' if done != 1 else ''} measured: too few for a verdict, which needs {VERDICT_EPOCHS} "
            f"(the rules over sustained windows need {SUSTAINED_EPOCHS}){progress}")


# A run is not learning when its best val/loss after epoch 1 is not at least NOT_LEARNING below epoch
# 1's, when its last val/loss is above epoch 1's (it unlearned), or when its latest reconstruction
# check's data_error is at least MEAN_IMAGE: it reconstructs no better than the mean image (SGD at
# its default lr on the digits ends at 0.99; every healthy reference below 0.15).
NOT_LEARNING = 0.1
MEAN_IMAGE = 0.9

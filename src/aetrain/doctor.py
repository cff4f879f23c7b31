"""The training doctor's rules: from what a run measured to findings, each with the overrides to try.

Torch-free and Hydra-free: the same rules run live during training (`aetrain.train.outputs.diagnostics`
announces a finding the first time it holds) and afterwards on a run dir (`aetrain doctor`), from
metrics.csv (one row per epoch) and diagnostics.csv (one row per layer per sampled step, and the
reconstruction check once per epoch). A run without diagnostics.csv still gets every rule that
metrics.csv alone can decide.

Each rule answers "does it hold at epoch e?" from what was measured up to and including epoch e,
so the live messages and the report agree. A rule over sampled steps holds at an epoch when its
condition holds in at least half of that epoch's sampled steps (one odd batch proves nothing).

Every threshold sits next to its rule with the runs it was chosen from (bundled digits, 2-core
CPU, `diagnostics.every_n_steps=10`): the healthy references are the default run and every model
preset at its defaults (dense_ae, conv_ae, denoising_ae, sparse_ae, vae, 200 epochs); the bad
references are the runs named in each rule. README "Training doctor" lists the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aetrain.config import Config, DenoisingAEConfig, SparseAEConfig, VAEConfig, default_choice

# --- findings --------------------------------------------------------------------------------------

CODES = ("lr_too_high", "exploding_gradients", "vanishing_gradients", "dead_units", "saturated_units",
         "lr_too_low", "identity_mapping", "unused_code_units", "blurry_reconstructions", "overfitting")


@dataclass
class Finding:
    """One problem: a stable `code`, the layers and epochs it concerns, the numbers behind it, what to try."""

    code: str
    layers: list[str]
    epochs: list[int]
    evidence: dict[str, Any]  # named numbers (and layer names) that show it
    suggestion: list[str]  # command-line overrides to try, the most direct first; each one a whole alternative
    message: str  # one sentence with the evidence

    def line(self) -> str:
        """The one line announced during training (and kept in train.log)."""
        where = f" in {', '.join(_short(self.layers))}" if self.layers else ""
        return (f"{self.code}{where} (epoch {self.epochs[0]}): {self.message}; try: {' | '.join(self.suggestion)}"
                f"  [aetrain doctor <run dir> for the report]")

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "layers": self.layers, "epochs": self.epochs, "evidence": self.evidence,
                "suggestion": self.suggestion, "message": self.message}


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
    regulariser: str | None = None  # what keeps the code from copying the input: denoising noise, sparsity, KL
    optimizer: str = "adam"
    lr: float = math.nan
    default_lr: float = math.nan  # the optimizer choice's default learning rate
    max_epochs: int | None = None

    @classmethod
    def of(cls, cfg: Config, shape: tuple[int, ...] | None = None, **_: Any) -> Facts:
        m = cfg.model
        regulariser = None
        if isinstance(m, DenoisingAEConfig) and m.noise.level > 0:
            regulariser = f"{m.noise.kind} input noise (model.noise.level={m.noise.level:g})"
        elif isinstance(m, SparseAEConfig) and m.sparsity.weight > 0:
            regulariser = f"a {m.sparsity.kind} sparsity penalty (model.sparsity.weight={m.sparsity.weight:g})"
        elif isinstance(m, VAEConfig):
            regulariser = "a sampled code and its KL term"
        return cls(model=m.name, latent_dim=m.latent_dim, input_size=math.prod(shape) if shape else None,
                   image=None if shape is None else len(shape) == 3, activation=m.activation, loss=m.loss,
                   regulariser=regulariser, optimizer=cfg.optimizer.name, lr=cfg.optimizer.lr,
                   default_lr=default_choice("optimizer", cfg.optimizer.name).lr, max_epochs=cfg.trainer.max_epochs)


@dataclass
class Trace:
    """What a run measured so far: metrics.csv's epochs and diagnostics.csv's rows, indexed by epoch."""

    epochs: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch, in order
    steps: dict[int, dict[int, dict[str, dict[str, Any]]]] = field(default_factory=dict)  # epoch -> step -> layer -> row
    checks: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch -> the reconstruction check's row
    status: str | None = None  # how the run ended: ok | stopped_early | interrupted | diverged | failed; None = running
    failed_epoch: int | None = None  # the epoch under way when it diverged or failed
    first_grads: dict[str, float] = field(default_factory=dict)  # each layer's gradient norm in the first sampled epoch
    first_epoch_sampled: int | None = None

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

    def metric(self, epoch: int, key: str) -> float:
        """A metrics.csv value of `epoch` (1-based); NaN when there is none."""
        if 1 <= epoch <= len(self.epochs) and self.epochs[epoch - 1].get("epoch") == epoch:
            return _num(self.epochs[epoch - 1].get(key))
        row = next((r for r in self.epochs if r.get("epoch") == epoch), None)
        return _num(row.get(key)) if row else math.nan

    def epoch_numbers(self) -> list[int]:
        found = {r["epoch"] for r in self.epochs if isinstance(r.get("epoch"), int)} | set(self.steps) | set(self.checks)
        if self.failed_epoch is not None:
            found.add(self.failed_epoch)
        return sorted(found)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _majority(points: list[Any], holds: Callable[[Any], bool]) -> bool:
    """At least half of the epoch's sampled steps (and at least one)."""
    return bool(points) and 2 * sum(1 for p in points if holds(p)) >= len(points)


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
    points = trace.points(epoch)
    low: dict[str, list[float]] = {}
    largest: dict[str, int] = {}
    for point in points:
        grads = {layer: _num(row.get("grad_norm")) for layer, row in point.items()
                 if math.isfinite(_num(row.get("grad_norm")))}
        top = max(grads.values(), default=0.0)
        if top <= 0:
            continue
        largest[max(grads, key=grads.get)] = largest.get(max(grads, key=grads.get), 0) + 1
        for layer, g in grads.items():
            low.setdefault(layer, []).append(g / top)
    layers = [layer for layer, shares in low.items()
              if _majority(shares, lambda s: s < VANISHING_SHARE) and len(shares) * 2 >= len(points)]
    if not layers:
        return None
    shares = {layer: statistics.median(low[layer]) for layer in layers}
    worst = min(shares, key=shares.get)
    top_layer = max(largest, key=largest.get)
    suggestion = (["model.activation=relu model.init=kaiming_normal", "model.batch_norm=true"]
                  if facts.activation in ("sigmoid", "tanh") else ["model.init=kaiming_normal", "model.batch_norm=true"])
    return Finding("vanishing_gradients", layers, [epoch],
                   {"share_of_largest": {k: float(f"{v:.3g}") for k, v in shares.items()}, "largest": top_layer,
                    "threshold": VANISHING_SHARE},
                   suggestion,
                   f"{len(layers)} layer(s) get less than {VANISHING_SHARE:g} of the gradient norm of {top_layer}; "
                   f"{worst} gets {_fmt(shares[worst])} of it" +
                   (f" (model.activation={facts.activation} passes at most a quarter of the gradient per layer)"
                    if facts.activation == "sigmoid" else ""))


# A layer's gradient norm this many times its median over the first sampled epoch is exploding.
# Healthy: the largest growth of any layer in the healthy references is TBD. Bad: TBD.
EXPLODING_GROWTH = 100.0


def exploding_gradients(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    points = trace.points(epoch)
    grown: dict[str, list[float]] = {}
    for point in points:
        for layer, row in point.items():
            g, ref = _num(row.get("grad_norm")), trace.first_grads.get(layer, math.nan)
            if row.get("grad_norm") in (None, "") or not ref > 0:
                continue
            grown.setdefault(layer, []).append(g / ref if math.isfinite(g) else math.inf)
    layers = [layer for layer, growth in grown.items() if _majority(growth, lambda x: x > EXPLODING_GROWTH)]
    evidence: dict[str, Any] = {}
    if layers:
        evidence["growth"] = {layer: _json_number(statistics.median(grown[layer])) for layer in layers}
    total, first = trace.metric(epoch, "train/grad_norm"), trace.metric(1, "train/grad_norm")
    if epoch > 1 and first > 0 and (total > EXPLODING_GROWTH * first or math.isinf(total)):
        evidence["train/grad_norm"] = {"epoch_1": first, f"epoch_{epoch}": _json_number(total)}
    if not evidence:
        return None
    if layers:
        worst = max(layers, key=lambda l: statistics.median(grown[l]))
        message = (f"the gradient norm of {worst} is {_fmt(statistics.median(grown[worst]))} times what it was in "
                   f"epoch {trace.first_epoch_sampled}")
    else:
        message = f"the mean gradient norm rose from {_fmt(first)} in epoch 1 to {_fmt(total)}"
    return Finding("exploding_gradients", layers, [epoch], {**evidence, "threshold": EXPLODING_GROWTH},
                   ["trainer.gradient_clip_val=1.0", f"optimizer.lr={facts.lr / 10:g}", "model.batch_norm=true"],
                   message)


def _json_number(x: float) -> float | str:
    return float(f"{x:.4g}") if math.isfinite(x) else ("inf" if x > 0 else "nan")


# A ReLU layer with at least this share of units that output zero for every sample of the batch.
# Healthy: up to 0.46 (encoder.4 of the default run, for the whole run; its loss is the default's)
# TBD. Bad: optimizer.lr=0.05 (Adam) kills 0.70 of three layers within 10 steps, and the loss never
# moves again.
DEAD_SHARE = 0.6


def dead_units(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    return _share_rule(trace, facts, epoch, "dead_share", DEAD_SHARE, "dead_units",
                       "of the units output zero for every sample",
                       ["model.activation=leaky_relu", f"optimizer.lr={facts.lr / 10:g}",
                        "model.init=kaiming_normal model.batch_norm=true"])


# A sigmoid/tanh layer with at least this share of outputs in the flat tails (slope < 5% of its peak).
# Healthy: TBD. Bad: TBD.
SATURATED_SHARE = 0.5


def saturated_units(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    return _share_rule(trace, facts, epoch, "saturated_share", SATURATED_SHARE, "saturated_units",
                       "of the outputs sit where the slope is below 5% of its peak",
                       ["model.activation=leaky_relu model.init=kaiming_normal", "model.batch_norm=true",
                        f"optimizer.lr={facts.lr / 10:g}"])


def _share_rule(trace: Trace, facts: Facts, epoch: int, stat: str, threshold: float, code: str, what: str,
                suggestion: list[str]) -> Finding | None:
    points = trace.points(epoch)
    shares: dict[str, list[float]] = {}
    for point in points:
        for layer, row in point.items():
            value = _num(row.get(stat))
            if math.isfinite(value):
                shares.setdefault(layer, []).append(value)
    layers = [layer for layer, values in shares.items() if _majority(values, lambda v: v >= threshold)]
    if not layers:
        return None
    median = {layer: statistics.median(shares[layer]) for layer in layers}
    worst = max(median, key=median.get)
    return Finding(code, layers, [epoch], {stat: {k: round(v, 3) for k, v in median.items()}, "threshold": threshold},
                   suggestion, f"in {worst}, {median[worst]:.0%} {what} (threshold {threshold:.0%})")


# A code unit carries nothing when its standard deviation across the batch is below this share of
# the largest unit's (its variance below the square of it); the whole code carries nothing when
# even the largest standard deviation is below this share of the mean |z|.
# Healthy: TBD. Bad: TBD.
UNUSED_STD_SHARE = 0.01


def unused_units(variances: list[float], mean_abs: float = math.nan) -> tuple[int, list[int]]:
    """(how many, which) code units carry nothing, by UNUSED_STD_SHARE."""
    finite = [v for v in variances if math.isfinite(v)]
    if not finite:
        return 0, []
    top = max(finite)
    if math.isfinite(mean_abs) and math.sqrt(max(top, 0.0)) < UNUSED_STD_SHARE * mean_abs:
        return len(variances), list(range(len(variances)))
    unused = [i for i, v in enumerate(variances) if math.isfinite(v) and v < UNUSED_STD_SHARE**2 * top]
    return len(unused), unused


def unused_code_units(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    codes = [p["code"] for p in trace.points(epoch) if "code" in p and p["code"].get("code_unit_var")]
    found = [unused_units(c["code_unit_var"], _num(c.get("code_mean_abs")))[1] for c in codes]
    if not _majority(found, bool):
        return None
    units = sorted(set.intersection(*(set(f) for f in found if f)))
    if not units:
        return None
    width = len(codes[-1]["code_unit_var"])
    suggestion = [f"model.latent_dim={max(1, width - len(units))}"]
    if facts.model == "vae":
        suggestion.append("model.kl_warmup_epochs=50")
    if facts.model == "sparse_ae":
        suggestion.append("model.sparsity.weight=<a tenth of it>")
    return Finding("unused_code_units", ["code"], [epoch], {"unused_units": units, "latent_dim": width,
                                                            "threshold_std_share": UNUSED_STD_SHARE},
                   suggestion, f"{len(units)} of {width} code units vary less than {UNUSED_STD_SHARE:.0%} as much "
                               f"as the busiest one: units {', '.join(map(str, units[:8]))}"
                               + (" ..." if len(units) > 8 else ""))


# Without a regulariser, a code at least as wide as the input can copy it; or the model reconstructs
# structure-free noise (the data with each feature shuffled across samples) almost as well as data:
# noise_error below this, while a model that learned the data scores TBD.
IDENTITY_NOISE_ERROR = 0.3


def identity_mapping(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    if facts.regulariser is not None:
        return None
    narrower = f"model.latent_dim={max(1, (facts.input_size or 4 * (facts.latent_dim or 1)) // 4)}"
    suggestion = [narrower, "model=denoising_ae", "model=sparse_ae"]
    if facts.input_size is not None and facts.latent_dim is not None and facts.latent_dim >= facts.input_size:
        return Finding("identity_mapping", ["code"], [epoch],
                       {"latent_dim": facts.latent_dim, "input_size": facts.input_size}, suggestion,
                       f"the code (model.latent_dim={facts.latent_dim}) is as wide as the input ({facts.input_size} "
                       "values) and nothing (input noise, sparsity) stops the model from copying it")
    check = trace.checks.get(epoch)
    noise = _num(check.get("noise_error")) if check else math.nan
    if noise < IDENTITY_NOISE_ERROR:
        return Finding("identity_mapping", ["code"], [epoch],
                       {"noise_error": round(noise, 4), "data_error": round(_num(check.get("data_error")), 4),
                        "threshold": IDENTITY_NOISE_ERROR}, suggestion,
                       f"it reconstructs noise (the data with each feature shuffled) nearly as well as data: "
                       f"relative error {noise:.3g} against {_num(check.get('data_error')):.3g}")
    return None


# Images: the reconstructions keep less than this share of the originals' high-frequency energy,
# judged in the second half of the run (every model is blurry while it learns) and only once it
# reconstructs at least half of the data's variance (data_error < 0.5; else the problem is another).
# Healthy: TBD. Bad: TBD.
BLURRY_HF_RATIO = 0.5


def blurry_reconstructions(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    check = trace.checks.get(epoch)
    if not facts.image or check is None or (facts.max_epochs and 2 * epoch < facts.max_epochs):
        return None
    hf, err = _num(check.get("hf_ratio")), _num(check.get("data_error"))
    if not (hf < BLURRY_HF_RATIO and err < 0.5):
        return None
    suggestion = [f"model.latent_dim={2 * (facts.latent_dim or 8)}", "model=conv_ae"]
    if facts.loss in ("mse", "auto", "smooth_l1"):
        suggestion.insert(1, "model.loss=l1")
    return Finding("blurry_reconstructions", [], [epoch], {"hf_ratio": round(hf, 3), "threshold": BLURRY_HF_RATIO},
                   suggestion, f"the reconstructions keep {hf:.0%} of the originals' high-frequency energy")


# Validation loss at least this share above its best, at least OVERFIT_EPOCHS after the best epoch,
# while the training loss kept falling. Healthy: TBD. Bad: TBD.
OVERFIT_RISE = 0.1
OVERFIT_EPOCHS = 10


def overfitting(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    vals = [(e, trace.metric(e, "val/loss")) for e in range(1, epoch + 1)]
    vals = [(e, v) for e, v in vals if math.isfinite(v)]
    if len(vals) < OVERFIT_EPOCHS + 1:
        return None
    best_epoch, best = min(vals, key=lambda ev: ev[1])
    now = trace.metric(epoch, "val/loss")
    train_best, train_now = trace.metric(best_epoch, "train/loss"), trace.metric(epoch, "train/loss")
    if not (epoch - best_epoch >= OVERFIT_EPOCHS and now >= (1 + OVERFIT_RISE) * best and train_now < train_best):
        return None
    return Finding("overfitting", [], [epoch],
                   {"best_epoch": best_epoch, "best_val_loss": best, "val_loss": now, "train_loss_at_best": train_best,
                    "train_loss": train_now},
                   ["trainer.early_stopping_patience=10", "model.dropout=0.1", "optimizer=adamw", "model=denoising_ae"],
                   f"val/loss rose {now / best - 1:.0%} above its best ({_fmt(best)} at epoch {best_epoch}) while "
                   f"train/loss fell from {_fmt(train_best)} to {_fmt(train_now)}")


# The median update-to-weight ratio over the layers with parameters, above which steps are too big.
# Healthy: at most TBD in any sampled step of the healthy references. Bad: TBD.
UPDATE_RATIO_HIGH = 0.1
# The training loss this many times its lowest so far is climbing.
CLIMB = 1.5


def lr_too_high(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    evidence: dict[str, Any] = {}
    reasons = []
    if trace.status == "diverged" and epoch == trace.failed_epoch:
        evidence["diverged_in_epoch"] = epoch
        reasons.append(f"the loss became NaN or infinite in epoch {epoch}")
    ratios = [_median_update_ratio(p) for p in trace.points(epoch)]
    ratios = [r for r in ratios if math.isfinite(r)]
    if _majority(ratios, lambda r: r > UPDATE_RATIO_HIGH):
        evidence["update_ratio"] = round(statistics.median(ratios), 4)
        reasons.append(f"each step changes the weights by {statistics.median(ratios):.2g} of their norm (median over "
                       f"layers; above {UPDATE_RATIO_HIGH:g} is too big a step)")
    losses = [trace.metric(e, "train/loss") for e in range(1, epoch)]
    lowest = min((l for l in losses if math.isfinite(l)), default=math.nan)
    now = trace.metric(epoch, "train/loss")
    if epoch > 1 and math.isfinite(lowest) and now > CLIMB * lowest:
        evidence["train_loss"] = {"lowest": lowest, "now": now}
        reasons.append(f"train/loss climbed to {_fmt(now)} from {_fmt(lowest)}")
    if not reasons:
        return None
    return Finding("lr_too_high", [], [epoch], {**evidence, "lr": facts.lr},
                   [f"optimizer.lr={facts.lr / 10:g}", "trainer.gradient_clip_val=1.0"],
                   f"optimizer.lr={facts.lr:g}: " + "; ".join(reasons))


def _median_update_ratio(point: dict[str, dict[str, Any]]) -> float:
    ratios = [_num(row.get("update_ratio")) for row in point.values()]
    ratios = [r for r in ratios if math.isfinite(r)]
    return statistics.median(ratios) if ratios else math.nan


# From epoch LOW_EPOCHS on: train/loss fell less than LOW_PROGRESS (relative) since epoch 1 although
# gradients flow; with diagnostics also the median update-to-weight ratio is below UPDATE_RATIO_LOW.
# Healthy: TBD. Bad: optimizer.lr=1e-7: train/loss -0.03% over 10 epochs, update ratio 1e-7.
LOW_EPOCHS = 3
LOW_PROGRESS = 0.01
UPDATE_RATIO_LOW = 1e-5


def lr_too_low(trace: Trace, facts: Facts, epoch: int) -> Finding | None:
    first, now = trace.metric(1, "train/loss"), trace.metric(epoch, "train/loss")
    grad = trace.metric(epoch, "train/grad_norm")
    if epoch < LOW_EPOCHS or not (first > 0 and math.isfinite(now)) or not grad > 0:
        return None
    progress = (first - now) / first
    if progress >= LOW_PROGRESS:
        return None
    evidence: dict[str, Any] = {"train_loss_epoch_1": first, f"train_loss_epoch_{epoch}": now}
    ratios = [r for r in (_median_update_ratio(p) for p in trace.points(epoch)) if math.isfinite(r)]
    if ratios:
        if not _majority(ratios, lambda r: r < UPDATE_RATIO_LOW):
            return None  # the weights do move: something else holds the loss (see the other findings)
        evidence["update_ratio"] = float(f"{statistics.median(ratios):.3g}")
    better = facts.default_lr if facts.lr < facts.default_lr / 10 else facts.lr * 10
    return Finding("lr_too_low", [], [epoch], {**evidence, "lr": facts.lr},
                   [f"optimizer.lr={better:g}", "aetrain lr_find"],
                   f"optimizer.lr={facts.lr:g}: train/loss moved {progress:.2%} in {epoch} epochs"
                   + (f"; each step changes the weights by {evidence['update_ratio']:.2g} of their norm"
                      if "update_ratio" in evidence else ""))


RULES: tuple[Callable[[Trace, Facts, int], Finding | None], ...] = (
    lr_too_high, exploding_gradients, vanishing_gradients, dead_units, saturated_units, lr_too_low,
    identity_mapping, unused_code_units, blurry_reconstructions, overfitting)


def diagnose(trace: Trace, facts: Facts, *, at: int | None = None) -> list[Finding]:
    """The findings that hold at epoch `at`; or, without it, over the whole run: each finding once, with
    every epoch it held in, the union of its layers, and the evidence of the latest epoch it held in."""
    if at is not None:
        return [f for rule in RULES if (f := rule(trace, facts, at)) is not None]
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
    return [merged[code] for code in CODES if code in merged]


def verdict(trace: Trace, findings: list[Finding]) -> str:
    """healthy | learning with problems | not learning | diverged."""
    losses = [trace.metric(e, "val/loss") for e in range(1, len(trace.epochs) + 1)]
    if trace.status == "diverged" or any(math.isinf(v) for v in losses) or \
            any(math.isnan(_num(r.get("train/loss"))) and "train/loss" in r for r in trace.epochs):
        return "diverged"
    finite = [v for v in losses if math.isfinite(v)]
    if len(finite) >= 2 and min(finite[1:]) > (1 - NOT_LEARNING) * finite[0]:
        return "not learning"
    return "healthy" if not findings else "learning with problems"


# A run whose best val/loss after epoch 1 is not at least this share below epoch 1's is not learning.
NOT_LEARNING = 0.1

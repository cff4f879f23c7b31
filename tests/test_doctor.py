"""The training doctor: per-layer diagnostics during training, live findings, and `aetrain doctor <run dir>`.

The acceptance runs drive the real CLI on the bundled digits: each bad configuration is reported
with its finding (during training, in train.log, and by `aetrain doctor`), and the default run
and every model preset at their defaults get no finding at all.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aetrain import doctor
from aetrain.commands.train import build_parts, run
from aetrain.config import DiagnosticsConfig, DenseAEConfig, OptimizerConfig, default_choice
from aetrain.train.diagnostics import LayerProbe
from aetrain.train.step import GradientProbe

from conftest import assert_same_run, digits_config, metrics_rows

CPU = ["trainer.device=cpu", "outputs.plot_every=0"]


def diagnostics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "diagnostics.csv", newline="") as f:
        return list(csv.DictReader(f))


def doctor_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "doctor.json").read_text())


def codes(run_dir: Path) -> set[str]:
    return {f["code"] for f in doctor_json(run_dir)["findings"]}


def live_findings(run_dir: Path) -> list[str]:
    """The findings announced during training, as train.log kept them."""
    return [line.split("doctor: ", 1)[1] for line in (run_dir / "train.log").read_text().splitlines()
            if "doctor: " in line]


# --- measuring does not change the run --------------------------------------------------------------

@pytest.mark.parametrize("model", [DenseAEConfig(dropout=0.1, batch_norm=True), default_choice("model", "vae")],
                         ids=["dense_dropout_bn", "vae"])
def test_diagnostics_leave_the_run_bit_identical(tmp_path: Path, model) -> None:
    on = digits_config(model=model, diagnostics=DiagnosticsConfig(every_n_steps=1))
    off = digits_config(model=model, diagnostics=DiagnosticsConfig(enabled=False))
    run(on, tmp_path / "on")
    run(off, tmp_path / "off")
    assert_same_run(tmp_path / "on", tmp_path / "off")
    assert (tmp_path / "on" / "diagnostics.csv").is_file() and not (tmp_path / "off" / "diagnostics.csv").exists()


def test_disabled_diagnostics_build_the_do_nothing_probe() -> None:
    assert type(build_parts(digits_config(diagnostics=DiagnosticsConfig(enabled=False))).step.probe) is GradientProbe
    assert isinstance(build_parts(digits_config()).step.probe, LayerProbe)


# --- diagnostics.csv --------------------------------------------------------------------------------

def test_diagnostics_csv_has_a_row_per_layer_per_sampled_step(tmp_path: Path) -> None:
    cfg = digits_config(diagnostics=DiagnosticsConfig(every_n_steps=4))
    run(cfg, tmp_path)
    rows = diagnostics_rows(tmp_path)
    steps_per_epoch = metrics_rows(tmp_path)[0]["step"]
    total = int(metrics_rows(tmp_path)[-1]["step"])
    sampled = sorted({int(r["step"]) for r in rows if r["layer"] != "reconstruction"})
    assert sampled == list(range(1, total + 1, 4))  # the first step, then every 4th
    model = build_parts(cfg).model
    with_params = [n for n, m in model.named_modules() if list(m.parameters(recurse=False))]
    relus = [n for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU)]
    for step in sampled:
        at = {r["layer"]: r for r in rows if int(r["step"]) == step}
        assert set(at) == {*with_params, *relus, "code"}
        for layer in with_params:
            assert float(at[layer]["grad_norm"]) > 0 and float(at[layer]["weight_norm"]) > 0
            assert 0 < float(at[layer]["update_ratio"]) < 1
            assert at[layer]["kind"] == "Linear"
        for layer in relus:
            assert 0 <= float(at[layer]["dead_share"]) <= 1 and at[layer]["saturated_share"] == ""
        assert len(at["code"]["code_unit_var"].split()) == cfg.model.latent_dim
        assert float(at["code"]["code_mean_abs"]) > 0
    checks = [r for r in rows if r["layer"] == "reconstruction"]
    assert [int(r["epoch"]) for r in checks] == [1, 2] and int(checks[0]["step"]) == int(steps_per_epoch)
    assert all(0 < float(r["data_error"]) < 1.5 and float(r["hf_ratio"]) > 0 for r in checks)


def test_sampled_statistics_are_the_models_own_numbers(tmp_path: Path) -> None:
    """The first sampled step's gradient and weight norms equal those of a step taken by hand."""
    cfg = digits_config(diagnostics=DiagnosticsConfig(every_n_steps=1000))
    parts = build_parts(cfg)
    probe = parts.step.probe
    probe.start(0)
    x = next(parts.data.train.epoch(0))
    weights_before = {n: p.detach().clone() for n, p in parts.model.named_parameters()}
    parts.step.begin(0.1)
    parts.step.forward_backward(x, 1.0)
    grads = {n: p.grad.detach().clone() for n, p in parts.model.named_parameters()}
    parts.step.update()
    (step, values), = probe.read()
    assert step == 1
    got = {(c.layer, c.stat): v for c, v in zip(probe.columns, values) if c.stat != "unit_var"}
    for name, _ in parts.model.encoder.named_children():
        layer = f"encoder.{name}"
        if (layer, "grad_norm") not in got:
            continue
        grad = torch.cat([grads[f"{layer}.weight"].flatten(), grads[f"{layer}.bias"].flatten()]).norm()
        before = torch.cat([weights_before[f"{layer}.weight"].flatten(), weights_before[f"{layer}.bias"].flatten()])
        after = torch.cat([p.detach().flatten() for p in parts.model.get_submodule(layer).parameters()])
        assert math.isclose(got[(layer, "grad_norm")], float(grad), rel_tol=1e-5)
        assert math.isclose(got[(layer, "weight_norm")], float(before.norm()), rel_tol=1e-5)
        assert math.isclose(got[(layer, "update_ratio")], float((after - before).norm() / before.norm()), rel_tol=1e-4)


def test_resumed_run_writes_the_diagnostics_of_an_uninterrupted_one(tmp_path: Path) -> None:
    from test_resume import StopAt, interrupted_then_resumed

    cfg = digits_config(diagnostics=DiagnosticsConfig(every_n_steps=3))
    cfg.trainer.max_epochs = 3
    run(cfg, tmp_path / "a")
    interrupted_then_resumed(digits_config(diagnostics=DiagnosticsConfig(every_n_steps=3),
                                           trainer=cfg.trainer.__class__(max_epochs=3, device="cpu")),
                             tmp_path / "b", StopAt(mid_epoch=2))
    assert diagnostics_rows(tmp_path / "a") == diagnostics_rows(tmp_path / "b")


def test_tensorboard_gets_diag_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = digits_config(diagnostics=DiagnosticsConfig(every_n_steps=5))
    cfg.outputs.tensorboard = True
    run(cfg, tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"diag/encoder.1/grad_norm", "diag/encoder.1/update_ratio", "diag/encoder.2/dead_share",
            "diag/code/mean_abs", "diag/code/unused_units", "diag/reconstruction/hf_ratio",
            "diag/reconstruction/noise_error", "train/loss"} <= tags  # the run's own scalars are still there
    assert [e.step for e in events.Scalars("diag/encoder.1/grad_norm")][:3] == [1, 6, 11]


# --- the rules, on numbers made up for them ---------------------------------------------------------

def trace_of(losses: list[tuple[float, float]], grad_norm: float = 0.05) -> doctor.Trace:
    trace = doctor.Trace()
    for epoch, (train, val) in enumerate(losses, 1):
        trace.add_epoch({"epoch": epoch, "step": 10 * epoch, "train/loss": train, "val/loss": val,
                         "train/grad_norm": grad_norm})
    return trace


def test_rules_are_torch_free() -> None:
    code = "import sys, aetrain.doctor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

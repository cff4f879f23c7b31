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
from aetrain.config import Config, DenseAEConfig, DiagnosticsConfig, NoiseConfig, SparsityConfig, default_choice
from aetrain.train.diagnostics import LayerProbe
from aetrain.train.step import GradientProbe
from conftest import assert_same_run, choose, copy_run, digits_config, metrics_rows

CPU = ["trainer.device=cpu", "outputs.plot_every=0"]


def diagnostics_rows(run_dir: Path) -> list[dict[str, str]]:
    csv.field_size_limit(2**30)  # a cell per code unit: wide codes make long cells
    with open(run_dir / "diagnostics.csv", newline="") as f:
        return list(csv.DictReader(f))


def doctor_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "doctor.json").read_text())


def live_findings(run_dir: Path) -> list[str]:
    """The findings announced during training, as train.log kept them."""
    return [line.split("doctor: ", 1)[1] for line in (run_dir / "train.log").read_text().splitlines()
            if "doctor: " in line]


# --- measuring does not change the run --------------------------------------------------------------

@pytest.mark.parametrize("model", [
    pytest.param(DenseAEConfig(dropout=0.1, batch_norm=True), id="dense_dropout_bn", marks=pytest.mark.slow),
    pytest.param(default_choice("model", "vae"), id="vae"),
])
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


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_dead_and_saturated_shares_are_right_in_either_memory_format(memory_format) -> None:
    """Conv models run in channels_last by default; the shares must count the same units as in NCHW."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3), torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 3), torch.nn.Tanh())
    with torch.no_grad():
        model[0].bias.fill_(-2.0)  # some units dead for every sample
        model[2].weight.mul_(10)  # some outputs saturated
    model = model.to(memory_format=memory_format)
    x = (4 * torch.randn(16, 1, 9, 9)).contiguous(memory_format=memory_format)
    probe = LayerProbe(model, 1, latent_dim=0)
    probe.start(0)
    model(x).sum().backward()
    probe.before_update(None)
    probe.after_update(None)
    (_, values), = probe.read()
    got = {c.stat: v for c, v in zip(probe.columns, values) if c.stat in ("dead_share", "saturated_share")}
    with torch.no_grad():
        relu = model[1](model[0](x)).flatten(1)  # (B, C*H*W) in NCHW order, whatever the layout
        tanh = model(x).flatten(1)
    assert 0 < got["dead_share"] < 1 and 0 < got["saturated_share"] < 1  # the check has something to count
    assert got["dead_share"] == pytest.approx(float((relu > 0).any(dim=0).logical_not().float().mean()), abs=1e-6)
    assert got["saturated_share"] == pytest.approx(float((tanh.abs() > 1 - 0.0253).float().mean()), abs=1e-6)


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
    events = EventAccumulator(str(tmp_path / "tensorboard" / "diag"), size_guidance={"scalars": 0})
    events.Reload()
    assert {"diag/encoder.1/grad_norm", "diag/encoder.1/update_ratio", "diag/encoder.2/dead_share",
            "diag/code/mean_abs", "diag/code/unused_units", "diag/reconstruction/hf_ratio",
            "diag/reconstruction/noise_error"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("diag/encoder.1/grad_norm")][:3] == [1, 6, 11]
    run_events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    run_events.Reload()
    assert [e.step for e in run_events.Scalars("val/loss")] == [12, 24]  # the run's own scalars, in a run of their own


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


# --- acceptance: the real CLI on the bundled digits --------------------------------------------------

def train_and_diagnose(cli, *overrides: str) -> tuple[object, dict]:
    """`aetrain ...` then `aetrain doctor <run dir>`; returns the training result and doctor.json."""
    trained = cli(*CPU, *overrides)
    report = cli.command("doctor", str(trained.run_dir))
    assert report.returncode == 0, report.output
    assert "verdict:" in report.out
    return trained, doctor_json(trained.run_dir)


def finding(report: dict, code: str) -> dict:
    found = [f for f in report["findings"] if f["code"] == code]
    assert found, f"no {code} in {[f['code'] for f in report['findings']]}"
    return found[0]


@pytest.mark.slow
def test_deep_sigmoid_mlp_is_reported_as_vanishing_gradients_in_its_early_layers(cli) -> None:
    trained, report = train_and_diagnose(cli, "model.hidden_dims=[256,256,256,256,256,256]", "model.activation=sigmoid",
                                         "trainer.max_epochs=2")
    assert trained.returncode == 0
    found = finding(report, "vanishing_gradients")
    assert found["layers"][:3] == ["encoder.1", "encoder.3", "encoder.5"]  # the input side, in network order
    assert found["evidence"]["share_of_largest"]["encoder.1"] < 1e-6
    assert "model.activation=relu model.init=kaiming_normal" in found["suggestion"]
    assert any(line.startswith("vanishing_gradients in encoder.1") for line in live_findings(trained.run_dir))
    assert report["verdict"] == "not learning"


def test_diverging_run_is_reported_as_lr_too_high_at_the_divergence_and_by_the_doctor(cli) -> None:
    # SGD at lr 5 trains the default models on the digits (their sigmoid output bounds every gradient);
    # with an unbounded output it diverges within the first epoch
    trained, report = train_and_diagnose(cli, "model=conv_ae", "model.output_activation=identity", "optimizer=sgd",
                                         "optimizer.lr=5", "trainer.max_epochs=2")
    assert trained.returncode == 1 and "non-finite loss" in trained.err
    live = live_findings(trained.run_dir)
    assert any(line.startswith("lr_too_high") for line in live)
    assert any(line.startswith("exploding_gradients") for line in live)
    assert report["verdict"] == "diverged" and report["status"].startswith("diverged")
    assert finding(report, "lr_too_high")["evidence"]["diverged_in_epoch"] == 1
    assert "optimizer.lr=0.5" in finding(report, "lr_too_high")["suggestion"]
    assert "inf" in str(finding(report, "exploding_gradients")["evidence"])


@pytest.mark.slow
def test_relus_killed_by_a_high_learning_rate_are_reported_as_dead_units(cli) -> None:
    trained, report = train_and_diagnose(cli, "optimizer.lr=0.05", "trainer.max_epochs=11")
    found = finding(report, "dead_units")
    assert "decoder.3" in found["layers"]
    assert all(0.65 <= share <= 1 for share in found["evidence"]["dead_share"].values())
    assert found["suggestion"][0] == "model.activation=leaky_relu"
    lines = [line for line in live_findings(trained.run_dir) if line.startswith("dead_units")]
    assert len(lines) == 1 and "(epoch 10)" in lines[0]  # announced once, when it first held


def test_code_as_wide_as_the_input_is_reported_as_identity_mapping(cli) -> None:
    trained, report = train_and_diagnose(cli, "model.latent_dim=64", "trainer.max_epochs=1")
    found = finding(report, "identity_mapping")
    assert found["evidence"] == {"latent_dim": 64, "input_size": 64}
    assert "model=denoising_ae" in found["suggestion"]
    assert any(line.startswith("identity_mapping") for line in live_findings(trained.run_dir))


def test_denoising_code_as_wide_as_the_input_is_not_identity_mapping(cli) -> None:
    _, report = train_and_diagnose(cli, "model=denoising_ae", "model.latent_dim=64", "trainer.max_epochs=1")
    assert "identity_mapping" not in codes_of(report)


def test_tiny_learning_rate_is_reported_as_lr_too_low(cli) -> None:
    trained, report = train_and_diagnose(cli, "optimizer.lr=1e-7", "trainer.max_epochs=3")
    found = finding(report, "lr_too_low")
    assert found["epochs"] == [3] and found["evidence"]["update_ratio"] < 1e-5
    assert found["suggestion"][0] == "optimizer.lr=0.001"
    assert report["verdict"] == "not learning"


def codes_of(report: dict) -> set[str]:
    return {f["code"] for f in report["findings"]}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dense_ae", "conv_ae", "denoising_ae", "sparse_ae", "vae"])
def test_every_model_preset_at_its_defaults_gets_no_finding(cli, shared, tmp_path: Path, model: str) -> None:
    """A doctor that cries wolf is worse than none: 200 epochs at the defaults, nothing to report. (The runs are
    shared with test_eval, test_lr_find and test_vae, which check the same defaults for other things.)"""
    run_dir = copy_run(shared(f"model={model}"), tmp_path / "run")  # trained with exit code 0
    report = cli.command("doctor", str(run_dir))
    assert report.returncode == 0, report.output
    assert "verdict:" in report.out
    report = doctor_json(run_dir)
    assert report["findings"] == [] and report["verdict"] == "healthy"
    assert live_findings(run_dir) == []


# --- aetrain doctor on what runs leave behind --------------------------------------------------------

def test_doctor_judges_a_run_without_diagnostics_from_metrics_alone(cli) -> None:
    trained, report = train_and_diagnose(cli, "optimizer.lr=1e-7", "trainer.max_epochs=3", "diagnostics.enabled=false")
    assert not (trained.run_dir / "diagnostics.csv").exists()
    assert codes_of(report) == {"lr_too_low"} and report["diagnostics"] is False
    assert not (trained.run_dir / "diagnostics.png").exists()
    assert any("metrics.csv alone" in note for note in report["notes"])
    assert live_findings(trained.run_dir) == []  # diagnostics off: nothing announced either


def test_doctor_reads_an_interrupted_run(tmp_path: Path, cli) -> None:
    from aetrain.errors import Interrupted
    from test_resume import StopAt

    cfg = digits_config(diagnostics=DiagnosticsConfig(every_n_steps=2))
    cfg.trainer.max_epochs = 4
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "run", callbacks=[StopAt(mid_epoch=2)])
    result = cli.command("doctor", str(tmp_path / "run"))
    assert result.returncode == 0, result.output
    report = doctor_json(tmp_path / "run")
    assert report["status"].startswith("interrupted after 1 of 4 epochs")
    assert (tmp_path / "run" / "diagnostics.png").is_file()
    assert "no .hydra/config.yaml" in " ".join(report["notes"])  # made through the API: no composed config


def test_doctor_writes_a_readable_per_layer_picture(cli) -> None:
    from PIL import Image

    trained, report = train_and_diagnose(cli, "trainer.max_epochs=2", "diagnostics.every_n_steps=2")
    with Image.open(trained.run_dir / "diagnostics.png") as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 400
    layers = [entry["layer"] for entry in report["layers"]]
    assert layers[:3] == ["encoder.1", "encoder.2", "encoder.3"]  # network order: Linear, ReLU, Linear
    assert layers[layers.index("code") - 1].startswith("encoder.") and layers[-1].startswith("decoder.")
    out = cli.command("doctor", str(trained.run_dir)).out
    assert "encoder.1" in out and "Linear" in out and "per layer" in out


@pytest.mark.parametrize("args, message", [
    (["/no/such/run"], "/no/such/run: no such run dir"),
    ([], "aetrain doctor takes one run dir; got none"),
    (["a", "b"], "aetrain doctor takes one run dir; got 2"),
    (["run", "model=vae"], "takes a run dir and no overrides"),
    (["run", "--verbose"], "takes a run dir, not --verbose"),
])
def test_doctor_usage_errors_are_one_line(cli, args: list[str], message: str) -> None:
    result = cli.command("doctor", *args)
    assert result.returncode == 2
    assert result.err.startswith("aetrain: error: ") and message in result.err and result.err.count("\n") == 1


def test_doctor_refuses_a_directory_that_holds_no_run(cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = cli.command("doctor", str(tmp_path / "empty"))
    assert result.returncode == 2 and "not an aetrain run dir" in result.err
    assert list((tmp_path / "empty").iterdir()) == []  # nothing written


def test_doctor_given_a_file_says_it_wants_the_run_dir(cli, tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("epoch,step\n")
    result = cli.command("doctor", str(tmp_path / "metrics.csv"))
    assert result.returncode == 2 and result.err.count("\n") == 1
    assert result.err.startswith("aetrain: error: ") and "not a directory; give the run dir" in result.err


def test_doctor_prints_its_report_when_it_cannot_write_into_the_run_dir(cli) -> None:
    trained = cli(*CPU, "trainer.max_epochs=1")
    (trained.run_dir / "doctor.json").mkdir()  # unwritable as a file, even for root (a read-only dir is not)
    result = cli.command("doctor", str(trained.run_dir))
    assert result.returncode == 0, result.output
    assert "verdict:" in result.out and f"could not write {trained.run_dir / 'doctor.json'}" in result.out
    assert (trained.run_dir / "diagnostics.png").is_file()  # what can be written still is


def test_doctor_help_names_every_finding(cli) -> None:
    out = cli.command("doctor", "--help").out
    assert all(code in out for code in doctor.CODES)


def test_each_rule_is_named_after_the_finding_it_makes() -> None:
    """The finding codes are the rules' names (CODES, the help and the report's order come from RULES)."""
    import inspect

    assert doctor.CODES == tuple(rule.__name__ for rule in doctor.RULES) and len(set(doctor.CODES)) == len(doctor.RULES)
    for rule in doctor.RULES:
        assert f'"{rule.__name__}"' in inspect.getsource(rule), rule.__name__


CONSTRAINTS = [("dense_ae", {}, False), ("conv_ae", {}, False), ("denoising_ae", {}, True),
               ("denoising_ae", {"noise": NoiseConfig(level=0.0)}, False), ("sparse_ae", {}, True),
               ("sparse_ae", {"sparsity": SparsityConfig(weight=0.0)}, False), ("vae", {}, True),
               ("vae", {"beta": 0.0}, False)]


@pytest.mark.parametrize(("family", "keys", "constrained"), CONSTRAINTS)
def test_the_family_says_whether_it_constrains_its_code_and_the_doctor_agrees(family: str, keys: dict,
                                                                               constrained: bool) -> None:
    """One home: the family's config says what keeps its code from copying the input (input noise, a sparsity
    penalty, a KL term); the doctor's identity_mapping and the wide-code warning both ask it."""
    cfg = Config(model=choose("model", family, latent_dim=64, **keys))
    assert (cfg.model.code_constraint() is not None) is constrained
    facts = doctor.Facts.of(cfg, (1, 8, 8))  # 64 values a sample: the code is as wide as the input
    assert facts.constraint == cfg.model.code_constraint()
    assert (doctor.identity_mapping(doctor.Trace(), facts, 1) is None) is constrained


def test_every_family_is_in_the_constraint_table() -> None:
    from aetrain.models import FAMILIES

    assert {family for family, _, _ in CONSTRAINTS} == set(FAMILIES.names())


# --- the rules, on numbers made up for them ---------------------------------------------------------

def test_overfitting_needs_a_sustained_rise_while_training_loss_falls() -> None:
    falling = [0.1 / (1 + e) for e in range(40)]
    rising = [0.05] * 15 + [0.05 * (1 + 0.02 * e) for e in range(25)]  # best at epoch 1..15, then +2% an epoch
    trace = trace_of(list(zip(falling, rising)))
    found = doctor.diagnose(trace, doctor.Facts())
    assert [f.code for f in found] == ["overfitting"]
    assert found[0].epochs[0] == 23  # the first epoch whose last 5 val/loss have a median 10% above the best
    spike = [0.05] * 30 + [0.07] + [0.05] * 9  # one bad epoch is not a trend
    assert doctor.diagnose(trace_of(list(zip(falling, spike))), doctor.Facts()) == []


def test_a_climbing_loss_is_lr_too_high_but_adam_noise_near_zero_is_not() -> None:
    climbing = trace_of([(0.17, 0.2), (0.24, 0.25), (0.25, 0.25)])
    assert [f.code for f in doctor.diagnose(climbing, doctor.Facts(lr=50))] == ["lr_too_high"]
    noisy = trace_of([(0.99, 1.0), (0.01, 0.3), (0.0019, 0.3), (0.003, 0.3)])
    assert doctor.diagnose(noisy, doctor.Facts(lr=1e-3)) == []


def test_verdicts() -> None:
    healthy = trace_of([(0.1 / e, 0.1 / e) for e in range(1, 13)])
    assert doctor.verdict(healthy, []) == "healthy"
    flat = trace_of([(0.1 - 0.0005 * e, 0.1 - 0.0005 * e) for e in range(12)])  # 5.5% in 12 epochs
    assert doctor.verdict(flat, []) == "not learning"
    diverged = trace_of([(0.1, 0.1)])
    diverged.status = "diverged"
    assert doctor.verdict(diverged, []) == "diverged"
    short = trace_of([(0.1, 0.1), (0.099, 0.099), (0.098, 0.098)])  # 3 epochs: no evidence either way
    assert doctor.verdict(short, []) == "too early to judge"
    assert "3 epochs measured: too few for a verdict, which needs 10" in doctor.too_early(short)


def test_the_auto_interval_samples_twice_an_epoch_and_at_most_every_10_steps() -> None:
    from aetrain.train.diagnostics import sampling_interval

    auto = DiagnosticsConfig()
    assert auto.every_n_steps == 0  # the default
    assert sampling_interval(auto, 12) == 10  # the digits at batch 128: what the rules were calibrated with
    assert sampling_interval(auto, 469) == 234  # MNIST at batch 128
    assert sampling_interval(DiagnosticsConfig(every_n_steps=3), 469) == 3  # a number given is used as given


def test_a_diagnostics_table_without_statistics_gets_a_report_and_a_note_not_a_traceback(cli, tmp_path: Path) -> None:
    run_dir = tmp_path / "hand_made"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("epoch,step,train/loss,val/loss\n1,5,0.1,0.2\n")
    (run_dir / "diagnostics.csv").write_text("step,layer\n1,x\n")  # rows, but no statistic to draw
    result = cli.command("doctor", str(run_dir))
    assert result.returncode == 0 and "Traceback" not in result.output, result.output
    assert "1 epoch in metrics.csv" in result.out
    assert "note: no diagnostics.png: diagnostics.csv holds no per-layer statistics to draw" in result.out
    assert (run_dir / "doctor.json").is_file() and not (run_dir / "diagnostics.png").exists()


# --- an output activation that cannot reach the data ---------------------------------------------------

def test_an_output_range_that_cannot_hold_the_data_is_refused_and_old_runs_get_a_finding(cli, tmp_path: Path,
                                                                                          monkeypatch) -> None:
    import numpy as np

    rows = np.random.default_rng(0).normal(3.0, 2.0, (300, 6)).astype(np.float32)  # standardized: values below 0
    np.save(tmp_path / "rows.npy", rows)
    data = ["data=tensor_file", f"data.path={tmp_path / 'rows.npy'}", *CPU, "trainer.max_epochs=3",
            "model.latent_dim=2"]
    for activation in ("sigmoid", "tanh"):
        refused = cli(*data, f"model.output_activation={activation}", run_dir=tmp_path / activation)
        assert refused.returncode == 2 and refused.err.count("\n") == 1, refused.output
        assert (f"model.output_activation={activation}: {activation} outputs values in" in refused.err
                and "use model.output_activation=auto (identity here), or identity" in refused.err)
        assert not refused.run_dir.exists()
    assert cli("model.output_activation=tanh", *CPU, "trainer.max_epochs=1").returncode == 0  # digits: in [0, 1]

    monkeypatch.setattr("aetrain.models.objective.check_output_range", lambda cfg, spec: None)
    monkeypatch.setattr("aetrain.models.families.check_output_range", lambda cfg, spec: None)
    old = cli(*data, "model.output_activation=sigmoid", run_dir=tmp_path / "old")  # as aetrain trained it before
    assert old.returncode == 0, old.err
    report = cli.command("doctor", str(old.run_dir))
    assert "verdict: healthy" not in report.out and "output_range in output (epochs 1-3)" in report.out, report.out
    finding = next(f for f in doctor_json(old.run_dir)["findings"] if f["code"] == "output_range")
    assert finding["evidence"]["output_activation"] == "sigmoid" and finding["evidence"]["data_range"][0] < 0
    assert finding["suggestion"] == ["model.output_activation=auto"]


# --- the code-unit check of a wide code ----------------------------------------------------------------

def unchunked_unit_change(model, check) -> torch.Tensor:
    """The check as it was first written: every unit of the code shuffled at once."""
    z = model.code(check.samples[: check.num_effect]).float()
    m, width = z.shape
    base = model.generate(z).float().reshape(m, -1)
    shuffled = z.expand(width, m, width).clone()
    units = torch.arange(width)
    shuffled[units, :, units] = z[check.effect_order].T
    out = model.generate(shuffled.reshape(width * m, width)).float().reshape(width, m, -1)
    return (out - base).square().mean(dim=(1, 2))


@pytest.mark.parametrize("width", [16, 100])
def test_the_code_unit_check_decodes_in_bounded_chunks_and_samples_a_wide_code(width: int) -> None:
    from aetrain.train.diagnostics import EFFECT_UNITS_MAX, ReconstructionCheck, measured_units, unit_chunk

    parts = build_parts(digits_config(model=DenseAEConfig(latent_dim=width, hidden_dims=[32])))
    model, check = parts.model.eval(), ReconstructionCheck(parts.data)
    with torch.inference_mode():
        z = model.code(check.samples[: check.num_effect]).float()
        effects = check.unit_change(z, model.generate(z), model.generate)
        full = unchunked_unit_change(model, check)
    measured = measured_units(width)
    assert len(measured) == min(width, EFFECT_UNITS_MAX) and len(effects) == width
    assert torch.isnan(effects).sum() == width - len(measured)  # the units not measured, and only those
    torch.testing.assert_close(effects[measured], full[measured], rtol=1e-5, atol=1e-12)
    assert unit_chunk(16, 64) == 16 and unit_chunk(100_000, 64) * 64 * 100_000 <= 16 * 2**20  # 64 MB a chunk


def test_a_very_wide_code_trains_through_the_doctors_check_and_counts_in_the_memory_estimate(cli) -> None:
    """The check used to hold latent^2 x 64 floats at once: 102 GB for 20,000 units, a traceback after epoch 1."""
    result = cli(*CPU, "trainer.max_epochs=1", "data.batch_size=128", "model.latent_dim=20000", "model.hidden_dims=[8]")
    assert result.returncode == 0, result.output
    check = [r for r in diagnostics_rows(result.run_dir) if r["layer"] == "reconstruction"][0]
    effects = [float(v) for v in check["code_unit_effect"].split()]
    assert len(effects) == 20000 and sum(math.isfinite(v) for v in effects) == 64
    report = cli.command("doctor", str(result.run_dir))  # reads the long cells back
    assert report.returncode == 0 and "verdict:" in report.out, report.output

    from aetrain.models import FAMILIES
    from aetrain.train.memory import doctor_check_bytes, estimate

    cfg = digits_config(model=DenseAEConfig(latent_dim=20000, hidden_dims=[8]))
    spec = build_parts(digits_config()).data.spec
    with torch.device("meta"):
        model = FAMILIES.get("dense_ae").build(cfg.model, spec)
    check_bytes = doctor_check_bytes(cfg, model, spec)
    assert check_bytes > 4 * 64 * 20000  # at least the shuffled codes of one unit
    assert estimate(cfg, FAMILIES.get("dense_ae"), spec, batch_size=128).activation_bytes >= check_bytes
    cfg.diagnostics.enabled = False
    assert doctor_check_bytes(cfg, model, spec) == 0


# --- short runs, and findings that went away (#22.9) ----------------------------------------------------

def test_a_run_read_after_a_few_epochs_is_too_early_to_judge_not_not_learning(cli) -> None:
    trained = cli(*CPU, "trainer.max_epochs=3")
    report = cli.command("doctor", str(trained.run_dir))
    assert report.returncode == 0, report.output
    assert "verdict: too early to judge" in report.out and "not learning" not in report.out, report.out
    assert "note: 3 epochs measured: too few for a verdict, which needs 10" in report.out
    assert "so far val/loss is" in report.out and "the reconstructions are at" in report.out
    assert doctor_json(trained.run_dir)["verdict"] == "too early to judge"


def test_a_finding_that_stopped_holding_is_reported_as_past_not_as_the_verdict(cli) -> None:
    """A conv net's first layer may start with a tiny gradient that grows (2e-5 -> 0.012 on an image folder): the
    finding of its first epoch is history once the gradient flows."""
    trained = cli(*CPU, "trainer.max_epochs=12")
    path = trained.run_dir / "diagnostics.csv"
    rows = diagnostics_rows(trained.run_dir)
    for row in rows:  # epoch 1's sampled steps as such a run measured them: encoder.1's gradient vanishing
        if row["epoch"] == "1" and row["layer"] == "encoder.1":
            row["grad_norm"] = "1e-9"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = cli.command("doctor", str(trained.run_dir))
    assert report.returncode == 0, report.output
    assert "verdict: healthy" in report.out and "findings: none now" in report.out, report.out
    assert "vanishing_gradients in encoder.1 (at epoch 1, gone by epoch 2)" in report.out
    finding = doctor_json(trained.run_dir)["findings"][0]
    assert finding["code"] == "vanishing_gradients" and finding["gone_by"] == 2

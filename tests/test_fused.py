"""Fused sweeps (aetrain.fused): K jobs of one shape trained as one batched network, each member a normal run
whose numbers equal its job trained alone.

Exactness is asserted bit for bit (metrics.csv rows without timings, last.pt's and best.pt's weights,
diagnostics.csv) on one CPU thread, which every test here runs with (`one_thread`); the README says where
several threads round differently (convolutions' weight gradients).
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from aetrain.commands.train import run
from aetrain.config import Config, NoiseConfig, SparsityConfig
from aetrain.errors import Interrupted
from aetrain.fused import group_configs, train_group
from aetrain.fused.grouping import FUSIBLE, fusible, shape_key
from aetrain.models import FAMILIES
from aetrain.train.engine import Callback, Engine
from conftest import choose, digits_config, last_weights, metrics_rows, without_timing


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def job(model: Any = None, *, optimizer: Any = None, scheduler: Any = None, **trainer: Any) -> Config:
    """A short CPU run on the digits (2 epochs, batch 128, diagnostics on, no pictures)."""
    cfg = digits_config(**({"model": model} if model is not None else {}))
    if optimizer is not None:
        cfg.optimizer = optimizer
    if scheduler is not None:
        cfg.scheduler = scheduler
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    return cfg


def assert_same(alone: Path, fused: Path) -> None:
    """Member == job alone: metrics rows, both checkpoints' weights, diagnostics.csv, best val/loss."""
    assert without_timing(metrics_rows(fused)) == without_timing(metrics_rows(alone)), fused
    for name in ("last.pt", "best.pt"):
        a, b = last_weights(alone, name), last_weights(fused, name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (fused, name, key)
    assert (fused / "diagnostics.csv").read_text() == (alone / "diagnostics.csv").read_text()
    sa, sf = summary(alone), summary(fused)
    for key in ("status", "ended", "best_val_loss", "best_epoch", "epochs", "steps", "stop_reason"):
        assert sf[key] == sa[key], key


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def alone_and_fused(tmp_path: Path, configs: list[Config]) -> list[tuple[Path, Path]]:
    pairs = [(tmp_path / f"alone{k}", tmp_path / f"fused{k}") for k in range(len(configs))]
    for cfg, (alone, _) in zip(configs, pairs):
        try:
            run(copy.deepcopy(cfg), alone)
        except Exception:  # a job that fails alone (divergence) is compared as it failed
            pass
    results = train_group(configs, [fused for _, fused in pairs])
    assert [r.run_dir for r in results] == [fused for _, fused in pairs]
    return pairs


# --- every family ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES.names())
def test_each_member_equals_its_job_alone_for_every_family(tmp_path: Path, family: str) -> None:
    configs = [job(choose("model", family), optimizer=choose("optimizer", "adam", lr=lr), seed=seed, max_epochs=1)
               for lr, seed in [(1e-3, 0), (3e-3, 1)]]
    pairs = alone_and_fused(tmp_path, configs)
    for alone, fused in pairs:
        assert_same(alone, fused)
        assert summary(fused)["group"]["size"] == 2
    assert len({last_weights(f)["decoder.0.bias"].sum().item() for _, f in pairs}) == 2  # two different runs


# --- every fusible key ---------------------------------------------------------------------------------

def _adam(**keys: Any) -> Any:
    return choose("optimizer", "adam", **keys)


def _model(name: str, **keys: Any) -> Any:
    return choose("model", name, **keys)


KEY_CASES = {
    # optimizer numbers, init, clipping (both algorithms), max_epochs, the non-finite policy
    "adam": [job(optimizer=_adam(lr=1e-3, weight_decay=0.0, betas=[0.9, 0.999], eps=1e-8), seed=0),
             job(_model("dense_ae", init="xavier_uniform"), optimizer=_adam(lr=3e-3, weight_decay=1e-4,
                 betas=[0.8, 0.99], eps=1e-6), seed=1, gradient_clip_val=0.5, max_epochs=3),
             job(_model("dense_ae", init="kaiming_normal"), optimizer=_adam(lr=1e-2, betas=[0.9, 0.9]), seed=2,
                 gradient_clip_val=0.01, gradient_clip_algorithm="value", max_epochs=1, on_nonfinite="skip")],
    "sgd": [job(optimizer=choose("optimizer", "sgd", lr=0.05, momentum=0.9, nesterov=True)),
            job(optimizer=choose("optimizer", "sgd", lr=0.1, momentum=0.5, nesterov=False, weight_decay=1e-3))],
    "rmsprop": [job(optimizer=choose("optimizer", "rmsprop", lr=1e-3, alpha=0.99)),
                job(optimizer=choose("optimizer", "rmsprop", lr=3e-4, alpha=0.9, momentum=0.5, eps=1e-6))],
    "step": [job(scheduler=choose("scheduler", "step", step_size=1, gamma=0.5)),
             job(scheduler=choose("scheduler", "step", step_size=2, gamma=0.9), max_epochs=3)],
    "exponential": [job(scheduler=choose("scheduler", "exponential", gamma=0.5)),
                    job(scheduler=choose("scheduler", "exponential", gamma=0.9))],
    "cosine": [job(scheduler=choose("scheduler", "cosine", warmup_steps=0)),
               job(scheduler=choose("scheduler", "cosine", warmup_steps=5, min_lr=1e-4), max_epochs=3)],
    "onecycle": [job(scheduler=choose("scheduler", "onecycle", pct_start=0.3)),
                 job(scheduler=choose("scheduler", "onecycle", pct_start=0.5, cycle_momentum=False))],
    "plateau": [job(scheduler=choose("scheduler", "plateau", factor=0.5, patience=0), max_epochs=3),
                job(optimizer=_adam(lr=3e-2), scheduler=choose("scheduler", "plateau", factor=0.2, patience=0),
                    max_epochs=3)],
    # each member's noise and dropout masks from its own stream
    "noise": [job(_model("denoising_ae", noise=NoiseConfig("gaussian", 0.1), dropout=0.1)),
              job(_model("denoising_ae", noise=NoiseConfig("masking", 0.3), dropout=0.3), seed=1),
              job(_model("denoising_ae", noise=NoiseConfig("salt_pepper", 0.2), dropout=0.2), seed=2)],
    "sparsity": [job(_model("sparse_ae", sparsity=SparsityConfig("l1", 1e-3))),
                 job(_model("sparse_ae", sparsity=SparsityConfig("l1", 1e-2), loss="smooth_l1")),
                 job(_model("sparse_ae", sparsity=SparsityConfig("kl", 1e-2, 0.2)))],
    "vae": [job(_model("vae", beta=1.0, kl_warmup_epochs=0.0)),
            job(_model("vae", beta=0.5, kl_warmup_epochs=1.5)),
            job(_model("vae", beta=4.0, kl_warmup_epochs=10.0), seed=3)],
    # grouped convolutions, batch norm over K * C channels, each member's dropout masks, accumulation
    "conv": [job(_model("conv_ae", batch_norm=True, dropout=0.1), accumulate_grad_batches=2),
             job(_model("conv_ae", batch_norm=True, dropout=0.2), optimizer=_adam(lr=3e-3), seed=1,
                 accumulate_grad_batches=2)],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(KEY_CASES))
def test_each_member_equals_its_job_alone_for_every_fusible_key(tmp_path: Path, case: str) -> None:
    configs = KEY_CASES[case]
    assert len({shape_key(c) for c in configs}) == 1  # they differ in fusible keys alone
    for alone, fused in alone_and_fused(tmp_path, copy.deepcopy(configs)):
        assert_same(alone, fused)


def test_the_key_cases_vary_every_fusible_key() -> None:
    """The fusible keys the cases above sweep: every entry of FUSIBLE but those of outputs, logging and checkpoints
    (per-member callbacks, checked by the output tests) and trainer.init_from (its own test)."""
    from aetrain.fused.grouping import flat

    varied = set()
    for configs in KEY_CASES.values():
        rows = [flat(c) for c in configs]
        varied |= {k for k in rows[0] if len({json.dumps(r[k]) for r in rows}) > 1}
    untested = [key for key, _ in FUSIBLE if not any(fusible(v) and (v == key or v.startswith(key)) for v in varied)]
    assert set(untested) <= {"trainer.early_stopping_patience", "trainer.init_from", "trainer.log_every_n_steps",
                             "trainer.checkpoint_every_n_steps", "trainer.save_top_k", "outputs.", "diagnostics."}, \
        untested


# --- grouping ----------------------------------------------------------------------------------------------

def test_a_mixed_sweep_is_grouped_by_shape_and_the_rest_train_alone_with_a_reason() -> None:
    def dense(**keys: Any) -> Config:
        cfg = job(**{k: v for k, v in keys.items() if k in ("seed", "compile", "devices", "precision")})
        for key, value in keys.items():
            if key in ("lr",):
                cfg.optimizer.lr = value
            elif key in ("latent_dim", "dropout", "hidden_dims"):
                setattr(cfg.model, key, value)
        return cfg

    configs = [dense(lr=1e-3, seed=0), dense(lr=3e-3, seed=0), dense(lr=1e-3, seed=1), dense(lr=3e-3, seed=1),  # 0-3
               job(_model("conv_ae")),  # 4: no partner
               dense(latent_dim=8), dense(latent_dim=8, seed=5),  # 5, 6: another shape
               dense(compile=True), dense(devices=2), dense(precision="16-mixed"),  # 7-9: cannot fuse
               dense(dropout=0.1), dense(dropout=0.2),  # 10, 11: dropout rates fuse among rates > 0
               dense(seed=9),  # 12: the shape of 0-3
               job(optimizer=choose("optimizer", "sgd")), job(scheduler=choose("scheduler", "step"))]  # 13, 14
    grouping = group_configs(configs, max_group=3)
    assert grouping.groups == [[0, 1, 2], [3, 12], [5, 6], [10, 11]]  # 5 of one shape: split into 3 + 2
    assert sorted(grouping.alone) == [4, 7, 8, 9, 13, 14]  # another optimizer, another schedule: alone
    assert grouping.alone[4].startswith("no other job of this batch has its shape (it differs in model.")
    assert grouping.alone[7] == "trainer.compile=true: a compiled model trains alone"
    assert grouping.alone[8] == "trainer.devices=2: a data-parallel job trains alone"
    assert grouping.alone[9].startswith("trainer.precision=16-mixed:")
    assert grouping.group_of(12) == 1 and grouping.group_of(4) is None


def test_fusible_keys_are_exactly_those_the_readme_lists() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("### Fused sweeps"):]
    for key, _ in FUSIBLE:
        assert f"`{key.rstrip('.')}" in section, key
    assert fusible("optimizer.lr") and fusible("scheduler.gamma") and fusible("trainer.seed")
    assert not fusible("optimizer.name") and not fusible("scheduler.name") and not fusible("model.latent_dim")


# --- members are independent -------------------------------------------------------------------------------

def test_a_diverging_member_fails_alone_and_the_others_go_on(tmp_path: Path) -> None:
    model = _model("dense_ae", output_activation="identity")  # unbounded: sgd at lr 10 blows up at step 7
    configs = [job(model, optimizer=choose("optimizer", "sgd", lr=lr), max_epochs=3, checkpoint_every_n_steps=3)
               for lr in (0.01, 10.0, 0.02)]
    results = train_group(copy.deepcopy(configs), [tmp_path / f"fused{k}" for k in range(3)])
    assert [r.status for r in results] == ["ok", "diverged", "ok"]
    for k, cfg in enumerate(configs):
        try:
            run(copy.deepcopy(cfg), tmp_path / f"alone{k}")
        except Exception:
            assert k == 1
    diverged, alone = summary(tmp_path / "fused1"), summary(tmp_path / "alone1")
    assert diverged["status"] == "failed" and diverged["ended"] == "diverged"
    assert diverged["error"] == alone["error"] and diverged["error"].startswith("DivergenceError: non-finite loss at")
    assert not (tmp_path / "fused1" / "metrics.csv").exists() and not (tmp_path / "alone1" / "metrics.csv").exists()
    before, alone_before = last_weights(tmp_path / "fused1"), last_weights(tmp_path / "alone1")  # step 6's, finite
    assert all(torch.equal(before[key], alone_before[key]) for key in before)
    for k in (0, 2):
        assert_same(tmp_path / f"alone{k}", tmp_path / f"fused{k}")


def test_a_member_that_stops_early_or_sooner_ends_alone(tmp_path: Path) -> None:
    configs = [job(max_epochs=4), job(optimizer=_adam(lr=0.1), max_epochs=4, early_stopping_patience=1),
               job(seed=1, max_epochs=3, early_stopping_patience=3)]
    pairs = alone_and_fused(tmp_path, configs)
    for alone, fused in pairs:
        assert_same(alone, fused)
    ends = [summary(fused) for _, fused in pairs]
    assert [(s["ended"], s["epochs"]) for s in ends] == [("ok", 4), ("stopped_early", 2), ("ok", 3)]
    # a member that ended stops costing: its share of the group's time is the smallest
    assert ends[1]["group"]["share_s"] < ends[0]["group"]["share_s"]


class StopAt(Callback):
    """Deliver a stop request (what the SIGINT handler does) at a step of the run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, engine: Engine) -> None:
        if engine.state.step == self.step:
            engine.interrupt.handle(signal.SIGINT)


def test_an_interrupted_group_leaves_every_member_resumable_and_resumes_exactly(tmp_path: Path) -> None:
    """Stopped mid-epoch: each member's last.pt continues, alone (today's single-run resume) or in the group,
    to the numbers of its job trained alone without a stop."""
    configs = [job(_model("denoising_ae", dropout=0.1), optimizer=_adam(lr=lr), seed=seed, max_epochs=3)
               for lr, seed in [(1e-3, 0), (3e-3, 1), (1e-3, 2)]]  # noise and dropout: the streams must resume too
    dirs = [tmp_path / f"fused{k}" for k in range(3)]
    with pytest.raises(Interrupted) as info:
        train_group(copy.deepcopy(configs), dirs, callbacks=[[], [StopAt(17)], []])
    assert "interrupted by SIGINT in epoch 2 (step 5 of 12), step 17 of the run" in str(info.value)
    assert "saved last.pt of 3 member(s)" in str(info.value)
    for d in dirs:
        assert summary(d)["ended"] == "interrupted"
        assert torch.load(d / "checkpoints" / "last.pt", weights_only=True)["state"]["step"] == 17

    alone_cfg = copy.deepcopy(configs[2])  # member 2 continues alone, with the single-run code
    alone_cfg.trainer.resume = str(dirs[2])
    run(alone_cfg, dirs[2])
    results = train_group(copy.deepcopy(configs), dirs, resume=True)  # 0 and 1 continue as a group
    assert [r.status for r in results] == ["ok", "ok", "skipped"]
    for k, cfg in enumerate(configs):
        run(copy.deepcopy(cfg), tmp_path / f"alone{k}")
        assert_same(tmp_path / f"alone{k}", dirs[k])


def test_a_signal_after_the_last_step_still_stops_the_sweep(tmp_path: Path) -> None:
    """Ctrl-C while the members end (their last epoch's checkpoints, their tables): nothing is left to stop, but
    the user asked the sweep to stop, so the group says so instead of letting the next one start."""

    class SignalAtTheEnd(Callback):
        def on_epoch_end(self, engine: Engine, record: dict) -> None:
            if engine.state.epoch == engine.parts.cfg.trainer.max_epochs:
                engine.interrupt.handle(signal.SIGINT)

    dirs = [tmp_path / "0", tmp_path / "1"]
    with pytest.raises(Interrupted, match="interrupted by SIGINT as fused group 0 ended") as info:
        train_group([job(), job(seed=1)], dirs, callbacks=[[], [SignalAtTheEnd()]])
    assert info.value.exit_code == 130
    assert [summary(d)["status"] for d in dirs] == ["ok", "ok"]  # both finished: a resume keeps them


def test_a_second_ctrl_c_aborts_every_member_with_a_summary_of_its_last_pt(tmp_path: Path) -> None:
    """A second Ctrl-C (KeyboardInterrupt, wherever it lands) aborts the group at once: every member's summary.json
    describes the last.pt on disk, as a run alone's does; it used to leave them all "running" (a killed sweep)."""

    class SecondCtrlC(Callback):
        def on_epoch_end(self, engine: Engine, record: dict) -> None:
            if engine.state.epoch == 2:
                raise KeyboardInterrupt

    dirs = [tmp_path / "0", tmp_path / "1"]
    with pytest.raises(KeyboardInterrupt):
        train_group([job(max_epochs=3), job(seed=1, max_epochs=3)], dirs, callbacks=[[SecondCtrlC()], []])
    for d in dirs:
        s = summary(d)
        assert s["ended"] == "interrupted" and s["status"] == "failed", s
        assert s["error"].startswith("Interrupted: aborted by a second SIGINT; last.pt holds after epoch"), s
        held = torch.load(d / "checkpoints" / "last.pt", weights_only=True)["state"]["epoch"]
        assert s["epochs"] == held


def test_a_member_killed_before_its_first_checkpoint_starts_again_on_resume(tmp_path: Path) -> None:
    """A process killed in the first epoch leaves a member's dir with a run in it but no last.pt: a resume starts
    that member again in its dir (it was refused as a dir that holds a run), and continues the others."""
    configs = [job(optimizer=_adam(lr=lr)) for lr in (1e-3, 3e-3)]
    dirs = [tmp_path / f"fused{k}" for k in range(2)]
    with pytest.raises(Interrupted):
        train_group(copy.deepcopy(configs), dirs, callbacks=[[StopAt(3)], []])
    killed = dirs[1]  # what kill -9 in epoch 1 leaves: the run's first files, no checkpoint
    shutil.rmtree(killed / "checkpoints")
    (killed / "summary.json").write_text(json.dumps({**summary(killed), "status": "running", "ended": None}))
    (killed / "train.log").write_text("the first attempt's lines\n")
    results = train_group(copy.deepcopy(configs), dirs, resume=True)
    assert [r.status for r in results] == ["ok", "ok"]
    for k, cfg in enumerate(configs):
        run(copy.deepcopy(cfg), tmp_path / f"alone{k}")
        assert_same(tmp_path / f"alone{k}", dirs[k])
    assert (killed / "train.log").read_text().startswith("the first attempt's lines\n")  # kept


def test_a_group_line_before_any_member_dir_exists_reaches_every_members_log(tmp_path: Path) -> None:
    """The group's own lines (a memory split, who starts again on a resume) can come before any member has made
    its dir: each member's train.log gets them, the dir made for it."""
    import logging

    from aetrain.fused import logs

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [logging.FileHandler(tmp_path / "train.log", delay=True)]  # what Hydra's job logging sets up
    try:
        with logs.routed([tmp_path / "0", tmp_path / "1"], ["0", "1"]):
            logging.getLogger("aetrain").warning("a group of 2 does not fit")
    finally:
        root.handlers[:] = saved
    for k in "01":
        assert "a group of 2 does not fit" in (tmp_path / k / "train.log").read_text()


# --- memory -------------------------------------------------------------------------------------------------

def test_a_group_too_large_for_the_memory_is_split_before_it_starts(tmp_path: Path, monkeypatch) -> None:
    from aetrain.data import build_data
    from aetrain.fused import build
    from aetrain.train.memory import estimate

    configs = [job(seed=s) for s in range(4)]
    spec = build_data(configs[0].data, torch.device("cpu"), seed=0).spec
    need = estimate(configs[0], FAMILIES.get("dense_ae"), spec, batch_size=128)
    monkeypatch.setattr(build, "available_host_memory", lambda: int(2.5 * (need.device_bytes + need.host_bytes)))
    pairs = alone_and_fused(tmp_path, configs)
    for alone, fused in pairs:
        assert_same(alone, fused)
    assert [(summary(f)["group"]["id"], summary(f)["group"]["size"]) for _, f in pairs] == \
        [("0.0", 2), ("0.0", 2), ("0.1", 2), ("0.1", 2)]


def test_a_member_the_memory_check_lets_through_trains_when_the_split_said_none_fit(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """Memory is read twice (how many members fit; then a job alone's check): memory freed in between must not
    send a group of one into splitting itself forever."""
    from aetrain.fused import build

    monkeypatch.setattr(build, "available_host_memory", lambda: 1000)  # none fit; the job alone's check passes
    for alone, fused in alone_and_fused(tmp_path, [job(), job(seed=1)]):
        assert_same(alone, fused)


def test_a_group_out_of_memory_in_its_first_step_is_halved(tmp_path: Path, monkeypatch, caplog) -> None:
    from aetrain.fused.engine import FusedEngine

    trial = FusedEngine.trial

    def small_memory(engine: FusedEngine) -> None:
        if len(engine.members) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        trial(engine)

    monkeypatch.setattr(FusedEngine, "trial", small_memory)
    configs = [job(seed=s) for s in range(4)]
    pairs = alone_and_fused(tmp_path, configs)
    for alone, fused in pairs:
        assert_same(alone, fused)
    assert "a group of 4 ran out of memory in its first step (CUDA out of memory. Tried to allocate 2.00 GiB " \
           "(simulated)): halving it" in caplog.text
    assert [summary(f)["group"]["id"] for _, f in pairs] == ["0.0", "0.0", "0.1", "0.1"]


# --- a member is a normal run -------------------------------------------------------------------------------

def test_each_member_writes_a_complete_run_dir_with_its_own_output_settings(tmp_path: Path) -> None:
    import aetrain

    configs = [job(seed=0, checkpoint_every_n_steps=5, save_top_k=1, log_every_n_steps=4),
               job(seed=1)]
    configs[0].outputs.plot_every, configs[0].outputs.tensorboard = 1, True
    pairs = alone_and_fused(tmp_path, configs)
    for alone, fused in pairs:
        assert_same(alone, fused)  # pictures and TensorBoard leave the numbers alone
    drawn, plain = pairs[0][1], pairs[1][1]
    for name in ("loss_curve.png", "reconstructions/epoch_001.png", "reconstructions/epoch_002.png", "split.json",
                 "diagnostics.csv", "metrics.csv", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (drawn / name).is_file(), name
    assert list((drawn / "tensorboard").glob("events.out.tfevents.*"))
    assert len(list((drawn / "checkpoints").glob("epoch=*-val_loss=*.pt"))) == 1
    assert not (plain / "loss_curve.png").exists() and not (plain / "tensorboard").exists()
    assert (plain / "split.json").read_text() == (pairs[1][0] / "split.json").read_text()
    model = aetrain.load_model(drawn)
    assert model.reconstruct(torch.rand(2, 1, 8, 8)).shape == (2, 1, 8, 8)
    group = summary(drawn)["group"]
    assert group["id"] == "0" and group["size"] == 2 and group["index"] == 0
    assert 0 < group["share_s"] <= group["wall_time_s"]


def test_a_member_can_start_from_another_runs_weights(tmp_path: Path) -> None:
    run(job(max_epochs=1), tmp_path / "source")
    configs = [job(init_from=str(tmp_path / "source")), job(seed=1)]
    for alone, fused in alone_and_fused(tmp_path, configs):
        assert_same(alone, fused)


# --- CUDA graphs -------------------------------------------------------------------------------------------

def test_the_fused_step_runs_inside_the_graph_wrapper_with_the_same_numbers(tmp_path: Path, monkeypatch) -> None:
    """`GraphedTrainStep` (what trainer.cuda_graphs captures on a GPU) wraps the fused step as it wraps a run's:
    through the CPU stand-in for CUDA graphs, the members' numbers are their jobs' alone, and the captured body
    makes no tensor from host values (on CUDA that copy is refused while a graph is captured)."""
    from aetrain.fused import group
    from aetrain.train.graphs import GraphedTrainStep
    from test_graphs import PythonGraphs

    def replay(body: Any) -> None:  # a capture records device work only: no host list becomes a device tensor
        with monkeypatch.context() as patched:
            patched.setattr(torch, "tensor", lambda *a, **k: pytest.fail("torch.tensor inside the captured step"))
            body()

    backend = PythonGraphs(replay)

    def graphed(cfg: Config, step: Any, device: Any, sizes: list[int], *, eager_only: str | None = None) -> Any:
        assert eager_only is None  # no member draws random numbers here: nothing keeps the group eager
        return GraphedTrainStep(step, backend, batch_size=max(sizes), accumulate=cfg.trainer.accumulate_grad_batches,
                                strict=True)

    monkeypatch.setattr(group, "build_step", graphed)
    configs = [job(optimizer=_adam(lr=lr), seed=seed, gradient_clip_val=clip)
               for lr, seed, clip in [(1e-3, 0, None), (3e-3, 1, 0.5), (1e-3, 2, None)]]
    for alone, fused in alone_and_fused(tmp_path, configs):
        assert_same(alone, fused)
    assert backend.captures == 1


# --- hydra/launcher=fused -----------------------------------------------------------------------------------

SWEEP = ["trainer.max_epochs=2", "data.batch_size=128", "trainer.device=cpu", "outputs.plot_every=0",
         "outputs.tensorboard=false", "outputs.progress=false"]


def summary_csv(sweep_dir: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(sweep_dir / "sweep_summary.csv", newline="") as f:
        return {row["job"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_a_fused_sweep_trains_and_summarises_as_the_basic_one_with_the_same_numbers(cli, tmp_path: Path) -> None:
    grid = ["optimizer.lr=1e-3,3e-3", "model.activation=relu,prelu", *SWEEP]
    basic = cli.command("-m", *grid, f"hydra.sweep.dir={tmp_path / 'basic'}")
    fused = cli.command("-m", "hydra/launcher=fused", *grid, f"hydra.sweep.dir={tmp_path / 'fused'}")
    assert basic.returncode == 0 and fused.returncode == 0, fused.output
    # the two PReLU jobs cannot fuse: each trains alone, one line each saying why; the two others fuse
    alone = [line for line in fused.output.splitlines() if "trains alone" in line]
    assert len(alone) == 2 and all("model.activation=prelu: its learned slope is not fused" in line
                                   for line in alone), fused.output
    rows = summary_csv(tmp_path / "fused")
    groups = {job: row["group"] for job, row in rows.items()}
    assert groups == {"0": "0", "1": "", "2": "0", "3": ""}, groups
    assert list(next(iter(rows.values())))[-1] == "group"
    for job in rows:
        assert_same(tmp_path / "basic" / job, tmp_path / "fused" / job)
        for name in ("train.log", ".hydra/config.yaml", ".hydra/overrides.yaml"):
            assert (tmp_path / "fused" / job / name).is_file(), (job, name)
    member = tmp_path / "fused" / next(job for job, g in groups.items() if g)
    own = f"output  {member}"  # a line of the member's header
    assert own in (member / "train.log").read_text() and "epoch 2/2" in (member / "train.log").read_text()
    assert own not in fused.out and "fused group 0: epoch 2, 2 member(s) trained" in fused.out  # the group's lines
    evaluated = cli.command("eval", str(member), "device=cpu", "probe_samples=0")
    assert evaluated.returncode == 0, evaluated.output  # a member is a run for every command after training


@pytest.mark.slow
def test_optuna_trains_each_batch_of_n_jobs_trials_as_a_group(cli, tmp_path: Path) -> None:
    result = cli.command("-m", "hparams_search=optuna", "hydra/launcher=fused", "hydra.sweeper.n_jobs=2",
                         "hydra.sweeper.n_trials=4", *SWEEP, "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.output
    rows = summary_csv(tmp_path)
    assert sorted((job, row["group"]) for job, row in rows.items()) == [("0", "0"), ("1", "0"), ("2", "2"), ("3", "2")]
    assert all(row["status"] == "ok" for row in rows.values())
    assert "Best value:" in result.output


def test_the_sweep_summary_reads_a_jobs_group_as_an_object_or_a_plain_name(tmp_path: Path) -> None:
    from aetrain.commands.sweep import read_job

    groups = {"0": {"id": "0.1", "size": 4}, "1": "g7", "2": None}
    for job, group in groups.items():
        (tmp_path / job).mkdir()
        body = {"status": "ok", "best_val_loss": 0.5, **({"group": group} if group is not None else {})}
        (tmp_path / job / "summary.json").write_text(json.dumps(body))
    assert [read_job(tmp_path / job).group for job in groups] == ["0.1", "g7", ""]


def test_a_bad_max_group_is_one_line(cli, tmp_path: Path) -> None:
    result = cli.command("-m", "hydra/launcher=fused", "hydra.launcher.max_group=0", *SWEEP,
                         f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 2 and "Traceback" not in result.output
    assert result.err.strip() == "aetrain: error: hydra.launcher.max_group=0 is out of range: must be an integer >= 1"
    # refused before the sweep claims its dir: the corrected command may use it
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_an_interrupted_fused_sweep_continues_with_the_command_it_prints(cli, tmp_path: Path) -> None:
    """Ctrl-C in a fused sweep: every member saves last.pt, and the line printed resumes the sweep to the numbers
    of the sweep never stopped (each member's checkpoint continues where the group stopped)."""
    import shlex
    import subprocess
    import sys
    import time

    grid = ["optimizer.lr=1e-3,3e-3", *SWEEP, "trainer.max_epochs=3"]
    sweep_dir = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "aetrain", "-m", "hydra/launcher=fused", *grid,
                             f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (sweep_dir / "0" / "metrics.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    assert "saved last.pt of 2 member(s)" in err and "resume the sweep with: aetrain " in err, err
    for job in "01":
        assert summary(sweep_dir / job)["ended"] == "interrupted"
        assert (sweep_dir / job / "checkpoints" / "last.pt").is_file()
    command = shlex.split(err.split("resume the sweep with: ")[1].strip())
    assert command[0] == "aetrain" and command[-1] == "hydra.launcher.resume=true"
    resumed = cli.command(*command[1:])
    assert resumed.returncode == 0, resumed.output
    whole = cli.command("-m", "hydra/launcher=fused", *grid, f"hydra.sweep.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0
    for job in "01":
        assert_same(tmp_path / "whole" / job, sweep_dir / job)
        assert summary(sweep_dir / job)["epochs"] == 3


@pytest.mark.slow
def test_a_sweep_stopped_in_a_job_alone_or_killed_before_a_checkpoint_resumes(cli, tmp_path: Path) -> None:
    """Ctrl-C in a job that trains alone names the sweep's resume command; a job whose process was killed before
    its first last.pt starts again in its dir on resume (it was refused as a dir that holds a run); a resume
    with other values, or while another process trains there, is refused in one line."""
    import shlex
    import subprocess
    import sys
    import time

    from aetrain.rundir import RunDir

    sweep_dir = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=fused", "model.activation=prelu", *SWEEP, "trainer.max_epochs=4",
            f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.resume=true"]  # run or continue: nothing yet, it starts
    proc = subprocess.Popen([sys.executable, "-m", "aetrain", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (sweep_dir / "0" / ".hydra" / "config.yaml").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # written as training starts
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    assert f"hydra.sweep.dir={sweep_dir} holds no sweep to continue; starting it" in err
    assert "resume the sweep with: aetrain " in err and "trainer.resume=" not in err, err
    command = shlex.split(err.split("resume the sweep with: ")[1].strip())
    recorded = (sweep_dir / "multirun.yaml").read_text()
    other = cli.command(*[a.replace("trainer.max_epochs=4", "trainer.max_epochs=5") for a in command[1:]])
    assert other.returncode == 2 and "holds another sweep" in other.err and "Traceback" not in other.output
    assert (sweep_dir / "multirun.yaml").read_text() == recorded  # refused before Hydra writes its own

    job = sweep_dir / "0"  # now as kill -9 in its first epoch would leave it: a run, no checkpoint
    shutil.rmtree(job / "checkpoints")
    (job / "summary.json").write_text(json.dumps({**summary(job), "status": "running", "ended": None}))
    with RunDir(job).claimed():  # another process trains there
        refused = cli.command(*command[1:])
    assert refused.returncode != 0 and "is in use by another aetrain process" in refused.err
    assert len(refused.err.strip().splitlines()) == 1 and "Traceback" not in refused.output, refused.err
    resumed = cli.command(*command[1:])
    assert resumed.returncode == 0, resumed.output
    assert summary(job)["status"] == "ok" and summary(job)["epochs"] == 4
    assert (job / "train.log").read_text().count("dense_ae on digits for 4 epochs") == 2  # both attempts' lines

"""Run outputs people look at: loss curve, reconstruction pictures, TensorBoard, summary.json."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import aetrain
from aetrain.commands.train import run
from aetrain.config import Config, DataConfig, OutputsConfig, TrainerConfig
from aetrain.train.engine import Callback, Engine
from aetrain.train.outputs.pictures import DrawClock
from aetrain.train.outputs.plots import DPI, HEADER_PX, PAD, LossCurve, grid_size, label_width, labelled_size
from conftest import FAST, call_main, read_only

EPOCHS = 3
DIGIT = (1, 8, 8)
ZOOM = 8  # outputs.grid_zoom_to=64 over 8x8 digits
ROWS = ["original", "reconstruction"]
DENOISING_ROWS = ["original", "corrupted input", "reconstruction"]
SUMMARY_KEYS = {"status", "error", "best_val_loss", "final_val_loss", "best_epoch", "epochs", "steps", "wall_time_s",
                "samples_per_s", "num_parameters", "device", "precision", "model", "data", "best_checkpoint",
                "last_grid"}


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def grid_of(picture: np.ndarray, names: list[str]) -> np.ndarray:
    """The grid of a reconstruction picture: below its title line, right of its row names."""
    return picture[HEADER_PX:, label_width(names):]


def picture_size(num_samples: int, names: list[str]) -> tuple[int, int]:
    return labelled_size(grid_size(num_samples, len(names), DIGIT, ZOOM), names)


def grid_row(grid: np.ndarray, row: int, tile: int = 8 * ZOOM) -> np.ndarray:
    top = PAD + row * (tile + PAD)
    return grid[top : top + tile]


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short default run that draws every epoch (budget 1: no time limit), shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("outputs") / "run"
    assert call_main([f"hydra.run.dir={run_dir}", f"trainer.max_epochs={EPOCHS}", "data.batch_size=128",
                      "trainer.device=cpu", "outputs.render_budget=1"]) == 0
    return run_dir


def test_loss_curve_is_a_png_redrawn_by_the_run(digits_run: Path) -> None:
    image = png(digits_run / "loss_curve.png")
    assert image.shape == (5 * DPI, 7 * DPI, 3) == (750, 1050, 3)  # 7 x 5 inches, sharp enough to print
    assert image.std() > 10  # lines and labels, not a blank canvas


def test_every_epoch_has_a_grid_with_originals_above_reconstructions_in_the_same_layout(digits_run: Path) -> None:
    grids = sorted((digits_run / "reconstructions").glob("*.png"))
    assert [g.name for g in grids] == [f"epoch_{e:03d}.png" for e in range(1, EPOCHS + 1)]
    for g in grids:
        assert png(g).shape[:2] == picture_size(16, ROWS)
    assert grid_size(16, 2, DIGIT, ZOOM) == (2 * (64 + PAD) + PAD, 16 * (64 + PAD) + PAD)
    first, last = grid_of(png(grids[0]), ROWS), grid_of(png(grids[-1]), ROWS)
    assert (first[:PAD] == 255).all() and (first[:, :PAD] == 255).all()  # white frame and gaps between tiles
    assert np.array_equal(grid_row(first, 0), grid_row(last, 0))  # the same validation samples every epoch
    assert not np.array_equal(grid_row(first, 1), grid_row(last, 1))  # reconstructions improve
    # zoomed with nearest neighbour: each 8x8 block of a tile is one pixel of the digit
    tile = grid_row(first, 0)[:, PAD : PAD + 64, 0].astype(int)
    assert (tile == np.repeat(np.repeat(tile[::ZOOM, ::ZOOM], ZOOM, 0), ZOOM, 1)).all()


def test_tensorboard_holds_one_point_per_epoch_and_the_grids(digits_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(digits_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    rows = metrics(digits_run)
    for tag in ("train/loss", "val/loss", "lr", "train/grad_norm", "train/penalty", "perf/samples_per_s"):
        assert [e.step for e in events.Scalars(tag)] == [int(r["step"]) for r in rows], tag
    assert [e.value for e in events.Scalars("val/loss")] == pytest.approx([float(r["val/loss"]) for r in rows])
    images = events.Images("reconstructions")
    assert len(images) == EPOCHS
    assert (images[0].height, images[0].width) == picture_size(16, ROWS)


def test_summary_json_holds_the_numbers_of_metrics_csv(digits_run: Path) -> None:
    summary = json.loads((digits_run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    rows = metrics(digits_run)
    val = [float(r["val/loss"]) for r in rows]
    assert summary["status"] == "ok" and summary["error"] is None
    assert summary["best_val_loss"] == pytest.approx(min(val))
    assert summary["final_val_loss"] == pytest.approx(val[-1])
    assert summary["best_epoch"] == 1 + int(np.argmin(val))
    assert (summary["epochs"], summary["steps"]) == (EPOCHS, int(rows[-1]["step"]))
    assert summary["num_parameters"] == sum(p.numel() for p in aetrain.load_model(digits_run).parameters())
    assert (summary["model"], summary["data"], summary["device"], summary["precision"]) == ("dense_ae", "digits",
                                                                                              "cpu", "32")
    assert summary["wall_time_s"] > 0 and summary["samples_per_s"] > 0
    assert (digits_run / summary["best_checkpoint"]).is_file()
    assert summary["last_grid"] == f"reconstructions/epoch_{EPOCHS:03d}.png"
    assert (summary["loss_curve"], summary["loss_curve_vector"]) == ("loss_curve.png", None)  # png only by default


def test_denoising_grid_adds_the_corrupted_inputs_the_same_every_epoch(cli) -> None:
    result = cli(*FAST, "model=denoising_ae", "model.noise.kind=masking", "model.noise.level=0.5",
                 "outputs.num_samples=8")
    assert result.returncode == 0, result.err
    first, last = (png(result.run_dir / f"reconstructions/epoch_{e:03d}.png") for e in (1, 2))
    assert first.shape[:2] == last.shape[:2] == picture_size(8, DENOISING_ROWS)
    first, last = grid_of(first, DENOISING_ROWS), grid_of(last, DENOISING_ROWS)
    originals, corrupted = grid_row(first, 0), grid_row(first, 1)
    assert not np.array_equal(originals, corrupted)
    assert (corrupted <= originals).all()  # masking only zeroes pixels
    assert np.array_equal(corrupted, grid_row(last, 1))  # the same noise every epoch: changes are the model's


def test_tabular_rows_get_a_heatmap_picture(cli, tmp_path: Path) -> None:
    rows = tmp_path / "rows.npy"
    np.save(rows, np.random.default_rng(0).normal(size=(200, 12)).astype(np.float32))
    result = cli(*FAST, "data=tensor_file", f"data.path={rows}", "model.latent_dim=4")
    assert result.returncode == 0, result.err
    pictures = sorted((result.run_dir / "reconstructions").glob("*.png"))
    assert [p.name for p in pictures] == ["epoch_001.png", "epoch_002.png"]  # first and last: always drawn
    first, last = png(pictures[0]), png(pictures[1])
    assert first.shape == last.shape and first.shape[1] == 11 * DPI
    assert first.std() > 10 and not np.array_equal(first, last)


def test_outputs_leave_the_run_unchanged(cli, tmp_path: Path) -> None:
    """Pictures, corrupted inputs and TensorBoard draw nothing from the run's RNGs: same numbers, same weights."""
    args = (*FAST, "model=denoising_ae", "model.dropout=0.2", "model.noise.kind=gaussian")
    on = cli(*args, "outputs.render_budget=1", run_dir=tmp_path / "on")
    off = cli(*args, "outputs.plot_every=0", "outputs.tensorboard=false", run_dir=tmp_path / "off")
    assert (on.run_dir / "reconstructions/epoch_002.png").exists() and not (off.run_dir / "reconstructions").exists()
    assert not (off.run_dir / "tensorboard").exists() and not (off.run_dir / "loss_curve.png").exists()
    timing = {"epoch_time_s", "samples_per_s", "memory_mb"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(on.metrics()) == strip(off.metrics())
    w_on = torch.load(on.run_dir / "checkpoints/last.pt", weights_only=True)["model"]
    w_off = torch.load(off.run_dir / "checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on)


class FailAt(Callback):
    """Reads summary.json as a watcher would, then fails the run at `epoch`."""

    def __init__(self, run_dir: Path, epoch: int) -> None:
        self.path, self.epoch = run_dir / "summary.json", epoch
        self.seen: list[dict] = []

    def on_epoch_end(self, engine: Engine, record: dict) -> None:
        self.seen.append(json.loads(self.path.read_text()))
        if record["epoch"] == self.epoch:
            raise RuntimeError("boom")


def test_a_crashed_run_keeps_its_pictures_and_a_summary_saying_so(tmp_path: Path) -> None:
    cfg = Config(data=DataConfig(batch_size=128), trainer=TrainerConfig(max_epochs=10, device="cpu"),
                 outputs=OutputsConfig(render_budget=0.0, tensorboard=False))
    fail = FailAt(tmp_path, epoch=2)
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg, tmp_path, callbacks=[fail])
    assert [(s["status"], s["epochs"]) for s in fail.seen] == [("running", 1), ("running", 2)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["epochs"], summary["error"]) == ("failed", 2, "RuntimeError: boom")
    assert summary["last_grid"] == "reconstructions/epoch_002.png"  # drawn at the end, though mid-run draws were off
    png(tmp_path / "loss_curve.png")


def test_a_diverged_run_says_so_in_summary_json(cli) -> None:
    result = cli("optimizer=sgd", "optimizer.lr=1e3", "model.output_activation=identity", "trainer.max_epochs=2",
                 "trainer.device=cpu", "outputs.tensorboard=false")
    assert result.returncode == 1
    text = (result.run_dir / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON, whatever the losses did
    summary = json.loads(text)
    assert (summary["status"], summary["ended"]) == ("failed", "diverged")
    assert summary["error"].startswith("DivergenceError: non-finite loss at step ")
    assert summary["error"].split(": ", 1)[1] in result.err  # the message the console showed


def test_a_resumed_run_continues_its_outputs(tmp_path: Path) -> None:
    cfg = Config(data=DataConfig(batch_size=128), trainer=TrainerConfig(max_epochs=2, device="cpu"),
                 outputs=OutputsConfig(render_budget=1.0))
    first = run(cfg, tmp_path)
    wall = json.loads((tmp_path / "summary.json").read_text())["wall_time_s"]
    cfg.trainer.max_epochs, cfg.trainer.resume = 4, str(tmp_path)
    run(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["epochs"], summary["steps"]) == ("ok", 4, 2 * first["steps"])
    assert summary["wall_time_s"] > wall
    assert [p.name for p in sorted((tmp_path / "reconstructions").glob("*.png"))] == [
        f"epoch_{e:03d}.png" for e in range(1, 5)]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("val/loss")]
    assert steps == sorted(set(steps)) and len(steps) == 4  # one point per epoch, continuing at the resumed step


def test_draw_clock_keeps_pictures_within_the_budget() -> None:
    now = [0.0]
    clock = DrawClock(every=1, budget=0.05, clock=lambda: now[0])
    drawn = []
    for epoch in range(1, 101):
        now[0] += 0.1  # an epoch of 0.1 s
        if clock.due(epoch, first=epoch == 1, last=epoch == 100):
            drawn.append(epoch)
            clock.charge(0.1)  # a picture that costs as much as an epoch
            now[0] += 0.1
    assert drawn[0] == 1 and drawn[-1] == 100
    assert 3 <= len(drawn) <= 10  # 5% of ~11 s of run time is about 5 pictures of 0.1 s
    assert clock.spent <= 0.05 * now[0] + 0.2  # over budget by at most the first and last picture

    every = DrawClock(every=5, budget=1.0)
    assert [e for e in range(1, 21) if every.due(e, first=e == 1, last=e == 20)] == [1, 5, 10, 15, 20]


@pytest.mark.parametrize(("override", "message"), [
    ("outputs.render_budget=2", "outputs.render_budget=2.0 is out of range: must be in [0, 1]"),
    ("outputs.num_samples=0", "outputs.num_samples=0 is out of range: must be in 1..64"),
    ("outputs.plot_every=-1", "outputs.plot_every=-1 is out of range: must be >= 0"),
])
def test_bad_output_settings_are_one_line_errors(cli, override: str, message: str) -> None:
    result = cli(override)
    assert result.returncode == 2
    assert message in result.err and "Traceback" not in result.output
    assert not result.run_dir.exists()


def test_loss_curve_draws_long_runs_penalties_and_a_diverged_epoch() -> None:
    epochs = np.arange(1, 301)
    records = [{"epoch": int(e), "train/loss": 1 / e, "val/loss": 1.2 / e, "train/reconstruction": 0.9 / e,
                "train/penalty": 0.1 / e, "val/penalty": 0.1 / e, "lr": 1e-3 * (1 + np.cos(np.pi * e / 300)) / 2}
               for e in epochs]
    records[-1]["val/loss"] = float("nan")
    columns = ["train/loss", "train/reconstruction", "train/penalty", "train/grad_norm", "val/loss", "val/penalty"]
    curve = LossCurve("sparse_ae on digits", columns)
    image = curve.draw(records)
    assert image.shape == (6.4 * DPI, 7 * DPI, 3) and image.std() > 10  # the penalty gets a panel of its own
    assert [line.get_label() for line in curve.term_ax.get_lines() if line.get_visible()] == [
        "train penalty", "validation penalty"]


# --- pictures people can read (#22.30) ------------------------------------------------------------------

def test_reconstruction_pictures_name_their_rows_and_say_the_epoch(digits_run: Path) -> None:
    """They were 546 x 70 px strips of tiles, no labels, no epoch: the text is there now, in the margins."""
    picture = png(digits_run / "reconstructions" / "epoch_003.png")
    names, title = picture[HEADER_PX:, : label_width(ROWS)], picture[:HEADER_PX]
    assert (names < 128).any() and (title < 128).any()  # dark text on the white margins
    assert picture.shape[1] >= 1000 and picture.shape[0] >= 150  # 64-pixel tiles: readable at a glance
    first = png(digits_run / "reconstructions" / "epoch_001.png")
    assert not np.array_equal(first[:HEADER_PX], picture[:HEADER_PX])  # the epoch differs, so does its title
    assert np.array_equal(first[HEADER_PX:, : label_width(ROWS)], names)  # the row names do not


def test_a_vae_draws_its_samples_large_and_a_kl_term_that_spans_decades_gets_its_own_panel(cli) -> None:
    result = cli(*FAST, "model=vae", "outputs.tensorboard=false")
    assert result.returncode == 0, result.err
    samples = png(result.run_dir / "samples/epoch_002.png")
    assert samples.shape[0] >= HEADER_PX + 4 * (64 + PAD) and samples.shape[1] >= 4 * (64 + PAD)  # was 136 x 136
    records = [{"epoch": e, "train/loss": 0.5 / e ** 0.2, "val/loss": 0.52 / e ** 0.2, "train/reconstruction": 0.45,
                "val/reconstruction": 0.47, "train/kl": 10.0 ** -e, "val/kl": 10.0 ** -e, "lr": 1e-3}
               for e in range(1, 7)]
    columns = ["train/loss", "train/reconstruction", "train/kl", "train/grad_norm", "val/loss", "val/reconstruction",
               "val/kl"]
    curve = LossCurve("vae on digits", columns)
    curve.draw(records)
    assert curve.loss_ax.get_yscale() == "linear" and curve.term_ax.get_yscale() == "log"
    low, high = curve.loss_ax.get_ylim()
    assert 0 < low and high / low < 2  # the losses fill their panel: the KL's six decades are not on their axis
    assert {line.get_label() for line in curve.loss_ax.get_lines() if line.get_visible()} >= {
        "train loss", "validation loss", "train reconstruction", "validation reconstruction"}


@pytest.mark.parametrize("fmt", ["svg", "pdf"])
def test_the_loss_curve_is_written_as_vector_graphics_on_request(cli, fmt: str) -> None:
    result = cli(*FAST, f"outputs.figure_format={fmt}", "outputs.tensorboard=false")
    assert result.returncode == 0, result.err
    vector = (result.run_dir / f"loss_curve.{fmt}").read_bytes()
    if fmt == "pdf":
        assert vector.startswith(b"%PDF") and vector.rstrip().endswith(b"%%EOF")
        assert b"/FontFile2" in vector and b"/Type3" not in vector  # TrueType embedded, as publishers ask
    else:
        import xml.etree.ElementTree as ET

        assert ET.fromstring(vector).tag == "{http://www.w3.org/2000/svg}svg"
    png(result.run_dir / "loss_curve.png")  # for the console, summary.json and a quick look
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert (summary["loss_curve"], summary["loss_curve_vector"]) == ("loss_curve.png", f"loss_curve.{fmt}")
    assert f"loss_curve.png, loss_curve.{fmt}" in result.out
    refused = cli(*FAST, "outputs.figure_format=jpg", run_dir=result.run_dir.parent / "refused")
    assert refused.returncode == 2 and refused.err.count("\n") == 1 and not refused.run_dir.exists()
    assert "outputs.figure_format='jpg' is out of range: must be one of: png, svg, pdf" in refused.err


# --- an output dir made read-only mid-run: one line, and a failed summary -------------------------------------------

@pytest.mark.slow
def test_an_output_dir_made_read_only_mid_run_is_one_line_and_a_failed_summary(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "aetrain", f"hydra.run.dir={run_dir}", "trainer.max_epochs=300",
                             "data.batch_size=32", "trainer.device=cpu", "outputs.plot_every=0"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.csv").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        read_only(run_dir, True)
        out, err = proc.communicate(timeout=120)
    finally:
        read_only(run_dir, False)
        proc.kill()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in out + err and "Logging error" not in out + err
    [line] = err.splitlines()
    assert line.startswith("aetrain: error: could not write ") and "; the run stopped after epoch " in line
    summary = json.loads((run_dir / "summary.json").read_text())  # rewritten in place: the dir takes no new file
    assert summary["status"] == "failed" and summary["error"].startswith("WriteError: could not write")


# --- the learning-rate panel of loss_curve.png, for every schedule's shape ------------------------------------------

def _rates(kind: str, epochs: int) -> list[float]:
    import math

    lr = 1e-3
    if kind == "cosine to 0":
        return [lr * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(1, epochs + 1)]
    if kind == "step":
        return [lr * 0.1 ** (e // 10) for e in range(epochs)]
    if kind == "onecycle":
        return [lr * (e / 12 if e < 12 else (1 + math.cos(math.pi * (e - 12) / (epochs - 12))) / 2) + 4e-8
                for e in range(1, epochs + 1)]
    if kind == "plateau":
        return [lr * 0.5 ** (e // 6) for e in range(epochs)]
    return [lr * 0.98 ** e for e in range(epochs)]  # exponential


@pytest.mark.parametrize("kind", ["cosine to 0", "step", "onecycle", "plateau", "exponential"])
def test_the_learning_rate_panel_shows_every_schedule_inside_its_axis_with_readable_ticks(kind: str) -> None:
    import numpy as np

    from aetrain.train.outputs.plots import LossCurve

    rates = _rates(kind, 40)
    records = [{"epoch": e, "train/loss": 1 / e, "val/loss": 1.1 / e, "lr": r} for e, r in enumerate(rates, 1)]
    curve = LossCurve(f"lr: {kind}", ["train/loss", "train/grad_norm", "val/loss"])
    for n in (1, 2, 15, 40):  # redrawn as a run goes on: the first draws see a constant rate
        curve.draw(records[:n])
    ax = curve.lr_ax
    xy = ax.transAxes.inverted().transform(ax.transData.transform(np.column_stack([range(1, 41), rates])))
    shown = (xy[:, 1] >= -1e-9) & (xy[:, 1] <= 1 + 1e-9) & np.isfinite(xy[:, 1])
    assert shown.mean() > 0.95, f"{(~shown).sum()} of 40 rates outside the panel"
    assert xy[shown, 1].max() - xy[shown, 1].min() > 0.4, "the rates are squeezed into a line"
    renderer = curve.fig.canvas.get_renderer()
    labels = [t.get_window_extent(renderer) for t in ax.get_yticklabels(which="both") if t.get_visible()
              and t.get_text() and ax.get_ylim()[0] <= t.get_position()[1] <= ax.get_ylim()[1]]
    assert len(labels) >= 2
    overlapping = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:] if a.overlaps(b)]
    assert not overlapping, f"{len(overlapping)} overlapping tick labels"


# --- pictures with any seed torch takes -----------------------------------------------------------------------------

def test_any_seed_in_torchs_range_trains_and_draws_its_pictures(cli) -> None:
    """trainer.seed=1e14 passed validation and overflowed in epoch 1 (the batch order's seed is derived from it);
    a sample_seed torch refused silently drew no pictures."""
    result = cli("trainer.max_epochs=1", "data.batch_size=256", "trainer.device=cpu", "outputs.tensorboard=false",
                 "trainer.seed=100000000000000", "data.split_seed=-9223372036854775808",
                 "outputs.sample_seed=18446744073709551615")
    assert result.returncode == 0, result.output
    assert (result.run_dir / "reconstructions" / "epoch_001.png").is_file()
    assert "could not draw" not in result.output

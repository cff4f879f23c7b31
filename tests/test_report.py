"""report.html (`aetrain report`, and at the end of every run and sweep): what the pages say, that they are one
file that loads nothing and are the same bytes for the same dir, the one-line errors, and, in headless Chromium
(tests/chromium.py; skipped where there is none), that they load from disk without an error or a request,
their pictures decode, the table sorts and filters and brushing an axis filters it.

One run and one sweep are trained per module (xdist worker) and shared; a test that changes a dir copies it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aetrain.report import render
from aetrain.report.figures import compact_png
from aetrain.report.runs import Run, Standing
from aetrain.report.sweeps import Job, Sweep, follow_ups, settings
from conftest import FAST, call_main

RUN_LIMIT, SWEEP_LIMIT = 500_000, 1_000_000  # bytes: the targets for a run's page and a 16-job sweep's
# a sweep with seeds and two failing jobs (a negative learning rate fails validation at once)
SWEEP = ["optimizer.lr=1e-3,3e-3,-1", "trainer.seed=0,1", "trainer.max_epochs=2", "data.batch_size=256",
         "trainer.device=cpu", "outputs.tensorboard=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short run with every output on (pictures, TensorBoard, the report at its end)."""
    path = tmp_path_factory.mktemp("report") / "run"
    assert call_main([f"hydra.run.dir={path}", *FAST]) == 0
    return path


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "sweep"
    assert call_main([*SWEEP, f"hydra.sweep.dir={path}", "-m"]) == 1  # two jobs failed
    return path


def report(*args: str, capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capfd.readouterr()
    code = call_main(["report", *args])
    out, err = capfd.readouterr()
    return code, out, err


def text_of(html: str) -> str:
    """The page's words, without tags, scripts' data or styles."""
    html = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&#39;", "'").replace("&amp;", "&")


def assert_self_contained(html: str) -> None:
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert not re.search(r"<link\b", html)
    sources = re.findall(r'\bsrc="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources[:3]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


# --- a run's page ------------------------------------------------------------------------------------------

def test_a_run_writes_its_page_at_the_end_one_file_that_loads_nothing(run_dir: Path) -> None:
    html = (run_dir / "report.html").read_text()
    assert_self_contained(html)
    size = len(html.encode())
    assert size < RUN_LIMIT, size
    words = text_of(html)
    assert "dense_ae on digits" in words and "finished" in words
    assert f"aetrain {' '.join(FAST)}" in words  # the command as it was typed
    assert f"aetrain trainer.resume={run_dir} trainer.max_epochs=4" in words  # how to train it longer
    assert "trainer.max_epochs 2 200" in words  # a difference from the defaults: key, value, default
    assert 'data-epochs="1,2"' in html  # the epoch picker over the pictures drawn
    assert "Training doctor" in words and "versions aetrain" in words
    assert "report.html" in (run_dir / "train.log").read_text()  # the final table names it


def test_the_same_dir_gives_the_same_bytes(run_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    written_by_the_run = (run_dir / "report.html").read_bytes()
    code, out, err = report(str(run_dir), capfd=capfd)
    assert code == 0, err
    assert out.startswith(f"aetrain report: wrote {run_dir / 'report.html'} (")
    assert (run_dir / "report.html").read_bytes() == written_by_the_run
    assert render(run_dir) == written_by_the_run.decode()


def test_every_run_writes_its_hyperparameters_for_tensorboards_hparams_dashboard(run_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    files = list((run_dir / "tensorboard" / "hparams").glob("events.out.tfevents.*"))
    assert len(files) == 1
    values = {v.tag: v for e in EventFileLoader(str(files[0])).Load() for v in e.summary.value}
    start = metadata.parse_session_start_info_plugin_data(values[metadata.SESSION_START_INFO_TAG].metadata
                                                          .plugin_data.content)
    assert start.hparams["model.latent_dim"].number_value == 16
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["model.name"].string_value == "dense_ae"
    assert "outputs.report" not in start.hparams and "trainer.device" not in start.hparams
    summary = json.loads((run_dir / "summary.json").read_text())
    best = tensor_util.make_ndarray(values["hparams/best_val_loss"].tensor).item()  # the loader makes scalars tensors
    assert best == pytest.approx(summary["best_val_loss"])
    assert metadata.SESSION_END_INFO_TAG in values


def test_a_failed_run_says_how_and_why(cli) -> None:
    result = cli("optimizer=sgd", "optimizer.lr=1e3", "model.output_activation=identity", "trainer.max_epochs=2",
                 "trainer.device=cpu", "outputs.tensorboard=false")
    assert result.returncode == 1
    words = text_of((result.run_dir / "report.html").read_text())
    assert "diverged" in words and "DivergenceError: non-finite loss at step" in words
    resumable = (result.run_dir / "checkpoints" / "last.pt").is_file()  # an epoch finished before it diverged
    assert (f"aetrain trainer.resume={result.run_dir}" in words) == resumable


def test_a_run_still_training_says_so_and_one_killed_says_that(run_dir: Path, tmp_path: Path) -> None:
    run = shutil.copytree(run_dir, tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running", "ended": None}))
    (run / ".aetrain.lock").write_text(f"pid {os.getpid()} on {socket.gethostname()} since 2026-11-23 10:00:00\n")
    words = text_of(render(run))
    assert "running" in words and f"training now (pid {os.getpid()} on" in words
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / ".aetrain.lock").write_text(f"pid {gone.stdout.strip()} on {socket.gethostname()} since 2026-11-23\n")
    assert "no process holds the run dir: it was killed" in text_of(render(run))
    (run / ".aetrain.lock").unlink()
    assert "killed?" in text_of(render(run))


def test_a_run_dir_from_before_summary_and_diagnostics_still_gets_a_page(run_dir: Path, tmp_path: Path,
                                                                        capfd: pytest.CaptureFixture[str]) -> None:
    run = shutil.copytree(run_dir, tmp_path / "old", ignore=shutil.ignore_patterns(
        "summary.json", "split.json", "diagnostics.csv", "report.html", "tensorboard", "loss_curve.png"))
    code, _, err = report(str(run), capfd=capfd)
    assert code == 0, err
    html = (run / "report.html").read_text()
    words = text_of(html)
    assert "no summary.json (a run from before it existed): 2 epochs in metrics.csv" in words
    assert 'id="loss-chart"' in html  # no loss_curve.png: the page's script draws metrics.csv's losses
    assert "judged from metrics.csv alone" in words


def test_report_has_its_own_help_and_is_listed_among_the_commands(cli) -> None:
    result = cli.command("report", "--help")
    assert result.returncode == 0 and result.err == ""
    assert result.out.startswith("usage: aetrain report <run dir or sweep dir>") and "report.html" in result.out
    assert "aetrain report   one page for a run or a sweep" in cli("--help").out
    flag = cli.command("report", "--open", "x")
    assert flag.returncode == 2
    assert flag.err.startswith("aetrain: error: unknown flag --open: aetrain report takes a run dir")


@pytest.mark.parametrize("case", ["empty", "foreign", "missing", "a file", "no dir", "two dirs", "an override"])
def test_what_is_not_a_run_or_sweep_dir_is_one_line_and_exit_2(case: str, tmp_path: Path,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not a run\n")
    (tmp_path / "file.txt").write_text("x")
    args = {"empty": [str(tmp_path / "empty")], "foreign": [str(tmp_path / "foreign")],
            "missing": [str(tmp_path / "missing")], "a file": [str(tmp_path / "file.txt")], "no dir": [],
            "two dirs": [str(tmp_path / "empty"), str(tmp_path / "foreign")],
            "an override": [str(tmp_path / "empty"), "outputs.report=true"]}[case]
    code, out, err = report(*args, capfd=capfd)
    assert code == 2 and out == ""
    assert err.startswith("aetrain: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not list(tmp_path.rglob("report.html"))


def test_outputs_report_false_writes_no_page_for_the_run_nor_the_sweep(tmp_path: Path) -> None:
    assert call_main([*SWEEP[:1], "trainer.seed=0", *SWEEP[2:], "outputs.plot_every=0", "outputs.report=false",
                      f"hydra.sweep.dir={tmp_path}", "-m"]) == 1
    assert (tmp_path / "sweep_summary.csv").is_file()
    assert not list(tmp_path.rglob("report.html"))


# --- a sweep's page ----------------------------------------------------------------------------------------

def test_a_sweep_writes_its_page_with_every_job_seeds_and_failures(sweep_dir: Path) -> None:
    html = (sweep_dir / "report.html").read_text()
    assert_self_contained(html)
    assert len(html.encode()) < SWEEP_LIMIT
    rows = re.findall(r'<tr data-job="(\d+)" class="(\w+)', html)
    assert sorted(int(n) for n, _ in rows) == list(range(6))
    assert sorted(s for _, s in rows) == ["failed"] * 2 + ["ok"] * 4
    words = text_of(html)
    assert "6 jobs: 4 ok, 2 failed" in words and "swept: optimizer.lr , trainer.seed" in words
    assert "Failures" in words and words.count("optimizer.lr=-1") >= 1 and "ConfigError" in words
    assert "Seeds: is the difference more than luck?" in words  # two settings, two seeds each
    seeds = re.findall(r"<tr class=\"(best|within|)\"><td class=\"text\">(lr=[\d.e-]+)</td><td>2</td>", html)
    assert sorted(label for _, label in seeds) == ["lr=0.001", "lr=0.003"] and seeds[0][0] == "best"
    assert f"aetrain -m hydra.sweep.dir={sweep_dir}" in words  # the command as typed
    ok = [n for n, s in rows if s == "ok"]
    for n in ok:  # each finished job links to its own page, which its run wrote
        assert f'href="{n}/report.html"' in html and (sweep_dir / n / "report.html").is_file()
    assert "Reconstructions of the top jobs" in words and "originals" in words
    assert html.count('alt="job ') == 4  # the four finished jobs' reconstruction rows


def test_a_sweep_page_is_the_same_bytes_again(sweep_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = (sweep_dir / "report.html").read_bytes()
    code, _, err = report(str(sweep_dir), capfd=capfd)
    assert code == 0, err
    assert (sweep_dir / "report.html").read_bytes() == before


def test_fused_groups_get_a_column_and_a_section_when_the_jobs_have_them(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = shutil.copytree(sweep_dir, tmp_path / "sweep")
    assert "Fused groups" not in text_of(render(sweep))
    for job, wall in (("0", 12.0), ("1", 11.5)):  # a member's wall time is its group's while it trained
        summary = json.loads((sweep / job / "summary.json").read_text())
        (sweep / job / "summary.json").write_text(json.dumps({**summary, "wall_time_s": wall, "group": {"id": "g0"}}))
    html = render(sweep)
    assert "<th data-type=\"text\">group</th>" in html
    groups = text_of(html).split("Fused groups", 1)[1]
    # the group took its longest member's time; each of its 2 jobs cost half of it
    assert re.search(r"g0\s+0, 1\s+\d of 2\s+12 s\s+6 s", groups), groups[:400]


@pytest.mark.slow
def test_an_optuna_search_gets_its_best_so_far(tmp_path: Path) -> None:
    assert call_main(["hparams_search=optuna", "hydra.sweeper.n_trials=3", "trainer.max_epochs=1",
                      "data.batch_size=256", "trainer.device=cpu", "outputs.tensorboard=false",
                      f"hydra.sweep.dir={tmp_path}", "-m"]) == 0
    html = (tmp_path / "report.html").read_text()
    words = text_of(html)
    assert "Optuna search" in words and "Optuna: best so far" in words and 'alt="best so far"' in html
    assert "Optuna's best" in words  # from optimization_results.yaml


# --- the comparisons, on made-up jobs ----------------------------------------------------------------------

def job(num: int, objective: float, **values: str) -> Job:
    run = Run(Path(f"/sweep/{num}"), {"status": "ok", "best_val_loss": objective}, [], [], [], None, {},
              Standing("ok", "finished", ""))
    return Job(num, run, str(num), "ok", "", values=values)


def test_settings_within_the_seed_spread_of_the_best_are_marked() -> None:
    def seeded(num: int, objective: float, lr: str, seed: str) -> Job:
        return job(num, objective, **{"optimizer.lr": lr, "trainer.seed": seed})

    jobs = [seeded(0, 0.100, "a", "0"), seeded(1, 0.110, "a", "1"),  # mean 0.105, sd 0.00707
            seeded(2, 0.112, "b", "0"), seeded(3, 0.118, "b", "1"),  # mean 0.115, sd 0.00424: the ranges overlap
            seeded(4, 0.200, "c", "0"), seeded(5, 0.210, "c", "1"),  # far behind
            seeded(6, 0.090, "d", "0")]  # one seed: not judged, though lowest
    found = settings(Sweep(Path("/sweep"), jobs, ["optimizer.lr", "trainer.seed"], [], [], False, {}))
    by = {dict(s.values)["optimizer.lr"]: s for s in found}
    assert found[0] is by["a"] and by["a"].mean == pytest.approx(0.105) and by["a"].within is None
    assert by["b"].within is True and by["c"].within is False and by["d"].within is None
    assert by["a"].sd == pytest.approx(math.sqrt(2 * 0.005 ** 2))
    assert settings(Sweep(Path("/sweep"), jobs, ["optimizer.lr"], [], [], False, {})) == []  # no seeds swept


def test_a_finding_in_several_jobs_becomes_one_sweep_command_on_their_values() -> None:
    from aetrain.doctor import Finding
    from aetrain.report.runs import Doctor

    def finding(lr: str) -> Finding:
        return Finding("lr_too_high", [], [3], {}, [f"optimizer.lr={lr}", "aetrain lr_find"], "too big a step")

    jobs = [job(0, 0.1, **{"optimizer.lr": "0.3", "trainer.seed": "0"}),
            job(1, 0.1, **{"optimizer.lr": "0.3", "trainer.seed": "1"}),
            job(2, 0.1, **{"optimizer.lr": "0.001", "trainer.seed": "0"})]
    jobs[0].doctor = jobs[1].doctor = Doctor("learning with problems", [finding("0.03")])
    jobs[2].doctor = Doctor("healthy", [])
    sweep = Sweep(Path("/sweep"), jobs, ["optimizer.lr", "trainer.seed"], ["trainer.max_epochs=5"], [], False, {})
    (found,) = follow_ups(sweep)
    assert [j.num for j in found.jobs] == [0, 1] and found.alternatives == ["aetrain lr_find"]
    assert found.command == "aetrain -m trainer.max_epochs=5 trainer.seed=0,1 optimizer.lr=0.03"
    jobs[1].doctor = Doctor("healthy", [])
    assert follow_ups(sweep) == []  # found once is the job's own page's business


def test_a_resumed_sweeps_commands_run_the_sweep_again_not_the_resume() -> None:
    from aetrain.doctor import Finding
    from aetrain.report.runs import Doctor
    from aetrain.report.sweeps import typed_command

    typed = ["hydra.sweep.dir=outputs/multirun/x", "hydra.launcher.resume=true", "hydra/launcher=fused",
             "hparams_search=optuna", "optimizer.lr=1e-3,3e-3"]
    jobs = [job(0, 0.1, **{"optimizer.lr": "0.3"}), job(1, 0.1, **{"optimizer.lr": "0.3"})]
    for j in jobs:
        j.doctor = Doctor("learning with problems", [Finding("lr_too_high", [], [3], {}, ["optimizer.lr=0.03"], "")])
    sweep = Sweep(Path("/sweep"), jobs, ["optimizer.lr"], [], typed, True, {})
    # the page's command: the sweep it continued (a resume needs the dir it names; this command starts anew)
    assert typed_command(sweep) == "aetrain -m hydra/launcher=fused hparams_search=optuna optimizer.lr=1e-3,3e-3"
    (found,) = follow_ups(sweep)  # a follow-up is a new sweep: "resume=true" without its dir would be refused
    assert found.command == "aetrain -m hydra/launcher=fused hparams_search=optuna optimizer.lr=0.03"
    typed[1] = "hydra.launcher.max_group=8"  # a sweep that was not resumed keeps the dir it was typed with
    assert typed_command(sweep).startswith("aetrain -m hydra.sweep.dir=outputs/multirun/x hydra.launcher.max_group=8")


def test_shrinking_a_picture_keeps_every_pixel_unless_it_may_lose_some() -> None:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    few = rng.integers(0, 4, (40, 60, 1)) * np.array([60, 20, 10])  # 4 colours
    many = rng.integers(0, 256, (40, 60, 3))
    for pixels in (few, many, np.repeat(many[..., :1], 3, axis=2)):
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, format="png")
        out = compact_png(buffer.getvalue())
        assert len(out) <= len(buffer.getvalue())
        assert (np.asarray(Image.open(io.BytesIO(out)).convert("RGB")) == pixels).all()


# --- in a browser ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    from chromium import Browser, find_browser

    path = find_browser()
    if path is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium; .ci/run installs it): the report's browser "
                    "tests need one")
    started = Browser(path)
    yield started
    started.close()


@pytest.fixture
def open_page(browser):
    pages = []

    def open_(path: Path, **size: int):
        page = browser.open((path / "report.html").resolve().as_uri(), **size)
        pages.append(page)
        return page

    yield open_
    for page in pages:
        page.close()


def assert_loaded_cleanly(page, path: Path) -> None:
    assert page.errors() == []
    own = (path / "report.html").resolve().as_uri()
    assert [u for u in page.requests() if u != own and not u.startswith("data:")] == []
    sizes = page.js("Promise.all([...document.images].map(i => i.decode().then(() => [i.naturalWidth, "
                    "i.naturalHeight])))")
    assert sizes and all(w > 0 and h > 0 for w, h in sizes)


def test_in_a_browser_the_pages_load_from_disk_without_an_error_or_a_request(open_page, run_dir: Path,
                                                                             sweep_dir: Path, tmp_path: Path) -> None:
    for path in (run_dir, sweep_dir):
        assert_loaded_cleanly(open_page(path), path)
    plain = shutil.copytree(run_dir, tmp_path / "plain", ignore=shutil.ignore_patterns("loss_curve.png"))
    render_to(plain)
    page = open_page(plain)
    assert page.errors() == []
    assert page.js("document.querySelectorAll('#loss-chart path.job').length") == 2  # train and validation


def render_to(path: Path) -> None:
    (path / "report.html").write_text(render(path))


def test_in_a_browser_the_epoch_picker_shows_the_chosen_epochs_pictures(open_page, run_dir: Path) -> None:
    page = open_page(run_dir)
    shown = "[...document.querySelectorAll('figure.frames img')].filter(i => !i.hidden).map(i => i.dataset.epoch)"
    assert page.js(shown) == ["2"]
    page.js("document.querySelector('.picker [data-step=first]').click()")
    assert page.js(shown) == ["1"]


def visible_jobs(page) -> list[int]:
    return page.js("[...document.querySelectorAll('#jobs-table tbody tr')].filter(r => !r.hidden)"
                   ".map(r => +r.dataset.job)")


def test_in_a_browser_the_table_sorts_and_filters(open_page, sweep_dir: Path) -> None:
    page = open_page(sweep_dir)
    ranked = visible_jobs(page)  # best first, failed jobs last
    header = "[...document.querySelectorAll('#jobs-table th')].find(h => h.textContent.trim() === '{}')"
    page.js(header.format("job") + ".click()")
    assert visible_jobs(page) == list(range(6))
    page.js(header.format("job") + ".click()")
    assert visible_jobs(page) == list(range(5, -1, -1))
    page.js(header.format("best val/loss") + ".click()")
    assert visible_jobs(page) == ranked
    page.js(header.format("best val/loss") + ".click()")  # descending; the failed jobs (no value) stay last
    assert visible_jobs(page) == ranked[:4][::-1] + ranked[4:]
    page.js("document.getElementById('filter').focus()")
    page.send("Input.insertText", {"text": "lr=0.003 seed=1"})
    expected = [n for n in range(6) if "optimizer.lr=0.003" in (sweep_dir / str(n) / ".hydra" / "overrides.yaml")
                .read_text() and "trainer.seed=1" in (sweep_dir / str(n) / ".hydra" / "overrides.yaml").read_text()]
    assert len(expected) == 1 and visible_jobs(page) == expected
    assert page.js("document.getElementById('shown').textContent") == "showing 1 of 6 jobs"
    page.js("document.getElementById('reset').click()")
    assert len(visible_jobs(page)) == 6


def test_in_a_browser_brushing_an_axis_filters_the_rows_and_a_click_clears_it(open_page, sweep_dir: Path) -> None:
    page = open_page(sweep_dir)
    best = visible_jobs(page)[0]
    # where the best job's line meets the objective axis (the last point of its path), in page coordinates
    x, y = page.js("""(() => {
        document.getElementById('parcoords').scrollIntoView();
        const p = document.querySelector('#parcoords path.best');
        const pts = p.getAttribute('d').split(/[ML]/).filter(Boolean).map(s => s.split(',').map(Number));
        const [x, y] = pts[pts.length - 1], r = p.ownerSVGElement.getBoundingClientRect();
        return [r.left + x, r.top + y]; })()""")
    page.drag(x, y - 4, y + 4)
    assert visible_jobs(page) == [best]
    assert page.js("document.querySelectorAll('#parcoords path.job:not(.off)').length") == 1
    assert page.js("document.querySelectorAll('#curves-chart path.job.off').length") == 3  # the other finished jobs
    page.click(x, y)  # a click on the axis clears its brush
    assert len(visible_jobs(page)) == 6
    assert page.errors() == []


def test_the_config_differences_name_the_plugins_a_run_imported() -> None:
    """`plugins` is a list at the config's top, not a section: the run's page lists it with the other changes
    (a run with a model of its own had no page: asdict() of a list)."""
    from aetrain.config import Config
    from aetrain.report.runs import config_differences

    assert ("plugins", "[/work/my_models.py]", "[]") in config_differences(Config(plugins=["/work/my_models.py"]))
    assert not [d for d in config_differences(Config()) if d[0] == "plugins"]


def test_the_report_cuts_labelled_grids_where_the_trainer_draws_them() -> None:
    import io

    import numpy as np
    import torch
    from PIL import Image

    from aetrain.report.figures import grid_rows
    from aetrain.train.outputs.plots import PAD, encode_png, label_width, labelled_grid

    names = ["input", "output"]
    shades = (0, 128)  # a black row and a grey one of three 5 x 4 tiles, drawn at zoom 2 (10 x 8 pixels)
    picture = labelled_grid([torch.full((3, 1, 5, 4), s / 255) for s in shades], 2, names=names, title="epoch 003")
    cut = grid_rows(encode_png(picture), 10)
    assert cut is not None and len(cut) == 2
    left = label_width(names) + PAD  # the first tile's left edge; the row's name is kept on its left
    for shade, png in zip(shades, cut):  # each row whole: its tiles between PAD white lines above and below
        row = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert row.shape == (10 + 2 * PAD, picture.shape[1], 3)
        assert (row[PAD:-PAD, left:left + 8] == shade).all()
        assert (row[:PAD, left:left + 8] == 255).all() and (row[-PAD:, left:left + 8] == 255).all()

"""The console: plain lines when stdout is not a terminal, a live progress bar when it is, and the log file."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST, metrics_rows, run_subprocess

ARGS = ("trainer.max_epochs=2", "data.batch_size=128", "trainer.device=cpu")
LONG = "a_directory_whose_name_alone_is_longer_than_the_eighty_columns_a_console_is_assumed_to_have"


def run_in_terminal(*args: str, cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """`python -m aetrain ...` with a pseudo-terminal as stdin, stdout and stderr; returns (exit code, output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "aetrain", *args], cwd=cwd, stdin=follower, stdout=follower,
                            stderr=follower, close_fds=True, env={**os.environ, "COLUMNS": "120"})
    os.close(follower)
    out = bytearray()
    while True:  # drain as it runs: a full terminal buffer would block the child
        ready, _, _ = select.select([leader], [], [], 1.0)
        try:
            chunk = os.read(leader, 65536) if ready else b""
        except OSError:  # the child closed the terminal
            break
        if ready and not chunk:
            break
        out += chunk
        if not ready and proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=timeout), out.decode("utf-8", "replace")


def test_piped_output_is_plain_lines_the_log_file_holds_too(tmp_path: Path) -> None:
    run_dir = tmp_path / LONG / "run"
    result = run_subprocess(*ARGS, cwd=tmp_path, run_dir=run_dir)
    assert result.returncode == 0, result.err
    assert "\r" not in result.output and "\x1b" not in result.output  # no redraws, no colours
    starting, *lines = result.out.splitlines()  # the start-up line, on the console only (see the next test)
    assert starting == f"aetrain: starting dense_ae on digits, 2 epochs, in {run_dir}: loading torch, the data and " \
                       "the model"
    # the header: model, size, data, device, precision, where the outputs go (one line, however long)
    assert lines[0] == "aetrain: dense_ae on digits for 2 epochs"
    assert re.fullmatch(r"  model   dense_ae \(latent 16\), [\d,]+ parameters", lines[1])
    assert lines[2] == "  data    digits 1x8x8, 1,438 train / 359 val samples, batch 128"
    assert re.fullmatch(r"  device  cpu, \d+ threads?, precision 32", lines[3]) and lines[4] == f"  output  {run_dir}"
    assert [line.split("  ")[0] for line in lines if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    # the final table says where everything is
    table = "\n".join(lines[lines.index(next(x for x in lines if x.startswith("aetrain: finished in"))):])
    for text in ("best val/loss", "loss_curve.png", "reconstructions/epoch_002.png", "checkpoints/best.pt",
                 f"tensorboard --logdir {run_dir / 'tensorboard'}"):
        assert text in table, text
    log = [line.split("] ", 1)[1] for line in (run_dir / "train.log").read_text().splitlines()]
    assert log == lines  # train.log: everything the console showed from the header on


def test_the_start_up_line_comes_once_the_config_is_valid_and_before_torch_is_imported(tmp_path: Path) -> None:
    fake = tmp_path / "no_torch" / "torch"  # importing torch (seconds; tens of them on a busy machine) fails here
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch is being imported')\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(fake.parent), os.environ.get("PYTHONPATH")]))}
    result = run_subprocess(*ARGS, cwd=tmp_path, env=env)
    assert result.out.splitlines()[0] == f"aetrain: starting dense_ae on digits, 2 epochs, in {result.run_dir}: " \
                                         "loading torch, the data and the model"
    assert "torch is being imported" in result.err
    invalid = run_subprocess(*ARGS, "optimizer.lr=-1", cwd=tmp_path, env=env)  # a bad config: its line, no other
    assert invalid.out == "" and invalid.err.startswith("aetrain: error: optimizer.lr=-1.0 is out of range")


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_and_the_log_file_stays_plain(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, out = run_in_terminal(f"hydra.run.dir={run_dir}", *ARGS, "data.batch_size=32", cwd=tmp_path)
    assert code == 0, out
    assert "\x1b[?25l" in out and "\x1b[?25h" in out  # the live bar hides the cursor and gives it back
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)  # without colours and cursor moves
    assert re.search(r"epoch 1/2 ━+ *\d+/\d+ loss \S+ [\d,-]+ samples/s", plain)  # the bar: steps, loss, speed
    log = (run_dir / "train.log").read_text()
    assert "\x1b" not in log and "━" not in log and "\r" not in log
    assert "epoch 2/2" in log and "aetrain: finished in" in log


def test_help_lists_the_output_settings(cli) -> None:
    result = cli("--help")
    assert result.returncode == 0
    section = result.out[result.out.index("outputs:"):]
    for key in ("plot_every", "render_budget", "num_samples", "sample_seed", "grid_zoom_to", "figure_format",
                "tensorboard", "progress", "report"):
        assert f"  {key}:" in section, key
    assert "  figure_format: png  # png | svg | pdf: " in section  # the allowed values, as typed


@pytest.mark.parametrize("choices", [[], ["model=vae", "data=tensor_file", "scheduler=onecycle", "optimizer=sgd"]])
def test_help_says_what_every_key_means(cli, choices: list[str]) -> None:
    """Each key with its default and its dataclass's comment (unit, allowed values, what off means), as the
    other commands' --help: the keys alone said nothing of outputs.figure_format's png | svg | pdf."""
    result = cli("--help", *choices)
    assert result.returncode == 0, result.err
    start, end = result.out.index("== Keys and defaults"), result.out.index("== Every choice's keys")
    keys = result.out[start:end].splitlines()[1:]
    values = [line for line in keys if line.startswith("  ") and not line.endswith(":")]
    assert len(values) > 40
    assert all(re.match(r"^ +\w+: \S+  # \S", line) for line in values), [v for v in values if "  # " not in v]
    assert "  every_n_steps: 0  # optimizer steps between sampled steps" in result.out  # a comment above its field


def test_the_header_shows_the_cpu_threads_and_trainer_num_threads_sets_them(tmp_path: Path, cli) -> None:
    fast = (*ARGS[:2], "trainer.max_epochs=1", "outputs.plot_every=0", "outputs.tensorboard=false")
    default = run_subprocess(*fast, cwd=tmp_path, run_dir=tmp_path / "default", env={"OMP_NUM_THREADS": "2"})
    assert default.returncode == 0, default.err
    assert "device  cpu, 2 threads, precision 32" in default.out  # 0 = torch's default: OMP_NUM_THREADS here
    one = run_subprocess(*fast, "trainer.num_threads=1", cwd=tmp_path, run_dir=tmp_path / "one",
                         env={"OMP_NUM_THREADS": "2"})
    assert one.returncode == 0, one.err
    assert "device  cpu, 1 thread, precision 32" in one.out
    bad = cli(*fast, "trainer.num_threads=-1", run_dir=tmp_path / "bad")  # refused before anything: in this process
    assert bad.returncode == 2 and bad.err.count("\n") == 1 and not bad.run_dir.exists(), bad.output
    assert "trainer.num_threads=-1 is out of range: must be an integer >= 1, or 0 for torch's default" in bad.err


# --- what the console says: early stopping after its epoch, every line on an ASCII console, the running loss --------

def test_early_stopping_is_reported_after_its_epoch_line_and_in_summary_json(cli) -> None:
    result = cli(*FAST, "trainer.max_epochs=12", "trainer.early_stopping_patience=1", "optimizer.lr=0.05",
                 "outputs.plot_every=0")
    assert result.returncode == 0, result.output
    lines = result.out.splitlines()
    epochs = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    stopped = [i for i, line in enumerate(lines) if line.startswith("early stopping: ")]
    assert len(epochs) < 12 and stopped == [epochs[-1] + 1], result.out  # right after the last epoch's line
    last = len(epochs)
    assert "no val/loss improvement for 1 epoch (" in lines[stopped[0]]  # not "1 epochs" (item 21)
    assert lines[stopped[0] + 1].startswith("aetrain: stopped early after")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert (summary["status"], summary["ended"], summary["epochs"]) == ("ok", "stopped_early", last)
    assert summary["stop_reason"] == lines[stopped[0]]
    assert any(" stopped " in line and lines[stopped[0]] in line for line in lines[stopped[0] + 1:])  # the table


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "PYTHONUTF8": "0"}],
                         ids=["PYTHONIOENCODING=ascii", "LC_ALL=C PYTHONUTF8=0"])
def test_a_unicode_run_dir_on_an_ascii_console_trains_and_logs_every_line(tmp_path: Path, env: dict) -> None:
    result = run_subprocess("hydra.run.dir='ünï 日本'", *FAST, "trainer.max_epochs=1", cwd=tmp_path,
                            env={k: v for k, v in env.items()}, command=("train",))
    assert result.returncode == 0, result.output
    assert result.err == "", result.err  # no "--- Logging error ---", no traceback
    assert "output  " in result.out and "epoch 1/1" in result.out and "aetrain: finished in" in result.out
    run_dir = tmp_path / "ünï 日本"
    assert len(metrics_rows(run_dir)) == 1
    log = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace")
    assert "epoch 1/1" in log and "aetrain: finished in" in log


def test_the_progress_bar_shows_the_running_loss_of_the_epoch_under_way(tmp_path: Path) -> None:
    import re

    from test_console import run_in_terminal

    run_dir = tmp_path / "run"
    code, out = run_in_terminal(f"hydra.run.dir={run_dir}", *FAST, "outputs.plot_every=0", cwd=tmp_path)
    assert code == 0, out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    frames = re.findall(r"epoch (\d)/2 \S* *(\d+)/12 loss (\S+)", plain)  # every redraw of the bar
    shown = {(int(e), loss) for e, done, loss in frames if int(done) >= 1}
    assert {e for e, _ in shown} == {1, 2}, frames  # each epoch's bar shows a loss once a step is done
    assert all(loss != "-" for _, loss in shown), frames
    epoch_1 = f"{float(metrics_rows(run_dir)[0]['train/loss']):.5f}"
    assert (2, epoch_1) not in shown, frames  # not the previous epoch's loss

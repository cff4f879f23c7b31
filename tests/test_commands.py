"""What every command after training shares: its own --help, and one-line refusals that leave the run dir alone."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import aetrain
from aetrain.commands import COMMANDS, JOBS
from aetrain.config import DataConfig, EncodeConfig, EvalConfig, ExportConfig, ScoreConfig
from aetrain.data import load_source
from conftest import FAST

AFTER_TRAINING = {"eval": EvalConfig, "encode": EncodeConfig, "score": ScoreConfig, "export": ExportConfig}


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rgb_run(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conv run on 3-channel 8x8 uint8 images."""
    path = tmp_path_factory.mktemp("rgb") / "rgb.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (60, 3, 8, 8), dtype=np.uint8))
    return trained("model=conv_ae", "data=tensor_file", f"data.path={path}", "trainer.max_epochs=1")


@pytest.mark.parametrize("command", AFTER_TRAINING)
def test_each_command_has_its_own_help_with_every_key(cli, command: str) -> None:
    result = cli.command(command, "--help")
    assert result.returncode == 0 and result.err == ""
    assert result.out.startswith(f"usage: aetrain {command} <run dir or checkpoint file> [key=value ...]")
    for key in AFTER_TRAINING[command].__dataclass_fields__:
        line = next(line for line in result.out.splitlines() if line.strip().startswith(f"{key}="))
        assert len(line.split(None, 1)) == 2, f"{key} has no description"  # key=default, then its comment


def test_top_level_help_lists_every_command(cli) -> None:
    out = cli("--help").out
    for command in ["train", *AFTER_TRAINING]:
        assert f"aetrain {command} " in out


@pytest.mark.parametrize("command", AFTER_TRAINING)
@pytest.mark.parametrize("case", ["conv run given tabular rows", "3-channel run given 1-channel images"])
def test_data_that_does_not_fit_the_model_is_refused_in_one_line(cli, trained, rgb_run: Path, tmp_path: Path,
                                                                  command: str, case: str) -> None:
    if case == "conv run given tabular rows":
        run = trained(*FAST, "model=conv_ae")
        np.save(tmp_path / "rows.npy", np.random.rand(50, 64).astype(np.float32))
        args = ["data=tensor_file", f"data.path={tmp_path / 'rows.npy'}"]
        message = ("data=tensor_file (" + str(tmp_path / "rows.npy") + "): rows of 64 features (64,); this model "
                   "(conv_ae, trained on digits) takes 1-channel 8x8 images (1, 8, 8)")
    else:
        run, args = rgb_run, ["data=digits"]
        message = ("data=digits: 1-channel 8x8 images (1, 8, 8); this model (conv_ae, trained on tensor_file) takes "
                   "3-channel 8x8 images (3, 8, 8)")
    before = snapshot(run)
    result = cli.command(command, str(run), *args)
    assert (result.returncode, result.out) == (2, "")
    assert result.err == f"aetrain: error: {message}\n"
    assert snapshot(run) == before


BAD = [
    (["eval"], [], "aetrain eval takes one run dir (or checkpoint file) before its overrides; got none"),
    (["encode", "{run}", "{run}"], [], "aetrain encode takes one run dir (or checkpoint file) before its overrides; "
                                       "got 2"),
    (["eval", "{empty}"], [], "no checkpoint in"),
    (["score", "{empty}/missing.pt"], [], "no such checkpoint file or run directory"),
    (["eval", "{run}", "foo=1"], [], "eval.foo: unknown key; eval has: split, num_worst, probe_samples, device, out"),
    (["eval", "{run}", "model.latent_dim=3"], [], "model.latent_dim: unknown key; aetrain eval takes data.<key>, "
                                                  "eval.<key>"),
    (["score", "{run}", "data.path=x.npy"], [], "data.path: unknown key for data=digits (a key of data=image_folder, "
                                                "tensor_file)"),
    (["score", "{run}", "quantile=2"], [], "score.quantile=2.0 is out of range: must be in (0, 1]"),
    (["score", "{run}", "normal_classes=[42]"], [], "score.normal_classes=[42]: no scored sample has any of these "
                                                    "labels"),
    (["eval", "{run}", "split=test"], [], "split=test: the data has no test split (data.test_fraction=0.0)"),
    (["encode", "{run}", "map=umap"], [], "encode.map='umap' is out of range: must be one of: auto, pca, tsne"),
    (["export", "{run}", "format=tflite"], [], "export.format='tflite' is out of range: must be one of: onnx, "
                                               "torchscript, exported_program"),
    (["eval", "{run}", "data=mnist", "data.root={empty}", "data.download=false"], [], "has no readable MNIST"),
    (["eval", "{run}", "data.classes=[42]"], [], "data.classes=[42]: no sample has label 42"),
    (["eval", "{run}", "data.val_fraction=0"], [], "data.val_fraction=0.0 is out of range: must be in (0, 1)"),
    (["eval", "{run}", "device=tpu"], [], "eval.device='tpu' is not one of: auto, cpu, cuda, cuda:N, mps"),
    (["eval", "{run}", "--fast"], [], "unknown flag --fast"),
]


@pytest.mark.parametrize(("args", "_", "message"), BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_command_lines_are_one_line_errors_that_write_nothing(cli, trained, tmp_path: Path, args: list[str], _,
                                                                  message: str) -> None:
    run = trained(*FAST)
    (tmp_path / "empty").mkdir()
    before = snapshot(run)
    result = cli.command(*[a.format(run=run, empty=tmp_path / "empty") for a in args])
    assert result.returncode == 2 and result.err.startswith("aetrain: error: ") and result.err.count("\n") == 1
    assert message in result.err, result.err
    assert "Traceback" not in result.output
    assert snapshot(run) == before and not any((tmp_path / "empty").iterdir())


def test_a_checkpoint_file_works_as_the_run_and_its_run_dir_gets_the_output(cli, trained) -> None:
    run = trained(*FAST)
    result = cli.command("encode", str(run / "checkpoints/last.pt"), "split=val", "device=cpu")
    assert result.returncode == 0, result.err
    assert "last.pt of epoch 2" in result.out
    indices = np.load(run / "encode/indices.npy")
    assert len(indices) == 359
    with torch.no_grad():
        expected = aetrain.load_model(run / "checkpoints/last.pt").encode(load_source(DataConfig()).samples[indices])
    np.testing.assert_allclose(np.load(run / "encode/codes.npy"), expected.numpy(), atol=1e-5)


# --- one command model: every command from its registry entry ---------------------------------------

@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_commands_help_is_made_from_its_entry(cli, name: str) -> None:
    """Usage, what it does, every key of its dataclass with its default and comment, its examples: for each
    command the same way (train's keys as YAML under its groups, the others' as typed, key=default)."""
    command = COMMANDS[name]
    result = cli.command(name, "--help")
    assert result.returncode == 0 and result.err == "", result.err
    assert command.description.strip().splitlines()[0] in result.out
    assert all(example in result.out for example in command.examples)
    if command.takes == JOBS:
        assert "Usage of train:" in result.out and "== Groups (pick one: group=choice) ==" in result.out
        assert "  latent_dim: 16  # size of the code z" in result.out
        return
    assert result.out.startswith(f"usage: aetrain {name} ")
    for key in dataclasses.fields(command.config) if command.config is not None else ():
        line = next(line for line in result.out.splitlines() if line.strip().startswith(f"{key.name}="))
        assert len(line.split(None, 1)) == 2, f"{name}.{key.name} has no description"


def test_a_command_is_one_function_and_one_entry(cli, tmp_path: Path, monkeypatch) -> None:
    """What adding a command takes (README, Layout): a function and its registry entry; its command line, its
    --help and its one-line errors come from the entry."""
    import aetrain.commands as commands

    @dataclasses.dataclass
    class HelloConfig:
        """`aetrain hello`'s keys."""

        greeting: str = "hello"  # what to say
        times: int = 1  # how often, >= 1

        RANGES = {"times": (lambda v: v >= 1, ">= 1")}

    said = []

    def hello(run_dir: Path, section: HelloConfig) -> None:
        from aetrain.config import validate_command

        validate_command("hello", section)
        said.append((run_dir, section.greeting * section.times))

    monkeypatch.setitem(commands.COMMANDS, "hello", commands.Command(
        "hello", summary="say hello to a run dir", description="Say hello.", function=hello, config=HelloConfig,
        takes=commands.DIR, argument="run dir"))
    assert cli.command("hello", str(tmp_path), "greeting=hi", "hello.times=2").returncode == 0
    assert said == [(tmp_path, "hihi")]
    help_text = cli.command("hello", "--help").out
    assert help_text.startswith("usage: aetrain hello <run dir> [key=value ...]")
    assert re.search(r"^  times=1 +how often, >= 1$", help_text, flags=re.M), help_text
    assert re.search(r"^  aetrain hello +say hello to a run dir$", cli("--help").out, flags=re.M)
    bad = cli.command("hello", str(tmp_path), "times=0")
    assert (bad.returncode, bad.err) == (2, "aetrain: error: hello.times=0 is out of range: must be >= 1\n")


# --- a model that is not finite ---------------------------------------------------------------------

def edited_run(finished: Path, folder: Path, edit) -> Path:
    """A copy of `finished` whose best.pt has its weights edited by `edit(weights)`, and no last.pt."""
    import shutil

    run = folder / "edited"
    shutil.copytree(finished, run)
    best = run / "checkpoints/best.pt"
    ckpt = torch.load(best, weights_only=True)
    edit(ckpt["model"])
    (run / "checkpoints/last.pt").unlink()
    best.unlink()  # a new file: best.pt and last.pt may share one
    torch.save(ckpt, best)
    return run


@pytest.mark.parametrize("command", AFTER_TRAINING)
def test_a_model_with_a_nan_weight_is_refused_by_every_command_naming_the_tensor(cli, finished: Path, tmp_path: Path,
                                                                                  command: str) -> None:
    run = edited_run(finished, tmp_path, lambda w: w["decoder.2.weight"].view(-1)
                     .index_fill_(0, torch.tensor([5, 9]), float("nan")))
    before = snapshot(run)
    result = cli.command(command, str(run), *(["device=cpu"] if command != "export" else []))
    assert (result.returncode, result.out) == (2, ""), result.output
    assert result.err == (f"aetrain: error: {run}/checkpoints/best.pt: the model is not finite: decoder.2.weight "
                          "(256, 128) holds 2 NaN of its 32768 values; use a checkpoint from before the run diverged "
                          "(or train again: aetrain doctor <run dir> says what went wrong)\n")
    assert snapshot(run) == before


@pytest.mark.parametrize("command", AFTER_TRAINING)
def test_finite_weights_with_non_finite_outputs_fail_every_command_in_one_line(cli, finished: Path, tmp_path: Path,
                                                                               command: str) -> None:
    """Weights near float32's largest value: every output overflows to inf or NaN. eval gave a scikit-learn
    traceback, score "threshold nan", export passed its own check with "max |difference| nan"."""
    run = edited_run(finished, tmp_path, lambda w: w["encoder.1.weight"].fill_(3e38))
    before = snapshot(run)
    result = cli.command(command, str(run), *(["device=cpu"] if command != "export" else []))
    assert "Traceback" not in result.output and result.out == ""
    if command == "export":
        assert result.returncode == 1
        assert "differs from PyTorch by nan (model units)" in result.err and "not a finite number; nothing was " \
            "written" in result.err, result.err
    else:
        assert result.returncode == 2
        assert result.err.startswith(f"aetrain: error: {run}/checkpoints/best.pt: the model's output is not finite "
                                     "(NaN or infinite) for "), result.err
    assert result.err.count("\n") == 1
    assert snapshot(run) == before


# --- where a command writes -------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "arg", "message"), [
    ("eval", "out=/proc/aetrain", "out=/proc/aetrain: cannot write there (/proc: No such file or directory); choose "
                                  "another folder with out=DIR"),
    ("export", "out=/proc/aetrain", "out=/proc/aetrain: cannot write there (/proc: No such file or directory)"),
    ("score", "out={file}", "out={file}: exists and is not a directory; choose another folder with out=DIR"),
    ("encode", "out={file}/codes", "out={file}/codes: cannot write there ({file}: Not a directory)"),
    ("score", "seed=-1", "score.seed=-1 is out of range: must be an integer in [0, 2**32 - 1]"),
])
def test_every_argument_is_checked_before_the_model_or_the_data_is_loaded(cli, finished: Path, tmp_path: Path,
                                                                         monkeypatch, command: str, arg: str,
                                                                         message: str) -> None:
    """Such mistakes ended in a traceback after the whole evaluation (out=/proc/x), or in one line after it."""
    import aetrain.commands.trained as trained_module

    if "/proc" in arg and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")

    def no_work(*_):
        raise AssertionError("the command started its work before checking its arguments")

    monkeypatch.setattr(trained_module, "model_from_checkpoint", no_work)
    monkeypatch.setattr(trained_module, "load_source", no_work)
    (tmp_path / "file").write_text("a user's file\n")
    before = snapshot(finished)
    result = cli.command(command, str(finished), arg.format(file=tmp_path / "file"))
    assert (result.returncode, result.out) == (2, ""), result.output
    assert result.err.startswith(f"aetrain: error: {message.format(file=tmp_path / 'file')}"), result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert snapshot(finished) == before and (tmp_path / "file").read_text() == "a user's file\n"


def test_one_commands_out_folder_is_never_written_by_another(cli, trained, tmp_path: Path) -> None:
    """eval out=X, then score out=X replaced eval's metrics.json: each command writes into a new or empty folder, or
    one it wrote itself."""
    run = trained(*FAST)
    shared = tmp_path / "results"
    assert cli.command("eval", str(run), f"out={shared}", "probe_samples=0", "device=cpu").returncode == 0
    eval_files = snapshot(shared)
    assert json.loads((shared / "metrics.json").read_text())["command"] == "eval"

    result = cli.command("score", str(run), f"out={shared}", "device=cpu")
    assert (result.returncode, result.out) == (2, "")
    assert result.err == (f"aetrain: error: out={shared}: holds errors.png, metrics.json, per_sample.csv, worst.png "
                          "(output of aetrain eval), which aetrain score did not write; it writes into a new or empty "
                          "folder or one it wrote before: choose another with out=DIR\n")
    for name in ("errors.png", "per_sample.csv", "worst.png"):  # eval's metrics.json alone is still eval's
        (shared / name).unlink()
    assert "holds metrics.json (output of aetrain eval)" in cli.command("score", str(run), f"out={shared}").err
    assert snapshot(shared) == {"metrics.json": eval_files["metrics.json"]}

    # its own earlier output is replaced; a user's file, or another command's default folder, is not
    assert cli.command("eval", str(run), f"out={shared}", "probe_samples=0", "device=cpu").returncode == 0
    (shared / "notes.txt").write_text("mine\n")
    result = cli.command("eval", str(run), f"out={shared}", "probe_samples=0", "device=cpu")
    assert result.returncode == 2 and f"out={shared}: holds notes.txt, which aetrain eval did not write" in result.err
    (tmp_path / "encoded").mkdir()
    (tmp_path / "encoded/codes.npy").write_bytes(b"")
    result = cli.command("eval", str(run), f"out={tmp_path / 'encoded'}", "device=cpu")
    assert result.returncode == 2 and "(output of aetrain encode), which aetrain eval did not write" in result.err


# --- the run's data, checked by its fingerprint -------------------------------------------------------

@pytest.fixture(scope="module")
def rows_run(trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data file, run dir): a one-epoch dense run on 200 rows of 6 features, its file this module's alone."""
    path = tmp_path_factory.mktemp("rows") / "rows.npy"
    np.save(path, np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32))
    return path, trained("data=tensor_file", f"data.path={path}", "trainer.max_epochs=1")


@pytest.mark.parametrize("command", AFTER_TRAINING)
def test_the_runs_data_changed_since_training_is_refused_by_every_command(cli, rows_run, command: str) -> None:
    """The checkpoint holds the data's fingerprint; a resume refused a changed file, and these commands used it,
    saying "of the run's data"."""
    path, run = rows_run
    original = np.load(path)
    before = snapshot(run)
    np.save(path, original[::-1].copy())  # the same rows in another order: the same shape, size and statistics
    try:
        result = cli.command(command, str(run), *(["device=cpu"] if command != "export" else []))
    finally:
        np.save(path, original)
    assert (result.returncode, result.out) == (2, ""), result.output
    assert result.err.startswith(f"aetrain: error: data=tensor_file ({path}): not the data the run was trained on "
                                 "(content (sha256 "), result.err
    assert result.err.endswith("it changed since training; to use it anyway, name it on the command line "
                               "(data.path=... or data.root=...): it is then other data, used whole\n")
    assert snapshot(run) == before


def test_data_given_is_the_runs_own_only_when_it_holds_the_samples_the_run_trained_on(cli, rows_run,
                                                                                      tmp_path: Path) -> None:
    path, run = rows_run
    moved, other = tmp_path / "moved.npy", tmp_path / "other.npy"
    np.save(moved, np.load(path))
    np.save(other, np.load(path)[::-1].copy())
    result = cli.command("eval", str(run), f"data.path={moved}", "device=cpu", f"out={tmp_path / 'moved'}")
    assert result.returncode == 0, result.err
    assert f"on 40 validation samples of the run's data (found at data.path={moved}); " in result.out
    assert json.loads((tmp_path / "moved/metrics.json").read_text())["data"]["own"] is True

    result = cli.command("eval", str(run), f"data.path={other}", "device=cpu", f"out={tmp_path / 'other'}")
    assert result.returncode == 0, result.err
    assert f"on all 200 samples of data=tensor_file ({other}), not the training data; " in result.out
    metrics = json.loads((tmp_path / "other/metrics.json").read_text())
    assert metrics["data"]["own"] is False and metrics["pca"]["fit_samples"] == 160  # fitted on the run's own data

    # the run's own data, needed beside other data (PCA's fit), is checked too
    original = np.load(path)
    np.save(path, original + 1)
    try:
        result = cli.command("score", str(run), f"data.path={other}", "device=cpu", f"out={tmp_path / 'score'}")
    finally:
        np.save(path, original)
    assert result.returncode == 2 and "not the data the run was trained on (content (sha256" in result.err
    assert result.err.endswith("it changed since training; aetrain score takes its threshold, PCA and IsolationForest "
                               "from its splits; it must be the data the run trained on\n")


def test_a_run_on_a_relative_data_path_is_found_from_any_directory(cli, tmp_path: Path, monkeypatch) -> None:
    """The run kept data.path as typed (rows.npy): eval, score, encode, export and resume started elsewhere said
    "data.path=rows.npy: does not exist", even with data.path=<the file> given (that named the run's path)."""
    project, elsewhere, run = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "run"
    project.mkdir(), elsewhere.mkdir()
    rows = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    np.save(project / "rows.npy", rows)
    monkeypatch.chdir(project)
    quiet = ("trainer.device=cpu", "outputs.plot_every=0", "outputs.tensorboard=false")
    assert cli("data=tensor_file", "data.path=rows.npy", "trainer.max_epochs=1", *quiet, run_dir=run).returncode == 0
    saved = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert saved["data_paths"] == {"path": str(project / "rows.npy")}

    # a checkpoint from before aetrain stored the resolved paths: its path as typed, from the working directory
    import shutil

    shutil.copytree(run, tmp_path / "old")
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run / "checkpoints" / name, weights_only=True)
        del ckpt["data_paths"]
        (tmp_path / "old/checkpoints" / name).unlink()
        torch.save(ckpt, tmp_path / "old/checkpoints" / name)
    assert cli.command("encode", str(tmp_path / "old"), "device=cpu").returncode == 0

    monkeypatch.chdir(elsewhere)
    result = cli.command("encode", str(run), "device=cpu")
    assert result.returncode == 0, result.err
    assert "all 200 samples of the run's data -> codes 200 x 16" in result.out

    # moved: the message names the path as typed and as the run resolved it; the new place given is honoured
    (project / "rows.npy").rename(elsewhere / "moved.npy")
    result = cli.command("eval", str(run), "device=cpu")
    assert (result.returncode, result.out) == (2, "")
    assert result.err == (f"aetrain: error: data.path=rows.npy ({project}/rows.npy when the run trained): does not "
                          "exist; data=tensor_file needs a .npy or .pt file; if it moved, give data.path=<its place "
                          "now>\n")
    result = cli.command("eval", str(run), "data.path=moved.npy", "device=cpu")
    assert result.returncode == 0, result.err
    assert "on 40 validation samples of the run's data (found at data.path=moved.npy)" in result.out
    result = cli(f"trainer.resume={run}", "trainer.max_epochs=2", run_dir=run)
    assert (result.returncode, result.err) == (2, f"aetrain: error: trainer.resume={run}: the run's data.path=rows.npy "
                                                  f"({project}/rows.npy when it trained) does not exist; if it moved, "
                                                  "give its place now: data.path=<its place>\n")
    assert cli(f"trainer.resume={run}", "trainer.max_epochs=2", "data.path=moved.npy", run_dir=run).returncode == 0

    # a resume from another directory finds the file that resume named (moved.npy, relative to elsewhere)
    monkeypatch.chdir(project)
    assert cli(f"trainer.resume={run}", "trainer.max_epochs=3", run_dir=run).returncode == 0

"""The `aetrain` command end to end: what a run writes, and what a bad command does (and doesn't)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST, TIMING, one_line_error, run_subprocess


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_run_from_any_directory_writes_checkpoints_metrics_config_and_log(tmp_path: Path) -> None:
    result = run_subprocess("trainer.max_epochs=3", "trainer.device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.err
    run = result.run_dir
    rows = result.metrics()
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"epoch", "step", "train/loss", "val/loss", "lr", "train/penalty", "train/grad_norm"} <= set(rows[0])
    assert float(rows[-1]["val/loss"]) < float(rows[0]["val/loss"])
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", ".hydra/config.yaml", ".hydra/overrides.yaml",
                 ".hydra/hydra.yaml", "train.log"):
        assert (run / name).is_file(), name
    assert "trainer.max_epochs=3" in (run / ".hydra/overrides.yaml").read_text()
    assert "epoch 3/3" in (run / "train.log").read_text()


def test_best_checkpoint_is_the_epoch_with_the_lowest_validation_loss(cli) -> None:
    # a high rate makes val/loss bounce
    result = cli("trainer.max_epochs=4", "optimizer.lr=0.05", "trainer.device=cpu")
    assert result.returncode == 0, result.err
    val = [float(r["val/loss"]) for r in result.metrics()]
    best = torch.load(result.run_dir / "checkpoints/best.pt", weights_only=True)
    last = torch.load(result.run_dir / "checkpoints/last.pt", weights_only=True)
    assert best["state"]["epoch"] == 1 + int(np.argmin(val))
    assert best["state"]["best_val_loss"] == pytest.approx(min(val))
    assert last["state"]["epoch"] == 4


def test_same_seed_gives_the_same_numbers_through_the_cli(cli, tmp_path: Path) -> None:
    a = cli(*FAST, "model=denoising_ae", run_dir=tmp_path / "a")
    b = cli(*FAST, "model=denoising_ae", run_dir=tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(a.metrics()) == strip(b.metrics())
    wa = torch.load(a.run_dir / "checkpoints/last.pt", weights_only=True)["model"]
    wb = torch.load(b.run_dir / "checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_gradient_norm_is_logged_with_and_without_clipping(cli, tmp_path: Path) -> None:
    free = cli(*FAST, run_dir=tmp_path / "free").metrics()
    clipped = cli(*FAST, "trainer.gradient_clip_val=0.01", run_dir=tmp_path / "clip").metrics()
    assert all(float(r["train/grad_norm"]) > 0 for r in free + clipped)
    assert free[-1]["val/loss"] != clipped[-1]["val/loss"]


def test_help_lists_every_group_and_its_choices(cli) -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert "aetrain train" in result.out  # the commands, each with a line
    for line in ["model: conv_ae, denoising_ae, dense_ae, sparse_ae, vae",
                 "data: cifar10, digits, fashion_mnist, image_folder, mnist, tensor_file",
                 "optimizer: adam, adamw, rmsprop, sgd",
                 "scheduler: cosine, exponential, none, onecycle, plateau, step"]:
        assert line in result.out


def test_help_lists_the_keys_of_every_choice_not_only_the_chosen_ones(cli) -> None:
    """`aetrain --help` showed the keys of the default choices only: no data.path, model.noise.*,
    scheduler.step_size."""
    import dataclasses

    from aetrain.config import CHOICES, default_choice

    def keys(section, prefix=""):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if dataclasses.is_dataclass(value):
                yield from keys(value, f"{prefix}{f.name}.")
            elif prefix or f.name != "name":
                yield prefix + f.name

    out = cli("--help").out
    section = out.split("== Every choice's keys", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    lines = []  # a wrapped line continues the one above it
    for line in section:
        lines[-1:] = [lines[-1] + " " + line.strip()] if line.startswith("    ") else [*lines[-1:], line]
    for group, choices in CHOICES.items():
        common = next(line for line in lines if line.startswith(f"{group}, every choice: ")).split(": ", 1)[1]
        for name in choices:
            own = next(line for line in lines if re.match(rf"  {group}=(\S+\|)?{name}(\|\S+)?: ", line))
            shown = (set() if common == "(none)" else set(common.split(", "))) | (
                set() if own.endswith("no others") else set(own.split(": also ", 1)[1].split(", ")))
            assert shown == set(keys(default_choice(group, name))), f"{group}={name}"
    assert "aetrain --help model=vae" in out
    assert "  kl_warmup_epochs: " in cli("--help", "model=vae").out  # what the section says to type shows them


def test_train_is_the_default_command_and_has_its_own_help(cli) -> None:
    plain, named = cli("--help"), cli.command("train", "--help")
    assert plain.returncode == named.returncode == 0
    assert plain.out == named.out and "Usage of train" in named.out


def test_flags_may_come_after_overrides(cli) -> None:
    result = cli("model=conv_ae", "--cfg", "job", "model.latent_dim=3")  # Hydra alone wants flags first
    assert result.returncode == 0, result.err
    assert "name: conv_ae" in result.out and "latent_dim: 3" in result.out
    assert not result.run_dir.exists()


BAD_INPUTS = [
    (["model=foo"], "model=foo is not one of: conv_ae, denoising_ae, dense_ae, sparse_ae, vae"),
    (["model=null"], "model=null: a run needs a model; choose one of: conv_ae, denoising_ae, dense_ae, sparse_ae, vae"),
    (["data=imagenet"], "data=imagenet is not one of: cifar10, digits"),
    (["model.foo=1"], "model.foo: unknown key for model=dense_ae; model=dense_ae has: name, latent_dim"),
    (["+model.foo=1"], "model.foo: unknown key for model=dense_ae"),
    (["+trainer.max_epoch=3"], "trainer.max_epoch: unknown key; trainer has: max_epochs"),
    # a key the chosen component does not use is refused, naming the choices that have it
    (["model.channels=[8]"], "model.channels: unknown key for model=dense_ae (a key of model=conv_ae, denoising_ae, "
                             "sparse_ae, vae)"),
    (["scheduler=step", "scheduler.patience=3"], "scheduler.patience: unknown key for scheduler=step (a key of "
                                                 "scheduler=plateau); scheduler=step has: name, step_size, gamma"),
    (["optimizer.momentum=0.9"], "optimizer.momentum: unknown key for optimizer=adam "
                                 "(a key of optimizer=rmsprop, sgd)"),
    (["optimizer=adamw", "+optimizer.momentum=0.9"], "optimizer.momentum: unknown key for optimizer=adamw"),
    (["data.path=rows.npy"], "data.path: unknown key for data=digits (a key of data=image_folder, tensor_file)"),
    (["model.noise.level=0.3"], "model.noise: unknown key for model=dense_ae (a key of model=denoising_ae)"),
    (["model=denoising_ae", "model.channels=[8]"], "model.channels=[8] is used by model.backbone=conv only; this "
                                                   "model has model.backbone=dense"),
    (["optimizer.lr=abc"], "optimizer.lr: Value 'abc' of type 'str' could not be converted to Float"),
    (["trainer.max_epochs=1.5"], "trainer.max_epochs"),
    (["optimizer.lr=0"], "optimizer.lr=0.0 is out of range: must be a finite number > 0"),
    (["optimizer.lr=-1e-3"], "optimizer.lr=-0.001 is out of range"),
    (["optimizer.weight_decay=inf"], "optimizer.weight_decay=inf is out of range: must be a finite number >= 0"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is out of range: must be >= 1"),
    (["model.latent_dim=0"], "model.latent_dim=0 is out of range: must be >= 1"),
    (["model=vae", "model.beta=-1"], "model.beta=-1.0 is out of range: must be a finite number >= 0"),
    (["data.val_fraction=1"], "data.val_fraction=1.0 is out of range: must be in (0, 1)"),
    (["data.val_fraction=0"], "data.val_fraction=0.0 is out of range: must be in (0, 1)"),
    (["model.activation=swish"], "model.activation='swish' is not one of: elu, gelu, leaky_relu, prelu, relu"),
    (["model.init=he"], "model.init='he' is not one of: default, kaiming_normal"),
    (["trainer.precision=8"], "trainer.precision='8' is not one of: 16-mixed, 32, bf16-mixed"),
    (["trainer.gradient_clip_algorithm=max"], "trainer.gradient_clip_algorithm='max' is not one of: norm, value"),
    (["trainer.on_nonfinite=ignore"], "trainer.on_nonfinite='ignore' is not one of: skip, stop"),
    (["trainer.device=tpu"], "trainer.device='tpu' is not one of: auto, cpu, cuda, cuda:N, mps"),
    (["model.loss=huber"], "model.loss='huber' is not one of: auto, bce, l1, mse, smooth_l1"),
    (["model=denoising_ae", "model.noise.kind=blur"], "model.noise.kind='blur' is not one of: gaussian, masking, "
                                                      "salt_pepper"),
    (["model=sparse_ae", "model.sparsity.kind=l2"], "model.sparsity.kind='l2' is not one of: kl, l1"),
    (["model=vae", "model.backbone=mlp"], "model.backbone='mlp' is not one of: conv, dense"),
    (["optimizer.name=lbfgs"], "optimizer.name is set by choosing the optimizer: use optimizer=<one of: adam, adamw, "
                               "rmsprop, sgd>"),
    (["scheduler.name=cyclic"], "scheduler.name is set by choosing the scheduler: use scheduler=<one of: cosine"),
    (["data=tensor_file"], "data.path is not set; data=tensor_file needs a .npy or .pt file"),
    (["data=tensor_file", "data.path=/nonexistent/x.npy"], "data.path=/nonexistent/x.npy: does not exist"),
    (["data=mnist", "data.root=/nonexistent", "data.download=false"], "data.root=/nonexistent has no readable MNIST"),
    (["-m", "model=dense_ae,conv_ae", "--cfg", "job"], "use one of -m/--multirun, --cfg, --info at a time"),
    (["--help", "model=foo"], "model=foo is not one of: conv_ae, denoising_ae, dense_ae, sparse_ae, vae"),
    (["--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_one_line_naming_the_key_and_nothing_is_written(cli, tmp_path: Path, args: list[str],
                                                                      message: str) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert result.err.startswith("aetrain: error: ") and result.err.count("\n") == 1, result.err
    assert message in result.err
    assert "Traceback" not in result.output
    assert not result.run_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_cuda_says_so(cli) -> None:
    result = cli("trainer.device=cuda")
    assert result.returncode == 2 and "trainer.device=cuda: CUDA is not available on this machine" in result.err


def test_conv_model_on_tabular_rows_is_a_clear_error(cli, tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", np.random.rand(50, 6).astype(np.float32))
    result = cli("model=conv_ae", "data=tensor_file", f"data.path={tmp_path / 'rows.npy'}")
    assert result.returncode == 2 and "model=conv_ae (a conv backbone) needs image data" in result.err


def test_nothing_in_an_existing_run_dir_is_overwritten_by_a_bad_or_a_second_command(cli) -> None:
    first = cli(*FAST)
    assert first.returncode == 0
    before = snapshot(first.run_dir)
    assert cli("optimizer.lr=-1").returncode == 2  # rejected before anything is written
    again = cli(*FAST)  # a valid fresh run into the same dir is refused
    assert again.returncode == 2 and "already holds a run" in again.err and "trainer.resume" in again.err
    assert snapshot(first.run_dir) == before


def test_a_word_that_is_no_command_is_one_line(cli) -> None:
    result = cli.command("evaluate", "outputs/run")
    assert result.returncode == 2
    assert result.err == ("aetrain: error: 'evaluate' is neither a command nor an override (key=value); commands: "
                          f"{', '.join(__import__('aetrain.cli').cli.COMMANDS)} (see aetrain --help)\n")


def test_the_readme_errors_section_quotes_what_aetrain_prints(cli, tmp_path: Path, monkeypatch) -> None:
    """Its command list had gone stale (#22.30): each `$ aetrain ...` there is run, its line compared."""
    import re
    import shlex

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"^## Errors\n.*?^```\n(.*?)^```", readme, flags=re.M | re.S).group(1)
    quoted = re.findall(r"^\$ aetrain (.*)\n(aetrain: error: .*)$", block, flags=re.M)
    assert len(quoted) >= 5 and len(quoted) == block.count("$ aetrain")
    monkeypatch.chdir(tmp_path)  # relative paths in the examples land here
    for args, line in quoted:
        result = cli.command(*shlex.split(args))
        assert (result.returncode, result.err) == (2, line + "\n"), args


@pytest.mark.parametrize("model", ["dense_ae", "conv_ae", "denoising_ae", "sparse_ae", "vae"])
def test_every_model_preset_trains_through_the_cli(cli, model: str) -> None:
    result = cli(*FAST, f"model={model}")
    assert result.returncode == 0, result.err
    assert len(result.metrics()) == 2


# --- HYDRA_FULL_ERROR=1 ---------------------------------------------------------------------------------------------

def test_hydra_full_error_shows_the_traceback_behind_a_user_error(tmp_path: Path) -> None:
    plain = run_subprocess("optimizer.lr=-1", *FAST, cwd=tmp_path, command=("train",))
    assert one_line_error(plain) == "aetrain: error: optimizer.lr=-1.0 is out of range: must be a finite number > 0"
    full = run_subprocess("optimizer.lr=-1", *FAST, cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"}, command=("train",))
    assert full.returncode != 0 and "Traceback (most recent call last)" in full.err
    assert "aetrain.errors.ConfigError: optimizer.lr=-1.0 is out of range" in full.err
    assert not list(tmp_path.glob("outputs/*/*"))  # nothing written either way

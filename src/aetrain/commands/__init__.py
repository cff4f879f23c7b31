"""The commands of `aetrain <command>`: one module each, plain functions taking typed configs, and their registry.

`COMMANDS` holds one entry per command: its name, a one-line summary, what it does (the body of its
`--help`), the dataclass of its own keys, the function it calls, and what it takes before those
keys. The CLI (`aetrain.cli`) parses every command line, writes every `--help` and turns every
error into one line from these entries; nothing here imports Hydra.

What a command takes (`Command.takes`), and so how its function is called:
- JOBS (`train`): the training overrides, composed by Hydra into one run or a sweep of jobs; each job
  is `function(config, run_dir, invocation=..., job=..., relaunch=...)` (`train.run_job`);
- TRAINING (`lr_find`): the training overrides, composed once, and its own keys as `<name>.<key>`:
  `function(config, section, run_dir, invocation)`, into a run dir of its own
  (`outputs/<name>/<date>/<time>` unless hydra.run.dir is given);
- RUN (`eval`, `encode`, `score`, `export`): a run dir or checkpoint file, its own keys, and data
  overrides on top of the run's own data: `function(path, section, data or None)`;
- DIR (`doctor`, `sweep`): a dir: `function(path)`, or `function(path, section)` with keys of its own.
A function logs what it has to say through `logging` and raises an `AetrainError` for what stops it.

Adding a command: its module here (its function), and its entry below: a stub of the function's
signature that imports the module when the command runs, so `aetrain --help` stays fast and a
command imports only what it uses (`aetrain eval` no trainer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aetrain.config import Config, EncodeConfig, EvalConfig, ExportConfig, LRFindConfig, ScoreConfig

if TYPE_CHECKING:
    from aetrain.config import DataConfig
    from aetrain.rundir import Invocation, RunDir

JOBS, TRAINING, RUN, DIR = "jobs", "training", "run", "dir"  # what a command takes (see the module docstring)


@dataclass(frozen=True)
class Command:
    """One command of `aetrain`: everything the CLI needs to parse, document and call it."""

    name: str  # aetrain <name>
    summary: str  # its line in `aetrain --help`
    description: str  # what it does and writes: the body of `aetrain <name> --help`
    function: Callable[..., Any]  # what it calls, as `takes` says
    config: type | None = None  # the dataclass of its own keys (`<name>.<key>=<value>`); None: it has none
    takes: str = RUN  # JOBS | TRAINING | RUN | DIR
    argument: str = "run dir (or checkpoint file)"  # RUN and DIR: its one positional argument, in words
    makes: str = ""  # TRAINING: what its run dir holds, in words ("a range test"), for a refusal
    usage: tuple[str, ...] = ()  # extra usage lines for --help
    examples: tuple[str, ...] = ()  # command lines for --help
    details: Callable[[], str] | None = None  # more of --help, made when it is asked for (the doctor's findings)


COMMANDS: dict[str, Command] = {}  # name -> entry, in the order `aetrain --help` lists them


def command(name: str, **entry: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated stub as the function of command `name` (the other fields: `entry`)."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is registered twice")
        COMMANDS[name] = Command(name, function=function, **entry)
        return function

    return register


# --- the commands, in the order of `aetrain --help` ---------------------------------------------------

@command("train", takes=JOBS, config=Config, summary="train a model into a new run dir (the default command)",
         usage=("aetrain [train] [group=choice ...] [key=value ...]  one run, into outputs/<date>/<time>/",
                "aetrain -m key=a,b other=c,d                      a sweep, one job per combination",
                "aetrain -m hparams_search=optuna                  an Optuna search (hydra.sweeper.n_trials=20)",
                "aetrain -m <a sweep's overrides> hydra.sweep.dir=DIR hydra.launcher.resume=true",
                "                                                  finish an interrupted sweep in its dir",
                "aetrain -m hydra/launcher=fused key=a,b           a sweep whose jobs of one shape train as one model",
                "aetrain --cfg job [overrides]                     print the composed config"),
         examples=("aetrain model=conv_ae trainer.device=cuda trainer.precision=16-mixed",
                   "aetrain model=denoising_ae model.backbone=conv model.noise.level=0.3",
                   "aetrain data=tensor_file data.path=my_rows.npy model.latent_dim=4"),
         description="""
Compose the config from the groups' presets and the overrides, and train: checkpoints, metrics.csv,
summary.json, pictures, TensorBoard and train.log in the run dir. trainer.resume=<run dir> continues a
run where it stopped; -m runs a sweep, one job per combination, and summarises it (aetrain sweep).

Fused sweeps (hydra/launcher=fused): jobs that differ only in trainer.seed, optimizer.* and scheduler.*
numbers, model.init, model.loss, model.noise.*, model.sparsity.*, model.beta, model.kl_warmup_epochs,
model.dropout, gradient clipping, max_epochs, early stopping, logging, checkpointing and outputs train as
one batched model, each still a run of its own with the numbers it has alone. It pays for small models,
whose steps cannot fill the hardware; much more on a GPU than on a CPU (README: Fused sweeps).
""")
def _train(config: Config | Callable[[], Config], run_dir: RunDir, **job: Any) -> float | None:
    from aetrain.commands.train import run_job  # torch: imported when a job runs

    return run_job(config, run_dir, **job)


@command("eval", config=EvalConfig,
         summary="evaluate a trained model: per-sample errors, MSE/MAE/PSNR/SSIM beside PCA, linear probes",
         description="""
Reconstruct the run's validation split (or split=test|train|all, or other data given with data=...)
and compare the autoencoder with PCA fitted on the run's training split with as many components as the
code has. Errors are in model units (images in [0, 1]; standardized data in standard deviations), as
val/loss. Where the data has labels, a logistic-regression probe fitted on the training split is
scored on the codes, on PCA's codes and on the raw inputs.

Writes <run dir>/eval/: metrics.json, per_sample.csv (one row per sample), errors.png (histogram of
per-sample errors, both methods), worst.png (the worst-reconstructed samples).
""")
def _evaluate(run: Path, section: EvalConfig, data: DataConfig | None) -> None:
    from aetrain.commands.eval import evaluate

    evaluate(run, section, data)


@command("encode", config=EncodeConfig,
         summary="write the code of every sample (codes.npy, labels.npy) and a 2-D map of the codes",
         description="""
Encode every sample of the run's data (or split=train|val|test, or other data given with data=...).
A VAE's code is its posterior mean.

Writes <run dir>/encode/: codes.npy (n x latent_dim, float32), indices.npy (each row's sample index
in the dataset, as split.json numbers them), labels.npy (when the data has labels), codes.png (the
codes in 2-D, coloured by label, else by split: the codes themselves when 2-d, else their first two
principal components; map=tsne for t-SNE).
""")
def _encode(run: Path, section: EncodeConfig, data: DataConfig | None) -> None:
    from aetrain.commands.encode import encode

    encode(run, section, data)


@command("score", config=ScoreConfig,
         summary="score anomalies by reconstruction error: threshold, flags, AUROC beside PCA and IsolationForest",
         description="""
Score samples by their reconstruction error (mean squared, model units) and flag those above the
score.quantile quantile of the run's validation errors. By default the scored samples are those the
run held out (its test split, else its validation split) and every sample of a class not trained
on (data.classes); with data given (data=... or data.path=... with data.labels=...), all of it.

With labels, samples of score.normal_classes (default: the classes trained on) are normal, the
others anomalous: AUROC and average precision of the autoencoder, and on the same samples of PCA's
reconstruction error and of IsolationForest, both fitted on the run's training split.

Writes <run dir>/score/: scores.csv (index, split, label, anomaly, score, flagged, and the two
baselines' scores), metrics.json, scores.png (score histograms of normal and anomalous samples, the
threshold), roc.png (with labels).
""")
def _score(run: Path, section: ScoreConfig, data: DataConfig | None) -> None:
    from aetrain.commands.score import score

    score(run, section, data)


@command("export", config=ExportConfig,
         summary="export the model, encoder and decoder to ONNX (or TorchScript, ExportedProgram), checked",
         description="""
Export three graphs with a dynamic batch axis and the data scaling built in, so they take and give
data in the training data's form (images in [0, 1], a tensor file's own values): model (x -> x_hat),
encoder (x -> z; a VAE's posterior mean) and decoder (z -> x_hat). Each is loaded back and run on real
samples (the run's validation split, or the data given) at two batch sizes, ONNX in onnxruntime; the
export fails (exit code 1, nothing written) when any output differs from PyTorch by more than
export.tolerance in model units.

Writes <run dir>/export/: model.onnx, encoder.onnx, decoder.onnx (format=torchscript: *.torchscript.pt,
format=exported_program: *.pt2) and export.json (inputs, outputs, units, the check's differences).
format=onnx needs the export extra: pip install 'aetrain[export]'.
""")
def _export(run: Path, section: ExportConfig, data: DataConfig | None) -> None:
    from aetrain.commands.export import export

    export(run, section, data)


def _findings() -> str:
    from aetrain.doctor import CODES

    return (f"Findings: {', '.join(CODES)} (README, \"Training doctor\", for each rule, its threshold and what "
            "its suggestion does).")


@command("doctor", takes=DIR, argument="run dir", details=_findings,
         summary="diagnose a run: findings per layer, with the overrides to try (doctor.json, diagnostics.png)",
         examples=("aetrain doctor outputs/2026-11-23/10-00-00",),
         description="""
Why a run is (not) learning, per layer, with the overrides to try. Reads the run dir of a finished,
failed, diverged, interrupted or still running run: metrics.csv, diagnostics.csv (written while
training unless diagnostics.enabled=false), summary.json and the run's .hydra/config.yaml. Prints the
run's verdict (healthy, learning with problems, not learning, diverged, or too early to judge before
10 epochs), each finding with its evidence and the overrides to try (findings that stopped holding apart,
as past), and a per-layer table; writes doctor.json and diagnostics.png into the run dir. A run without
diagnostics.csv gets the findings metrics.csv allows (overfitting, lr_too_high, lr_too_low,
exploding_gradients, identity_mapping).
""")
def _doctor(run_dir: Path) -> Any:
    from aetrain.commands.doctor import doctor

    return doctor(run_dir)


@command("lr_find", takes=TRAINING, config=LRFindConfig, makes="a range test",
         summary="learning-rate range test: suggests optimizer.lr for the configured model and data",
         usage=("aetrain lr_find [group=choice ...] [key=value ...] [lr_find.<key>=value ...]",),
         examples=("aetrain lr_find", "aetrain lr_find model=conv_ae optimizer=sgd",
                   "aetrain lr_find model=vae lr_find.num_steps=200 hydra.run.dir=lr_test"),
         description="""
The learning-rate range test (as Lightning's and fastai's lr finders run it): trains the configured
model on the configured data for lr_find.num_steps optimizer steps while the learning rate rises
exponentially from lr_find.min_lr to lr_find.max_lr, and suggests the rate where the loss (a centered
average over a tenth of the steps) falls fastest before its lowest point. It takes every override
training takes (aetrain --help lists them); the configured scheduler is not used.

Writes, into outputs/lr_find/<date>/<time>/ (or hydra.run.dir=...): lr_find.csv (step, lr, loss,
smoothed_loss), lr_find.png (the loss against the learning rate, the suggestion marked), lr_find.json
(the suggested optimizer.lr and the test's settings), .hydra/ (the composed config and the overrides
typed). No suggestion (the loss did not fall over the range): one line, exit code 1.
""")
def _lr_find(config: Config, section: LRFindConfig, run_dir: RunDir, invocation: Invocation) -> Any:
    from aetrain.commands.lr_find import lr_find

    return lr_find(config, section, run_dir, invocation)


@command("sweep", takes=DIR, argument="sweep dir",
         summary="summarise a sweep dir again: sweep_summary.csv, its pictures and the table (also a killed sweep)",
         examples=("aetrain sweep outputs/multirun/2026-11-23/10-00-00",),
         description="""
Read every job of a sweep (its run dir's summary.json, else its metrics.csv) and write the sweep's
summary, as `aetrain -m` does at its end: sweep_summary.csv (one row per job, best objective first,
failed jobs last), sweep_objective.png, sweep_curves.png, report.html and the table on the console. For a sweep
whose sweeper was killed, or that is still running: jobs that did not finish are listed as failed
("did not finish"), with what they wrote so far. To finish such a sweep, run its command line again
with hydra.sweep.dir=<the dir> hydra.launcher.resume=true (aetrain train --help).
""")
def _sweep(sweep_dir: Path) -> Any:
    from aetrain.commands.sweep import summarize_dir

    return summarize_dir(sweep_dir)


@command("report", takes=DIR, argument="run dir or sweep dir",
         summary="one page for a run or a sweep: report.html, self-contained, to open in any browser",
         examples=("aetrain report outputs/2026-11-23/10-00-00", "aetrain report outputs/multirun/2026-11-23/10-00-00"),
         description="""
Writes report.html into the dir: one file with its pictures, styles and script inlined, that loads
nothing from anywhere (no server, no network) and is the same, byte for byte, for the same dir.
Runs and sweeps write it by themselves when they end (outputs.report=false: not); this command
writes it for any run or sweep dir, also one still training, one that failed, or one from before.

A run's page: the command and the config's differences from the defaults, the commands to resume
and to repeat it, how it ended, the loss curves, the reconstructions over the epochs, the training
doctor's findings with the overrides to try, eval/score/export results, timings and versions.

A sweep's page: every job in a table to sort and filter; parallel coordinates over the swept keys
and the objective (brush an axis to filter); the objective against each key; every job's validation
curve; the best jobs' reconstructions of the same samples side by side; seeds (mean +- sd, which
settings are within the seed spread of the best); the doctor's findings in several jobs with a sweep
command to try; failures; Optuna's best so far; fused groups.
""")
def _report(path: Path) -> Any:
    from aetrain.commands.report import report

    return report(path)


__all__ = ["COMMANDS", "DIR", "JOBS", "RUN", "TRAINING", "Command", "command"]

"""The training command line's overrides, before Hydra composes them: mistakes Hydra would accept, paths quoted
for Hydra's grammar, `trainer.resume=RUN` turned into a continuation of RUN (its dir, its overrides), and the
plugins that register models of your own imported (`plugins=[file.py]`, a package's entry point for `model=name`).

Argument handling only: what a run dir holds is read through `aetrain.rundir.RunDir`, and which run dir a
checkpoint belongs to through `aetrain.rundir.own_run_dir`.
"""

from __future__ import annotations

import os
import re
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

from aetrain import plugins
from aetrain.config import CHOICES, require_model
from aetrain.errors import AetrainError
from aetrain.rundir import RunDir, check_dir_name, own_run_dir

PATH_KEYS = ("hydra.run.dir", "trainer.resume", "trainer.init_from", "data.path", "data.root")
MULTIRUN = {"-m", "--multirun"}
DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir")  # where a run or a sweep writes
SINGLE_RUN_LAUNCHERS = ("plain", "basic")  # what a single run does anyway (one job, here)


def override_key(override: str) -> str:
    """`+model.x=1` -> `model.x`."""
    return override.partition("=")[0].lstrip("+~")


def check_overrides(args: list[str]) -> None:
    """Mistakes Hydra would accept or answer with a traceback: `model=null`, `optimizer.name=sgd`, an empty
    `hydra.run.dir=` (an unset `$VAR`)."""
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep:
            continue
        if key in DIR_KEYS and _read_by_hydra(value) == "":
            check_dir_name("", key)  # Hydra would make it the working dir
        multirun_or_show = (MULTIRUN | {"-c", "--cfg", "-i", "--info"}) & set(args)
        if key == "hparams_search" and value != "null" and not multirun_or_show:
            raise AetrainError(f"hparams_search={value} is a search: run it as a multirun, aetrain -m "
                               f"hparams_search={value} (without -m it would train once and search nothing)")
        if (key == "hydra/launcher" and value not in SINGLE_RUN_LAUNCHERS or key.startswith("hydra.launcher.")) \
                and not multirun_or_show:
            raise AetrainError(f"{arg} sets how a sweep's jobs are launched: run it as a multirun, aetrain -m "
                               f"{arg} ... (without -m Hydra trains once, here, and no launcher is used)")
        if key in CHOICES and value == "null":
            raise AetrainError(f"{key}=null: a run needs a {key}; choose one of: {', '.join(sorted(CHOICES[key]))}")
        group, _, leaf = key.partition(".")
        if group in CHOICES and leaf == "name":
            raise AetrainError(f"{key} is set by choosing the {group}: use {group}=<one of: "
                               f"{', '.join(sorted(CHOICES[group]))}> (the keys of each choice differ)")


def resume_arguments(args: list[str]) -> list[str]:
    """`trainer.resume=X` continues X's run: in X's run dir, composed from the overrides that run was
    started (or last resumed) with. Arguments given now win over saved ones; `hydra.run.dir=...`
    given now sends the continuation elsewhere, and so does a checkpoint the run went on after (its
    best.pt: `aetrain.checkpoint.behind_its_run`), into a new default dir. A checkpoint that is not in
    its own run dir (aetrain.rundir.own_run_dir) continues in a new run dir, from this command line
    alone: the folder it is kept in is never written to. Other command lines pass through unchanged."""
    at = max((i for i, a in enumerate(args) if a.startswith("trainer.resume=")), default=None)
    if at is None or args[at] == "trainer.resume=null" or MULTIRUN & set(args):
        return args
    resume = _typed_path(args[at].partition("=")[2])
    if not resume:
        return args
    args = [*args[:at], f"trainer.resume={hydra_quoted(resume)}", *args[at + 1 :]]  # a,b or ünï 日本 as one path
    from aetrain.checkpoint import behind_its_run, load, stored_data_paths  # torch: only for a resume

    ckpt = load(resume, mmap=True)
    run_dir = own_run_dir(resume, ckpt.get("run_id"))
    if run_dir is None:  # kept outside its run dir: a new run dir, composed from this command line
        return args
    given = {override_key(a) for a in args}
    saved = RunDir(run_dir).saved_overrides()
    kept = [o for o in saved if override_key(o) not in given and not override_key(o).startswith("hydra.")
            and override_key(o) != "trainer.resume"]
    kept = _where_trained(kept, stored_data_paths(ckpt), resume)
    # an older checkpoint of the run (best.pt) branches into a new run dir: the run went on after it
    here = [] if "hydra.run.dir" in given or behind_its_run(ckpt, run_dir) else \
        [f"hydra.run.dir={hydra_quoted(str(run_dir))}"]
    for saved_plugins in (o for o in kept if override_key(o) == "plugins"):
        try:
            plugin_arguments([saved_plugins])
        except plugins.PluginError as e:  # the run's plugin, moved or broken since
            raise plugins.PluginError(f"trainer.resume={resume}: the run's plugin {e.file}: {e.reason}; put it back, "
                                      "or give plugins=[its file.py] now", file=e.file, reason=e.reason) from None
    return [*kept, *args, *here]


def _where_trained(overrides: list[str], paths: dict[str, str], resume: str) -> list[str]:
    """The saved overrides, each data path (`data.path=rows.npy`) that the working directory now resolves elsewhere
    than the run did (a resume started from another directory) replaced by the run's (`paths`: key -> absolute,
    from its checkpoint). Neither there: an error naming both. The data's fingerprint is checked later either way."""
    out = []
    for override in overrides:
        key, value = override_key(override), _typed_path(override.partition("=")[2])
        stored = paths.get(key.removeprefix("data.")) if key.startswith("data.") else None
        if stored is None or os.path.abspath(value) == stored:
            out.append(override)  # not a data path, or the run's file from here too
        elif os.path.exists(stored):
            out.append(f"{key}={hydra_quoted(stored)}")  # the run's file, from another working directory
        elif os.path.exists(value):
            out.append(override)  # gone from where the run had it, and one of that name here: its fingerprint decides
        else:
            raise AetrainError(f"trainer.resume={resume}: the run's {key}={value} ({stored} when it trained) does not "
                               f"exist; if it moved, give its place now: {key}=<its place>")
    return out


def quote_paths(args: list[str]) -> list[str]:
    """Paths as typed (`hydra.run.dir=ünï 日本`, `data.path=a,b.npy`), quoted for Hydra, whose grammar reads
    them as a sweep or refuses them. Not in a multirun, where `data.path=a.npy,b.npy` is a sweep."""
    if MULTIRUN & set(args):
        return args
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        read = _read_by_hydra(value) if sep and key in PATH_KEYS else ""
        out.append(arg if isinstance(read, str) or (read is None and value == "null") else
                   f"{key}={hydra_quoted(value)}")
    return out


def _read_by_hydra(text: str) -> Any:
    """What Hydra's override grammar makes of `text` given after `key=`; None also when its lexer refuses it."""
    try:
        return OverridesParser.create().parse_override(f"path={text}").value()
    except Exception:  # a HydraException or a lexer error: Hydra would refuse the command line
        return None


def _typed_path(text: str) -> str:
    """A path given after `key=`, quoted for Hydra (`'a,b'`) or as the shell passed it (`a,b`, `ünï 日本`,
    which Hydra's grammar reads as a sweep or refuses)."""
    value = _read_by_hydra(text)
    return value if isinstance(value, str) else text


def hydra_quoted(value: str) -> str:
    """`value` as one quoted string of Hydra's override grammar, read back exactly: in a quoted string Hydra
    halves the backslashes before a quote (and before the closing one), and OmegaConf resolves `${...}`."""
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return "'" + body.replace("${", "\\${") + "'"


def given(overrides: list[str], key: str) -> bool:
    """Whether `key` is set by one of `overrides` (Hydra's `hydra.overrides.hydra` or `.task`)."""
    return any(override_key(o) == key for o in overrides)


def plugin_arguments(args: list[str]) -> list[str]:
    """Import the plugins the overrides name, so that their models are registered before Hydra composes:
    `plugins=[a.py,b.py]` (the files, given back as absolute paths: the run records them, and a resume or a command
    after training imports them from anywhere) and, for `model=<name>` (or a sweep over names) that nothing
    registered yet, an installed package's entry point of that name. PluginError (one line) for a plugin that
    cannot be imported; other arguments pass through unchanged."""
    out = []
    for arg in args:
        key = override_key(arg)
        if key == "plugins" and "=" in arg and not arg.startswith("~"):
            files = _parsed(arg)
            files = [files] if isinstance(files, str) and files else files  # plugins=my_models.py: one file
            if not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
                raise AetrainError(f"{arg}: plugins is a list of Python files, plugins=[my_models.py] (one list: it "
                                   "cannot be swept)")
            files = [plugins.resolve(f) for f in files]
            plugins.load_files(files)
            arg = f"plugins=[{','.join(hydra_quoted(f) for f in files)}]"  # +plugins=...: a key of the schema
        elif key == "model" and "=" in arg:
            value = _parsed(arg)
            for name in getattr(value, "list", None) or [value]:  # model=a,b: a sweep over choices
                require_model(name)
        out.append(arg)
    return out


def _parsed(arg: str) -> Any:
    """What Hydra's override grammar makes of `arg`'s value; the value as typed when its lexer refuses it."""
    try:
        return OverridesParser.create().parse_override(arg.lstrip("+")).value()
    except Exception:  # a HydraException or a lexer error: Hydra reports it when it composes
        return arg.partition("=")[2]

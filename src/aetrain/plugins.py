"""Your own code that registers model families (`aetrain.register_model`): where aetrain finds it, and importing it.

Two ways in, both named by the model's registered name, never by an import path in a config or checkpoint:
- a single file: `plugins=[path/to/my_models.py]` on the command line (the config key `plugins`, recorded with the
  run as absolute paths, so that a resume, the commands after training and `aetrain.load_model` import it again);
- a package: an entry point in the group `aetrain.models` whose name is the model's registered name
  (`[project.entry-points."aetrain.models"] my_ae = "my_package.models"`), imported the first time that name is
  asked for (`model=my_ae`, or a checkpoint of such a run), and not before.

Importing is all this module does; registering is the decorator's (`aetrain.models.custom`). Each file is
imported once per process (by its resolved path; a file imported already, `import my_models`, is not imported
again); a failure is one line naming the plugin (`PluginError`).
Torch-free itself: what a plugin imports is its own business.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from importlib import metadata
from pathlib import Path

from aetrain.errors import AetrainError, ConfigError

GROUP = "aetrain.models"  # the entry-point group of packages that register models

_files: dict[Path, str] = {}  # resolved path -> module name, for the files this process imported


class PluginError(ConfigError):
    """A plugin could not be found or imported, or does not register what it is named for. `file` and `reason`:
    the plugin file that failed and why, in words (`no such file`), for a caller that says more."""

    def __init__(self, message: str, *, file: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.file, self.reason = file, reason or message


def resolve(path: str) -> str:
    """`path` as the absolute path a run records (relative paths are taken from the working dir)."""
    return str(Path(path).expanduser().absolute())


def load_files(paths: list[str]) -> None:
    """Import each Python file of `paths` (once per process): its `@aetrain.register_model` decorators run.
    PluginError (one line, naming the file) for a file that is missing, not Python, or fails to import."""
    for path in paths:
        _load_file(path)


def _load_file(path: str) -> None:
    file = Path(path).expanduser()
    key = file.resolve() if file.exists() else file.absolute()
    if key in _files:
        return
    for module in list(sys.modules.values()):  # imported already (`import my_models`): its models are registered
        known = getattr(module, "__file__", None)
        if isinstance(known, str) and Path(known).name == key.name and Path(known).resolve() == key:
            _files[key] = module.__name__
            return
    if not file.is_file() or file.suffix != ".py":
        reason = "not a Python file (.py)" if file.is_file() else "not a file" if file.exists() else "no such file"
        raise PluginError(f"plugins=[{path}]: {reason}; name the Python file that registers your models", file=path,
                          reason=reason)
    digest = hashlib.sha1(str(key).encode()).hexdigest()[:8]
    name = f"aetrain_plugin_{''.join(c if c.isalnum() else '_' for c in file.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, key)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugins=[{path}]: cannot be imported as a Python module", file=path,
                          reason="cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their classes up here
    _files[key] = name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: whatever it raises is the plugin's error
        del sys.modules[name], _files[key]
        said = str(e) if isinstance(e, AetrainError) else describe(e)  # a registration refused: its own words
        reason = f"importing it failed: {_where(e, key)}{said}"
        raise PluginError(f"plugins=[{path}]: {reason}", file=path, reason=reason) from e


def entry_point(name: str) -> metadata.EntryPoint | None:
    """The installed entry point of group `aetrain.models` named `name`, or None."""
    found = [ep for ep in metadata.entry_points(group=GROUP) if ep.name == name]
    return found[0] if found else None


def entry_point_names() -> list[str]:
    """The model names installed packages offer (without importing them)."""
    return sorted({ep.name for ep in metadata.entry_points(group=GROUP)})


def load_entry_point(name: str) -> bool:
    """Import the package module the entry point `name` names; False when no installed package has one. PluginError
    (one line, naming the entry point and its package) when importing it fails."""
    ep = entry_point(name)
    if ep is None:
        return False
    try:
        ep.load()
    except Exception as e:
        said = str(e) if isinstance(e, AetrainError) else describe(e)
        raise PluginError(f"model={name}: {describe_entry_point(ep)} failed to import: {said}") from e
    return True


def describe_entry_point(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    package = f" of the package {dist.metadata['Name']}" if dist is not None else ""
    return f"the plugin {ep.value} (entry point {ep.name} in group {GROUP}{package})"


def describe(e: BaseException) -> str:
    """`TypeName: first line of the message`."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _where(e: BaseException, file: Path) -> str:
    """`line N: ` where the error arose in `file` (the plugin file), or nothing."""
    frames = traceback.extract_tb(e.__traceback__)
    if isinstance(e, SyntaxError) and e.lineno is not None:
        return f"line {e.lineno}: "
    mine = [f for f in frames if Path(f.filename) == file]
    return f"line {mine[-1].lineno}: " if mine else ""

"""The project's own promises: configs ship with the package, CI runs the README's test command."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).parents[1]


def test_every_config_folder_is_packaged() -> None:
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {p for p in (ROOT / "configs").rglob("*") if p.is_dir() and p.name != "__pycache__"}
    for folder in folders:
        assert "aetrain.configs." + ".".join(folder.relative_to(ROOT / "configs").parts) in packages, folder


def test_ci_runs_the_test_command_the_readme_gives() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(python -m pytest[^\n#]*?)\s*(?:#.*)?$", readme, flags=re.M)
    assert commands, "the README names no test command"
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert commands[0].strip() == "python -m pytest -q -n 2" and commands[0].strip() in ci  # the whole suite, as CI
    assert all(c.startswith("python -m pytest -q -n 2") for c in commands)  # the others are parts of it (tiers)

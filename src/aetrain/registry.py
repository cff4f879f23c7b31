"""Name -> component registries.

Components are chosen by registered name (`model.activation=gelu`), never by import path: names
survive refactors, appear in errors and `--help`, and keep code paths out of checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from aetrain.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dictionary of named builders whose lookup fails with a one-line, actionable error."""

    def __init__(self, key: str) -> None:
        self.key = key  # the config key users set to pick an entry, e.g. "model.activation"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.key}: '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def add(self, name: str, entry: T) -> None:
        self.register(name)(entry)

    def replace(self, name: str, entry: T) -> None:
        """Add `entry`, or put it in place of the one registered as `name` (a plugin registered again)."""
        self._entries[name] = entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"{self.key}={name!r} is not one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

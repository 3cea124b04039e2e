"""A small name -> object registry with lazy ``"module:attr"`` targets.

Listing names never imports a target, so ``shebench list defenses`` stays fast and does not pull in
tenseal or opacus. Unknown names are answered with the valid names and the closest match.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Iterator
from typing import Any

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class RegistryError(KeyError):
    """A lookup or registration problem; its message is one line meant for the user."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class Registry:
    """Maps snake_case names to objects or to lazy ``"module:attr"`` import targets."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._targets: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}

    def register(self, name: str, target: Any = None, *, force: bool = False) -> Any:
        """Register ``target`` (an object or a ``"module:attr"`` string); usable as a decorator."""
        if target is None:
            return lambda obj: self.register(name, obj, force=force)
        if not _NAME.match(name):
            raise RegistryError(f"{self.kind} name {name!r} must be lowercase snake_case")
        if name in self._targets and not force:
            raise RegistryError(f"{self.kind} {name!r} is already registered ({self._targets[name]!r})")
        if isinstance(target, str) and ":" not in target:
            raise RegistryError(f"lazy target for {self.kind} {name!r} must look like 'module:attr', got {target!r}")
        self._targets[name] = target
        self._loaded.pop(name, None)
        return target

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and plugins that register temporary entries)."""
        self._check(name)
        del self._targets[name]
        self._loaded.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._targets)

    def target(self, name: str) -> Any:
        """The registered target without importing it."""
        self._check(name)
        return self._targets[name]

    def get(self, name: str) -> Any:
        """The registered object, importing a lazy target on first use."""
        self._check(name)
        if name not in self._loaded:
            target = self._targets[name]
            if isinstance(target, str):
                module, _, attr = target.partition(":")
                obj: Any = importlib.import_module(module)
                for part in attr.split("."):
                    obj = getattr(obj, part)
                target = obj
            self._loaded[name] = target
        return self._loaded[name]

    def _check(self, name: str) -> None:
        if name in self._targets:
            return
        close = difflib.get_close_matches(name, self._targets, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(self.names())}")

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._targets)

"""A small name -> object registry with lazy ``"module:attr"`` targets, filled from entry points.

Listing names never imports a target, so ``shebench list defenses`` stays fast and does not pull in
tenseal or opacus. Unknown names are answered with the valid names and the closest match. A registry
given an entry-point group (``shebench.defenses``) lists every installed distribution's entries of that
group on first use: a researcher's own package adds a defense by declaring one in its metadata, and
the harness never imports ``defenses/`` or ``attacks/`` by name.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
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

    def __init__(self, kind: str, entry_points: str | None = None) -> None:
        self.kind = kind
        self.group = entry_points
        self._targets: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}
        self._sources: dict[str, str] = {}  # name -> the distribution whose entry point declared it
        self._discovered = entry_points is None

    def _discover(self) -> None:
        """Register the group's entry points once (an explicit registration of the same name wins)."""
        if self._discovered:
            return
        self._discovered = True
        for ep in sorted(importlib.metadata.entry_points(group=self.group), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
            if ep.name in self._sources and self._targets.get(ep.name) != ep.value:
                raise RegistryError(f"{self.kind} {ep.name!r} is declared twice in entry points group {self.group!r}: "
                                    f"by {self._sources[ep.name]} ({self._targets[ep.name]}) and by {dist} ({ep.value})")
            if ep.name not in self._targets:
                self.register(ep.name, ep.value)
                self._sources[ep.name] = dist

    def refresh(self) -> None:
        """Read the entry points again (after installing a plug-in in this process)."""
        for name in list(self._sources):
            self._targets.pop(name, None)
            self._loaded.pop(name, None)
        self._sources.clear()
        self._discovered = self.group is None

    def register(self, name: str, target: Any = None, *, force: bool = False) -> Any:
        """Register ``target`` (an object or a ``"module:attr"`` string); usable as a decorator."""
        if target is None:
            return lambda obj: self.register(name, obj, force=force)
        if not _NAME.match(name):
            raise RegistryError(f"{self.kind} name {name!r} must be lowercase snake_case")
        self._discover()
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

    def source(self, name: str) -> str | None:
        """The distribution whose entry point declared ``name`` (None: registered in code)."""
        self._check(name)
        return self._sources.get(name)

    def names(self) -> list[str]:
        self._discover()
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
        self._discover()
        if name in self._targets:
            return
        close = difflib.get_close_matches(name, self._targets, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(self.names())}")

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._discover()
        return len(self._targets)

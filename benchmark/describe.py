"""Human-readable descriptions for ``shebench show``: a component's docstring and each parameter with
its type, default and meaning (taken from the trailing comment on the field's line in the source)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

from benchmark.config import load_toml


def field_comments(cls: type) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in source.splitlines():
        m = re.match(r"\s+(\w+)\s*:\s*[^#]+#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def describe_params(params_cls: type) -> list[str]:
    comments = field_comments(params_cls)
    hints = typing.get_type_hints(params_cls)
    lines = []
    for f in dataclasses.fields(params_cls):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        tp = getattr(hints.get(f.name), "__name__", str(hints.get(f.name)))
        meaning = comments.get(f.name, "")
        lines.append(f"  {f.name:<24} {tp:<10} default={default!r:<14} {meaning}".rstrip())
    return lines or ["  (no parameters)"]


def describe(kind: str, name: str) -> str:
    from attacks import ATTACKS
    from benchmark.runner import SCENARIOS, SUITES
    from defenses import DEFENSES

    if kind in ("scenarios", "suites"):
        registry = SCENARIOS if kind == "scenarios" else SUITES
        path = registry.target(name)
        data = load_toml(path)
        return f"{kind[:-1]} {name} ({path})\n{data.get('description', '').strip()}\n\n{path.read_text()}"
    registry = DEFENSES if kind == "defenses" else ATTACKS
    cls = registry.get(name)
    doc = inspect.getdoc(cls) or ""
    header = f"{kind[:-1]} {name} (version {getattr(cls, 'version', '?')}, {registry.target(name)})"
    extra = []
    if kind == "attacks":
        extra.append(f"requires: {', '.join(sorted(getattr(cls, 'requires', ()))) or 'nothing'}; "
                     f"observes: {getattr(cls, 'target', 'probe')}")
    return "\n".join([header, doc, *extra, "", "parameters:", *describe_params(cls.Params)])

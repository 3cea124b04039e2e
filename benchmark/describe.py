"""Human-readable descriptions for ``shebench show``: a component's docstring and every parameter with
its type, default and meaning. The meaning is the field's ``metadata["help"]`` (declared on the field,
as PEFT's config fields do); fields without it fall back to the trailing comment on their source line."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

from benchmark.config import ScenarioConfig, load_toml, to_dict


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


def field_help(cls: type) -> dict[str, str]:
    """Help per field: metadata first, the source comment otherwise."""
    comments = field_comments(cls)
    return {f.name: f.metadata.get("help") or comments.get(f.name, "") for f in dataclasses.fields(cls)}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _type_name(tp: Any) -> str:
    if getattr(tp, "__origin__", None) is tuple:
        inner = typing.get_args(tp)
        return f"list[{_type_name(inner[0])}]" if inner else "list"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any, width: int = 70) -> str:
    value = to_dict(value)
    text = "(required)" if value is dataclasses.MISSING else " ".join(repr(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def param_lines(cls: type, values: Any = None, prefix: str = "") -> list[str]:
    """One line per parameter (nested sections flattened to ``section.key``): type, default, meaning,
    and the value ``values`` gives it where that differs from the default."""
    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        default = _default(f)
        value = getattr(values, f.name) if values is not None else default
        tp = hints.get(f.name)
        if dataclasses.is_dataclass(tp):
            text = helps[f.name]
            lines.append(f"  {text}" if text.startswith(f"[{name}]") else f"  [{name}] {text}".rstrip())
            lines += param_lines(tp, value if value is not dataclasses.MISSING else None, name + ".")
            continue
        here = "" if values is None or to_dict(value) == to_dict(default) else f"  (here: {_show(value)})"
        lines.append(f"  {name:<28} {_type_name(tp):<10} default={_show(default):<14} {helps[f.name]}{here}".rstrip())
        inner = typing.get_args(tp)
        if getattr(tp, "__origin__", None) is tuple and inner and dataclasses.is_dataclass(inner[0]):
            lines += param_lines(inner[0], None, name + "[].")
    return lines


def describe_params(params_cls: type) -> list[str]:
    return param_lines(params_cls) or ["  (no parameters)"]


def undocumented(params_cls: type) -> list[str]:
    """Fields that have neither help metadata nor a source comment."""
    return [name for name, text in field_help(params_cls).items() if not text]


def describe(kind: str, name: str) -> str:
    from attacks import ATTACKS
    from benchmark.runner import SCENARIOS, SUITES, resolve_scenario
    from defenses import DEFENSES

    if kind == "scenarios":
        path = SCENARIOS.target(name)
        scenario = resolve_scenario(name)
        return "\n".join([f"scenario {name} ({path})", scenario.description.strip(), "",
                          "parameters (override with --set <key>=<TOML value>):", *param_lines(ScenarioConfig, scenario)])
    if kind == "suites":
        path = SUITES.target(name)
        data = load_toml(path)
        return f"suite {name} ({path})\n{data.get('description', '').strip()}\n\n{path.read_text()}"
    registry = DEFENSES if kind == "defenses" else ATTACKS
    cls = registry.get(name)
    doc = inspect.getdoc(cls) or ""
    header = f"{kind[:-1]} {name} (version {getattr(cls, 'version', '?')}, {registry.target(name)})"
    extra = []
    if kind == "attacks":
        extra.append(f"requires: {', '.join(sorted(getattr(cls, 'requires', ()))) or 'nothing'}; "
                     f"observes: {getattr(cls, 'target', 'probe')}")
    label = "defense" if kind == "defenses" else "attack"
    return "\n".join([header, doc, *extra, "", f"parameters (override with --set {label}.{name}.<key>=<TOML value>):",
                      *describe_params(cls.Params)])

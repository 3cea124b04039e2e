"""Human-readable descriptions for ``shebench show``: a component's docstring and every parameter with
its type, default and meaning. The meaning is the field's ``metadata["help"]`` (declared on the field,
as PEFT's config fields do), so that it travels with the code it documents; an attack also shows the
contract it declares (target, requires, metrics with direction, modes_differ_only_on_hidden, and its
positive control)."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

from benchmark.config import ScenarioConfig, load_toml, to_dict
from benchmark.contract import ATTACK_TARGETS, CONTROL_TEST_SCENARIO, Attack
from benchmark.contract.stacks import SEP, is_wrapper, stack_names


def field_help(cls: type) -> dict[str, str]:
    """Help per field: its ``metadata["help"]`` ("" where there is none; tests/test_help.py fails on that)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


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
    """Fields without ``metadata["help"]``."""
    return [name for name, text in field_help(params_cls).items() if not text]


def describe(kind: str, name: str) -> str:
    from benchmark.contract.plugins import ATTACKS, DEFENSES
    from benchmark.running import SCENARIOS, SUITES, resolve_scenario

    if kind == "scenarios":
        path = SCENARIOS.target(name)
        scenario = resolve_scenario(name)
        return "\n".join([f"scenario {name} ({path})", scenario.description.strip(), "",
                          "parameters (override with --set <key>=<TOML value>):", *param_lines(ScenarioConfig, scenario)])
    if kind == "suites":
        path = SUITES.target(name)
        data = load_toml(path)
        return f"suite {name} ({path})\n{data.get('description', '').strip()}\n\n{path.read_text()}"
    if kind == "defenses" and SEP in name:
        return describe_stack(name)
    registry = DEFENSES if kind == "defenses" else ATTACKS
    cls = registry.get(name)
    doc = _own_doc(cls) if kind == "attacks" else inspect.getdoc(cls) or ""
    header = f"{kind[:-1]} {name} (version {cls.version}, {registry.target(name)})"
    extra = ["", *attack_contract(cls)] if kind == "attacks" else []
    if kind == "defenses" and is_wrapper(cls):
        extra = ["", f"wrapper: sits on another defense (e.g. {name}{SEP}she_lora); alone it runs over "
                     f"{cls.default_inner} ({name}{SEP}{cls.default_inner})"
                 + (f"; at most one {cls.family!r} wrapper per stack" if cls.family else "")]
    label = "defense" if kind == "defenses" else "attack"
    return "\n".join([header, doc, *extra, "", f"parameters (override with --set {label}.{name}.<key>=<TOML value>):",
                      *describe_params(cls.Params)])


def one_line(kind: str, name: str) -> str:
    """The first sentence of what ``shebench show`` prints for ``name`` (``shebench list``'s gloss):
    a defense's or model builder's docstring, an attack's own (or its module's), a scenario's or
    suite's description."""
    from benchmark.contract.plugins import ATTACKS, DEFENSES
    from benchmark.federation.models import MODELS
    from benchmark.running import SCENARIOS, SUITES

    if kind in ("scenarios", "suites"):
        text = str(load_toml((SCENARIOS if kind == "scenarios" else SUITES).target(name)).get("description", ""))
    elif kind == "attacks":
        text = _own_doc(ATTACKS.get(name))
    else:
        text = inspect.getdoc((DEFENSES if kind == "defenses" else MODELS).get(name)) or ""
    flat = " ".join(text.split())
    end = next((i + 1 for i, ch in enumerate(flat) if ch == "." and (i + 1 == len(flat) or flat[i + 1] == " ")), len(flat))
    return flat[:end].rstrip(".") or "(no description)"


def _own_doc(cls: type) -> str:
    """The attack's own docstring, else its module's (where the attacks describe their method); never
    the ``Attack`` base's, which ``inspect.getdoc`` would inherit."""
    doc = cls.__dict__.get("__doc__") or inspect.getmodule(cls).__doc__ or ""
    return inspect.cleandoc(doc)


def attack_contract(cls: type[Attack]) -> list[str]:
    """The contract an attack declares, as ``shebench show`` prints it: a user choosing an attack needs
    to know which cells it runs in, what views it can use and how its numbers read."""
    metrics = ", ".join(f"{m} {'↑' if up else '↓'}" for m, up in cls.metrics.items())
    shared = ("yes: on a view that hides and permutes nothing both modes give one answer, computed once"
              if cls.modes_differ_only_on_hidden else "no")
    from benchmark.reporting.calibration import describe_control, describe_setting

    c = cls.control
    return [f"target: {cls.target} ({ATTACK_TARGETS[cls.target]})",
            f"requires: {', '.join(sorted(cls.requires)) or 'nothing'}",
            f"metrics (↑: higher means the attack recovered more): {metrics}",
            f"modes differ only on hidden coordinates: {shared}",
            f"positive control (the calibration suite, against plain_lora): {describe_control(c)}; "
            f"{c.metric} >= {c.floor:g}" + (f"; attack params {dict(c.params)}" if c.params else ""),
            f"  at test scale: {describe_setting(CONTROL_TEST_SCENARIO, c.tiny)}; {c.metric} >= {c.tiny_floor:g}",
            f"  why: {' '.join(c.why.split())}"]


def describe_stack(name: str) -> str:
    """A stack, layer by layer (outermost first): each layer's description and parameters, which
    ``--set defense.<label>.<layer>.<key>`` addresses (a key only one layer has needs no layer)."""
    from benchmark.contract.plugins import DEFENSES

    parts = stack_names(name, DEFENSES)
    lines = [f"defense stack {name} = {SEP.join(parts)} (outermost first)"]
    for part in parts:
        cls = DEFENSES.get(part)
        summary = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
        lines += ["", f"[{part}] {summary}", *param_lines(cls.Params, prefix=f"{part}.")]
    return "\n".join(lines)

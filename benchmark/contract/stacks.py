"""Defense stacks: wrappers over a defense, named as one ``+``-joined name (``dp+she_lora``).

A stack reads outermost first and ends with a defense; a wrapper named last runs over its
``default_inner`` (``dp`` is ``dp+plain_lora``). Parameters address a layer by a nested table
(``{dp = {clip = 3}, she_lora = {budget_scale = 0.5}}``) or by a flat key that exactly one layer
declares (``{clip = 3}``). Every problem is a one-line ``ConfigError`` raised before any work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmark.config import ConfigError, params_from_dict
from benchmark.contract import Defense, Stacked, Wrapper
from benchmark.contract.registry import Registry, RegistryError

SEP = "+"


@dataclass(frozen=True)
class Layer:
    """One layer of a resolved stack: its registered name, class and built ``Params``."""

    name: str
    cls: type
    params: Any


@dataclass(frozen=True)
class Stack:
    """A resolved stack, outermost layer first; the last layer is a defense."""

    layers: tuple[Layer, ...]

    @property
    def name(self) -> str:
        return SEP.join(layer.name for layer in self.layers)

    @property
    def versions(self) -> list[str]:
        return [str(layer.cls.version) for layer in self.layers]

    def build(self) -> Defense:
        """A fresh defense: the base one, or the wrappers' roles around it."""
        *wrappers, base = self.layers
        inner = base.cls(base.params)
        return Stacked([(w.cls, w.params) for w in wrappers], inner) if wrappers else inner


def is_wrapper(cls: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, Wrapper)


def stack_names(name: str, registry: Registry) -> tuple[str, ...]:
    """The registered names ``name`` stands for, outermost first, with a trailing wrapper's default
    inner defense appended; checked for unknown, repeated and misplaced names."""
    parts = tuple(p.strip() for p in name.split(SEP))
    if not all(parts):
        raise ConfigError(f"defense {name!r}: an empty name in the stack; write wrappers then a defense, "
                          f"e.g. dp{SEP}she_lora")
    for part in parts:
        try:
            registry.target(part)
        except RegistryError as exc:
            raise ConfigError(f"defense {name!r}: {exc}") from None
    classes = [registry.get(p) for p in parts]
    if is_wrapper(classes[-1]):
        parts, classes = (*parts, classes[-1].default_inner), [*classes, registry.get(classes[-1].default_inner)]
    wrappers = [n for n in registry.names() if is_wrapper(registry.get(n))]
    for part, cls in zip(parts[:-1], classes[:-1]):
        if not is_wrapper(cls):
            raise ConfigError(f"defense {name!r}: {part!r} is a defense, not a wrapper; only the last name of a stack "
                              f"may be a defense (wrappers: {', '.join(wrappers) or 'none'})")
    if is_wrapper(classes[-1]):
        raise ConfigError(f"defense {name!r}: the default inner defense {parts[-1]!r} is itself a wrapper")
    repeated = sorted({p for p in parts if parts.count(p) > 1})
    if repeated:
        raise ConfigError(f"defense {name!r}: {', '.join(repeated)} appears twice; a stack holds each layer once")
    families: dict[str, str] = {}
    for part, cls in zip(parts, classes):
        family = getattr(cls, "family", "") if is_wrapper(cls) else ""
        if family and family in families:
            raise ConfigError(f"defense {name!r}: {families[family]} and {part} are both {family!r} wrappers; "
                              "a stack holds at most one of a family (each would claim the row's privacy columns)")
        families.setdefault(family, part)
    return parts


def split_params(parts: Sequence[str], classes: Sequence[type], params: Mapping[str, Any],
                 where: str) -> list[dict[str, Any]]:
    """Each layer's parameters from nested tables (``{dp = {...}}``) and unambiguous flat keys."""
    fields = [{f.name for f in dataclasses.fields(cls.Params)} for cls in classes]
    out: list[dict[str, Any]] = [{} for _ in parts]
    for key, value in params.items():
        if key in parts and isinstance(value, Mapping):
            out[parts.index(key)].update(value)
            continue
        owners = [i for i, names in enumerate(fields) if key in names]
        if not owners:
            valid = "; ".join(f"{p}: {', '.join(sorted(f)) or '(none)'}" for p, f in zip(parts, fields) if f)
            raise ConfigError(f"unknown key {where + '.' + key!r}; valid keys: {valid or 'none'}")
        if len(owners) > 1:
            names = ", ".join(parts[i] for i in owners)
            raise ConfigError(f"{where}: parameter {key!r} belongs to several layers ({names}); "
                              f"write it as {where}.<layer>.{key}, e.g. {{ {parts[owners[0]]} = {{ {key} = ... }} }}")
        out[owners[0]][key] = value
    return out


def resolve_stack(name: str, params: Mapping[str, Any], where: str, registry: Registry) -> Stack:
    """Resolve and validate a (possibly stacked) defense name with its parameters; nothing is built."""
    parts = stack_names(name, registry)
    classes = [registry.get(p) for p in parts]
    layers = []
    for part, cls, own in zip(parts, classes, split_params(parts, classes, params, where)):
        layer_where = where if part == name else f"{where}.{part}"
        layers.append(Layer(part, cls, params_from_dict(cls.Params, own, layer_where)))
    stack = Stack(tuple(layers))
    inner = stack.layers[-1].cls(stack.layers[-1].params)
    for layer in reversed(stack.layers[:-1]):
        why = layer.cls.cannot_wrap(inner)
        if why:
            raise ConfigError(f"defense {name!r}: {layer.name} cannot wrap {SEP.join(inner.stack)}: {why}")
        inner = Stacked([(layer.cls, layer.params)], inner)
    return stack


def build_defense(name: str, params: Mapping[str, Any] | None = None, registry: Registry | None = None) -> Defense:
    """A fresh defense from a (possibly stacked) name and its parameters, for code outside a run."""
    if registry is None:
        from benchmark.contract.plugins import DEFENSES as registry
    return resolve_stack(name, params or {}, f"defense.{name}", registry).build()

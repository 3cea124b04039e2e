"""The scenario and suite catalog: TOML files shipped in ``benchmark/scenarios`` and ``benchmark/suites``,
registered by name, and resolved (with overrides) into frozen configuration; and what the
``calibration`` suite must hold to run exactly the attacks' declared controls."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmark.config import (
    ConfigError,
    ScenarioConfig,
    SuiteConfig,
    load_toml,
    merge,
    scenario_from_dict,
    suite_from_dict,
)
from benchmark.contract.attack import CONTROL_DEFENSE, Control, control_label
from benchmark.contract.registry import Registry

log = logging.getLogger("shebench")

PACKAGE_DIR = Path(__file__).resolve().parent.parent
SCENARIOS = Registry("scenario")
SUITES = Registry("suite")
for _path in sorted((PACKAGE_DIR / "scenarios").glob("*.toml")):
    SCENARIOS.register(_path.stem, _path)
for _path in sorted((PACKAGE_DIR / "suites").glob("*.toml")):
    SUITES.register(_path.stem, _path)


def _toml_for(registry: Registry, ref: str) -> tuple[str, dict[str, Any]]:
    """A registered name or a path to a .toml file."""
    if ref.endswith(".toml"):
        return Path(ref).stem, load_toml(Path(ref))
    return ref, load_toml(registry.target(ref))


def scenario_data(ref: str) -> dict[str, Any]:
    name, data = _toml_for(SCENARIOS, ref)
    data.setdefault("name", name)
    return data


def resolve_scenario(ref: str, overrides: Mapping[str, Any] | None = None) -> ScenarioConfig:
    return scenario_from_dict(merge(scenario_data(ref), overrides or {}), "scenario")  # lists replace


def resolve_suite(ref: str) -> SuiteConfig:
    name, data = _toml_for(SUITES, ref)
    data.setdefault("name", name)
    try:
        return suite_from_dict(data, "suite")
    except ConfigError as exc:  # name the file the problem is in
        source = ref if ref.endswith(".toml") else SUITES.target(ref)
        raise ConfigError(f"{source}: {exc}") from None


CALIBRATION_SUITE = "calibration"


def control_entry(attack: str, control: Control) -> dict[str, Any]:
    """The ``calibration`` suite's scenario entry for ``attack``'s control: the declared base scenario and
    overrides under the label ``control_<attack>``, restricted to that attack."""
    return {"name": control.scenario, "label": control_label(attack), "attacks": [attack], **control.overrides}


def inline_toml(value: Any) -> str:
    """``value`` (tables, lists, strings, numbers, booleans) as one line of TOML: what a suite entry for a
    control reads like, for the message of a suite that has drifted from the declarations."""
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {inline_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(inline_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return repr(value)


def calibration_drift(suite: SuiteConfig, controls: Mapping[str, Control]) -> list[str]:
    """How ``suite`` differs from the controls the attacks declare (empty when it runs exactly them, each
    against the control defense alone): one line per difference, with the entry to write."""
    out = []
    if [d.name for d in suite.defenses] != [CONTROL_DEFENSE]:
        out.append(f"defenses must be [{CONTROL_DEFENSE!r}] (controls measure the attack, not a defense), "
                   f"got {[d.name for d in suite.defenses]}")
    specs = {s.label: s for s in suite.scenarios}
    attacks = {a.name: a for a in suite.attacks}
    for name, control in controls.items():
        want = control_entry(name, control)
        spec = specs.get(control_label(name))
        got = None if spec is None else {"name": spec.ref, "label": spec.label, "attacks": list(spec.attacks or []),
                                          **spec.overrides}
        if got != want:
            out.append(f"scenario {control_label(name)} must read {inline_toml(want)}" + ("" if got is None else
                       f", got {inline_toml(got)}"))
        if name not in attacks or attacks[name].label != name or dict(attacks[name].params) != dict(control.params):
            out.append(f"attacks must list {inline_toml({'name': name, **control.params}) if control.params else repr(name)}")
    extra = sorted(set(specs) - {control_label(n) for n in controls})
    if extra:
        out.append(f"scenarios {extra} are no attack's control")
    return out

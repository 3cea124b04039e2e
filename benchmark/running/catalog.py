"""The scenario and suite catalog: TOML files shipped in ``benchmark/scenarios`` and ``benchmark/suites``,
registered by name, and resolved (with overrides) into frozen configuration."""

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

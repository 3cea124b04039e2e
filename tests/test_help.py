"""Every parameter a user can set carries its help (meaning and valid range) in ``metadata["help"]``,
which ``shebench show`` prints: scenario sections (nested tables and [[tiers]] included), and every
registered defense's and wrapper's ``Params``. Attacks are checked by tests/test_attack_contract.py."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from benchmark.config import ScenarioConfig
from benchmark.reporting.describe import describe, undocumented
from defenses import DEFENSES


def _section_classes(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted prefix, dataclass) for ``cls`` and every dataclass nested in it, tuples of them included."""
    out = [(prefix, cls)]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            out += _section_classes(tp, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is tuple and inner and dataclasses.is_dataclass(inner[0]):
            out += _section_classes(inner[0], f"{prefix}{f.name}[].")
    return out


def test_every_scenario_field_has_help():
    missing = [f"{prefix}{name} ({cls.__name__})" for prefix, cls in _section_classes(ScenarioConfig)
               for name in undocumented(cls)]
    assert not missing, f"scenario fields without metadata['help']: {missing}"


def test_the_walk_reaches_every_section():
    names = {cls.__name__ for _, cls in _section_classes(ScenarioConfig)}
    assert {"ModelConfig", "DataConfig", "LoRAConfig", "TrainConfig", "PartitionConfig", "ThreatConfig",
            "ProbeConfig", "CostConfig", "TierConfig"} <= names


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_param_has_help(name):
    cls = DEFENSES.get(name)  # a defense or a wrapper: both declare Params
    assert dataclasses.is_dataclass(cls.Params), name
    missing = undocumented(cls.Params)
    assert not missing, f"defense {name}: Params fields without metadata['help']: {missing}"


def test_undocumented_names_a_field_without_help():
    @dataclasses.dataclass(frozen=True)
    class P:
        good: int = dataclasses.field(default=1, metadata={"help": "a number (>= 1)"})
        bare: int = 2  # a trailing comment is not help

    assert undocumented(P) == ["bare"]


@pytest.mark.parametrize("name", ["full_he", "maskcrypt"])
def test_show_prints_the_metadata_help(name):
    text = describe("defenses", name)
    assert "CKKS ring dimension N" in text and "default=8192" in text


def test_show_prints_threat_and_probe_help():
    text = describe("scenarios", "tiny")
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and line.split()}
    assert "in [1, rounds]" in lines["threat.round"]
    assert "(> 0)" in lines["threat.lr"]
    assert "highest-rank tier" in lines["probe.client"]
    assert "at most half its shard" in lines["probe.members"]

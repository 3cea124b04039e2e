"""Defenses that wrap defenses: stack names, parameter routing, one-line errors before any work, a toy
wrapper registered from here and run on ``tiny``, and ``dp`` equal to ``dp+plain_lora``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from benchmark.config import ComponentSpec, ConfigError
from benchmark.contract import ClientUpdate, Defense, WirePayload, Wrapper, WrapperClient, WrapperServer
from benchmark.contract.stacks import build_defense
from benchmark.running import Overrides, defense_stack, execute, plan, resolve_suite
from defenses import DEFENSES


@dataclass(frozen=True)
class TagParams:
    delta: float = field(default=0.5, metadata={"help": "a parameter whose name dp also declares"})


class TagClient(WrapperClient):
    calls: ClassVar[list[str]] = []

    def transform(self, update: ClientUpdate) -> ClientUpdate:
        TagClient.calls.append("transform")
        return update

    def protect(self, update: ClientUpdate) -> WirePayload:
        sent = super().protect(update)
        sent.meta["tag"] = "seen"  # the wrapper's own public metadata travels with the inner payload
        return sent


class TagServer(WrapperServer):
    name: ClassVar[str] = "toy_tag"
    calls: ClassVar[list[str]] = []

    def transform_aggregate(self, message: WirePayload) -> WirePayload:
        TagServer.calls.append("aggregate")
        return message


class Tag(Wrapper):
    """A wrapper that changes nothing but counts what passes through it; refuses encrypting inners."""

    name: ClassVar[str] = "toy_tag"
    Params = TagParams
    Client = TagClient
    Server = TagServer

    @classmethod
    def cannot_wrap(cls, inner: Defense) -> str | None:
        return "it only wraps plaintext defenses" if inner.encrypts != "none" else None


@pytest.fixture
def tag():
    DEFENSES.register("toy_tag", Tag)
    TagClient.calls.clear()
    TagServer.calls.clear()
    yield Tag
    DEFENSES.unregister("toy_tag")


def tiny_rows(tmp_path, *defenses: str, attacks: tuple[str, ...] = ()) -> dict[str, dict]:
    suite = dataclasses.replace(resolve_suite("smoke"), defenses=tuple(ComponentSpec(d, d) for d in defenses),
                                attacks=tuple(ComponentSpec(a, a) for a in attacks), attack_modes=("naive",))
    rows = execute(plan(suite, Overrides({}, {}, {})), tmp_path, "cpu", quiet=True)
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    return {r["defense"]: r for r in rows}


@pytest.mark.parametrize(("name", "fragment"), [
    ("dp+dp", "dp appears twice"),
    ("dp+dp_sgd", "both 'dp' wrappers"),
    ("she_lora+dp", "'she_lora' is a defense, not a wrapper"),
    ("dp+she_lorra", "Did you mean 'she_lora'"),
    ("dp++she_lora", "an empty name in the stack"),
])
def test_bad_stacks_fail_in_one_line(name, fragment):
    with pytest.raises(ConfigError) as err:
        defense_stack(ComponentSpec(name, "x"))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_wrapper_alone_runs_over_its_default_inner():
    assert defense_stack(ComponentSpec("dp", "dp")).name == "dp+plain_lora"
    assert build_defense("dp_sgd").stack == ("dp_sgd", "plain_lora")
    assert build_defense("she_lora").stack == ("she_lora",)


def test_parameters_reach_their_layer_flat_or_nested():
    stack = defense_stack(ComponentSpec("dp+she_lora", "x", {"clip": 3.0, "she_lora": {"budget_scale": 0.5}}))
    dp, she = (layer.params for layer in stack.layers)
    assert (dp.clip, she.budget_scale) == (3.0, 0.5)
    with pytest.raises(ConfigError, match="unknown key 'defense.x.nope'"):
        defense_stack(ComponentSpec("dp+she_lora", "x", {"nope": 1}))
    with pytest.raises(ConfigError, match=r"dp.clip must be > 0"):
        defense_stack(ComponentSpec("dp+she_lora", "x", {"dp": {"clip": -1.0}}))


def test_a_parameter_two_layers_declare_must_name_its_layer(tag):
    with pytest.raises(ConfigError, match="belongs to several layers"):
        defense_stack(ComponentSpec("toy_tag+dp", "x", {"delta": 0.1}))
    stack = defense_stack(ComponentSpec("toy_tag+dp", "x", {"dp": {"delta": 0.1}, "toy_tag": {"delta": 0.2}}))
    assert [layer.params.delta for layer in stack.layers[:2]] == [0.2, 0.1]


def test_a_wrapper_refuses_an_inner_it_cannot_wrap(tag):
    with pytest.raises(ConfigError, match="toy_tag cannot wrap she_lora: it only wraps plaintext"):
        defense_stack(ComponentSpec("toy_tag+she_lora", "x"))
    # DP-SGD wraps local training once: an inner whose client already changes training is refused
    dp_sgd = DEFENSES.get("dp_sgd")
    assert "already changes local training" in dp_sgd.cannot_wrap(build_defense("dp_sgd"))
    assert dp_sgd.cannot_wrap(build_defense("dp")) is None


def test_a_toy_wrapper_registered_here_runs_tiny(tag, tmp_path):
    rows = tiny_rows(tmp_path, "plain_lora", "toy_tag", attacks=("token_leak",))
    wrapped, plain = rows["toy_tag"], rows["plain_lora"]
    assert wrapped["defense_stack"] == "toy_tag+plain_lora"
    assert TagClient.calls and TagServer.calls  # its roles were on the path
    for col in ("utility", "eval_loss", "rouge1", "token_recall", "start_known", "server_saw"):
        assert wrapped[col] == plain[col], col
    # the tag's metadata is real traffic: it costs bytes
    assert wrapped["bytes_up_per_client_round"] > plain["bytes_up_per_client_round"]


def test_dp_alone_gives_the_rows_of_dp_over_plain_lora(tmp_path):
    rows = tiny_rows(tmp_path, "dp", "dp+plain_lora")
    alone, stacked = rows["dp"], rows["dp+plain_lora"]
    assert alone["defense_stack"] == stacked["defense_stack"] == "dp+plain_lora"
    for col in ("utility", "eval_loss", "final_train_loss", "epsilon", "dp_sigma", "bytes_up_per_client_round",
                "privacy", "paper_method", "encrypts", "tier_facts"):
        assert alone[col] == stacked[col], col
    assert alone["paper_method"] == "FlexLoRA-DP" and alone["epsilon"] > 0


@pytest.mark.parametrize("name", ["dp+she_lora", "dp_sgd+she_lora", "dp+maskcrypt"])
def test_dp_over_an_encrypting_defense_keeps_both_facts(name, tmp_path):
    row = tiny_rows(tmp_path, name)[name]
    assert row["defense_stack"] == name
    assert row["epsilon"] > 0 and row["encrypted_fraction"] > 0 and row["cipher_bytes_up"] > 0
    assert row["encrypts"] == "selective" and row["encrypted_share"] == pytest.approx(0.25)
    assert row["paper_method"].endswith(("-DP", "-DP-SGD"))

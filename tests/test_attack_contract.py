"""Every registered attack honours the contract ``benchmark.contract.Attack`` declares: class attributes,
Params with a mode and help on every field, construction from a config dict, and a note instead of an
exception for views it cannot exploit. The assertions read the contract; no attack is named here."""

import copy
from dataclasses import FrozenInstanceError, dataclass, field, fields, replace

import pytest
import torch
import toy

from attacks import ATTACKS
from benchmark.config import ConfigError, params_from_dict
from benchmark.contract import (
    ATTACK_TARGETS,
    CONTROL_TEST_SCENARIO,
    RECONSTRUCTION_METRICS,
    VIEW_OFFERS,
    Attack,
    AttackerView,
    AttackParams,
    Control,
    Reconstruction,
    view_lacks,
)
from benchmark.reporting.describe import describe, undocumented
from benchmark.running import SCENARIOS, resolve_scenario

NAMES = ATTACKS.names()


@pytest.fixture(scope="module")
def plain_view():
    torch.set_num_threads(1)
    tok = toy.minilm_tokenizer()
    base = toy.tiny_llama(len(tok), layers=2, hidden=32)
    pm = toy.lora_wrap(copy.deepcopy(base), r=8)
    return toy.client_view(pm, copy.deepcopy(base), tok, ["short text"], "Tweet: {text}\nSentiment:")


@pytest.mark.parametrize("name", NAMES)
def test_class_contract(name):
    cls = ATTACKS.get(name)
    assert issubclass(cls, Attack) and issubclass(cls.Params, AttackParams)
    assert cls.name == name == cls.Params.attack and cls.version
    assert cls.requires <= set(VIEW_OFFERS)
    assert cls.metrics and all(isinstance(v, bool) for v in cls.metrics.values())
    assert cls.target in ATTACK_TARGETS
    assert isinstance(cls.modes_differ_only_on_hidden, bool)
    names = [f.name for f in fields(cls.Params)]
    assert "mode" in names and cls.Params().mode == "naive"
    with pytest.raises(FrozenInstanceError):
        cls.Params().mode = "adaptive"  # a cell hashes its params: they must not change under it
    params = params_from_dict(cls.Params, {"mode": "adaptive"}, f"attack.{name}")
    assert cls(params).params.mode == "adaptive"
    with pytest.raises(ConfigError):
        params_from_dict(cls.Params, {"no_such_key": 1}, f"attack.{name}")
    with pytest.raises((ConfigError, ValueError)):
        params_from_dict(cls.Params, {"mode": "sideways"}, f"attack.{name}")


@pytest.mark.parametrize("name", NAMES)
def test_every_attack_declares_a_positive_control_that_resolves(name):
    """The calibration suite and the test suite run each control: its scenarios must exist and resolve
    with its overrides, its metric must be one the attack is scored on (higher = attack did better), and
    the attack must run in the control's scenario (a probe attack needs a probe, a round attack candidates)."""
    cls = ATTACKS.get(name)
    control = cls.control
    assert isinstance(control, Control) and not control.problems(cls.metrics)
    assert cls.metrics[control.metric] is True and 0 < control.tiny_floor <= 1 and 0 < control.floor <= 1
    assert control.scenario in SCENARIOS and control.why.strip()
    real = resolve_scenario(control.scenario, control.overrides)
    tiny = resolve_scenario(CONTROL_TEST_SCENARIO, control.tiny)
    assert real.kind == tiny.kind == "federated"
    if cls.target == "probe":
        for scenario in (real, tiny):  # a span attack's control observes one step, not a whole round
            assert scenario.threat.observation in ("grad", "sgd"), scenario.threat
    assert cls.Params(**control.params)  # the control's attack parameters are valid ones


@pytest.mark.parametrize("name", NAMES)
def test_ciphertext_only_view_yields_a_note(name, plain_view):
    view = replace(plain_view, defense="full_he", modules={}, cipher_bytes=12345)
    for mode in ("naive", "adaptive"):
        cls = ATTACKS.get(name)
        rec = cls(cls.Params(mode=mode)).reconstruct(view)
        assert isinstance(rec, Reconstruction)
        assert rec.texts == [] and rec.note
        if cls.target == "probe":  # nothing to reconstruct from: an abstention, never a defense win
            assert rec.status == "abstained"


@pytest.mark.parametrize("name", NAMES)
def test_bare_view_without_model_yields_a_note(name):
    view = AttackerView(defense="x", kind="grad", modules={})
    rec = ATTACKS.get(name)().reconstruct(view)
    assert rec.texts == [] and rec.note and rec.status == "abstained"


@pytest.mark.parametrize("name", [n for n in NAMES if "plaintext" in ATTACKS.get(n).requires])
def test_modules_with_nothing_visible_yield_a_note(name, plain_view):
    hidden = {n: replace(m, A=None, B=None) for n, m in plain_view.modules.items()}
    rec = ATTACKS.get(name)().reconstruct(replace(plain_view, modules=hidden))
    assert rec.texts == [] and rec.note and rec.status == "abstained"


@pytest.mark.parametrize("name", [n for n in NAMES if ATTACKS.get(n).modes_differ_only_on_hidden])
def test_modes_agree_on_a_clear_view_where_the_attack_says_so(name, plain_view):
    """The runner computes such an attack once per clear view and shares it between modes: the claim
    must hold (it fails if adaptive mode starts doing anything else)."""
    cls = ATTACKS.get(name)
    view = plain_view
    if cls.target == "round":  # a round attack needs trained factors and candidates to have anything to say
        view = replace(plain_view, kind="weights", candidates=["short text", "another tweet here"])
    assert view.is_clear
    naive, adaptive = (cls(cls.Params(mode=m)).reconstruct(view) for m in ("naive", "adaptive"))
    assert naive.status == adaptive.status == "ok" or cls.target == "probe"
    assert naive.texts == adaptive.texts and naive.token_ids == adaptive.token_ids and naive.status == adaptive.status
    assert naive.membership_scores_by == adaptive.membership_scores_by
    hidden = {n: replace(m, A_hidden=torch.ones_like(m.A, dtype=torch.bool)) for n, m in plain_view.modules.items()}
    assert not replace(plain_view, modules=hidden).is_clear


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_has_help(name):
    """``shebench show`` prints each field's ``metadata["help"]``: a parameter without one is invisible."""
    cls = ATTACKS.get(name)
    missing = [f.name for f in fields(cls.Params) if not f.metadata.get("help", "").strip()]
    assert not missing, f"{name}: parameters without help: {', '.join(missing)}"
    assert not undocumented(cls.Params)  # what ``shebench show`` would print blank


@pytest.mark.parametrize(("name", "bad", "message"), [
    (name, {param: value}, f"{name}.{param} must be")
    for name in NAMES
    for param, value in (("rank_tol", 0.0), ("max_len", 0), ("batch_size", 0), ("lr", 0.0))
    if param in {f.name for f in fields(ATTACKS.get(name).Params)}
])
def test_a_value_out_of_range_is_refused_naming_attack_and_param(name, bad, message):
    with pytest.raises(ValueError, match=message):
        ATTACKS.get(name).Params(**bad)


@pytest.mark.parametrize("name", NAMES)
def test_show_prints_the_declared_contract(name):
    cls = ATTACKS.get(name)
    text = describe("attacks", name)
    assert f"target: {cls.target}" in text and "modes differ only on hidden coordinates" in text
    assert all(m in text for m in cls.metrics) and all(r in text for r in cls.requires)
    assert f"positive control (the calibration suite, against plain_lora): {cls.control.scenario}" in text
    assert f"{cls.control.metric} >= {cls.control.floor:g}" in text


@dataclass(frozen=True)
class _Params(AttackParams):
    attack = "incomplete"
    depth: int = field(default=1, metadata={"help": "how deep, >= 1"})


CONTROL = Control(scenario="tiny", overrides={}, metric="rouge1", floor=0.9, why="a test control", tiny={},
                  tiny_floor=0.9)


def _declarations(**drop_or_change):
    base = {"name": "incomplete", "version": "1", "target": "probe", "Params": _Params,
            "requires": frozenset({"model"}), "metrics": RECONSTRUCTION_METRICS, "control": CONTROL}
    for key, value in drop_or_change.items():
        if value is None:
            del base[key]
        else:
            base[key] = value
    return base


@pytest.mark.parametrize("missing", ["name", "version", "target", "Params", "requires", "metrics", "control"])
def test_an_attack_missing_a_declaration_is_refused_naming_it(missing):
    with pytest.raises(TypeError, match=f"does not declare {missing}"):
        type("Incomplete", (Attack,), _declarations(**{missing: None}))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("target", "batch", "target must be one of probe, round"),
    ("requires", frozenset({"telepathy"}), "requires names telepathy"),
    ("Params", dict, "must be a frozen dataclass subclassing AttackParams"),
    ("name", "other", "attack must be 'other'"),
    ("control", {"scenario": "tiny"}, "control must be a Control"),
    ("control", replace(CONTROL, metric="bleu"), "metric 'bleu' is not one of the attack's metrics"),
    ("control", replace(CONTROL, floor=0.0), r"floor must be in \(0, 1\], got 0.0"),
    ("control", replace(CONTROL, floor=1.5), r"floor must be in \(0, 1\]"),
    ("control", replace(CONTROL, tiny_floor=float("nan")), r"tiny_floor must be in \(0, 1\]"),
    ("control", replace(CONTROL, why="  "), "why must say"),
    ("control", replace(CONTROL, scenario=""), "scenario must name"),
])
def test_an_attack_with_a_malformed_declaration_is_refused(key, value, message):
    with pytest.raises(TypeError, match=message):
        type("Malformed", (Attack,), _declarations(**{key: value}))


def test_a_control_on_a_lower_is_better_metric_is_refused():
    """A floor bounds a metric from below: on a metric where lower means the attack did better it would
    pass a broken attack."""
    metrics = {**RECONSTRUCTION_METRICS, "distance": False}
    with pytest.raises(TypeError, match="metric 'distance' is lower-is-better"):
        type("Backwards", (Attack,), _declarations(metrics=metrics, control=replace(CONTROL, metric="distance")))


def test_a_complete_declaration_gets_the_template_preamble():
    """The base ``reconstruct`` abstains with the first missing requirement's reason before the attack runs."""
    cls = type("Complete", (Attack,), _declarations())
    rec = cls().reconstruct(AttackerView(defense="x", kind="grad", modules={}))
    assert rec.status == "abstained" and rec.note == VIEW_OFFERS["model"][1]
    with pytest.raises(ValueError, match="incomplete.mode must be one of naive, adaptive, got 'sideways'"):
        _Params(mode="sideways")


def test_view_lacks_reads_what_a_view_offers(plain_view):
    """The runner's incompatibility check and the attacks' abstentions read the same table."""
    everything = frozenset(VIEW_OFFERS)
    assert view_lacks(None, everything) == ["a view (the target client sent nothing this round)"]
    empty = AttackerView(defense="x", kind="weights", modules={})
    assert view_lacks(empty, everything) == sorted(everything - {"one_client"})  # one client's (masked) upload
    assert view_lacks(replace(empty, summed=3), frozenset({"one_client"})) == ["one_client"]  # a secure sum
    assert view_lacks(plain_view, frozenset({"plaintext", "model", "grad"})) == []
    assert view_lacks(replace(plain_view, tokenizer=None), frozenset({"model"})) == ["model"]

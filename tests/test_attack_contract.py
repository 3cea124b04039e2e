"""Every registered attack honours the harness contract: class attributes, Params with a mode,
construction from a config dict, and a note instead of an exception for views it cannot exploit."""

import copy
from dataclasses import fields, replace

import pytest
import torch
import toy

from attacks import ATTACKS
from benchmark.api import AttackerView, Reconstruction
from benchmark.config import ConfigError, params_from_dict

NAMES = ["dager", "token_leak", "subspace_rank", "grad_match", "mia", "utr", "fedspy"]


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
    assert cls.name == name and cls.version
    assert cls.requires <= {"plaintext", "model", "candidates", "grad"}
    assert cls.metrics and all(isinstance(v, bool) for v in cls.metrics.values())
    assert cls.target == ("round" if name == "mia" else "probe")
    names = [f.name for f in fields(cls.Params)]
    assert "mode" in names and cls.Params().mode == "naive"
    params = params_from_dict(cls.Params, {"mode": "adaptive"}, f"attack.{name}")
    assert cls(params).params.mode == "adaptive"
    with pytest.raises(ConfigError):
        params_from_dict(cls.Params, {"no_such_key": 1}, f"attack.{name}")
    with pytest.raises((ConfigError, ValueError)):
        params_from_dict(cls.Params, {"mode": "sideways"}, f"attack.{name}")


@pytest.mark.parametrize("name", NAMES)
def test_ciphertext_only_view_yields_a_note(name, plain_view):
    view = replace(plain_view, defense="full_he", modules={}, cipher_bytes=12345)
    for mode in ("naive", "adaptive"):
        cls = ATTACKS.get(name)
        rec = cls(cls.Params(mode=mode)).reconstruct(view)
        assert isinstance(rec, Reconstruction)
        assert rec.texts == [] and rec.note
        if name != "mia":  # nothing to reconstruct from: an abstention, never a defense win
            assert rec.status == "abstained"


@pytest.mark.parametrize("name", NAMES)
def test_bare_view_without_model_yields_a_note(name):
    view = AttackerView(defense="x", kind="grad", modules={})
    rec = ATTACKS.get(name)().reconstruct(view)
    assert rec.texts == [] and rec.note and rec.status == "abstained"


@pytest.mark.parametrize("name", ["dager", "token_leak", "subspace_rank"])
def test_modules_with_nothing_visible_yield_a_note(name, plain_view):
    hidden = {n: replace(m, A=None, B=None) for n, m in plain_view.modules.items()}
    rec = ATTACKS.get(name)().reconstruct(replace(plain_view, modules=hidden))
    assert rec.texts == [] and rec.note and rec.status == "abstained"


@pytest.mark.parametrize("name", [n for n in NAMES if getattr(ATTACKS.get(n), "modes_differ_only_on_hidden", False)])
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

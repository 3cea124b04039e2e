"""Fixtures shared by the attack tests on tiny random-init models (a plugin of tests/conftest.py; a
module that wants one thread marks itself ``pytest.mark.usefixtures("one_thread")``)."""

import copy

import pytest
import torch
import toy

T = "Tweet: {text}\nSentiment:"
TEXTS = ["i really love the new phone it works great", "the weather today is awful and cold"]


def make_view(tok, base, r, batch=2):
    """A client's view of its own first TEXTS[:batch] update through a rank-``r`` LoRA on ``base``."""
    pm = toy.lora_wrap(copy.deepcopy(base), r=r)
    return toy.client_view(pm, copy.deepcopy(base), tok, TEXTS[:batch], T)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run faster on one thread, especially on shared, busy cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return toy.minilm_tokenizer()


@pytest.fixture(scope="module")
def base(tok):
    return toy.tiny_llama(len(tok), layers=4)

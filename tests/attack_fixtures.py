"""Fixtures shared by the attack tests on tiny random-init models (a plugin of tests/conftest.py; a
module that wants one thread marks itself ``pytest.mark.usefixtures("one_thread")``)."""

import pytest
import torch

from attacks import toy


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

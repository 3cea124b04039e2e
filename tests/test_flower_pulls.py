"""Flower's object pulls retry after 10 ms in the deployment modules the suite quickens
(``benchmark.engines.flower_pulls``), in those modules only, and the suite refuses loudly when Flower is
not laid out as it expects. No deployment here: Flower's real ``pull_objects`` runs against a pull
function that reports objects missing a few times, and its waits are recorded, not slept."""

from __future__ import annotations

import importlib
import sys
import threading
import types

import pytest

pytest.importorskip("flwr", reason="flwr is not installed (scripts/setup.sh installs it)")

from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError  # noqa: E402

from benchmark.engines import flower_pulls  # noqa: E402
from benchmark.engines.flower_supernode import FlowerChanged  # noqa: E402

UTILS = importlib.import_module("flwr.supercore.inflatable.inflatable_utils")
MODULES = [flower_pulls.SUPERNODE_LOOP, flower_pulls.SERVERAPP_GRID]


@pytest.fixture
def waits(monkeypatch):
    """The retry waits Flower's pull_objects asked for (they return at once); both patched modules'
    ``pull_objects`` are restored after the test."""
    for name in MODULES:
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "pull_objects", module.pull_objects)
    asked: list[float] = []
    real_wait = threading.Event.wait

    def wait(self, timeout=None):
        if timeout is not None and timeout < 60:  # a retry's backoff, not an executor's wait
            asked.append(timeout)
            return self.is_set()
        return real_wait(self, timeout)

    monkeypatch.setattr(threading.Event, "wait", wait)
    return asked


def missing_then_there(times: int):
    """A pull function that reports each object missing ``times`` times, then returns its id."""
    tries: dict[str, int] = {}

    def pull(object_id: str) -> bytes:
        tries[object_id] = tries.get(object_id, 0) + 1
        if tries[object_id] <= times:
            raise ObjectUnavailableError(object_id)
        return object_id.encode()

    return pull


@pytest.mark.parametrize("module", MODULES)
def test_a_quickened_module_retries_after_ten_ms_doubling_to_the_cap(waits, module):
    target = importlib.import_module(module)
    quick = flower_pulls.quicken_pulls(module)
    assert target.pull_objects is quick and quick.real is UTILS.pull_objects
    got = target.pull_objects(["a"], missing_then_there(7))
    assert got == {"a": b"a"}
    nominal = [0.01, 0.02, 0.04, 0.08, 0.16, 0.2, 0.2]
    assert len(waits) == len(nominal)
    for w, n in zip(waits, nominal, strict=True):
        assert 0.8 * n <= w <= 1.2 * n  # Flower's +-20% jitter


def test_other_modules_keep_flowers_one_second(waits):
    flower_pulls.quicken_pulls(flower_pulls.SERVERAPP_GRID)
    assert UTILS.pull_objects(["a"], missing_then_there(1)) == {"a": b"a"}
    assert len(waits) == 1 and 0.8 <= waits[0] <= 1.2


def test_a_caller_naming_its_own_backoff_keeps_it(waits):
    flower_pulls.quicken_pulls(flower_pulls.SUPERNODE_LOOP)
    loop = importlib.import_module(flower_pulls.SUPERNODE_LOOP)
    loop.pull_objects(["a"], missing_then_there(2), initial_backoff=0.5, backoff_cap=0.5)
    assert len(waits) == 2 and all(0.4 <= w <= 0.6 for w in waits)


def test_there_is_no_try_limit_only_flowers_max_time(waits):
    """Flower gives up after 500 tries: 100 s at 200 ms apart, shorter than a large message on a slow
    link takes. The quick pulls go on until Flower's max_time."""
    flower_pulls.quicken_pulls(flower_pulls.SERVERAPP_GRID)
    grid = importlib.import_module(flower_pulls.SERVERAPP_GRID)
    assert grid.pull_objects(["a"], missing_then_there(600)) == {"a": b"a"}
    assert len(waits) == 600


def test_quickening_again_replaces_instead_of_nesting(waits):
    flower_pulls.quicken_pulls(flower_pulls.SERVERAPP_GRID)
    second = flower_pulls.quicken_pulls(flower_pulls.SERVERAPP_GRID, (0.05, 0.05))
    assert second.real is UTILS.pull_objects
    importlib.import_module(flower_pulls.SERVERAPP_GRID).pull_objects(["a"], missing_then_there(2))
    assert len(waits) == 2 and all(0.04 <= w <= 0.06 for w in waits)


@pytest.mark.parametrize("retry_s", [(0, 0.2), (-1, 0.2), (0.3, 0.2)])
def test_retries_that_are_not_positive_and_ordered_are_refused(retry_s):
    with pytest.raises(ValueError, match="first <= cap"):
        flower_pulls.quicken_pulls(flower_pulls.SERVERAPP_GRID, retry_s)


def test_a_missing_module_fails_loudly():
    with pytest.raises(FlowerChanged, match=r"Flower \d.*flwr\.superlink\.no_such_grid"):
        flower_pulls.quicken_pulls("flwr.superlink.no_such_grid")


@pytest.mark.parametrize("globals_", [{}, {"pull_objects": print}], ids=["none", "another function"])
def test_a_module_without_flowers_pull_objects_fails_loudly(monkeypatch, globals_):
    fake = types.ModuleType("shebench_fake_grid")
    vars(fake).update(globals_)
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    with pytest.raises(FlowerChanged, match="inflatable_utils.pull_objects"):
        flower_pulls.quicken_pulls(fake.__name__)
    assert vars(fake).get("pull_objects") is globals_.get("pull_objects")


def test_a_pull_objects_without_the_backoff_arguments_fails_loudly(monkeypatch):
    def old_pull_objects(object_ids, pull_object_fn, *, max_concurrent_pulls=2):
        raise AssertionError("not called")

    fake = types.ModuleType("shebench_fake_loop")
    fake.pull_objects = old_pull_objects
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setattr(UTILS, "pull_objects", old_pull_objects)
    with pytest.raises(FlowerChanged, match="initial_backoff, backoff_cap, max_tries_per_object"):
        flower_pulls.quicken_pulls(fake.__name__)


def test_the_supernode_launcher_quickens_its_loop(monkeypatch, waits):
    from benchmark.engines import flower_supernode as launcher

    loop = importlib.import_module(flower_pulls.SUPERNODE_LOOP)
    monkeypatch.setattr(loop, "time", loop.time)
    monkeypatch.setattr(launcher, "supernode_entry_point", lambda: lambda: None)
    monkeypatch.setattr(sys, "argv", ["launcher"])
    launcher.main(["--insecure"])
    assert isinstance(loop.pull_objects, flower_pulls.QuickPulls)

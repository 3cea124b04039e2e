"""The SuperNode launcher (``benchmark.engines.flower_supernode``) caps the sleeps of Flower's SuperNode
loop, in that one module only, and refuses loudly when Flower is not laid out as it expects. No
deployment here: the real sleep is replaced by a recorder, so nothing waits."""

from __future__ import annotations

import importlib
import sys
import time
import types

import pytest

pytest.importorskip("flwr", reason="flwr is not installed (scripts/setup.sh installs it)")

from benchmark.engines import flower_supernode as launcher  # noqa: E402

LOOP = importlib.import_module(launcher.MODULE)
OTHER = importlib.import_module("flwr.supercore.retry.retry_invoker")  # another Flower module with `import time`


@pytest.fixture
def slept(monkeypatch):
    """The durations the real ``time.sleep`` was asked for (it returns at once); the SuperNode loop's
    ``time`` global is restored after the test."""
    calls: list[float] = []
    monkeypatch.setattr(LOOP, "time", LOOP.time)
    monkeypatch.setattr(time, "sleep", calls.append)
    return calls


def test_the_stand_in_caps_sleep_at_the_given_seconds(slept):
    stand_in = launcher.cap_waits(0.1)
    assert LOOP.time is stand_in and stand_in.real is time
    LOOP.time.sleep(3)  # Flower's idle wait
    LOOP.time.sleep(0.5)  # Flower's wait for a reply
    LOOP.time.sleep(0.02)  # shorter than the cap: as asked
    assert slept == [0.1, 0.1, 0.02]


def test_other_time_attributes_are_the_real_ones(slept):
    launcher.cap_waits(0.25)
    for name in ("monotonic", "time", "perf_counter", "strftime", "struct_time"):
        assert getattr(LOOP.time, name) is getattr(time, name)
    a = LOOP.time.monotonic()
    assert isinstance(a, float) and LOOP.time.monotonic() >= a
    with pytest.raises(AttributeError):
        LOOP.time.no_such_function  # noqa: B018


def test_only_the_supernode_loop_is_patched(slept):
    real_module = sys.modules["time"]
    launcher.cap_waits(0.1)
    assert sys.modules["time"] is real_module is time
    assert OTHER.time is time  # another Flower module keeps the real one
    time.sleep(3)  # the real (here recording) sleep is not capped
    OTHER.time.sleep(2)
    assert slept == [3, 2]


def test_capping_again_replaces_the_cap_instead_of_nesting(slept):
    launcher.cap_waits(0.1)
    second = launcher.cap_waits(0.5)
    assert second.real is time and LOOP.time is second
    LOOP.time.sleep(3)
    assert slept == [0.5]


def test_a_cap_that_is_not_positive_is_refused(slept):
    before = LOOP.time
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            launcher.cap_waits(bad)
    assert LOOP.time is before


def test_a_missing_module_fails_loudly_naming_the_flower_version():
    version = launcher.flower_version()
    assert version[0].isdigit()
    with pytest.raises(launcher.FlowerChanged, match=rf"Flower {version}.*flwr\.supernode\.no_such_loop"):
        launcher.cap_waits(0.1, module="flwr.supernode.no_such_loop")


@pytest.mark.parametrize("globals_", [{}, {"time": time.time}, {"time": types.SimpleNamespace(sleep=time.sleep)}],
                         ids=["no time global", "from time import time", "something else"])
def test_a_loop_without_the_time_module_global_fails_loudly(monkeypatch, globals_):
    fake = types.ModuleType("shebench_fake_supernode_loop")
    vars(fake).update(globals_)
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    with pytest.raises(launcher.FlowerChanged, match=rf"Flower {launcher.flower_version()}.*`time`"):
        launcher.cap_waits(0.1, module=fake.__name__)
    assert vars(fake).get("time") is globals_.get("time")  # left as it was


def test_the_entry_point_is_flowers_flower_supernode():
    run = launcher.supernode_entry_point()
    assert run is importlib.import_module("flwr.supernode.cli.flower_supernode").flower_supernode


def test_main_caps_the_loop_then_runs_flower_with_the_other_arguments(slept, monkeypatch):
    seen = {}

    def fake_supernode():
        seen["argv"] = list(sys.argv)
        LOOP.time.sleep(3)

    monkeypatch.setattr(launcher, "supernode_entry_point", lambda: fake_supernode)
    monkeypatch.setattr(sys, "argv", ["launcher"])
    flower_args = ["--insecure", "--superlink", "127.0.0.1:9092", "--isolation", "process",
                   "--node-config", "partition-id=0 num-partitions=2", "--max-retries", "-1"]
    launcher.main(["--idle-poll-s", "0.3", *flower_args])
    assert seen["argv"] == ["flower-supernode", *flower_args]
    assert slept == [0.3]

    slept.clear()
    launcher.main(flower_args)  # the default cap
    assert slept == [launcher.DEFAULT_IDLE_POLL_S]


def test_main_refuses_a_cap_that_is_not_positive(monkeypatch):
    monkeypatch.setattr(launcher, "supernode_entry_point", lambda: pytest.fail("Flower must not start"))
    with pytest.raises(SystemExit) as exit_:
        launcher.main(["--idle-poll-s", "0", "--insecure"])
    assert exit_.value.code == 2

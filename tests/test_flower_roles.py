"""A deployment node's state folder (``FolderRoles``): what a long-lived ClientApp process keeps
between messages, when it must take another process's copy of the role instead, and its lock: ops
seen to leave the role unchanged store nothing and share the lock, a surprise is redone, never lost."""

import contextlib
import dataclasses
import fcntl
import threading

import pytest

from benchmark.engines import flower_client
from benchmark.engines.flower_client import FolderRoles, NodeSpec, read_revision
from benchmark.running import resolve_scenario


@dataclasses.dataclass
class Role:
    """Stands in for a client role: state that ops change and the folder must carry."""

    calls: int = 0
    log: list = dataclasses.field(default_factory=list)


def _spec(token="run"):
    return NodeSpec(token, resolve_scenario("tiny"), Role(), 0, "cpu", 1)


def bump(proc):
    proc.role.calls += 1
    return proc


def look(proc):
    return proc


class Thread(threading.Thread):
    """``fn()`` in a thread; ``result`` once joined (its exception re-raised)."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.out, self.error = fn, None, None
        self.start()

    def run(self):
        try:
            self.out = self.fn()
        except BaseException as ex:  # noqa: BLE001 (re-raised by result)
            self.error = ex

    def result(self, timeout=10):
        self.join(timeout)
        assert not self.is_alive(), "the op is still blocked"
        if self.error is not None:
            raise self.error
        return self.out


class SharedLock:
    """Another node's shared op in progress: the run's lock file held with LOCK_SH."""

    def __init__(self, folder, token="run"):
        self.fh = open(folder / f"{token}.lock", "a+")

    def __enter__(self):
        fcntl.flock(self.fh, fcntl.LOCK_SH)
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _file(path):
    st = path.stat()
    return read_revision(path), st.st_ino, st.st_mtime_ns


def test_a_long_lived_process_keeps_the_role_and_the_model_until_another_process_stores(tmp_path):
    node, other, spec = FolderRoles(str(tmp_path)), FolderRoles(str(tmp_path)), _spec()

    def first(proc):
        proc.node.__dict__["assets"] = "built once"  # stands in for the model, data and LoRA host
        return bump(proc).role

    first_role = node.run(spec, "bump", first)
    proc = node.run(spec, "bump", bump)  # nobody else stored: the same objects, not a reload
    assert proc.role is first_role and proc.node.role is first_role and proc.node.assets == "built once"
    proc = other.run(spec, "bump", bump)  # another node's process: reads the folder, sees both calls
    assert proc.role.calls == 3 and proc.role is not first_role
    proc = node.run(spec, "look", look)  # the folder changed since: the role is reloaded, the model kept
    assert proc.role.calls == 3 and proc.role is not first_role and proc.node.role is proc.role
    assert proc.node.assets == "built once"
    proc = node.run(_spec("next run"), "look", look)  # another run starts from its own fresh role
    assert proc.role.calls == 0 and "assets" not in proc.node.__dict__


def test_an_op_that_leaves_the_role_unchanged_writes_nothing(tmp_path):
    node, spec, path = FolderRoles(str(tmp_path)), _spec(), tmp_path / "run.role"
    node.run(spec, "look", look)
    assert not path.exists()  # the fresh role, unchanged: nothing to store
    node.run(spec, "bump", bump)
    stored = _file(path)
    assert node.revision == stored[0] != b""
    for _ in range(2):  # exclusive, then shared: neither writes
        node.run(spec, "look", look)
    assert _file(path) == stored and node.revision == stored[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock", "run.role"]
    node.run(spec, "bump", bump)  # an op that changes it still stores
    assert _file(path)[:2] != stored[:2]
    assert FolderRoles(str(tmp_path)).run(spec, "look", lambda proc: proc.role.calls) == 2


def test_an_op_kind_seen_to_leave_the_role_unchanged_shares_the_lock(tmp_path):
    node, spec = FolderRoles(str(tmp_path)), _spec()
    node.run(spec, "bump", bump)
    with SharedLock(tmp_path):  # an op kind not seen yet: exclusive, it waits for the other node's op
        waiting = Thread(lambda: node.run(spec, "look", look))
        waiting.join(0.5)
        assert waiting.is_alive()
    waiting.result()
    with SharedLock(tmp_path):  # seen to change nothing: shared, beside the other node's op
        assert Thread(lambda: node.run(spec, "look", look)).result(timeout=5).role.calls == 1
        changing = Thread(lambda: node.run(spec, "bump", bump))  # seen to change the role: exclusive
        changing.join(0.5)
        assert changing.is_alive()
    assert changing.result().role.calls == 2


def test_two_nodes_run_an_unchanging_op_side_by_side(tmp_path):
    a, b, spec = FolderRoles(str(tmp_path)), FolderRoles(str(tmp_path)), _spec()
    a.run(spec, "bump", bump)
    for node in (a, b):
        node.run(spec, "look", look)
    inside, done = threading.Event(), threading.Event()

    def slow(proc):  # b's op holds its lock until a's op ran, or 5 s passed
        inside.set()
        return done.wait(5)

    b_op = Thread(lambda: b.run(spec, "look", slow))
    assert inside.wait(5)
    a.run(spec, "look", lambda proc: done.set())
    assert b_op.result() is True, "a's op waited for b's: the lock was not shared"


@pytest.mark.parametrize("same", [False, True], ids=["each its own change", "the same change"])
def test_a_shared_op_that_changes_the_role_is_redone_after_another_store_and_nothing_is_lost(
        tmp_path, monkeypatch, same):
    """Both nodes' shared ops change the role at once: one stores, the other is redone on that role.
    ``same``: both make the same change, so the redo changes nothing; the kind is exclusive still."""
    a, b, spec = FolderRoles(str(tmp_path)), FolderRoles(str(tmp_path)), _spec()
    a.run(spec, "bump", bump)
    for node in (a, b):
        node.run(spec, "append", look)  # seen to change nothing: shared from now on
    both_inside, calls = threading.Barrier(2, timeout=5), {"a": 0, "b": 0}
    tried, both_checking = threading.local(), threading.Barrier(2, timeout=1)

    def append(name):
        def fn(proc):
            calls[name] += 1
            if calls[name] == 1:
                both_inside.wait()  # each node's first try under the shared lock, at once
            if not (same and proc.role.log):
                proc.role.log.append("x" if same else name)
            tried.first = True
            return list(proc.role.log)

        return fn

    def read_revision_in_step(path):
        """Once a try is done, both nodes check the folder's revision together, unless a lock keeps
        one out (it waits 1 s for the other, then goes on)."""
        if getattr(tried, "first", False) and not getattr(tried, "checked", False):
            tried.checked = True
            with contextlib.suppress(threading.BrokenBarrierError):
                both_checking.wait()
        return read_revision(path)

    monkeypatch.setattr(flower_client, "read_revision", read_revision_in_step)
    ops = {name: Thread(lambda node=node, name=name: node.run(spec, "append", append(name)))
           for name, node in (("a", a), ("b", b))}
    replies = {name: op.result() for name, op in ops.items()}
    final = FolderRoles(str(tmp_path)).run(spec, "look", lambda proc: (proc.role.calls, proc.role.log))
    (redone,) = [name for name, n in calls.items() if n == 2]
    (first,) = [name for name, n in calls.items() if n == 1]
    if same:
        assert final == (1, ["x"]) and replies == {"a": ["x"], "b": ["x"]}
    else:  # both changes, on top of the earlier store; the redo's reply replaced the first try's
        assert final[0] == 1 and replies[first] == [first] and replies[redone] == [first, redone] == final[1]
    assert a.changes[("run", "append")] and b.changes[("run", "append")]  # exclusive from now on
    with SharedLock(tmp_path):
        waiting = Thread(lambda: b.run(spec, "append", look))
        waiting.join(0.5)
        assert waiting.is_alive()
    waiting.result()


def test_a_shared_op_that_changes_the_role_stores_it_when_nobody_else_did(tmp_path):
    node, spec = FolderRoles(str(tmp_path)), _spec()
    node.run(spec, "maybe", look)
    calls = []
    proc = node.run(spec, "maybe", lambda proc: calls.append(1) or bump(proc))  # shared, a surprise
    assert calls == [1] and proc.role.calls == 1 and node.changes[("run", "maybe")]
    assert FolderRoles(str(tmp_path)).run(spec, "look", lambda proc: proc.role.calls) == 1


@pytest.mark.parametrize("seen", [False, True], ids=["exclusive", "shared"])
def test_an_op_that_fails_stores_nothing_and_keeps_nothing(tmp_path, seen):
    node, spec = FolderRoles(str(tmp_path)), _spec()
    node.run(spec, "bump", bump)
    if seen:
        node.run(spec, "fails", look)
    stored = _file(tmp_path / "run.role")

    def fails(proc):
        proc.role.calls = 99  # half done
        raise RuntimeError("the op failed")

    with pytest.raises(RuntimeError):
        node.run(spec, "fails", fails)
    assert _file(tmp_path / "run.role") == stored and node.current is None
    assert node.run(spec, "look", lambda proc: proc.role.calls) == 1

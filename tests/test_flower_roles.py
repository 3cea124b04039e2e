"""A deployment node's state folder (``FolderRoles``): what a long-lived ClientApp process keeps
between messages, and when it must take another process's copy of the role instead."""

import dataclasses

import pytest

from benchmark.engines.flower_client import FolderRoles, NodeSpec, read_revision
from benchmark.running import resolve_scenario


@dataclasses.dataclass
class Role:
    """Stands in for a client role: state that ops change and the folder must carry."""

    calls: int = 0


def _spec(token="run"):
    return NodeSpec(token, resolve_scenario("tiny"), Role(), 0, "cpu", 1)


def test_a_long_lived_process_keeps_the_role_and_the_model_until_another_process_stores(tmp_path):
    node, other, spec = FolderRoles(str(tmp_path)), FolderRoles(str(tmp_path)), _spec()
    with node.open(spec) as proc:
        proc.role.calls += 1
        proc.node.__dict__["assets"] = "built once"  # stands in for the model, data and LoRA host
        first = proc.role
    with node.open(spec) as proc:  # nobody else stored: the same objects, not a reload
        assert proc.role is first and proc.node.role is first and proc.node.assets == "built once"
        proc.role.calls += 1
    with other.open(spec) as proc:  # another node's process: reads the folder, sees both calls
        assert proc.role.calls == 2 and proc.role is not first
        proc.role.calls += 1
    with node.open(spec) as proc:  # the folder changed since: the role is reloaded, the model kept
        assert proc.role.calls == 3 and proc.role is not first and proc.node.role is proc.role
        assert proc.node.assets == "built once"
    with node.open(_spec("next run")) as proc:  # another run starts from its own fresh role
        assert proc.role.calls == 0 and "assets" not in proc.node.__dict__


def test_an_op_that_fails_stores_nothing_and_keeps_nothing(tmp_path):
    node, spec = FolderRoles(str(tmp_path)), _spec()
    with node.open(spec) as proc:
        proc.role.calls = 1
    revision = read_revision(tmp_path / "run.role")
    with pytest.raises(RuntimeError), node.open(spec) as proc:
        proc.role.calls = 99  # half done
        raise RuntimeError("the op failed")
    assert read_revision(tmp_path / "run.role") == revision and node.current is None
    with node.open(spec) as proc:
        assert proc.role.calls == 1

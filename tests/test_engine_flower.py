"""The ``flower`` engine (Flower ServerApp + ClientApps on its simulation runtime) against ``inproc``:
the same rows on the tiny scenario for exact defenses, Flower's message bytes, and engine selection."""

import dataclasses
import math

import pytest

from benchmark.config import ComponentSpec, ConfigError, suite_from_dict
from benchmark.running import Overrides, execute, fingerprint, plan, resolve_scenario, resolve_suite

pytest.importorskip("flwr", reason="flwr is not installed (scripts/setup.sh installs it)")
pytest.importorskip("ray", reason="ray (Flower's simulation runtime) is not installed (scripts/setup.sh installs it)")

DEFENSES = ("plain_lora", "she_lora")
ATTACKS = ("token_leak", "mia")
SAME = ("utility", "eval_loss", "final_train_loss", "bytes_up_per_client_round", "bytes_down_per_client_round",
        "setup_bytes", "cipher_bytes_up", "cipher_bytes_down", "start_known", "server_saw",
        "status", "rouge1", "token_recall", "n_reconstructed", "mia_auc", "tpr_at_5fpr", "probe_rank")


def tiny_rows(tmp_path, engine):
    suite = dataclasses.replace(resolve_suite("smoke"), defenses=tuple(ComponentSpec(d, d) for d in DEFENSES),
                                attacks=tuple(ComponentSpec(a, a) for a in ATTACKS), attack_modes=("naive",),
                                engine=engine)
    rows = execute(plan(suite, Overrides({}, {}, {})), tmp_path / engine, "cpu", quiet=True)
    return {(r["defense"], r["attack"]): r for r in rows}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engines")
    return tiny_rows(tmp, "inproc"), tiny_rows(tmp, "flower")


def test_flower_rows_equal_inproc_rows_on_tiny(both):
    inproc, flower = both
    assert set(inproc) == set(flower) == {(d, a) for d in DEFENSES for a in ATTACKS}
    for cell, ref in inproc.items():
        got = flower[cell]
        assert (ref["engine"], got["engine"]) == ("inproc", "flower")
        assert got["status"] == "ok", got.get("error")
        for col in SAME:
            assert got[col] == ref[col], f"{cell} {col}: flower {got[col]!r} != inproc {ref[col]!r}"
        # she_lora's OPE key is random (os.urandom): its codes, hence their JSON digits, vary run to run
        assert got["negotiation_bytes"] == pytest.approx(ref["negotiation_bytes"], rel=1e-2), cell
        # same order of magnitude: exact defenses ~1e-7, CKKS error for she_lora (fresh randomness)
        assert abs(math.log10(got["agg_rel_err"] + 1e-12) - math.log10(ref["agg_rel_err"] + 1e-12)) < 1.0, cell
        assert got["cell_key"] != ref["cell_key"]  # the engine is part of the cell


def test_flower_rows_count_flower_message_bytes(both):
    inproc, flower = both
    for cell, row in flower.items():
        assert inproc[cell]["transport_bytes"] is None
        # every payload-carrying message costs more on Flower's wire than its WirePayload (framing)
        assert row["transport_bytes"] > 0 and row["framing_overhead_bytes"] > 0
        assert 0 < row["framing_overhead_frac"] < 1
        assert row["transport_messages"] > 0 and inproc[cell]["transport_messages"] is None  # reaches the rows


def test_engine_modules_count_only_for_their_cells():
    assert {p.name for p in fingerprint.engine_files("inproc")} == {"inproc.py", "__init__.py"}
    assert {p.name for p in fingerprint.engine_files("cost")} == {"cost.py", "__init__.py"}
    flower = {p.name for p in fingerprint.engine_files("flower")}
    assert {"flower_sim.py", "flower_client.py", "records.py", "__init__.py"} <= flower
    suite = dataclasses.replace(resolve_suite("smoke"), defenses=(ComponentSpec("plain_lora", "plain_lora"),))
    (ref,), (fl,) = plan(suite, Overrides({}, {}, {})), plan(dataclasses.replace(suite, engine="flower"), Overrides({}, {}, {}))
    inproc_files = fingerprint.code_files("defenses.plain_lora:PlainLoRA", None, "inproc")
    assert {p.name for p in inproc_files if "engines" in p.parts} == {"inproc.py", "__init__.py"}
    assert {"driver.py", "node.py"} <= {p.name for p in inproc_files if "federation" in p.parts}  # every engine's
    assert ref.cells[0].code_fp != fl.cells[0].code_fp
    assert ref.scenario.engine == "inproc" and fl.scenario.engine == "flower"


def test_inproc_cell_keys_do_not_include_the_default_engine():
    """Cells planned before engines existed keep their keys (the default engine is left out)."""
    from benchmark.config import scenario_key, to_dict

    scenario = resolve_scenario("tiny")
    assert "engine" in to_dict(scenario) and "engine" not in scenario_key(scenario)
    assert scenario_key(resolve_scenario("tiny", {"engine": "flower"}))["engine"] == "flower"


def test_bad_engine_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"scenario.engine must be one of cost, flower, inproc, got 'ray'"):
        resolve_scenario("tiny", {"engine": "ray"})
    with pytest.raises(ConfigError, match=r"suite.engine must be one of cost, flower, inproc"):
        suite_from_dict({"engine": "flwr"})
    with pytest.raises(ConfigError, match="cost scenarios"):
        resolve_scenario("cost_public_bench", {"engine": "flower"})
    with pytest.raises(ConfigError, match="cost scenarios"):
        resolve_scenario("tiny", {"engine": "cost"})
    assert resolve_scenario("cost_public_bench").engine == "cost"
    assert suite_from_dict({"engine": "flower"}).engine == "flower"


def test_a_deployed_node_holds_only_the_client_role_pickled_plainly(tmp_path):
    """A deployment's ClientApp keeps the role in its state folder between per-message processes:
    plain pickle carries its secret CKKS context (no special pickler), and the node never reaches a
    server role. Three 'processes' here: setup, protect, finalize, each reloading the role."""
    import gc

    import torch

    from benchmark.contract import FederationInfo, ServerRole
    from benchmark.engines.cost import random_update
    from benchmark.engines.flower_client import NODE_OPS, FolderRoles, NodeSpec
    from benchmark.federation.reference import reference_aggregate, relative_error
    from benchmark.federation.sampling import make_clients
    from defenses import DEFENSES

    scenario = resolve_scenario("tiny")
    defense = DEFENSES.get("full_he")()
    client = min(make_clients(scenario, 0), key=lambda c: c.rank)
    shapes = {"m": (8, 6)}
    fed = FederationInfo((client,), shapes, 1, 1, 0)
    spec = NodeSpec("t", scenario, defense.client, 0, "cpu", 1)
    def process(op, wire, h):  # a fresh store: what a new process has (nothing kept in memory)
        return FolderRoles(str(tmp_path)).run(spec, op, lambda proc: (*NODE_OPS[op](proc.node, wire, h), proc))

    hello, _, _ = process("setup", None, {"fed": fed})
    defense.server.setup(fed, [hello])
    update = random_update(client, shapes, torch.Generator().manual_seed(0), 1)
    sent, _, _ = process("protect", None, {"update": update})
    _, out, proc = process("finalize", defense.server.aggregate([sent]), {"client": client})
    seen, stack = set(), [proc]
    while stack:  # everything the node's process holds
        obj = stack.pop()
        assert not isinstance(obj, ServerRole), "a ClientApp process reaches a server role"
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, type):
                seen.add(id(ref))
                stack.append(ref)
    want = reference_aggregate([update])["m"].truncated(client.rank)
    assert relative_error(out["factors"]["m"].delta(), want) < 1e-5

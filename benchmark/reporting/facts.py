"""What a defense declares about itself (``benchmark.contract.Defense``), for any row a report reads.

Rows written since defenses declare their facts carry them (``FACT_COLUMNS``); for older rows the
same declarations are asked of the defense again, through the registry, from the configuration the
row records (its defense name, parameters, tiers and probed rank). Report code reads facts from here
and never names a defense.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

FACT_COLUMNS = ("defense_stack", "encrypts", "encrypted_share", "tier_facts", "paper_method", "cost_role")
_OLD_TIER = re.compile(r"(?P<name>.+):r(?P<rank>\d+):b(?P<budget>[0-9.eE+-]+)")


def row_facts(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's declared facts, derived from its configuration where the row predates them."""
    if _present(row.get("encrypts")):
        return {k: row.get(k) for k in FACT_COLUMNS}
    params = row.get("defense_params") if isinstance(row.get("defense_params"), Mapping) else {}
    rank = row.get("probe_rank")
    rank = int(rank) if _present(rank) else None
    return dict(_derived(str(row.get("defense_name") or row.get("defense")), json.dumps(params, sort_keys=True),
                         str(row.get("tiers") or ""), rank))


def encrypted_share(row: Mapping[str, Any]) -> float:
    """The share of LoRA-A columns the defense selectively encrypts for the probed client (NaN when it
    encrypts nothing selectively)."""
    facts = row_facts(row)
    share = facts.get("encrypted_share")
    return float(share) if facts.get("encrypts") == "selective" and _present(share) else math.nan


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


@functools.cache
def _derived(name: str, params_json: str, tiers: str, probe_rank: int | None) -> tuple[tuple[str, Any], ...]:
    from benchmark.config import ComponentSpec, ConfigError
    from benchmark.contract import ClientInfo
    from benchmark.running import defense_stack

    none = tuple((k, None) for k in FACT_COLUMNS)
    try:
        defense = defense_stack(ComponentSpec(name, name, json.loads(params_json))).build()
    except (ConfigError, KeyError, ValueError, ImportError):  # a defense this checkout no longer has
        return none
    clients = []
    for i, part in enumerate(p for p in tiers.split("/") if p):  # rows before tier_facts: name:rRANK:bBUDGET
        m = _OLD_TIER.fullmatch(part)
        if m:
            clients.append(ClientInfo(i, m["name"], int(m["rank"]), float(m["budget"]), float(m["rank"])))
    target = next((c for c in clients if c.rank == probe_rank), None)
    facts = {"defense_stack": "+".join(defense.stack), "encrypts": defense.encrypts,
             "encrypted_share": defense.applied_budget(target) if target is not None else None,
             "tier_facts": [dataclasses.asdict(t) for t in defense.tier_facts(clients)],
             "paper_method": defense.paper_method(), "cost_role": defense.cost_role()}
    return tuple(facts.items())

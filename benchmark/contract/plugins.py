"""The registries of what plugs into the harness: defenses, attacks and engines.

Each is filled from its entry-point group (declared in a distribution's metadata, ``pyproject.toml``
here): this suite's own defenses and attacks are found exactly as a researcher's separate package
would be, so the harness never imports ``defenses/`` or ``attacks/`` by name. Tests and scripts may
still ``register`` an entry of their own.
"""

from __future__ import annotations

from benchmark.contract.registry import Registry

DEFENSES = Registry("defense", entry_points="shebench.defenses")
ATTACKS = Registry("attack", entry_points="shebench.attacks")
ENGINES = Registry("engine", entry_points="shebench.engines")

"""Engines: how the round driver reaches the clients. Each is a ``simulate(scenario, defense, seed,
device, progress) -> SimulationResult`` function, chosen by a scenario's ``engine`` field, that hands
``benchmark.federation.driver.RoundDriver`` one ``ClientEndpoint``:

- ``inproc``: a ``ClientNode`` in this process (``benchmark.engines.inproc``);
- ``flower``: Flower messages to ClientApps, on the simulation runtime or a deployment's SuperLink
  (``benchmark.engines.flower_sim``);
- ``cost``: random updates of a paper-scale model's shapes, no model (``benchmark.engines.cost``;
  the engine of every ``kind = "cost"`` scenario).

A new engine is one more line here. Modules of this package count in the code fingerprint of the
cells that run on their engine only (``benchmark.running.fingerprint.engine_files``).
"""

from __future__ import annotations

import os

from benchmark.contract.plugins import ENGINES

# Everything stays offline: Flower and Ray read these when imported (telemetry) or started (update
# check, installing an app's dependencies, usage stats). RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes a
# local Ray node use the loopback address (Ray otherwise binds to the machine's outward address).
# A user who sets them keeps their value.
for _var, _value in (("FLWR_TELEMETRY_ENABLED", "0"), ("FLWR_DISABLE_UPDATE_CHECK", "1"),
                     ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1"), ("RAY_USAGE_STATS_ENABLED", "0"),
                     ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")):
    os.environ.setdefault(_var, _value)

__all__ = ["ENGINES"]  # filled from the ``shebench.engines`` entry points (pyproject.toml)

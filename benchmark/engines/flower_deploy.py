"""The ServerApp of a Flower deployment: one whole ``shebench run`` on a real SuperLink.

``flwr run benchmark/engines/flower_app <connection> --run-config "argv='...'"`` starts it on the
SuperLink; it runs ``shebench run <argv> --engine flower`` with the SuperLink's Grid in
``benchmark.engines.flower_sim.DEPLOYMENT_GRID``, so every federation of the run talks to the
SuperNodes' ClientApps (``benchmark.engines.flower_client.clientapp``) instead of starting a
simulation runtime. Rows, manifest and report go to the run's ``--out`` on the SuperLink's machine.
Its Grid pulls each reply's contents with retries 10 ms apart at first, not 1 s
(``benchmark.engines.flower_pulls``): a phase waits for its last reply.
"""

from __future__ import annotations

import shlex

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from benchmark.engines.flower_pulls import SERVERAPP_GRID, quicken_pulls
from benchmark.engines.flower_sim import DEPLOYMENT_GRID

serverapp = ServerApp()


@serverapp.main()
def main(grid: Grid, context: Context) -> None:
    from benchmark import cli

    argv = shlex.split(str(context.run_config.get("argv", "")))
    quicken_pulls(SERVERAPP_GRID)  # the nodes' replies: retried after 10 ms, not 1 s (this process only)
    token = DEPLOYMENT_GRID.set(grid)
    try:
        code = cli.main(["run", *argv, "--engine", "flower"])
    finally:
        DEPLOYMENT_GRID.reset(token)
    if code != 0:
        raise RuntimeError(f"shebench run {shlex.join(argv)} --engine flower exited with status {code}")

"""Wall time of one scenario on each engine: inproc, Flower's simulation runtime, and a Flower
deployment (a SuperLink and two SuperNodes on 127.0.0.1, started and stopped here): ``deployment``
with each SuperNode in ``--isolation process`` beside the suite's long-running ClientApp worker and
started through the suite's launcher (``benchmark.engines.flower_supernode``: the SuperNode loop's
waits capped at ``test_flower_deployment.IDLE_POLL_S``), ``deployment-cold`` with Flower's defaults
(plain ``flower-supernode``, a fresh ClientApp process per message).

    python scripts/time_engines.py SCENARIO DEFENSE OUT [inproc,flower,deployment,deployment-cold]

SCENARIO is a registered name or a .toml path (a path avoids a suite entry's own attack list in the
deployment's ServerApp, which runs from another folder: give it absolutely). Rows go to
OUT/<scenario>-<engine>/, the wall times to OUT/times.json. Time it on a quiet machine: Ray runs its
actors at nice 15.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import test_flower_deployment as td  # noqa: E402  (the loopback deployment the tests use)

DEPLOYMENTS = {"deployment": True, "deployment-cold": False}  # engine name -> warm workers


def time_deployment(folder: Path, run_args: str, warm: bool = True) -> float:
    """Seconds from submitting ``shebench run <run_args>`` to a loopback deployment (started in
    ``folder``, nodes warm or cold) until the run ends; the deployment is stopped after."""
    deployment = td.Deployment(folder, warm=warm, env={"OMP_NUM_THREADS": "1"})
    try:
        t0 = time.monotonic()
        deployment.submit(run_args)
        if deployment.wait(timeout=3600) != 0:
            raise SystemExit(f"flwr run failed; see {folder / 'flwr_run.log'}")
        return time.monotonic() - t0
    finally:
        deployment.procs.stop_all()


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    scenario, defense, out = argv[0], argv[1], Path(argv[2]).resolve()
    engines = argv[3].split(",") if len(argv) > 3 else ["inproc", "flower", *DEPLOYMENTS]
    name = Path(scenario).stem
    out.mkdir(parents=True, exist_ok=True)
    base = f"--scenario {scenario} --defense {defense} --attack none -q"
    times: dict[str, float] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for engine in ("inproc", "flower"):
        if engine in engines:
            t0 = time.monotonic()
            subprocess.run(f"shebench run {base} --engine {engine} --out {out} --run-id {name}-{engine} --no-report",
                           shell=True, check=True, env=env)
            times[engine] = time.monotonic() - t0
            print(engine, f"{times[engine]:.1f} s", flush=True)
    for engine, warm in DEPLOYMENTS.items():
        if engine not in engines:
            continue
        times[engine] = time_deployment(out / engine, f"{base} --out {out} --run-id {name}-{engine}", warm)
        print(engine, f"{times[engine]:.1f} s", flush=True)
    (out / "times.json").write_text(json.dumps(times, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

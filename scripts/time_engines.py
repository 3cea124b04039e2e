"""Wall time of one scenario on each engine: inproc, Flower's simulation runtime, and a Flower
deployment (a SuperLink and two SuperNodes on 127.0.0.1, started and stopped here).

    python scripts/time_engines.py SCENARIO DEFENSE OUT [inproc,flower,deployment]

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
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import test_flower_deployment as td  # noqa: E402  (the loopback deployment helpers the test uses)


def deployment(folder: Path) -> Iterator[tuple[td.Processes, str]]:
    superlink, supernode, flwr = td._tool("flower-superlink"), td._tool("flower-supernode"), td._tool("flwr")
    port = td._free_port()
    home = folder / "flwr_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "shebench"\n\n[superlink.shebench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
           "PATH": os.pathsep.join([str(td.BIN), os.environ.get("PATH", "")]), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "OMP_NUM_THREADS": "1"}
    procs = td.Processes(folder, env)
    try:
        link = procs.start("superlink", [superlink, "--insecure", "--host", "127.0.0.1", "--port", str(port)])
        td._wait_for(folder / "superlink.log", "Uvicorn running", link, 300)
        for i in range(2):
            node = procs.start(f"supernode{i}", [
                supernode, "--insecure", "--superlink", f"127.0.0.1:{port}", "--host", "127.0.0.1",
                "--port", str(td._free_port()),
                "--node-config", f"partition-id={i} num-partitions=2 state-dir='{folder / 'clients_state'}'"])
            td._wait_for(folder / f"supernode{i}.log", "SuperNode ID", node, 300)
        yield procs, flwr
    finally:
        procs.stop_all()


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    scenario, defense, out = argv[0], argv[1], Path(argv[2]).resolve()
    engines = argv[3].split(",") if len(argv) > 3 else ["inproc", "flower", "deployment"]
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
    if "deployment" in engines:
        gen = deployment(out / "deployment")
        procs, flwr = next(gen)
        try:
            t0 = time.monotonic()
            run = procs.start("flwr_run", [flwr, "run", str(td.APP), "shebench", "--run-config",
                                           f"argv='{base} --out {out} --run-id {name}-deployment'", "--stream"])
            if run.wait(timeout=3600) != 0:
                raise SystemExit(f"flwr run failed ({run.returncode}); see {out / 'deployment' / 'flwr_run.log'}")
            times["deployment"] = time.monotonic() - t0
            print("deployment", f"{times['deployment']:.1f} s", flush=True)
        finally:
            gen.close()
    (out / "times.json").write_text(json.dumps(times, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

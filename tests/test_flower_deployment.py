"""A real Flower deployment on loopback: a SuperLink and two SuperNodes (separate processes, each
ClientApp message in a fresh process), the tiny scenario with she_lora and plain_lora, rows checked
against the in-process engine's; every process the test started is stopped, whatever happens.

Flower starts a process per ClientApp message, so a run takes minutes: the scenario runs one round.
"""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.config import ComponentSpec
from benchmark.running import Overrides, execute, plan, resolve_suite

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "benchmark" / "engines" / "flower_app"
BIN = Path(sys.executable).parent
DEFENSES = ("she_lora", "plain_lora")
ARGS = f"--scenario tiny --defense {','.join(DEFENSES)} --attack token_leak --mode naive --set rounds=1 -q"
START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 1800
SAME = ("utility", "eval_loss", "bytes_up_per_client_round", "bytes_down_per_client_round", "setup_bytes",
        "cipher_bytes_up", "start_known", "status", "rouge1", "token_recall")


def _tool(name):
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not found:
        pytest.skip(f"the Flower CLI ({name}) is not installed; scripts/setup.sh installs flwr")
    return str(found)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(path, text, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"{path.name}: the process exited ({proc.returncode}):\n{path.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"{path.name}: no {text!r} within {timeout}s:\n{path.read_text(errors='replace')[-3000:]}")


class Processes:
    """Every process the test starts, each in its own process group, so stopping a group also stops
    what Flower spawned under it (SuperExec, ServerApp and ClientApp processes)."""

    def __init__(self, folder, env):
        self.folder, self.env, self.started = folder, env, []

    def start(self, name, args):
        log = open(self.folder / f"{name}.log", "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.folder,
                                start_new_session=True)
        self.started.append((name, proc, log))
        return proc

    def stop_all(self):
        for _, proc, _ in self.started:
            with _quiet():
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, proc, log in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with _quiet():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            log.close()

    def alive_groups(self):
        """Process groups of ours with a live (not zombie) member."""
        alive = []
        for _, proc, _ in self.started:
            for pid_dir in Path("/proc").iterdir():
                if not pid_dir.name.isdigit():
                    continue
                try:
                    stat = (pid_dir / "stat").read_text()
                except OSError:
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                if int(fields[2]) == proc.pid and fields[0] != "Z":
                    alive.append(int(pid_dir.name))
        return alive


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, ProcessLookupError | PermissionError)


@pytest.fixture
def deployment(tmp_path):
    superlink, supernode, flwr = _tool("flower-superlink"), _tool("flower-supernode"), _tool("flwr")
    port = _free_port()
    home = tmp_path / "flwr_home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "shebench"\n\n[superlink.shebench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "FLWR_HOME": str(home), "PYTHONPATH": pythonpath,
           "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    procs = Processes(tmp_path, env)
    try:
        link = procs.start("superlink", [superlink, "--insecure", "--host", "127.0.0.1", "--port", str(port)])
        _wait_for(tmp_path / "superlink.log", "Uvicorn running", link, START_TIMEOUT_S)
        state = tmp_path / "clients_state"  # the clients' shared keys: client machines only
        for i in range(2):
            node = procs.start(f"supernode{i}", [
                supernode, "--insecure", "--superlink", f"127.0.0.1:{port}", "--host", "127.0.0.1",
                "--port", str(_free_port()),
                "--node-config", f"partition-id={i} num-partitions=2 state-dir='{state}'"])
            _wait_for(tmp_path / f"supernode{i}.log", "SuperNode ID", node, START_TIMEOUT_S)
        yield tmp_path, procs, flwr
    finally:
        procs.stop_all()
        assert procs.alive_groups() == [], "a process the test started is still running"


def test_tiny_on_a_superlink_and_two_supernodes(deployment):
    folder, procs, flwr = deployment
    out = folder / "runs"
    argv = f"{ARGS} --out {out} --run-id deployed"
    t0 = time.monotonic()
    run = procs.start("flwr_run", [flwr, "run", str(APP), "shebench", "--run-config", f"argv='{argv}'", "--stream"])
    try:
        run.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the deployed run did not finish within {RUN_TIMEOUT_S}s:\n{(folder / 'flwr_run.log').read_text()[-3000:]}")
    wall = time.monotonic() - t0
    rows_path = out / "deployed" / "rows.jsonl"
    assert rows_path.exists(), (folder / "flwr_run.log").read_text()[-3000:]
    rows = {r["defense"]: r for r in map(json.loads, rows_path.read_text().splitlines())}
    assert set(rows) == set(DEFENSES)

    suite = dataclasses.replace(resolve_suite("smoke"), defenses=tuple(ComponentSpec(d, d) for d in DEFENSES),
                                attacks=(ComponentSpec("token_leak", "token_leak"),), attack_modes=("naive",))
    ref = {r["defense"]: r for r in execute(plan(suite, Overrides({"rounds": 1}, {}, {})), folder / "inproc", "cpu", quiet=True)}
    for name, row in rows.items():
        assert row["status"] == "ok", row.get("error")
        assert (row["engine"], row["engine_runtime"]) == ("flower", "deployment")
        for col in SAME:
            assert row[col] == ref[name][col], f"{name} {col}: deployed {row[col]!r} != inproc {ref[name][col]!r}"
        assert row["agg_rel_err"] < 1e-5
        assert row["transport_bytes"] > row["bytes_up_per_client_round"] > 0
        assert row["framing_overhead_bytes"] > 0
    print(f"deployed run: {wall:.0f}s wall for {len(rows)} simulations")

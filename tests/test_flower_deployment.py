"""Real Flower deployments on loopback, one over plain HTTP and one over TLS (certificates made here):
each a SuperLink and two SuperNodes started with ``--isolation process``, beside each SuperNode the
suite's long-running ClientApp worker (``benchmark.engines.flower_worker``). The tiny scenario's rows
are checked against the in-process engine's; every process the tests started is stopped, whatever
happens.

Both deployments start together and both runs are submitted at once (the module's fixture), so
their start-up and Flower's polling overlap. Each warm SuperNode runs through the suite's launcher
(``benchmark.engines.flower_supernode``), which caps the waits of Flower's SuperNode loop (3 s between
polls when idle, 0.5 s while it waits for a reply) at ``IDLE_POLL_S``; a cold deployment
(``warm=False``, ``scripts/time_engines.py``) runs Flower's own ``flower-supernode`` untouched.
"""

import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.config import ComponentSpec
from benchmark.engines import flower_supernode
from benchmark.running import Overrides, execute, plan, resolve_suite

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "benchmark" / "engines" / "flower_app"
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 600
SAME = ("utility", "eval_loss", "bytes_up_per_client_round", "bytes_down_per_client_round", "setup_bytes",
        "cipher_bytes_up", "start_known", "status", "rouge1", "token_recall")
# deployment -> the run it submits: plain_lora under an attack (the probe's messages through the
# deployment, attack results against in-process), she_lora without one (ciphertexts over TLS, the
# clients' CKKS key shared through the state folder): runs of a like length, 17 and 19 messages
RUNS = {"insecure": ("plain_lora", "token_leak"), "tls": ("she_lora", "none")}
# Round 1 of tiny at seed 2 samples clients 1 and 2, one on each SuperNode (client c on node c % 2),
# so both nodes train, side by side (seeds 0 and 1 sample 1 and 3, both on node 1)
SEED = 2
IDLE_POLL_S = 0.1  # the warm SuperNodes' longest wait between polls (Flower's own: 3 s idle, 0.5 s per reply)


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
        time.sleep(0.1)
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

    def died(self):
        """The name and log tail of a started process that exited, if any."""
        for name, proc, _ in self.started:
            if proc.poll() is not None:
                return f"{name} exited ({proc.returncode}):\n{(self.folder / f'{name}.log').read_text()[-3000:]}"
        return None

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


@dataclasses.dataclass(frozen=True)
class Certificates:
    """A CA and a server certificate it signed for 127.0.0.1 and localhost (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(folder):
    """A throwaway CA and the server's certificate, made with ``cryptography`` (which Flower needs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, key, issuer, issuer_key, ca):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shebench test CA")])
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    out = Certificates(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    out.ca.write_bytes(cert(ca_name, ca_key, ca_name, ca_key, True).public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert(name, key, ca_name, ca_key, False).public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return out


def flower_env(home):
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "FLWR_HOME": str(home), "PYTHONPATH": pythonpath,
            "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


class Deployment:
    """A SuperLink and ``nodes`` SuperNodes on 127.0.0.1, over TLS when given ``certs``. ``warm``: each
    SuperNode runs with ``--isolation process`` beside a ``flower_worker`` (one long-lived ClientApp
    process), started by the suite's launcher with its loop's waits capped at ``IDLE_POLL_S``; else
    Flower's default, plain ``flower-supernode`` and a fresh ClientApp process per message. The
    constructor starts the processes without waiting; ``submit`` waits for the SuperLink only (the
    ServerApp waits for its nodes)."""

    def __init__(self, folder, certs=None, nodes=2, warm=True, env=None):
        superlink, supernode = _tool("flower-superlink"), _tool("flower-supernode")
        if warm:
            supernode = [sys.executable, "-m", "benchmark.engines.flower_supernode", "--idle-poll-s", str(IDLE_POLL_S)]
        else:
            supernode = [supernode]
        self.flwr, self.folder, self.certs, self.port = _tool("flwr"), folder, certs, _free_port()
        home = folder / "flwr_home"
        home.mkdir(parents=True)
        tls = f'root-certificates = "{certs.ca}"\n' if certs else "insecure = true\n"
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "shebench"\n\n[superlink.shebench]\naddress = "127.0.0.1:{self.port}"\n{tls}')
        self.procs = Processes(folder, {**flower_env(home), **(env or {})})
        link_tls = (["--ssl-ca-certfile", str(certs.ca), "--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.key)]
                    if certs else ["--insecure"])
        self.link = self.procs.start("superlink", [superlink, *link_tls, "--host", "127.0.0.1", "--port", str(self.port)])
        node_tls = ["--root-certificates", str(certs.ca)] if certs else ["--insecure"]
        state = folder / "clients_state"  # the clients' shared keys: client machines only
        for i in range(nodes):
            runtime = f"127.0.0.1:{_free_port()}"
            self.procs.start(f"supernode{i}", [
                *supernode, *node_tls, "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1",
                "--port", runtime.split(":")[1], *(["--isolation", "process"] if warm else []),
                "--node-config", f"partition-id={i} num-partitions={nodes} state-dir='{state}'"])
            if warm:
                self.procs.start(f"worker{i}", [sys.executable, "-m", "benchmark.engines.flower_worker",
                                                "--runtime-api-address", runtime, "--insecure"])
        self.run = None

    def submit(self, argv):
        """Start ``flwr run`` of the suite's app with ``shebench run`` arguments ``argv``."""
        _wait_for(self.folder / "superlink.log", "Uvicorn running", self.link, START_TIMEOUT_S)
        self.run = self.procs.start("flwr_run", [self.flwr, "run", str(APP), "shebench", "--run-config",
                                                 f"argv='{argv}'", "--stream"])

    def wait(self, timeout=RUN_TIMEOUT_S):
        """The run's exit status, failing early when a process of the deployment died."""
        deadline = time.monotonic() + timeout
        while self.run.poll() is None:
            dead = self.procs.died()
            if dead is not None and "flwr_run" not in dead:
                raise AssertionError(dead)
            if time.monotonic() > deadline:
                raise AssertionError(f"no result within {timeout}s:\n{self.log('flwr_run')[-3000:]}")
            time.sleep(0.1)
        return self.run.returncode

    def log(self, name):
        return (self.folder / f"{name}.log").read_text(errors="replace")


def _argv(defense, attack, out):
    return (f"--scenario tiny --defense {defense} --attack {attack} --mode naive --set rounds=1 --seeds {SEED} "
            f"--no-report -q --out {out} --run-id {defense}")


@pytest.fixture(scope="module")
def deployments(tmp_path_factory):
    """Both deployments, started together, each with its run submitted."""
    folder = tmp_path_factory.mktemp("deployments")
    certs = make_certificates(folder / "certs")
    started = {}
    try:
        for name in RUNS:
            started[name] = Deployment(folder / name, certs if name == "tls" else None)
        t0 = time.monotonic()
        for name, (defense, attack) in RUNS.items():
            started[name].submit(_argv(defense, attack, folder / name / "runs"))
        yield started, t0
    finally:
        for d in started.values():
            d.procs.stop_all()
        for d in started.values():
            assert d.procs.alive_groups() == [], "a process the test started is still running"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same cells in process."""
    rows = {}
    for defense, attack in RUNS.values():
        suite = dataclasses.replace(resolve_suite("smoke"), defenses=(ComponentSpec(defense, defense),),
                                    attacks=(ComponentSpec(attack, attack),) if attack != "none" else (),
                                    attack_modes=("naive",), seeds=(SEED,))
        (rows[defense],) = execute(plan(suite, Overrides({"rounds": 1}, {}, {})),
                                   tmp_path_factory.mktemp("inproc"), "cpu", quiet=True)
    return rows


def _check_run(deployment, defense, reference, t0):
    assert deployment.wait() == 0, deployment.log("flwr_run")[-3000:]
    print(f"{deployment.folder.name}: {defense} deployed, done by {time.monotonic() - t0:.0f}s after submission")
    rows = [json.loads(line) for line in (deployment.folder / "runs" / defense / "rows.jsonl").read_text().splitlines()]
    assert [r["defense"] for r in rows] == [defense]
    row, ref = rows[0], reference[defense]
    assert row["status"] == "ok", row.get("error")
    assert (row["engine"], row["engine_runtime"]) == ("flower", "deployment")
    for col in SAME:
        assert row[col] == ref[col], f"{defense} {col}: deployed {row[col]!r} != inproc {ref[col]!r}"
    assert row["agg_rel_err"] < 1e-5
    assert row["transport_bytes"] > row["bytes_up_per_client_round"] > 0
    assert row["framing_overhead_bytes"] > 0
    # every message a SuperNode received ran in its one long-lived worker, none in a per-message process
    # (a worker logs a task just after handing its reply over: allow it a moment)
    deadline = time.monotonic() + 10
    while True:
        received = sum(deployment.log(f"supernode{i}").count("Receiving: ") for i in range(2))
        ran = sum(deployment.log(f"worker{i}").count("shebench worker: ran ") for i in range(2))
        if received == ran or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert received == ran > 0
    assert "flwr-clientapp" not in "".join(deployment.log(f"supernode{i}") for i in range(2))
    # each SuperNode ran through the launcher, with the loop's waits capped
    ready = flower_supernode.READY.format(version=flower_supernode.flower_version(), cap=IDLE_POLL_S)
    for i in range(2):
        log = deployment.log(f"supernode{i}")
        assert ready in log and log.index(ready) < log.index("SuperNode ID: ") < log.index("Receiving: ")
    return row


def test_plain_lora_attacked_on_an_insecure_superlink_and_two_warm_supernodes(deployments, reference):
    started, t0 = deployments
    row = _check_run(started["insecure"], RUNS["insecure"][0], reference, t0)
    assert row["attack"] == "token_leak" and row["rouge1"] is not None


def test_she_lora_over_tls_with_certificates_made_here(deployments, reference):
    started, t0 = deployments
    d = started["tls"]
    row = _check_run(d, RUNS["tls"][0], reference, t0)
    assert row["cipher_bytes_up"] > 0
    # the SuperLink served TLS with the certificate made here (the SuperNodes and flwr could only connect
    # by trusting its CA), and refuses plain HTTP
    context = ssl.create_default_context(cafile=str(d.certs.ca))
    with socket.create_connection(("127.0.0.1", d.port)) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert ("IP Address", "127.0.0.1") in tls.getpeercert()["subjectAltName"]
    with socket.create_connection(("127.0.0.1", d.port)) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        raw.settimeout(5)
        with contextlib.suppress(OSError):
            assert not raw.recv(64).startswith(b"HTTP/")

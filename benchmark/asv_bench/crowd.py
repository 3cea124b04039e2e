"""Rounds of a crowd (``tiny_crowd1000``): time per round and peak memory of the driver and of Ray's
processes, on Flower's simulation runtime and in process, for several client counts.

    python -m benchmark.asv_bench.crowd                      # 100 and 1000 clients, flower and inproc
    python -m benchmark.asv_bench.crowd --clients 1000 --engines flower --json crowd.json

Not an asv benchmark (a Flower run takes minutes and starts Ray; asv would import this module and find
nothing to run): a script to rerun alone. Each (engine, clients) runs in a fresh child process, so one
run's memory never counts in the next. The child builds the engine's round driver and runs the
protocol's setup and ``--rounds`` rounds, each timed (the probe and the final evaluation are left out:
their cost does not depend on the clients that sit a round out). The parent samples, every
``--every`` seconds, the RSS of the child (the driver: on Flower, the ServerApp runs in a thread of
it) and of every process under it (Ray's GCS, raylet, agents and the actor that runs every
ClientApp), with psutil when installed and /proc otherwise. The driver's peak is the child's own
``ru_maxrss``; Ray's is the largest sum seen. The data stay the scenario's 8000 examples for every
client count, so a difference between counts is what the clients that are not sampled cost.

Timings depend on the machine's load: the report prints the load average before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCENARIO = "tiny_crowd1000"


# ---- the child: one engine, one client count -----------------------------------------------------


def rounds_of(driver: Any, rounds: int) -> dict[str, Any]:
    """Set up the roles and run ``rounds`` rounds, each timed; what the driver holds afterwards."""
    from benchmark.federation.protocol import setup_roles

    t0 = time.perf_counter()
    setup_roles(driver.parties, driver.fed, driver.channel)
    setup_s = time.perf_counter() - t0
    round_s, picked = [], set()
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        picked.update(driver.run_round(rnd)["clients"])
        round_s.append(time.perf_counter() - t0)
    messages = driver.channel.transcript.messages
    return {"setup_s": setup_s, "round_s": round_s, "clients_sampled": len(picked), "starts_held": len(driver.start),
            "transcript_messages": len(messages), "transcript_payloads": len({id(m.payload) for m in messages})}


def child(engine: str, n_clients: int, per_round: int, rounds: int, defense_name: str) -> dict[str, Any]:
    import resource

    import torch

    from benchmark.contract.stacks import build_defense
    from benchmark.running import resolve_scenario

    torch.set_num_threads(1)  # one thread in both engines (the Flower actor gets as many CPUs)
    scenario = resolve_scenario(SCENARIO, {"n_clients": n_clients, "clients_per_round": per_round, "rounds": rounds,
                                           "engine": engine})
    defense = build_defense(defense_name)
    t0 = time.perf_counter()
    if engine == "inproc":
        from benchmark.engines import inproc

        out = rounds_of(inproc.build_driver(scenario, defense, 0), rounds)
    else:
        from benchmark.engines import flower_sim

        def body(grid: Any) -> dict[str, Any]:
            t_link = time.perf_counter()
            driver, _ = flower_sim.build_driver(grid, scenario, defense, 0, "cpu", 1)
            return {"nodes_s": time.perf_counter() - t_link, **rounds_of(driver, rounds)}

        out = flower_sim.on_simulation_runtime(body, scenario.n_clients, 1)
    out["wall_s"] = time.perf_counter() - t0
    out["driver_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return out


# ---- the parent: sample the child's process tree ---------------------------------------------------


def tree_rss(pid: int) -> tuple[int, int]:
    """(RSS of ``pid``, summed RSS of every process under it), in bytes."""
    try:
        import psutil
    except ImportError:
        return _proc_tree_rss(pid)
    try:
        root = psutil.Process(pid)
        own = root.memory_info().rss
        below = 0
        for p in root.children(recursive=True):
            try:
                below += p.memory_info().rss
            except psutil.Error:  # ended between the listing and the reading
                pass
        return own, below
    except psutil.Error:
        return 0, 0


def _proc_tree_rss(pid: int) -> tuple[int, int]:
    page = os.sysconf("SC_PAGE_SIZE")
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass

    def rss(p: int) -> int:
        try:
            return int((Path("/proc") / str(p) / "statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            return 0

    below, todo = [], [pid]
    while todo:
        kids = [c for c, pp in parent.items() if pp == todo.pop()]
        below += kids
        todo += kids
    return rss(pid), sum(rss(p) for p in below)


def measure(engine: str, n_clients: int, args: argparse.Namespace) -> dict[str, Any]:
    """One child run, sampled; its own figures with the peaks and the load around it."""
    out_file = Path(args.tmp) / f"crowd-{engine}-{n_clients}.json"
    cmd = [sys.executable, "-m", "benchmark.asv_bench.crowd", "--child", engine, str(n_clients), str(args.per_round),
           str(args.rounds), args.defense, str(out_file)]
    load0 = os.getloadavg()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL if args.quiet else None,
                            stderr=subprocess.DEVNULL if args.quiet else None)
    peak_below = peak_driver = 0
    while proc.poll() is None:
        own, below = tree_rss(proc.pid)
        peak_driver, peak_below = max(peak_driver, own), max(peak_below, below)
        time.sleep(args.every)
    if proc.returncode != 0 or not out_file.exists():
        raise RuntimeError(f"{' '.join(cmd)} exited with status {proc.returncode}")
    got = json.loads(out_file.read_text())
    out_file.unlink()
    return {"engine": engine, "clients": n_clients, "per_round": args.per_round, "defense": args.defense, **got,
            "driver_sampled_peak_mib": peak_driver / 2**20, "ray_peak_rss_sum_mib": peak_below / 2**20,
            "load_before": load0, "load_after": os.getloadavg(), "cpus": os.cpu_count()}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| engine | clients | per round | s per round (mean) | startup s | driver peak MiB | Ray peak RSS sum MiB "
            "| clients sampled | starts held | transcript payloads | load 1-min before/after |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        per = sum(r["round_s"]) / len(r["round_s"])
        startup = r["wall_s"] - sum(r["round_s"])
        ray = f"{r['ray_peak_rss_sum_mib']:.0f}" if r["engine"] != "inproc" else "-"
        lines.append(f"| {r['engine']} | {r['clients']} | {r['per_round']} | {per:.2f} | {startup:.1f} "
                     f"| {r['driver_maxrss_mib']:.0f} | {ray} | {r['clients_sampled']} | {r['starts_held']} "
                     f"| {r['transcript_payloads']} | {r['load_before'][0]:.2f}/{r['load_after'][0]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmark.asv_bench.crowd", description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--clients", default="100,1000", help="client counts, comma-separated (default 100,1000)")
    ap.add_argument("--engines", default="inproc,flower", help="engines, comma-separated (default inproc,flower)")
    ap.add_argument("--per-round", type=int, default=30, help="clients sampled per round (default 30)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds timed (default 3)")
    ap.add_argument("--defense", default="plain_lora", help="the defense (default plain_lora)")
    ap.add_argument("--every", type=float, default=0.25, help="seconds between memory samples (default 0.25)")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    ap.add_argument("--tmp", default="/tmp", help="where children leave their figures (default /tmp)")
    ap.add_argument("--quiet", action="store_true", help="hide the children's output (Flower's and Ray's logs)")
    args = ap.parse_args(argv)
    if args.child:
        engine, n, per, rounds, defense, out = args.child
        Path(out).write_text(json.dumps(child(engine, int(n), int(per), int(rounds), defense)))
        return 0
    rows = [measure(e, int(n), args) for e in args.engines.split(",") for n in args.clients.split(",")]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

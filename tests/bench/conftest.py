"""pytest-benchmark setup for tests/bench: the saved JSON says which libraries and hardware made it.

Why: saved runs are compared across days (``--benchmark-compare``); a number is only comparable when
torch, tenseal (SEAL), peft and the CPU/GPU are the same, so they go into ``machine_info``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Iterator
from typing import Any

import pytest

BENCH_THREADS = 1  # torch threads while a benchmark runs: stable timings on a shared machine, like asv
LIBRARIES = ("torch", "tenseal", "numpy", "peft", "transformers", "opacus", "pytest-benchmark", "she-lora-bench")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"available": False}
    if not torch.cuda.is_available():
        return {"available": False}
    props = torch.cuda.get_device_properties(0)
    return {"available": True, "name": props.name, "count": torch.cuda.device_count(),
            "memory_gb": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Pin torch's threads while a benchmark runs (``BENCH_THREADS``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(BENCH_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    machine_info["libraries"] = {lib: _version(lib) for lib in LIBRARIES}
    machine_info["cpu_model"] = _cpu_model()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["gpu"] = _gpu()
    machine_info["torch_threads"] = BENCH_THREADS

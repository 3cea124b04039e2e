"""Plug-ins the Python way: a defense from a package outside this tree, declared by an entry point in
its own metadata, is listed, shown and run on ``tiny``; a name two packages declare is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmark.contract.plugins import ATTACKS, DEFENSES, ENGINES

PLUGIN = '''
"""A researcher's own defense, in a package of its own."""

from typing import ClassVar

from defenses.plain_lora import PlainLoRA


class Sealed(PlainLoRA):
    """Plain LoRA under another name: enough to show the harness finds, describes and runs it."""

    name: ClassVar[str] = "sealed_plugin"
'''


def install(site: Path, package: str, entries: str) -> None:
    """A package and the ``.dist-info`` metadata pip would write for it, on a folder of ``sys.path``."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(PLUGIN)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entries))


def shebench(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "benchmark", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_the_suite_finds_its_own_components_through_entry_points():
    assert {"plain_lora", "dp", "dp_sgd", "full_he", "maskcrypt", "she_lora"} <= set(DEFENSES.names())
    assert {"dager", "mia", "token_leak"} <= set(ATTACKS.names())
    assert {"inproc", "flower"} <= set(ENGINES.names())
    assert DEFENSES.source("she_lora") == "she-lora-bench"  # declared by this distribution's metadata


def test_a_defense_from_a_package_outside_the_tree_is_listed_shown_and_run(tmp_path):
    site = tmp_path / "site"
    install(site, "shebench_sealed", """
        [shebench.defenses]
        sealed_plugin = shebench_sealed:Sealed
    """)
    listed = shebench(site, "list", "defenses", cwd=tmp_path)
    assert listed.returncode == 0 and "sealed_plugin" in listed.stdout.split(), listed.stderr
    shown = shebench(site, "show", "sealed_plugin", cwd=tmp_path)
    assert shown.returncode == 0 and "shebench_sealed:Sealed" in shown.stdout and "Plain LoRA under another name" in shown.stdout
    ran = shebench(site, "run", "--scenario", "tiny", "--defense", "sealed_plugin,dp+sealed_plugin", "--attack", "none",
                   "--out", str(tmp_path / "runs"), "--run-id", "plug", "-q", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "plug" / "rows.jsonl").read_text().splitlines()]
    assert {r["defense_stack"]: r["status"] for r in rows} == {"sealed_plugin": "ok", "dp+sealed_plugin": "ok"}


def test_a_name_two_packages_declare_is_refused_in_one_line(tmp_path):
    site = tmp_path / "site"
    install(site, "shebench_clash", """
        [shebench.defenses]
        plain_lora = shebench_clash:Sealed
    """)
    listed = shebench(site, "list", "defenses", cwd=tmp_path)
    assert listed.returncode == 2
    assert listed.stderr.strip().count("\n") == 0 and "declared twice" in listed.stderr
    assert "shebench-clash" in listed.stderr and "she-lora-bench" in listed.stderr


@pytest.mark.parametrize("registry", [DEFENSES, ATTACKS, ENGINES])
def test_registering_in_a_test_still_works_and_refresh_rereads_entry_points(registry):
    registry.register("zz_temp", "json:dumps")
    try:
        assert "zz_temp" in registry.names()
        registry.refresh()
        assert "zz_temp" in registry.names()  # explicit registrations survive a refresh
    finally:
        registry.unregister("zz_temp")

"""An asv environment that benchmarks any commit offline with the interpreter running asv.

Why: asv's own environments (virtualenv, conda, uv) build a fresh environment per commit and pip-install
the project and its dependencies, which needs the network and a multi-GB torch download. The
``existing`` environment (``--python=same``) needs neither but can only measure the working tree, so
``asv continuous`` and history runs over several commits are impossible with it.

This environment type (``"environment_type": "worktree"`` in asv.conf.json) keeps the dependencies of
the interpreter that runs asv (the project's .venv) and swaps only the project's own code: asv's git
plugin checks the commit out into the environment's build folder (a shared clone, cheap and offline)
and every benchmark process gets that folder first on its import path, ahead of the editable install
(through ``ASV_PYTHONPATH``: asv's runner script strips plain ``PYTHONPATH`` entries from ``sys.path``).
Nothing is built, installed or uninstalled. It lives in a folder without ``__init__.py`` so that
asv's benchmark discovery, which walks packages only, never imports it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from asv import util
from asv.console import log
from asv.environment import Environment, EnvironmentUnavailable


def _running_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


class WorktreeEnvironment(Environment):
    """The running interpreter plus a checkout of the benchmarked commit on ``PYTHONPATH``."""

    tool_name = "worktree"
    matches_python_fallback = False

    def __init__(self, conf: Any, python: str, requirements: dict, tagged_env_vars: dict) -> None:
        if not self.matches(python):
            raise EnvironmentUnavailable(
                f"worktree environments only run the interpreter running asv (Python {_running_version()}), "
                f"not {python!r}"
            )
        if requirements:
            raise EnvironmentUnavailable("worktree environments cannot install a requirements matrix")
        self._executable = sys.executable
        self._python = _running_version()
        self._requirements: dict = {}
        super().__init__(conf, _running_version(), {}, tagged_env_vars)

    @classmethod
    def matches(cls, python: str) -> bool:
        return python in (_running_version(), "same", sys.executable)

    def check_presence(self) -> bool:
        return os.path.isfile(os.path.join(self._path, "asv-env-info.json"))

    def _setup(self) -> None:
        os.makedirs(self._path, exist_ok=True)

    def can_install_project(self) -> bool:
        return True

    def install_project(self, conf: Any, repo: Any, commit_hash: str) -> None:
        """Check the commit out into the build folder; no build, install or uninstall step, so the
        project installed in the interpreter (editable) is never touched."""
        if self._get_installed_commit_hash() == commit_hash and os.path.isdir(self._build_root):
            self._set_commit_hash(commit_hash)
            return
        self._set_installed_commit_hash(None)
        log.info(f"Checking out {repo.get_decorated_hash(commit_hash, 8)} into {self._build_root}")
        self.checkout_project(repo, commit_hash)
        self._set_installed_commit_hash(commit_hash)

    def find_executable(self, executable: str) -> str:
        if executable == "python":
            return self._executable
        return util.which(executable, [os.path.dirname(self._executable)])

    def run(self, args: list[str], **kwargs: Any) -> Any:
        env = dict(kwargs.pop("env", None) or os.environ)
        env.update(self._global_env_vars)
        env["ASV_PYTHONPATH"] = os.pathsep.join(p for p in (self._build_root, env.get("ASV_PYTHONPATH", "")) if p)
        return util.check_output([self._executable, *args], env=env, **kwargs)

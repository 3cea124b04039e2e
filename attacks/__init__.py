"""Attacks, one module each. They are declared as entry points (``shebench.attacks`` in pyproject.toml)
and listed by ``benchmark.contract.plugins.ATTACKS``, re-exported here for convenience."""

from benchmark.contract.plugins import ATTACKS

__all__ = ["ATTACKS"]

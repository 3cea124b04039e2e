"""Defenses and wrappers, one module each. They are declared as entry points (``shebench.defenses`` in
pyproject.toml) and listed by ``benchmark.contract.plugins.DEFENSES``, re-exported here for convenience."""

from benchmark.contract.plugins import DEFENSES

__all__ = ["DEFENSES"]

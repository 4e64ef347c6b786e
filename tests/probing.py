"""A registry of config-field probes: ``PROBES, probe = probe_registry()``; ``@probe("a", "b")`` registers a
function that shows fields ``a`` and ``b`` change behaviour (used by tests/config/test_every*_field.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Probe = Callable[[Path], None]


def probe_registry() -> tuple[dict[str, Probe], Callable[..., Callable[[Probe], Probe]]]:
    probes: dict[str, Probe] = {}

    def probe(*names: str) -> Callable[[Probe], Probe]:
        def register(fn: Probe) -> Probe:
            for name in names:
                probes[name] = fn
            return fn
        return register

    return probes, probe

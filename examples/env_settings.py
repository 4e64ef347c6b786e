"""Read example settings from environment variables (the seed README's MODEL_PATH=... ./run_*.sh style)."""

from __future__ import annotations

import os
from typing import Any, Callable


def env(name: str, default: Any, cast: Callable[[str], Any] = str) -> Any:
    """``cast(os.environ[name])``, or ``default`` when the variable is unset or empty."""
    value = os.environ.get(name)
    return default if value in (None, "") else cast(value)

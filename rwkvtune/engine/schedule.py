"""Learning rate at each optimizer step: linear warmup, then cosine / linear / constant decay."""

from __future__ import annotations

import math


def lr_at_step(step: int, *, total_steps: int, lr_init: float, lr_final: float, warmup_steps: int,
               schedule: str = "cosine") -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Warmup rises linearly from ``lr_init / warmup_steps`` to ``lr_init`` over the first ``warmup_steps``
    steps; then the rate moves from ``lr_init`` to ``lr_final`` at the last step along the schedule
    (``constant`` stays at ``lr_init``).
    """
    if step < warmup_steps:
        return lr_init * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr_init
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        weight = 1.0 - progress
    elif schedule == "cosine":
        weight = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown lr_schedule {schedule!r}; choose cosine, linear or constant")
    return lr_final + (lr_init - lr_final) * weight

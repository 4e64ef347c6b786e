"""Calling reward functions with TRL's convention and checking what they return.

A reward function is called with keyword arguments only::

    f(prompts=[...], completions=[...], completion_ids=[[...], ...], trainer_state=..., **dataset_columns)

with one entry per completion in every list (each prompt repeated ``num_generations`` times), and returns
one finite number per completion, or ``None`` (or NaN) where it does not apply (treated as missing, not as 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch

RewardFunc = Callable[..., Sequence[float | None]]


@dataclass(frozen=True)
class RewardState:
    """What TRL passes as ``trainer_state``, for curricula: where training stands."""

    global_step: int
    epoch: int
    max_steps: int


def reward_names(funcs: Sequence[RewardFunc]) -> list[str]:
    """Metric names: each function's ``__name__`` (its class name for callable objects), made unique."""
    names: list[str] = []
    for func in funcs:
        name = getattr(func, "__name__", type(func).__name__)
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


def compute_rewards(funcs: Sequence[RewardFunc], names: Sequence[str], *, prompts: Sequence[Any],
                    completions: Sequence[Any], completion_ids: Sequence[Sequence[int]],
                    columns: Mapping[str, Sequence[Any]], trainer_state: RewardState) -> torch.Tensor:
    """``[N, K]`` float64 rewards of the ``N`` completions by the ``K`` functions, NaN where one returned ``None``.

    Raises:
        RuntimeError: a function raised (the message names it and keeps the cause).
        ValueError: a function returned the wrong number of values, a value that is not a number, or an
            infinite one.
    """
    n = len(completions)
    out = torch.empty(n, len(funcs), dtype=torch.float64)
    for j, (func, name) in enumerate(zip(funcs, names)):
        try:
            values = func(prompts=list(prompts), completions=list(completions),
                          completion_ids=[list(ids) for ids in completion_ids], trainer_state=trainer_state,
                          **{key: list(value) for key, value in columns.items()})
        except Exception as err:
            raise RuntimeError(f"reward function {name!r} raised {type(err).__name__}: {err}") from err
        values = list(values) if values is not None else []
        if len(values) != n:
            raise ValueError(f"reward function {name!r} returned {len(values)} values for {n} completions; "
                             "return one number (or None) per completion")
        for i, value in enumerate(values):
            if value is None:
                out[i, j] = math.nan
            elif isinstance(value, Real) and not isinstance(value, bool):
                out[i, j] = float(value)
            elif isinstance(value, torch.Tensor) and value.numel() == 1:
                out[i, j] = float(value)
            else:
                raise ValueError(f"reward function {name!r} returned {value!r} for completion {i}; rewards must "
                                 "be numbers or None")
            if math.isinf(out[i, j]):
                # an infinite reward turns its whole group's advantages into NaN, which train as 0
                raise ValueError(f"reward function {name!r} returned {float(out[i, j])} for completion {i}; "
                                 "rewards must be finite (None or NaN where the function does not apply)")
    return out

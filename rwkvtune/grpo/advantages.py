"""Rewards to advantages, as TRL 1.16's ``GRPOTrainer`` computes them (spec ``grpo.md`` sections 2.4 and 3).

Rows come in groups of ``num_generations`` consecutive completions of one prompt. A reward function may
return ``None`` for a row it does not apply to (NaN here): it then contributes nothing to that row's
weighted sum, and a row no function scored is "unscorable", left out of every statistic and given
advantage 0. Standard deviations are Bessel-corrected; 1e-4 is added to them, outside the square root.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rwkvtune.config.grpo import AGGREGATIONS, SCALE_REWARDS

_STD_EPS = 1e-4


@dataclass(frozen=True)
class RewardStats:
    """What the advantages were computed from, for logging.

    Attributes:
        rewards: ``[N]`` weighted reward per completion (NaN for unscorable rows).
        per_function_mean, per_function_std: ``[K]`` nan-aware mean and Bessel std of each function's rewards.
        reward_mean, reward_std: nan-aware mean and Bessel std of ``rewards`` over the batch.
        frac_reward_zero_std: fraction of rows whose group std (batch std under ``scale_rewards="batch"``)
            is 0 (within 1e-8): rows that carry no policy gradient.
    """

    rewards: torch.Tensor
    per_function_mean: torch.Tensor
    per_function_std: torch.Tensor
    reward_mean: float
    reward_std: float
    frac_reward_zero_std: float


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Bessel-corrected standard deviation ignoring NaN (NaN where fewer than two values are present)."""
    present = ~torch.isnan(x)
    count = present.sum(dim=dim, keepdim=True) if dim is not None else present.sum()
    mean = torch.nansum(x, dim=dim, keepdim=True) / count if dim is not None else torch.nansum(x) / count
    squares = torch.where(present, (x - mean) ** 2, torch.zeros_like(x))
    total = squares.sum(dim=dim, keepdim=keepdim) if dim is not None else squares.sum()
    if dim is not None and not keepdim:
        count = count.squeeze(dim)
    return torch.sqrt(total / (count - 1))


def weighted_rewards(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` rewards (NaN = not applicable) -> ``[N]`` NaN-aware weighted sums (NaN if no function scored)."""
    summed = torch.nansum(rewards_per_func * weights, dim=1)
    return torch.where(torch.isnan(rewards_per_func).all(dim=1), torch.full_like(summed, float("nan")), summed)


def compute_advantages(rewards_per_func: torch.Tensor, num_generations: int, *, weights: torch.Tensor | None = None,
                       scale_rewards: str = "group",
                       multi_objective_aggregation: str = "sum_then_normalize") -> tuple[torch.Tensor, RewardStats]:
    """One advantage per completion.

    Args:
        rewards_per_func: ``[N, K]`` reward of each completion by each function, NaN where a function returned
            ``None``; ``N`` a multiple of ``num_generations`` (groups are consecutive rows).
        num_generations: completions per prompt (``G``).
        weights: ``[K]`` reward weights (default all 1; not renormalised).
        scale_rewards: ``"group"``: divide by the group std; ``"batch"``: by the batch std; ``"none"``.
            The mean subtracted is always the group's.
        multi_objective_aggregation: ``"sum_then_normalize"`` (weighted sum, then the above), or
            ``"normalize_then_sum"`` (GDPO: standardise each function within groups, sum, standardise the
            batch; ``scale_rewards`` is then ignored).

    Returns:
        ``(advantages [N], stats)``; unscorable rows and groups of one scorable row get 0.
    """
    if scale_rewards not in SCALE_REWARDS or multi_objective_aggregation not in AGGREGATIONS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS} and multi_objective_aggregation one of "
                         f"{AGGREGATIONS}; got {scale_rewards!r}, {multi_objective_aggregation!r}")
    n, k = rewards_per_func.shape
    if n % num_generations:
        raise ValueError(f"{n} completions do not form groups of num_generations={num_generations}")
    weights = torch.ones(k, dtype=rewards_per_func.dtype) if weights is None else weights.to(rewards_per_func)
    rewards = weighted_rewards(rewards_per_func, weights)
    grouped = rewards.view(-1, num_generations)
    group_mean = torch.nanmean(grouped, dim=1, keepdim=True)
    group_std = nanstd(grouped, dim=1, keepdim=True)
    batch_std = nanstd(rewards)
    if multi_objective_aggregation == "sum_then_normalize":
        advantages = (grouped - group_mean).view(-1)
        if scale_rewards == "group":
            advantages = advantages / (group_std.expand_as(grouped).reshape(-1) + _STD_EPS)
        elif scale_rewards == "batch":
            advantages = advantages / (batch_std + _STD_EPS)
    else:
        per_func = rewards_per_func.view(-1, num_generations, k)
        standardized = (per_func - torch.nanmean(per_func, dim=1, keepdim=True)) / (
            nanstd(per_func, dim=1, keepdim=True) + _STD_EPS)
        summed = weighted_rewards(standardized.view(n, k), weights)
        advantages = (summed - torch.nanmean(summed)) / (nanstd(summed) + _STD_EPS)
    advantages = torch.nan_to_num(advantages, nan=0.0)
    spread = batch_std.expand(n) if scale_rewards == "batch" else group_std.expand_as(grouped).reshape(-1)
    zero_std = torch.isclose(spread, torch.zeros_like(spread), atol=1e-8)
    stats = RewardStats(
        rewards=rewards,
        per_function_mean=torch.nanmean(rewards_per_func, dim=0),
        per_function_std=torch.stack([nanstd(rewards_per_func[:, j]) for j in range(k)]),
        reward_mean=float(torch.nanmean(rewards)),
        reward_std=float(batch_std),
        frac_reward_zero_std=float(zero_std.float().mean()),
    )
    return advantages, stats

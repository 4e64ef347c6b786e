"""The GRPO loss of one micro-batch, exactly as TRL 1.16's ``GRPOTrainer._compute_loss`` (spec ``grpo.md`` section 4).

Inputs are per completion token: the current policy's log-probs (differentiable), the old and reference
policies' (constants), the entropies of the tempered distribution, and the loss mask. The returned loss is
already scaled for gradient accumulation: summing it over a window's micro-batches gives the window's
objective, as TRL's trainer does with ``loss_is_scaled_for_ga``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rwkvtune.config.grpo import LOSS_TYPES

_CLIPPED = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
_GLOBAL_TOKEN_MEAN = ("dapo", "cispo", "vespo")


@dataclass(frozen=True)
class GRPOLossSettings:
    """The loss knobs of ``GRPOConfig`` (TRL's names and defaults).

    Attributes:
        loss_type: one of :data:`LOSS_TYPES`.
        epsilon, epsilon_high: the clip range ``[1 - epsilon, 1 + epsilon_high]`` (``epsilon_high`` defaults to
            ``epsilon``); for ``cispo`` ``epsilon_high`` is the absolute cap on the ratio.
        delta: cap on the unclipped ratio (two-sided clipping), or ``None``.
        beta: weight of the k3 KL to the reference policy.
        importance_sampling_level: ``"token"`` or ``"sequence"`` (GSPO: the length-normalised sequence ratio).
        use_bias_correction_kl: multiply the KL by the (differentiable) importance ratio.
        top_entropy_quantile: train only tokens whose entropy is in the top fraction (1 = all).
        off_policy_mask_threshold: drop negative-advantage sequences whose mean (old - current) log-prob
            exceeds this, or ``None``.
        entropy_coef: weight of the entropy bonus subtracted from the loss.
        max_completion_length: ``dr_grpo``'s constant normaliser.
        sapo_temperature_pos/neg, vespo_k_pos/neg, vespo_lambda_pos/neg: those losses' parameters.
    """

    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    beta: float = 0.0
    importance_sampling_level: str = "token"
    use_bias_correction_kl: bool = True
    top_entropy_quantile: float = 1.0
    off_policy_mask_threshold: float | None = None
    entropy_coef: float = 0.0
    max_completion_length: int = 256
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0

    @property
    def epsilon_upper(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


def grpo_loss(logps: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, settings: GRPOLossSettings, *,
              old_logps: torch.Tensor | None = None, ref_logps: torch.Tensor | None = None,
              entropies: torch.Tensor | None = None, num_items_in_batch: float | None = None,
              num_processes: int = 1, grad_accum: int = 1, steps_per_generation: int = 1,
              batch_rows: int | None = None, batch_tokens: float | None = None,
              gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one micro-batch on one process, and TRL's metrics for it.

    Args:
        logps: ``[B, T]`` log-probs of the sampled completion tokens under the current policy (with grad).
        mask: ``[B, T]`` loss mask (1 on completion tokens, EOS included; 0 on padding and masked rows).
        advantages: ``[B]`` one per completion.
        settings: the loss knobs.
        old_logps: ``[B, T]`` log-probs at sampling time; ``None`` = on-policy (``old = logps.detach()``).
        ref_logps: ``[B, T]`` reference-policy log-probs (needed when ``settings.beta != 0``).
        entropies: ``[B, T]`` entropies of the tempered distribution (for the entropy mask, bonus, metric).
        num_items_in_batch: active tokens of the whole generation batch on all processes (``dapo``, ``cispo``,
            ``vespo``).
        num_processes, grad_accum, steps_per_generation: ``P``, ``GA`` and ``S`` of the normalisers.
        batch_rows, batch_tokens: rows and loss tokens of the whole micro-batch when these rows are only a
            part of it (its forward split in pieces): the per-row and per-token means then use the whole
            micro-batch's counts, so the pieces' losses add up to the micro-batch's.
        gather: ``[n] -> [all processes' n]``: the entropy threshold of ``top_entropy_quantile`` is taken over
            every process's active tokens, as TRL does (default: this process's only).

    Returns:
        ``(loss, metrics)``; values at masked positions never matter.
    """
    s = settings
    if s.loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {s.loss_type!r}")
    mask = mask.to(logps.dtype)
    # Masked positions may hold anything (even inf): zero them so that no NaN reaches a gradient.
    logps = torch.where(mask.bool(), logps, torch.zeros_like(logps))
    old = logps.detach() if old_logps is None else torch.where(mask.bool(), old_logps, torch.zeros_like(logps))
    adv = advantages.to(logps.dtype).unsqueeze(1)                                   # [B, 1]
    tokens = mask.sum(dim=1).clamp(min=1.0)                                         # [B]
    log_ratio = logps - old
    if s.importance_sampling_level == "sequence":
        log_weight = ((log_ratio * mask).sum(dim=1) / tokens).unsqueeze(1)        # [B, 1]
    elif s.importance_sampling_level == "token":
        log_weight = log_ratio
    else:
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence'; got {s.importance_sampling_level!r}")
    ratio = torch.exp(log_weight)

    term, metrics = _policy_term(s, logps, old, mask, ratio, adv)
    policy_mask = mask
    if s.off_policy_mask_threshold is not None:
        drift = ((old - logps.detach()) * mask).sum(dim=1) / tokens
        keep = ~((adv.squeeze(1) < 0) & (drift > s.off_policy_mask_threshold))
        term = term * keep.to(term.dtype).unsqueeze(1)
    if s.top_entropy_quantile < 1.0:
        if entropies is None:
            raise ValueError("top_entropy_quantile < 1 needs the token entropies")
        active = entropies[mask.bool()].detach()
        if gather is not None:
            active = gather(active)
        if active.numel():
            threshold = torch.quantile(active.float(), 1.0 - s.top_entropy_quantile).to(entropies.dtype)
            high = ((entropies >= threshold) & mask.bool()).to(term.dtype)
        else:  # no active token anywhere: nothing to keep
            high = torch.zeros_like(term)
        term = term * high
        policy_mask = mask * high
    if s.beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs the reference log-probs")
        ref = torch.where(mask.bool(), ref_logps, torch.zeros_like(logps))
        gap = ref - logps
        kl = torch.exp(gap) - gap - 1
        if s.use_bias_correction_kl:
            kl = kl * ratio
        term = term + s.beta * kl
        metrics["kl"] = _token_mean(kl.detach(), mask)

    rows = term.shape[0] if batch_rows is None else batch_rows
    total_tokens = mask.sum().clamp(min=1.0) if batch_tokens is None else max(batch_tokens, 1.0)
    loss = _aggregate(s, term, mask, num_items_in_batch, num_processes, grad_accum, steps_per_generation, rows,
                      total_tokens)
    if entropies is not None:
        metrics["entropy"] = _token_mean(entropies.detach(), mask)
    if s.entropy_coef:
        if entropies is None:
            raise ValueError("entropy_coef needs the token entropies")
        metrics["policy_loss"] = float(loss.detach())
        metrics["entropy_coef"] = s.entropy_coef
        # TRL: a token mean over the policy mask (the loss mask, times the entropy mask when that is on)
        policy_tokens = total_tokens if batch_tokens is not None and s.top_entropy_quantile >= 1.0 \
            else policy_mask.sum().clamp(min=1.0)
        loss = loss - s.entropy_coef * (entropies * policy_mask).sum() / policy_tokens / grad_accum
    # The clip metrics see the ratio after the delta cap, as TRL's do.
    capped = ratio if s.delta is None or s.loss_type not in _CLIPPED else torch.clamp(ratio, max=s.delta)
    metrics.update(_ratio_metrics(s, capped.detach(), adv, mask))
    return loss, metrics


def _policy_term(s: GRPOLossSettings, logps: torch.Tensor, old: torch.Tensor, mask: torch.Tensor,
                 ratio: torch.Tensor, adv: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The per-token policy loss of ``s.loss_type`` (spec section 4.2), ``[B, T]``, and its own metrics."""
    if s.loss_type in _CLIPPED:
        unclipped = ratio if s.delta is None else torch.clamp(ratio, max=s.delta)
        clipped = torch.clamp(ratio, 1 - s.epsilon, 1 + s.epsilon_upper)
        return -torch.min(unclipped * adv, clipped * adv), {}
    if s.loss_type == "cispo":
        return -torch.clamp(ratio, max=s.epsilon_upper).detach() * adv * logps, {}
    if s.loss_type == "sapo":
        tau = torch.where(adv > 0, torch.full_like(adv, s.sapo_temperature_pos),
                          torch.full_like(adv, s.sapo_temperature_neg))
        return -(4 / tau) * torch.sigmoid(tau * (ratio - 1)) * adv, {}
    # vespo: a detached sequence weight phi on REINFORCE
    log_w = (torch.clamp(logps - old, -20, 20) * mask).sum(dim=1, keepdim=True)
    log_w = torch.clamp(log_w, math.log(1e-8), 20).detach()
    positive = adv >= 0
    k = torch.where(positive, torch.full_like(adv, s.vespo_k_pos), torch.full_like(adv, s.vespo_k_neg))
    lam = torch.where(positive, torch.full_like(adv, s.vespo_lambda_pos), torch.full_like(adv, s.vespo_lambda_neg))
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
    phi = torch.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)
    return -phi * adv * logps, {"vespo/phi_seq_mean": float(phi.mean())}


def _aggregate(s: GRPOLossSettings, term: torch.Tensor, mask: torch.Tensor, num_items_in_batch: float | None,
               num_processes: int, grad_accum: int, steps_per_generation: int, rows: int,
               tokens: torch.Tensor | float) -> torch.Tensor:
    """The loss-type's normalisation (spec section 4.4), already divided for gradient accumulation."""
    masked = term * mask
    if s.loss_type in ("grpo", "sapo"):
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).sum() / rows / grad_accum
    if s.loss_type == "bnpo":
        return masked.sum() / tokens / grad_accum
    if s.loss_type == "dr_grpo":
        return masked.sum() / (rows * s.max_completion_length) / grad_accum
    if s.loss_type == "luspo":
        return masked.sum(dim=1).sum() / rows / grad_accum
    if num_items_in_batch is None:
        raise ValueError(f"loss_type={s.loss_type!r} needs num_items_in_batch (active tokens in the generation batch)")
    # max(., 1) as every mask count: a rollout with every completion masked out gives 0, not NaN
    normalizer = max(num_items_in_batch, 1.0) / num_processes * grad_accum / steps_per_generation
    return masked.sum() / normalizer


def _token_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values * mask).sum() / mask.sum().clamp(min=1.0))


def _ratio_metrics(s: GRPOLossSettings, ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """TRL's clip metrics: token means (sequence means at sequence level) of the clipped indicators."""
    def mean(indicator: torch.Tensor) -> float:
        return float(indicator.mean()) if indicator.shape[1] == 1 else _token_mean(indicator, mask)

    if s.loss_type == "cispo":
        return {"cispo_clip_ratio": mean(((ratio > s.epsilon_upper) & (adv > 0)).to(mask.dtype))}
    if s.loss_type not in _CLIPPED:
        return {}
    low = ((ratio < 1 - s.epsilon) & (adv < 0)).to(mask.dtype)
    high = ((ratio > 1 + s.epsilon_upper) & (adv > 0)).to(mask.dtype)
    per_row = (lambda x: x.squeeze(1)) if ratio.shape[1] == 1 else (
        lambda x: (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0))
    return {"clip_ratio/low_mean": mean(low), "clip_ratio/high_mean": mean(high),
            "clip_ratio/region_mean": mean(torch.maximum(low, high)),
            "clip_ratio/low_min": float(per_row(low).min()), "clip_ratio/high_max": float(per_row(high).max())}

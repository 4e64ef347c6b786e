"""DPO preference losses of one batch, exactly as TRL 1.16's ``DPOTrainer._compute_loss``.

Only the reverse-KL (standard DPO) parameterisation is implemented, without LD-DPO's length weighting or WPO
weighting: TRL's defaults ``f_divergence_type="reverse_kl"``, ``ld_alpha=None``, ``use_weighting=False``.

The trainer feeds the policy's per-token log-probs of the chosen and of the rejected answers (with grad), their
masks, and the reference model's summed log-probs (constants). The loss is a weighted sum over the configured loss
types of each type's batch-mean per-pair loss, as TRL combines them; the tests check every type against numbers
produced by TRL's own code (``tests/dpo/data/dpo_vectors.json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# TRL 1.16's loss names, and the older names still accepted ("aot_pair" is 1.16's "aot_unpaired")
from rwkvtune.config.dpo import LOSS_ALIASES, LOSS_TYPES


@dataclass(frozen=True)
class DPOLossSettings:
    """The loss knobs of TRL's ``DPOConfig`` (TRL's names and defaults), plus two older-TRL options.

    Attributes:
        beta: inverse temperature of the implicit reward ``beta * (log pi - log pi_ref)``; for ``ipo`` the
            regulariser tau, for ``sppo_hard`` the margin ``0.5 / beta``.
        loss_type: one or more of :data:`LOSS_TYPES` (or an alias in :data:`LOSS_ALIASES`, mapped on creation);
            a single string is taken as a one-element tuple.
        loss_weights: one weight per loss type; ``None`` = all 1.0.
        label_smoothing: the assumed probability that a preference label is flipped (``robust``, ``aot``,
            ``aot_unpaired``), or EXO's epsilon (``exo_pair``, which needs it > 0).
        discopop_tau: DiscoPOP's temperature of the logistic/exponential blend.
        rpo_alpha: older TRL's RPO: adds ``rpo_alpha`` x the chosen tokens' mean negative log-likelihood; equals
            TRL 1.16's ``loss_type=[..., "sft"]`` with that weight. ``None`` = off.
        reference_free: the reference log-probs are taken as 0 (older TRL's ``reference_free``), so no reference
            model is needed.
    """

    beta: float = 0.1
    loss_type: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] | None = None
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05
    rpo_alpha: float | None = None
    reference_free: bool = False

    def __post_init__(self):
        # Normalise what configs and command lines hand over (a bare string, lists, old names), so the stored
        # settings always hold a tuple of TRL 1.16 names; frozen, hence object.__setattr__.
        names = (self.loss_type,) if isinstance(self.loss_type, str) else tuple(self.loss_type)
        object.__setattr__(self, "loss_type", tuple(LOSS_ALIASES.get(name, name) for name in names))
        if self.loss_weights is not None:
            object.__setattr__(self, "loss_weights", tuple(float(w) for w in self.loss_weights))

    @property
    def weights(self) -> tuple[float, ...]:
        """One weight per loss type (the configured ones, or all 1.0)."""
        return self.loss_weights if self.loss_weights is not None else (1.0,) * len(self.loss_type)


def check_settings(settings: DPOLossSettings) -> list[str]:
    """Problems with ``settings``, one message each; empty when they are usable.

    Mirrors TRL's checks (``DPOConfig.__post_init__``: weights one per loss type; ``DPOTrainer.__init__``:
    ``exo_pair`` needs label smoothing > 0, ``robust`` needs it in [0, 0.5)) and adds the ones TRL leaves to
    chance (a non-positive beta or tau divides by zero or flips the objective; smoothing >= 0.5 makes the flipped
    label the likelier one, and ``robust`` divides by ``1 - 2 * label_smoothing``).
    """
    problems = []
    if not settings.loss_type:
        problems.append("loss_type is empty; give at least one of " + ", ".join(LOSS_TYPES))
    unknown = [name for name in settings.loss_type if name not in LOSS_TYPES]
    if unknown:
        aliases = ", ".join(f"{old!r} (= {new!r})" for old, new in LOSS_ALIASES.items())
        problems.append(f"unknown DPO loss type(s) {', '.join(map(repr, unknown))}; valid: "
                        f"{', '.join(LOSS_TYPES)}; also accepted: {aliases}")
    if settings.loss_weights is not None and len(settings.loss_weights) != len(settings.loss_type):
        problems.append(f"loss_weights must have one weight per loss type: got {len(settings.loss_weights)} "
                        f"weight(s) for {len(settings.loss_type)} loss type(s)")
    if settings.loss_weights is not None and not all(math.isfinite(w) for w in settings.loss_weights):
        problems.append(f"loss_weights must be finite, got {list(settings.loss_weights)}")
    if not (math.isfinite(settings.beta) and settings.beta > 0):
        problems.append(f"beta must be > 0, got {settings.beta}")
    if not 0.0 <= settings.label_smoothing < 0.5:
        problems.append(f"label_smoothing must lie in [0, 0.5), got {settings.label_smoothing}")
    if "exo_pair" in settings.loss_type and settings.label_smoothing == 0.0:
        problems.append("the 'exo_pair' loss needs label_smoothing > 0 (it takes log(label_smoothing)); "
                        "the EXO paper recommends 1e-3")
    if not (math.isfinite(settings.discopop_tau) and settings.discopop_tau > 0):
        problems.append(f"discopop_tau must be > 0, got {settings.discopop_tau}")
    if settings.rpo_alpha is not None and not (math.isfinite(settings.rpo_alpha) and settings.rpo_alpha >= 0):
        problems.append(f"rpo_alpha must be >= 0 (or None), got {settings.rpo_alpha}")
    return problems


@dataclass
class DPOTerms:
    """Per-pair quantities the trainer logs (TRL's ``logps/*`` and ``rewards/*``); every tensor ``[B]``, detached.

    Attributes:
        chosen_logps, rejected_logps: the policy's summed log-probs of each answer.
        chosen_rewards, rejected_rewards: the implicit rewards ``beta * (logps - ref_logps)``.
    """

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        """``[B]`` chosen minus rejected reward (TRL's ``rewards/margins`` is its mean)."""
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        """``[B]`` 1.0 where the chosen answer out-rewards the rejected one (TRL's ``rewards/accuracies``)."""
        return (self.chosen_rewards > self.rejected_rewards).to(self.chosen_rewards.dtype)


def _smoothed_sigmoid(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """``[B]`` the logistic loss of the preference with probability ``label_smoothing`` that it is flipped."""
    return -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


def _per_pair_loss(loss_type: str, s: DPOLossSettings, *, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                   ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, chosen_lens: torch.Tensor,
                   rejected_lens: torch.Tensor, sft: torch.Tensor) -> torch.Tensor:
    """``[B]`` one loss type's loss of each pair (its batch mean is what enters the total)."""
    beta, ls = s.beta, s.label_smoothing
    chosen_ratio = chosen_logps - ref_chosen  # log pi/pi_ref of the chosen answer
    rejected_ratio = rejected_logps - ref_rejected
    z = beta * (chosen_ratio - rejected_ratio)  # the DPO logit: reward margin
    if loss_type == "sigmoid":
        return -F.logsigmoid(z)
    if loss_type == "hinge":
        return torch.relu(1 - z)
    if loss_type in ("ipo", "sigmoid_norm"):
        # Both compare per-token log ratios: the summed ratios scale with the answer length, so they are divided
        # by it (at least 1, as TRL clamps), which keeps beta comparable across lengths.
        per_token_margin = chosen_ratio / chosen_lens - rejected_ratio / rejected_lens
        if loss_type == "ipo":
            return (per_token_margin - 1 / (2 * beta)) ** 2  # IPO eq. 17, beta playing tau
        return -F.logsigmoid(beta * per_token_margin)
    if loss_type == "exo_pair":
        # EXO-pref (K = 2): KL(softmax over {chosen, rejected} of the rewards || [1 - eps, eps]), expanded.
        # TRL makes eps a default-dtype (float32) tensor, so its two log constants carry float32 rounding (~1e-8
        # relative) even in a float64 run; rounding them the same way keeps float64 results equal to TRL's.
        eps = torch.tensor(ls, dtype=torch.float32, device=z.device)
        log_p_chosen, log_p_rejected = torch.log1p(-eps).to(z.dtype), torch.log(eps).to(z.dtype)
        return (torch.sigmoid(z) * (F.logsigmoid(z) - log_p_chosen)
                + torch.sigmoid(-z) * (F.logsigmoid(-z) - log_p_rejected))
    if loss_type == "nca_pair":
        chosen_reward, rejected_reward = beta * chosen_ratio, beta * rejected_ratio
        return -F.logsigmoid(chosen_reward) - 0.5 * F.logsigmoid(-chosen_reward) - 0.5 * F.logsigmoid(-rejected_reward)
    if loss_type == "robust":
        # Unbiased under label noise ls: (clean - flipped) / (1 - 2 ls); a different sign pattern from the
        # smoothed loss of aot, as in TRL.
        return (-(1 - ls) * F.logsigmoid(z) + ls * F.logsigmoid(-z)) / (1 - 2 * ls)
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * chosen_ratio) - F.logsigmoid(-beta * rejected_ratio)
    if loss_type == "sppo_hard":
        # Hard-probability SPPO: the winner's log ratio is pulled to +1/(2 beta), the loser's to -1/(2 beta).
        return (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2
    if loss_type == "aot":
        # Alignment via optimal transport: the batch's sorted policy margins against the sorted reference margins,
        # so pairs are matched by rank, not by index.
        policy_sorted, _ = torch.sort(chosen_logps - rejected_logps, dim=0)
        ref_sorted, _ = torch.sort(ref_chosen - ref_rejected, dim=0)
        return _smoothed_sigmoid(beta * (policy_sorted - ref_sorted), ls)
    if loss_type == "aot_unpaired":
        # The unpaired variant sorts the chosen and the rejected log ratios separately.
        chosen_sorted, _ = torch.sort(chosen_ratio, dim=0)
        rejected_sorted, _ = torch.sort(rejected_ratio, dim=0)
        return _smoothed_sigmoid(beta * (chosen_sorted - rejected_sorted), ls)
    if loss_type == "apo_zero":
        # APO eq. 7: for chosen answers better than the policy's own: raise chosen, lower rejected.
        return 1 - torch.sigmoid(beta * chosen_ratio) + torch.sigmoid(beta * rejected_ratio)
    if loss_type == "apo_down":
        # APO eq. 8: for chosen answers worse than the policy's own: lower both, the rejected more.
        return torch.sigmoid(beta * chosen_ratio) + 1 - torch.sigmoid(z)
    if loss_type == "discopop":
        # DiscoPOP eq. 5: a blend of the logistic and the exponential loss, mixed by sigmoid(margin / tau).
        mix = torch.sigmoid(z / s.discopop_tau)
        return -F.logsigmoid(z) * (1 - mix) + torch.exp(-z) * mix
    if loss_type == "sft":
        return sft.expand(chosen_logps.shape[0])  # a batch-level term; its mean is itself
    raise ValueError(f"unknown DPO loss type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")


def dpo_loss(chosen_token_logps: torch.Tensor, chosen_mask: torch.Tensor, rejected_token_logps: torch.Tensor,
             rejected_mask: torch.Tensor, ref_chosen_logps: torch.Tensor | None,
             ref_rejected_logps: torch.Tensor | None, settings: DPOLossSettings) -> tuple[torch.Tensor, DPOTerms]:
    """The DPO loss of one batch of preference pairs, and the per-pair terms TRL logs.

    Args:
        chosen_token_logps: ``[B, Tc]`` the policy's log-prob of each chosen-answer token (with grad); any value,
            even inf or nan, where ``chosen_mask`` is false.
        chosen_mask: ``[B, Tc]`` true on the chosen answer's tokens (bool, or 0/1).
        rejected_token_logps: ``[B, Tr]`` the same for the rejected answer (``Tr`` may differ from ``Tc``).
        rejected_mask: ``[B, Tr]``.
        ref_chosen_logps: ``[B]`` the reference model's summed log-prob of each chosen answer (a constant);
            may be ``None`` only when ``settings.reference_free``, and is ignored then.
        ref_rejected_logps: ``[B]`` the same for the rejected answers.
        settings: the loss knobs (checked with :func:`check_settings`).

    Returns:
        ``(loss, terms)``: the scalar loss ``sum_k weight_k * mean_b loss_k[b]`` (plus ``rpo_alpha`` x the chosen
        tokens' mean NLL when set), differentiable w.r.t. the token log-probs, in their dtype; and the detached
        :class:`DPOTerms`.
    """
    problems = check_settings(settings)
    if problems:
        raise ValueError("invalid DPO loss settings: " + "; ".join(problems))
    b = chosen_token_logps.shape[0]
    if chosen_mask.shape != chosen_token_logps.shape or rejected_mask.shape != rejected_token_logps.shape \
            or rejected_token_logps.shape[0] != b:
        raise ValueError(f"shape mismatch: chosen {tuple(chosen_token_logps.shape)} / mask "
                         f"{tuple(chosen_mask.shape)}, rejected {tuple(rejected_token_logps.shape)} / mask "
                         f"{tuple(rejected_mask.shape)}")
    chosen_mask, rejected_mask = chosen_mask.bool(), rejected_mask.bool()
    # where(), not a product: padding may hold inf/nan, and 0 * inf would poison the sum and its gradient
    chosen_logps = torch.where(chosen_mask, chosen_token_logps, 0).sum(dim=1)
    rejected_logps = torch.where(rejected_mask, rejected_token_logps, 0).sum(dim=1)

    if settings.reference_free:
        ref_chosen = torch.zeros_like(chosen_logps).detach()
        ref_rejected = torch.zeros_like(rejected_logps).detach()
    else:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError("reference log-probs are required unless settings.reference_free")
        # the reference is a constant; detach so a caller's graph through it cannot leak gradient
        ref_chosen = ref_chosen_logps.detach().to(chosen_logps.dtype).reshape(b)
        ref_rejected = ref_rejected_logps.detach().to(rejected_logps.dtype).reshape(b)

    chosen_lens = chosen_mask.sum(dim=1).clamp(min=1).to(chosen_logps.dtype)
    rejected_lens = rejected_mask.sum(dim=1).clamp(min=1).to(rejected_logps.dtype)
    # The SFT / RPO term is a token mean over the whole batch's chosen answers (not a mean of per-pair means).
    # TRL takes .mean() of the selected tokens, which is nan when there are none; dividing by a count clamped to 1
    # gives 0 there instead and the same value otherwise.
    sft = -torch.where(chosen_mask, chosen_token_logps, 0).sum() / chosen_mask.sum().clamp(min=1)

    loss = chosen_logps.new_zeros(())
    for loss_type, weight in zip(settings.loss_type, settings.weights):
        per_pair = _per_pair_loss(loss_type, settings, chosen_logps=chosen_logps, rejected_logps=rejected_logps,
                                  ref_chosen=ref_chosen, ref_rejected=ref_rejected, chosen_lens=chosen_lens,
                                  rejected_lens=rejected_lens, sft=sft)
        loss = loss + per_pair.mean() * weight
    if settings.rpo_alpha is not None:
        loss = loss + settings.rpo_alpha * sft

    terms = DPOTerms(
        chosen_logps=chosen_logps.detach(), rejected_logps=rejected_logps.detach(),
        chosen_rewards=settings.beta * (chosen_logps - ref_chosen).detach(),
        rejected_rewards=settings.beta * (rejected_logps - ref_rejected).detach())
    return loss, terms

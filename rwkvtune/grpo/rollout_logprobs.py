"""Log-probs of a sampled rollout, without gradient: under the policy as it sampled (the "old" log-probs of
the importance ratios) and under the reference (the starting policy, for the KL)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from rwkvtune.grpo.rollout import Rollout
from rwkvtune.model.continuations import score_continuations

#: Makes a context manager (``fabric.autocast``, ``model.disable_adapter``).
ContextFactory = Callable[[], contextlib.AbstractContextManager]


class RolloutScorer:
    """Scores a rollout's completions in forwards of ``prompts_per_forward`` prompt groups.

    Args:
        policy: the policy as training calls it (Fabric's wrapper with ``score`` marked as a forward method).
        num_generations, temperature: the run's group size and sampling temperature.
        prompts_per_forward: prompt groups per forward.
        device: where the forwards run.
        autocast: a context factory for the training forward's precision (Fabric's ``autocast``).
        reference: the starting policy when it is a module of its own (a frozen copy, or the starting state on
            the shared base); ``None`` for an adapter run, whose reference is ``policy`` with the adapter off.
        without_adapter: a context factory that switches the adapter off (the adapter model's
            ``disable_adapter``), for ``reference=None``.
    """

    def __init__(self, policy: nn.Module, *, num_generations: int, temperature: float, prompts_per_forward: int,
                 device: torch.device | str = "cpu", autocast: ContextFactory = contextlib.nullcontext,
                 reference: nn.Module | None = None, without_adapter: ContextFactory | None = None):
        self.policy, self.reference, self.without_adapter = policy, reference, without_adapter
        self.num_generations, self.temperature = num_generations, temperature
        self.prompts_per_forward, self.device, self.autocast = prompts_per_forward, device, autocast

    def old_logps(self, rollout: Rollout) -> torch.Tensor:
        """``[N, C]`` float32 log-probs of the rollout's loss tokens under the policy as it is now."""
        return self._logps(self.policy, rollout)

    def reference_logps(self, rollout: Rollout) -> torch.Tensor:
        """``[N, C]`` float32 log-probs under the starting policy: the copy, the starting state, or the
        adapter switched off."""
        if self.reference is not None:
            return self._logps(self.reference, rollout)
        if self.without_adapter is None:
            raise ValueError("no reference: pass reference (a module) or without_adapter (an adapter run)")
        with self.without_adapter():
            return self._logps(self.policy, rollout)

    @torch.no_grad()
    def _logps(self, model: nn.Module, rollout: Rollout) -> torch.Tensor:
        g, per_forward = self.num_generations, self.prompts_per_forward
        prompts, ids, mask = rollout.prompts, rollout.completion_ids, rollout.mask
        parts = []
        for start in range(0, len(prompts), per_forward):
            rows = slice(start * g, (start + per_forward) * g)
            with self.autocast():  # the training forward's precision
                logps, _ = score_continuations(model, [p.ids for p in prompts[start:start + per_forward]],
                                               ids[rows].to(self.device), mask[rows].to(self.device), per_prompt=g,
                                               temperature=self.temperature)
            parts.append(logps.float().cpu())
        return torch.cat(parts)

"""The record of one GRPO rollout: its prompts, sampled completions, rewards, advantages and log-probs.

``grpo.sampling`` makes it, ``grpo.rollout_logprobs`` adds the log-probs, ``grpo.records`` writes it as
JSON lines and ``grpo.rollout_buffer`` saves it with a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rwkvtune.data.prompts import PromptRow


@dataclass
class Rollout:
    """One rollout of ``P`` prompts x ``G`` completions (this process's share), and what the loss needs.

    Tensors are ``[N, C]`` / ``[N]`` with ``N = P x G``, prompt-major, on the CPU. ``sampled_mask`` marks
    the sampled tokens (what the rewards see); ``mask`` the tokens in the loss (truncated completions left
    out under ``mask_truncated_completions``). ``index`` numbers the rollout in the run; ``indices`` are
    its prompts' dataset rows; ``num_items`` is the loss tokens of the rollout on all processes.
    ``old_logps`` / ``ref_logps``: the log-probs at sampling time and under the reference, where needed.
    """

    index: int
    prompts: list[PromptRow]
    indices: list[int]
    completion_ids: torch.Tensor
    sampled_mask: torch.Tensor
    mask: torch.Tensor
    completions: list[str]
    finish_reasons: list[str]
    rewards_per_func: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    num_items: float
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None

    @property
    def num_generations(self) -> int:
        """Completions per prompt (``G``)."""
        return len(self.completions) // len(self.prompts)

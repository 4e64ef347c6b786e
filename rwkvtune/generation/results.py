"""What generation returns: one ``Completion`` per sample, and their padded ``[N, T]`` stack."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

FinishReason = Literal["stop", "length"]


@dataclass
class Completion:
    """One sampled completion.

    Attributes:
        prompt_index: which prompt it continues (results are ordered prompt-major).
        sample_index: which of the prompt's ``n`` samples it is.
        prompt_token_ids: the prompt's ids.
        token_ids: the sampled ids, including the one that completed a stop string or a stop id (the
            trainer must learn to emit it).
        text: the decoded completion, ending before the stop string; a stop id adds no text.
        logprobs: ``[len(token_ids)]`` float32 CPU: ``log_softmax(raw_logits / T)`` at each sampled token,
            ``T`` the sampling temperature (1 when greedy), before penalties, top-k and top-p.
        finish_reason: ``"stop"`` (stop id or string) or ``"length"`` (``max_new_tokens`` reached).
    """

    prompt_index: int
    sample_index: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    logprobs: torch.Tensor
    finish_reason: FinishReason

    @property
    def mask(self) -> torch.Tensor:
        """``[len(token_ids)]`` bool, all true: every token is a real completion token (padding appears
        only in :func:`pad_completions`)."""
        return torch.ones(len(self.token_ids), dtype=torch.bool)


@dataclass
class PaddedCompletions:
    """Completions stacked and right-padded to the longest.

    Attributes:
        token_ids: ``[N, T]`` int64, ``pad_token_id`` after each completion's end.
        logprobs: ``[N, T]`` float32, 0 on padding.
        mask: ``[N, T]`` bool, true on real completion tokens.
        prompt_index: ``[N]`` int64.
    """

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    mask: torch.Tensor
    prompt_index: torch.Tensor


def pad_completions(completions: Sequence[Completion], pad_token_id: int = 0,
                    length: int | None = None) -> PaddedCompletions:
    """Stack ``completions`` into right-padded ``[N, T]`` tensors (``T`` = the longest, or ``length``)."""
    longest = max((len(c.token_ids) for c in completions), default=0)
    width = longest if length is None else length
    if width < longest:
        raise ValueError(f"length={length} is shorter than the longest completion ({longest} tokens)")
    count = len(completions)
    token_ids = torch.full((count, width), pad_token_id, dtype=torch.long)
    logprobs = torch.zeros(count, width)
    mask = torch.zeros(count, width, dtype=torch.bool)
    for row, completion in enumerate(completions):
        size = len(completion.token_ids)
        token_ids[row, :size] = torch.tensor(completion.token_ids, dtype=torch.long)
        logprobs[row, :size] = completion.logprobs
        mask[row, :size] = True
    prompt_index = torch.tensor([c.prompt_index for c in completions], dtype=torch.long)
    return PaddedCompletions(token_ids, logprobs, mask, prompt_index)

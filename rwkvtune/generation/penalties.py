"""Repetition, presence and frequency penalties over the tokens each completion has generated."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rwkvtune.generation.params import SamplingParams


class Penalties:
    """Track what every live row has generated and penalise those tokens' logits.

    Work per step is proportional to the tokens generated so far (``B x t``), not to the vocabulary:
    the penalised logits are gathered at the generated ids, changed, and scattered back. A token that
    occurs twice is gathered twice and gets the same value both times, so duplicates are harmless.

    Args:
        params: the penalty values (see :class:`SamplingParams`).
        batch_size, vocab_size, max_new_tokens: sizes of the buffers.
        device: where the logits live.
    """

    def __init__(self, params: SamplingParams, batch_size: int, vocab_size: int, max_new_tokens: int,
                 device: torch.device):
        self.repetition = params.repetition_penalty
        self.presence = params.presence_penalty
        self.frequency = params.frequency_penalty
        self._history = torch.zeros(batch_size, max_new_tokens, dtype=torch.long, device=device)  # [B, T]
        # Occurrence counts [B, V] are only needed for the frequency penalty.
        self._counts = (torch.zeros(batch_size, vocab_size, device=device) if self.frequency != 0 else None)
        self._length = 0

    def apply(self, logits: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """Penalised copy of ``logits`` ``[b, V]`` float32, the batch rows ``rows`` (input left unchanged)."""
        if self._length == 0:
            return logits
        seen = self._history[rows, : self._length]  # [b, t]
        values = logits.gather(1, seen)
        if self.repetition != 1.0:
            values = torch.where(values > 0, values / self.repetition, values * self.repetition)
        if self.presence != 0.0:
            values = values - self.presence
        if self._counts is not None:
            values = values - self.frequency * self._counts[rows].gather(1, seen)
        return logits.scatter(1, seen, values)

    def record(self, tokens: torch.Tensor) -> None:
        """Add the tokens ``[B]`` just sampled."""
        self._history[:, self._length] = tokens
        self._length += 1
        if self._counts is not None:
            self._counts.scatter_add_(1, tokens[:, None], torch.ones_like(tokens[:, None], dtype=torch.float32))

    def select(self, rows: Sequence[int] | torch.Tensor) -> None:
        """Keep the rows at positions ``rows``, in that order."""
        self._history = self._history[rows]
        if self._counts is not None:
            self._counts = self._counts[rows]

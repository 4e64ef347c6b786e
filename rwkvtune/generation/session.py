"""Decode a batch of completions that start together: one token per live row per step, until all stop."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rwkvtune.generation.decode_step import StepFn
from rwkvtune.generation.params import SamplingParams
from rwkvtune.generation.penalties import Penalties
from rwkvtune.generation.randomness import UniformStreams
from rwkvtune.generation.results import Completion, FinishReason
from rwkvtune.generation.sampling import sample_next
from rwkvtune.generation.stopping import CompletionText
from rwkvtune.model import RWKVState
from rwkvtune.tokenizer import WorldTokenizer


class DecodeSession:
    """Completions decoded together in one batched ``step`` per token; finished rows leave the batch.

    Every live row has generated the same number of tokens (all start together and each step adds one
    to every live row), which keeps the history of the penalties rectangular.

    Args:
        step_fn: ``(token_ids [B], state) -> (logits [B, V], state)``; may update ``state`` in place.
        state: ``[B]`` states after the prompts, owned by the session.
        logits: ``[B, V]`` logits predicting each row's first completion token.
        params: sampling settings (``n`` is already applied: one row per completion).
        tokenizer: decodes the completions (text and stop strings).
        prompt_ids: ``(prompt_index, sample_index, prompt token ids)`` per row.
        seeds: one random seed per row (ignored when greedy).
    """

    def __init__(self, step_fn: StepFn, state: RWKVState, logits: torch.Tensor, *, params: SamplingParams,
                 tokenizer: WorldTokenizer, prompt_ids: Sequence[tuple[int, int, list[int]]],
                 seeds: Sequence[int]):
        batch, vocab = logits.shape
        device = logits.device
        self.params = params
        self._step_fn = step_fn
        self._state = state
        self._logits = logits
        self._prompts = list(prompt_ids)
        stop_ids = frozenset(params.stop_token_ids)
        self.texts = [CompletionText(tokenizer, params.stop, stop_ids) for _ in range(batch)]
        self._tokens: list[list[int]] = [[] for _ in range(batch)]
        self._logprobs = torch.zeros(params.max_new_tokens, batch, device=device)  # [T, B], step-major
        self._finish: list[FinishReason | None] = [None] * batch
        self._rows = list(range(batch))  # live row -> completion row
        self._live = torch.arange(batch, device=device)  # the same, on the device
        self._streams = None if params.greedy else UniformStreams(seeds)
        self._penalties = (Penalties(params, batch, vocab, params.max_new_tokens, device)
                           if params.has_penalties else None)
        self._length = 0

    @property
    def finished(self) -> bool:
        return not self._rows

    def advance(self) -> None:
        """Sample one token for every live row, retire rows that stopped, and step the rest.

        Call under ``torch.no_grad()``.
        """
        uniforms = self._streams.next() if self._streams is not None else None
        tokens, logprobs = sample_next(self._logits, self.params, uniforms, self._penalties)
        self._logprobs[self._length, self._live] = logprobs
        self._length += 1
        at_limit = self._length == self.params.max_new_tokens
        keep: list[int] = []
        for position, (row, token) in enumerate(zip(self._rows, tokens.tolist())):
            self._tokens[row].append(token)
            if self.texts[row].add(token):
                self._finish[row] = "stop"
            elif at_limit:
                self._finish[row] = "length"
            else:
                keep.append(position)
        if not keep:
            self._rows = []
            return
        if self._penalties is not None:
            self._penalties.record(tokens)
        if len(keep) < len(self._rows):
            tokens = tokens[self._select(keep)]
        self._logits, self._state = self._step_fn(tokens, self._state)

    def _select(self, keep: list[int]) -> torch.Tensor:
        """Drop finished rows everywhere; ``keep`` are positions among the live rows (returned as a tensor)."""
        positions = torch.tensor(keep, device=self._live.device)
        self._state = self._state.select(positions)
        self._live = self._live[positions]
        self._rows = [self._rows[p] for p in keep]
        if self._streams is not None:
            self._streams.select(keep)
        if self._penalties is not None:
            self._penalties.select(positions)
        return positions

    def completions(self) -> list[Completion]:
        """The finished completions, in row order (call once ``finished``)."""
        logprobs = self._logprobs.cpu()
        out = []
        for row, (prompt_index, sample_index, prompt) in enumerate(self._prompts):
            ids = self._tokens[row]
            out.append(Completion(
                prompt_index=prompt_index, sample_index=sample_index, prompt_token_ids=prompt,
                token_ids=ids, text=self.texts[row].finish(), logprobs=logprobs[: len(ids), row].clone(),
                finish_reason=self._finish[row] or "length",
            ))
        return out

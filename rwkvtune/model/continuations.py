"""Read each prompt once and continue it many ways: the RNN's way to score several answers to one prompt.

A transformer trainer runs a DPO pair as two sequences (prompt + chosen, prompt + rejected) and a GRPO group
as ``G`` sequences, each reading the prompt again. An RNN reads the prompt once: its state after the
prompt is the whole context, so every answer starts from a copy of it, and autograd carries the answers'
gradients back through the copies into the one prompt pass.

Prompts of different lengths are read together without padding (every token, a pad too, enters an RNN's state):
sorted by length, all rows that still have tokens advance together by ``min(chunk, shortest remaining)``
tokens, and a row whose prompt is done leaves the batch with its state (:func:`read_prompts`). Generation's
prefill uses the same rounds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from rwkvtune.model.loss import IGNORE_INDEX
from rwkvtune.model.state import RWKVState

#: ``(ids [G, T], state [G], n_done) -> (output for the first n_done rows or None, state after ids)``.
Advance = Callable[[torch.Tensor, RWKVState, int], tuple[torch.Tensor | None, RWKVState]]


def read_prompts(prompts: Sequence[Sequence[int]], *, initial_state: Callable[[int], RWKVState], advance: Advance,
                 chunk_size: int | None = None, max_batch_size: int = -1,
                 device: torch.device | None = None) -> tuple[RWKVState, torch.Tensor | None]:
    """Every prompt's state after its last token, reading all of them in batched rounds.

    Args:
        prompts: the ``P`` token id lists, each non-empty.
        initial_state: ``B -> state`` of fresh sequences (zeros, or a tuned state).
        advance: one forward of a round (see :data:`Advance`); it may return, for the rows that finish in
            that round (always the first ``n_done``), an output such as their last-token logits.
        chunk_size: most tokens per row in one forward (``None``: a prompt in one forward).
        max_batch_size: most prompts in one forward (-1: all).
        device: where the token ids go.

    Returns:
        ``(state [P], outputs [P, ...] or None)`` in the order of ``prompts``; gradients flow through both
        when ``advance`` builds a graph.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("read_prompts needs non-empty prompts")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    group_size = len(order) if max_batch_size == -1 else max_batch_size
    states: list[RWKVState] = []
    outputs: list[torch.Tensor] = []
    for start in range(0, len(order), group_size):
        group = [prompts[i] for i in order[start:start + group_size]]
        chunk = chunk_size if chunk_size is not None else len(group[-1])
        group_state, group_outputs = _read_sorted(group, initial_state, advance, chunk, device)
        states.append(group_state)
        outputs += group_outputs
    unsort = torch.empty(len(order), dtype=torch.long)
    unsort[torch.tensor(order)] = torch.arange(len(order))
    state = RWKVState.cat(states)
    unsort = unsort.to(state.device)
    return state.select(unsort), (torch.cat(outputs)[unsort] if outputs else None)


def _read_sorted(prompts: Sequence[Sequence[int]], initial_state: Callable[[int], RWKVState], advance: Advance,
                 chunk_size: int, device: torch.device | None) -> tuple[RWKVState, list[torch.Tensor]]:
    """:func:`read_prompts` for prompts sorted by length, shortest first.

    The rows that still have tokens are always a suffix ``prompts[first:]``, all standing at ``position``.
    """
    state = initial_state(len(prompts))
    done_states: list[RWKVState] = []
    outputs: list[torch.Tensor] = []
    first, position = 0, 0
    while first < len(prompts):
        length = min(chunk_size, len(prompts[first]) - position)
        ids = torch.tensor([p[position:position + length] for p in prompts[first:]], device=device)  # [G', T]
        position += length
        n_done = sum(1 for p in prompts[first:] if len(p) == position)
        output, state = advance(ids, state, n_done)
        if output is not None:
            outputs.append(output)
        if n_done:
            done_states.append(state.select(slice(0, n_done)))
            state = state.select(slice(n_done, None))
            first += n_done
    return RWKVState.cat(done_states), outputs


def score_continuations(model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], continuation_ids: torch.Tensor,
                        continuation_mask: torch.Tensor, *, per_prompt: int, temperature: float = 1.0,
                        chunk_size: int | None = None, max_batch_size: int = -1,
                        prompt_scope: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprobs [N, C], entropies [N, C])`` of each continuation given its prompt, each prompt read once.

    Continuation token ``t`` is scored by the distribution after the token before it: the prompt's last token
    feeds the first position, so the prompts are read up to their second-to-last token (in batched rounds)
    and all continuations run from copies of those states in one forward. The head's log-softmax is formed
    chunk by chunk and again in backward (``model.loss.chunked_token_logprobs``): no ``[positions, V]``
    tensor lives from the forward to the backward.

    Args:
        model: has ``score(input_ids, targets, state, temperature=...)`` and ``initial_state(B)`` (an
            ``RWKV7``, a LoRA- or state-tuned one, or Fabric's wrapper with ``score`` marked as a forward
            method, so that DDP sees the forwards).
        prompt_ids: the ``P`` prompts, each non-empty.
        continuation_ids: ``[N, C]`` with ``N = P * per_prompt``, prompt-major (prompt 0's continuations
            first), right-padded.
        continuation_mask: ``[N, C]`` bool, true on real continuation tokens (0 is returned elsewhere).
        per_prompt: continuations per prompt (GRPO's group size; 2 for a DPO pair).
        temperature: scores are of ``softmax(logits / temperature)``.
        chunk_size: most prompt tokens per row in one forward (``None``: whole prompts).
        max_batch_size: most prompts in one forward (-1: all).
        prompt_scope: wraps the prompt forwards (under DDP: not the forward that arms the gradient sync;
            the continuations' forward, which the caller wraps, is).
    """
    if len(prompt_ids) * per_prompt != continuation_ids.shape[0]:
        raise ValueError(f"{continuation_ids.shape[0]} continuations for {len(prompt_ids)} prompts x {per_prompt}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token (its last token predicts the first answer token)")
    device = continuation_ids.device

    def advance(ids: torch.Tensor, state: RWKVState, n_done: int) -> tuple[None, RWKVState]:
        with prompt_scope():
            return None, model.score(ids, torch.full_like(ids, IGNORE_INDEX), state, temperature=temperature).state

    # A one-token prompt has nothing before its last token: its continuations start from the initial state.
    longer = [i for i, p in enumerate(prompt_ids) if len(p) > 1]
    single = [i for i, p in enumerate(prompt_ids) if len(p) == 1]
    parts = []
    if longer:
        parts.append(read_prompts([prompt_ids[i][:-1] for i in longer], initial_state=model.initial_state,
                                  advance=advance, chunk_size=chunk_size, max_batch_size=max_batch_size,
                                  device=device)[0])
    if single:
        parts.append(model.initial_state(len(single)))
    order = torch.empty(len(prompt_ids), dtype=torch.long)
    order[torch.tensor(longer + single, dtype=torch.long)] = torch.arange(len(prompt_ids))
    start = RWKVState.cat(parts)
    start = start if not single or not longer else start.select(order.to(start.device))
    start = start.repeat_interleave(per_prompt)
    last_prompt_token = torch.tensor([p[-1] for p in prompt_ids], device=device).repeat_interleave(per_prompt)
    inputs = torch.cat([last_prompt_token[:, None], continuation_ids[:, :-1]], dim=1)          # [N, C]
    targets = continuation_ids.masked_fill(~continuation_mask.bool(), IGNORE_INDEX)
    scores = model.score(inputs, targets, start, temperature=temperature)
    return scores.logprobs, scores.entropies

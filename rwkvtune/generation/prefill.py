"""Prefill prompts of different lengths through the parallel forward, with no padding in any state.

RWKV has no attention mask: every token that enters a row changes its state (spec pitfall 12), so a
padded batch would corrupt the shorter prompts. Instead prompts are sorted by length and run in rounds:
all rows that still have prompt tokens advance together by ``min(chunk, shortest remaining)`` tokens,
and a row whose prompt is done leaves the batch with its state. Every row sees exactly its own tokens.
The number of forward calls per batch is at most the number of distinct lengths plus the extra chunks
of the longest prompt.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from rwkvtune.model import RWKVState


def prefill(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    chunk_size: int,
    max_batch_size: int = -1,
    device: torch.device | None = None,
) -> tuple[RWKVState, torch.Tensor]:
    """Run every prompt from the model's initial state (zeros, or a tuned state).

    Args:
        model: has ``forward(input_ids, state, return_state=True)`` and ``initial_state(B)`` (or, in
            models written before it, ``zero_state(B)``); when it also has
            ``forward_hidden`` and ``head`` (``RWKV7``), logits are computed for last tokens only.
        prompts: token id lists, each non-empty, of any lengths.
        chunk_size: most tokens per row in one forward call (bounds activation memory).
        max_batch_size: most prompts in one forward call (-1: all).
        device: where the token ids go (default: the model's device).

    Returns:
        ``(state [P], logits [P, V])``: each prompt's state after its last token and the logits
        predicting the token after it, in the order of ``prompts``.
    """
    device = device if device is not None else _model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    group_size = len(order) if max_batch_size == -1 else max_batch_size
    states: list[RWKVState] = []
    logits: list[torch.Tensor] = []
    for start in range(0, len(order), group_size):
        group = [prompts[i] for i in order[start:start + group_size]]
        group_state, group_logits = _prefill_sorted(model, group, chunk_size, device)
        states.append(group_state)
        logits.append(group_logits)
    # Back from length order to the caller's order.
    unsort = torch.empty(len(order), dtype=torch.long)
    unsort[torch.tensor(order)] = torch.arange(len(order))
    unsort = unsort.to(device)
    return RWKVState.cat(states).select(unsort), torch.cat(logits)[unsort]


def _prefill_sorted(model: nn.Module, prompts: Sequence[Sequence[int]], chunk_size: int,
                    device: torch.device) -> tuple[RWKVState, torch.Tensor]:
    """``prefill`` for prompts sorted by length (shortest first): ``(state [G], logits [G, V])``.

    Rows that still have tokens are always a suffix ``prompts[first:]`` and all stand at ``position``.
    """
    start = getattr(model, "initial_state", None) or model.zero_state
    state = start(len(prompts))
    done_states: list[RWKVState] = []
    done_logits: list[torch.Tensor] = []
    first, position = 0, 0
    while first < len(prompts):
        length = min(chunk_size, len(prompts[first]) - position)
        ids = torch.tensor([p[position:position + length] for p in prompts[first:]], device=device)  # [G', T]
        position += length
        n_done = sum(1 for p in prompts[first:] if len(p) == position)
        last_logits, state = _forward(model, ids, state, n_done)
        if n_done:
            done_states.append(state.select(slice(0, n_done)))
            done_logits.append(last_logits)
            state = state.select(slice(n_done, None))
            first += n_done
    return RWKVState.cat(done_states), torch.cat(done_logits)


def _forward(model: nn.Module, ids: torch.Tensor, state: RWKVState,
             n_logits: int) -> tuple[torch.Tensor | None, RWKVState]:
    """One chunk for all rows: ``ids [G, T]`` -> (last-token logits of the first ``n_logits`` rows, state)."""
    if hasattr(model, "forward_hidden") and hasattr(model, "head"):
        # Only rows that finish need logits, and only at their last token: [n, V] instead of [G, T, V]
        # (a 2048-token chunk of full logits would be 512 MiB per row at V = 65536).
        hidden, state = model.forward_hidden(ids, state)
        return (model.head(hidden[:n_logits, -1]) if n_logits else None), state
    out = model(ids, state=state, return_state=True)
    return out.logits[:n_logits, -1], out.state


def _model_device(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")

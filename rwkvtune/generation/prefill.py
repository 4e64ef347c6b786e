"""Prefill prompts of different lengths through the parallel forward, with no padding in any state.

RWKV has no attention mask: every token that enters a row changes its state, padding included, so a
padded batch would corrupt the shorter prompts. The prompts are read in the length-sorted rounds of
``model.continuations.read_prompts`` (the same rounds as the trainers' prompt-once scoring): every row sees
exactly its own tokens, and the number of forward calls per batch is at most the number of distinct
lengths plus the extra chunks of the longest prompt. Only rows that finish in a round get logits, and only
at their last token.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import torch
from torch import nn

from rwkvtune.model import RWKVState
from rwkvtune.model.continuations import read_prompts


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
    initial_state = getattr(model, "initial_state", None) or model.zero_state
    return read_prompts(prompts, initial_state=initial_state, advance=functools.partial(_forward, model),
                        chunk_size=chunk_size, max_batch_size=max_batch_size, device=device)


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

"""What one micro-batch does inside an accumulation window: forward, backward, the summed loss.

The loop (``engine.loop``) owns everything around it -- the window's target count, accumulation,
gradient sync, clipping, the optimizer step -- and hands a step a :class:`Backprop`: ``backprop(loss_sum)``
runs the backward of a summed loss scaled for the window, and ``backprop.scope(final=...)`` wraps each
forward+backward unit, so that gradients are synchronised across processes once per window whatever
number of units a step runs (the forward decides under DDP, hence the scope covers it).

``full_sequence_step`` is normal training. ``chunked_step`` is infinite-context training: a row runs in
pieces of ``chunk_ctx`` tokens with the RNN state carried from piece to piece; each piece's last token
predicts the next piece's first, so the loss is exactly the full sequence's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import torch

from rwkvtune.model import RWKVState
from rwkvtune.model.loss import IGNORE_INDEX, gradients_formed_in_backward


class Backprop(Protocol):
    def scope(self, final: bool) -> contextlib.AbstractContextManager[None]:
        """Wrap one forward+backward unit; ``final``: the unit whose backward ends this micro-batch."""

    def __call__(self, loss_sum: torch.Tensor) -> None:
        """Backpropagate ``loss_sum`` (summed token losses) scaled for the window."""


class NoBackprop:
    """For evaluation: forward only."""

    def scope(self, final: bool) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def __call__(self, loss_sum: torch.Tensor) -> None:
        pass


MicroStep = Callable[[torch.nn.Module, dict[str, torch.Tensor], Backprop], torch.Tensor]


def full_sequence_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], backprop: Backprop) -> torch.Tensor:
    """One forward over whole rows and its backward; returns the detached summed loss."""
    with backprop.scope(final=True):
        out = model(batch["input_ids"], labels=batch["labels"])
        backprop(out.loss_sum)
    return out.loss_sum.detach()


def chunked_step(chunk_ctx: int, truncated_bptt: bool) -> MicroStep:
    """Infinite-context training: rows in pieces of ``chunk_ctx`` tokens, the state carried across them.

    ``truncated_bptt``: each piece's backward runs before the next piece's forward and the carried state
    is detached, so memory is that of one piece whatever the row length; otherwise one backward runs
    through every piece and the carried states (the exact full-sequence gradient, memory growing with
    the row). Rows are right-padded, so padding only ever follows a row's last real token: it enters no
    state a real token reads, and its positions carry no loss.
    """

    def step(model: torch.nn.Module, batch: dict[str, torch.Tensor], backprop: Backprop) -> torch.Tensor:
        ids, labels = batch["input_ids"], batch["labels"]                      # [B, T]
        # Position t predicts labels[t + 1]: shift once over the whole row, then cut into pieces.
        targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)
        starts = range(0, ids.shape[1], chunk_ctx)
        state, total, graph = None, torch.zeros((), device=ids.device), None
        for k, start in enumerate(starts):
            final = k == len(starts) - 1
            piece = slice(start, start + chunk_ctx)
            if truncated_bptt:
                with backprop.scope(final=final):
                    out = model(ids[:, piece], state, return_state=True, shift_labels=targets[:, piece])
                    backprop(with_gradient_path(out.loss_sum, model))
                state = _carry(state, out.state.detach())
            else:
                # A non-final forward must not arm the gradient sync; and no piece's loss may hold a head
                # gradient until the one backward.
                with backprop.scope(final=final), gradients_formed_in_backward():
                    out = model(ids[:, piece], state, return_state=True, shift_labels=targets[:, piece])
                    graph = out.loss_sum if graph is None else graph + out.loss_sum
                    if final:
                        backprop(graph)
                state = out.state
            total = total + out.loss_sum.detach()
            del out  # nothing of this piece outlives it but the carried state
        return total

    return step


def _carry(buffer: RWKVState | None, new: RWKVState) -> RWKVState:
    """``new`` copied into ``buffer`` (made on the first piece): one long-lived state per row, so a row of
    many pieces does not scatter small survivors across the heap (measured: peak RSS grew 11% from 8 to
    128 pieces on the CPU with the trainer's malloc settings)."""
    if buffer is None:
        return new.clone()
    for kept, fresh in zip((buffer.att_shift, buffer.wkv, buffer.ffn_shift), (new.att_shift, new.wkv, new.ffn_shift)):
        kept.copy_(fresh)
    return buffer


def with_gradient_path(loss_sum: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """``loss_sum``, connected to every trained parameter with a zero weight when it is not already.

    A loss can be out of reach of everything trained: under truncated BPTT a tuned start state only
    shapes a row's first chunk; a GRPO micro-batch can have every completion masked out. Its backward
    still has to run (under DDP the window's final one synchronises the gradients), adding zero.
    """
    if loss_sum.requires_grad or not torch.is_grad_enabled():
        return loss_sum
    trained = [p for p in model.parameters() if p.requires_grad]
    return loss_sum + sum(0.0 * p.sum() for p in trained) if trained else loss_sum

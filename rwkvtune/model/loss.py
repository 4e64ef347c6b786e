"""Next-token cross-entropy over a large vocabulary without holding the full ``[B, T, V]`` logits.

The head is applied to a few thousand target positions at a time, each chunk under activation
checkpointing: backward recomputes that chunk's logits instead of keeping them, so peak memory is one
chunk's ``[chunk, V]`` float32 logits (RWKV-LM's head_chunk and TRL's chunked NLL do the same). Prompt
and padding positions (label -100) are dropped before the head, so they cost nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _chunk_loss_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, *, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss and the number of target tokens.

    Args:
        hidden: ``[B, T, C]`` final hidden states (after ``ln_out``).
        head: the output projection ``[..., C] -> [..., V]``, called as a module so that a wrapped head
            (a LoRA adapter on it) is trained too.
        labels: ``[B, T]`` aligned with the inputs (HF convention); position ``t`` predicts
            ``labels[:, t + 1]``; ``-100`` marks positions without loss.
        chunk_size: target positions per head chunk.

    Returns:
        ``(loss_sum, n_targets)``: a float32 scalar and an int64 scalar. Divide by the number of target
        tokens of the whole accumulation window, not of this micro-batch.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    hidden = hidden[:, :-1][keep]                       # [N, C]
    targets = targets[keep]                             # [N]
    total = hidden.new_zeros((), dtype=torch.float32)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    for start in range(0, targets.numel(), chunk_size):
        h, y = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        if needs_grad:
            total = total + checkpoint(_chunk_loss_sum, head, h, y, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(head, h, y)
    return total, keep.sum()

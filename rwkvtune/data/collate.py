"""Batch examples into right-padded tensors.

RWKV reads left to right, so padding placed after a sequence cannot change any real position's
output; padding is only there to make the batch rectangular and never carries loss. Left padding
would feed pad tokens into the state before the real text, hence right padding only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rwkvtune.data.checks import IGNORE_INDEX


def collate(
    rows: Sequence[Mapping[str, Any]],
    *,
    pad_id: int = 0,
    pad_to: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Stack ``{"input_ids", "labels"}`` rows (lists, arrays or 1-D tensors), padding on the right.

    Args:
        rows: examples; a row without ``labels`` is supervised on every token.
        pad_id: id written into padded ``input_ids`` positions (0, end of document, by default).
        pad_to: pad every batch to exactly this length (an error if a row is longer).
        pad_to_multiple_of: round the padded length up to a multiple of this (e.g. a kernel's chunk
            length, or ``chunk_ctx`` for infinite-context training).

    Returns:
        ``input_ids`` ``[B, T]`` int64, ``labels`` ``[B, T]`` int64 with -100 on padding, and
        ``attention_mask`` ``[B, T]`` bool, True on real tokens.
    """
    if len(rows) == 0:
        raise ValueError("cannot collate an empty batch")
    ids = [torch.as_tensor(row["input_ids"], dtype=torch.long) for row in rows]
    labels = [ids[i] if row.get("labels") is None else torch.as_tensor(row["labels"], dtype=torch.long)
              for i, row in enumerate(rows)]
    for i, (x, y) in enumerate(zip(ids, labels, strict=True)):
        if x.dim() != 1 or x.shape != y.shape:
            raise ValueError(f"batch row {i}: input_ids {tuple(x.shape)} and labels {tuple(y.shape)} must be 1-D "
                             "and of the same length")
    longest = max(len(x) for x in ids)
    length = longest if pad_to is None else pad_to
    if longest > length:
        raise ValueError(f"a row has {longest} tokens, more than pad_to={pad_to}")
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of

    batch = len(rows)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)             # [B, T]
    label_out = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)       # [B, T]
    attention_mask = torch.zeros((batch, length), dtype=torch.bool)               # [B, T]
    for i, (x, y) in enumerate(zip(ids, labels, strict=True)):
        input_ids[i, :len(x)] = x
        label_out[i, :len(y)] = y
        attention_mask[i, :len(x)] = True
    return {"input_ids": input_ids, "labels": label_out, "attention_mask": attention_mask}

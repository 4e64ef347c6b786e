"""``PreparedData``: training examples held compactly in memory, plus what preparing them did."""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PrepareStats:
    """What :func:`~rwkvtune.data.prepare_examples` did to the dataset.

    Attributes:
        format: the dataset format (see :mod:`rwkvtune.data.formats`).
        rows_in: rows in the dataset.
        rows_out: examples produced (for ``text``, the number of packed windows).
        truncated: rows longer than ``ctx_len``, cut to their first ``ctx_len`` tokens.
        dropped: rows left out because no target remained (all labels -100 past position 0, or
            fewer than 2 tokens).
        tokens: tokens in all examples.
        supervised_tokens: target tokens (labels other than -100, position 0 excluded since
            nothing predicts it).
        ctx_len: the longest example allowed.
    """

    format: str
    rows_in: int
    rows_out: int
    truncated: int
    dropped: int
    tokens: int
    supervised_tokens: int
    ctx_len: int


class PreparedData(Sequence[dict[str, list[int]]]):
    """Examples ``{"input_ids": list[int], "labels": list[int]}``, each at most ``ctx_len`` long.

    All examples live in two flat int32 arrays (about 8 bytes per token instead of ~70 for lists of
    Python ints), sliced per example on access. Indexing is deterministic; shuffling is the
    sampler's job.

    Args:
        input_ids: ``[total_tokens]`` ids of all examples, back to back.
        labels: ``[total_tokens]`` labels aligned with ``input_ids`` (-100: no loss).
        offsets: ``[num_examples + 1]`` start of each example in the flat arrays, then the end.
        stats: what preparing did.
    """

    def __init__(self, input_ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray, stats: PrepareStats) -> None:
        if input_ids.shape != labels.shape or offsets[-1] != len(input_ids):
            raise ValueError("input_ids, labels and offsets do not describe the same examples")
        self._input_ids = input_ids
        self._labels = labels
        self._offsets = offsets
        self.stats = stats

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> dict[str, list[int]]:  # type: ignore[override]
        count = len(self)
        index = operator.index(index)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError(f"example {index} out of range ({count} examples)")
        start, stop = int(self._offsets[index]), int(self._offsets[index + 1])
        return {"input_ids": self._input_ids[start:stop].tolist(), "labels": self._labels[start:stop].tolist()}

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        for index in range(len(self)):
            yield self[index]

    @property
    def lengths(self) -> np.ndarray:
        """``[num_examples]`` token count of each example (for length-grouped batching or budgets)."""
        return np.diff(self._offsets)

    def __repr__(self) -> str:
        s = self.stats
        return (f"PreparedData(format={s.format!r}, examples={len(self)}, tokens={s.tokens}, "
                f"supervised_tokens={s.supervised_tokens}, ctx_len={s.ctx_len})")

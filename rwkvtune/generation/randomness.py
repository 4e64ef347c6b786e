"""One random stream per completion, so that a completion does not depend on what it is batched with."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1


def completion_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for completion ``index`` of a call seeded with ``seed`` (splitmix64)."""
    x = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xD1B54A32D192ED03) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1


class UniformStreams:
    """Uniform numbers in [0, 1), one per live row and step, each row from its own ``torch.Generator``.

    Sampling needs exactly one uniform per row and step (inverse-CDF draw), so the k-th number of a
    completion is fixed by its seed alone: the same completion comes out whether it is decoded alone,
    in a batch of 256, or in another wave. Numbers are drawn ``block`` at a time per row so that a step
    costs one tensor index instead of one generator call per row.

    Args:
        seeds: one seed per row (see :func:`completion_seed`).
        block: uniforms drawn per generator call.
    """

    def __init__(self, seeds: Sequence[int], *, block: int = 64):
        self._generators = [torch.Generator().manual_seed(s) for s in seeds]
        self._block = block
        self._buffer = torch.empty(len(seeds), 0, dtype=torch.float64)  # [B, block] once filled
        self._position = 0

    def next(self) -> torch.Tensor:
        """The next uniform of every live row: ``[B]`` float64 on the CPU."""
        if self._position == self._buffer.shape[1]:
            # float64: a float32 uniform has 24 bits, too coarse to hit tokens of probability < 6e-8.
            self._buffer = torch.stack([torch.rand(self._block, generator=g, dtype=torch.float64)
                                        for g in self._generators])
            self._position = 0
        out = self._buffer[:, self._position]
        self._position += 1
        return out

    def select(self, rows: Sequence[int]) -> None:
        """Keep the streams of ``rows`` (positions among the live rows), in that order."""
        self._generators = [self._generators[i] for i in rows]
        self._buffer = self._buffer[list(rows)]

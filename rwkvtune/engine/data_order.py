"""Which rows each process reads, in which order: a pure function of (seed, epoch, rank).

Resuming needs only the epoch and the number of micro-batches already consumed in it.
"""

from __future__ import annotations

import torch


def epoch_micro_batches(n_rows: int, *, epoch: int, seed: int, micro_bsz: int, rank: int = 0,
                        world_size: int = 1) -> list[list[int]]:
    """Row indices of this process's micro-batches for ``epoch``.

    The rows are shuffled with a generator seeded by ``(seed, epoch)``, dealt round-robin to the
    ``world_size`` processes in groups of ``micro_bsz``, so that ``world_size`` processes with
    ``micro_bsz`` rows each see, step for step, the same rows as one process with ``world_size *
    micro_bsz`` rows. With one process the last micro-batch may be short; with several, a last group
    too small to give every process a full micro-batch is left out (all processes must take the same
    number of steps).
    """
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    per_step = micro_bsz * world_size
    end = n_rows if world_size == 1 else n_rows - n_rows % per_step
    return [order[start + rank * micro_bsz:start + (rank + 1) * micro_bsz] for start in range(0, end, per_step)]

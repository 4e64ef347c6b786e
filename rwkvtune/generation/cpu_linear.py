"""Linear layers for single-token decoding, around two slow spots of CPU matmuls.

1. **Few fp32 rows.** How fast ``x @ W^T`` runs for 1-32 rows against a row-major ``[out, in]`` weight
   depends on the CPU's BLAS path. On an AMD EPYC, MKL ran it as a single-threaded GEMV at ~12 GB/s;
   written as ``W x^T`` with the weight split into row groups (a view, no copy) it became a batched tall
   GEMM on all threads: 768x768 0.19 -> 0.09 ms, 3072x768 0.74 -> 0.27 ms, the 65536x768 head
   15.7 -> 6.8 ms (2 threads, one row). On an Intel Xeon the plain GEMV already streams at ~23 GB/s and
   the grouped form is 2-4x *slower*. So neither form is hard-wired: :class:`FormChooser` times both once
   per weight shape, dtype and row bucket, and keeps the faster.
2. **Large fresh outputs.** glibc maps every allocation above 32 MiB fresh from the kernel, so a new
   ``[B, 65536]`` fp32 logits tensor (B > 128) is page-faulted while it is written, on every step (the
   L4-C256 head at B = 256: 155 ms vs 125 ms into a reused buffer).

Only plain ``nn.Linear`` layers without bias take these paths; anything else (a LoRA-wrapped layer) is
called as a module.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: Row groups and the most rows for which the grouped form is considered, for block layers and for the head.
_LAYER_GROUPS, _LAYER_MAX_ROWS = 8, 4
_HEAD_GROUPS, _HEAD_MAX_ROWS = 64, 32


class FormChooser:
    """Decides, by timing both on the real weight, whether the grouped form beats ``F.linear``.

    One decision per ``(weight shape, dtype, groups, rows rounded up to a power of two, torch threads)``,
    made the first time that case is seen (a few calls of each form, interleaved, best of each) and kept
    for the process: repeated generations in a process take the same path and give the same numbers.
    Another process may time the other form faster, which changes logits only by float rounding.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter, trials: int = 3):
        self._clock = clock
        self._trials = trials
        self._grouped: dict[tuple, bool] = {}

    def use_grouped(self, weight: torch.Tensor, x: torch.Tensor, groups: int) -> bool:
        """Whether ``_grouped_matmul(weight, x, groups)`` is the faster way to compute ``x @ weight^T``."""
        rows = 1 << (x.shape[0] - 1).bit_length()
        key = (tuple(weight.shape), weight.dtype, groups, rows, torch.get_num_threads())
        decision = self._grouped.get(key)
        if decision is None:
            probe = x.new_zeros(rows, x.shape[1])
            plain_best = grouped_best = float("inf")
            for _ in range(self._trials):
                plain_best = min(plain_best, self._time(lambda: F.linear(probe, weight)))
                grouped_best = min(grouped_best, self._time(lambda: _grouped_matmul(weight, probe, groups)))
            decision = self._grouped[key] = grouped_best < plain_best
        return decision

    def _time(self, run: Callable[[], torch.Tensor]) -> float:
        start = self._clock()
        run()
        return self._clock() - start


_CHOOSER = FormChooser()


def decode_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for ``x`` ``[B, in]`` -> ``[B, out]``."""
    if _groupable(layer, x, _LAYER_GROUPS, _LAYER_MAX_ROWS) and _CHOOSER.use_grouped(layer.weight, x, _LAYER_GROUPS):
        return _grouped_matmul(layer.weight, x, _LAYER_GROUPS)
    return layer(x)


class HeadProjection:
    """The LM head for decoding: ``head(x)`` ``[B, C]`` -> ``[B, V]``, written into a reused buffer.

    The result is a view of the buffer, valid until the next call.
    """

    def __init__(self) -> None:
        self._buffer = torch.empty(0)  # [B_max, V]

    def __call__(self, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if _groupable(head, x, _HEAD_GROUPS, _HEAD_MAX_ROWS) and _CHOOSER.use_grouped(head.weight, x, _HEAD_GROUPS):
            return _grouped_matmul(head.weight, x, _HEAD_GROUPS)
        if type(head) is not nn.Linear or head.bias is not None:
            return head(x)
        weight = head.weight
        batch, vocab = x.shape[0], weight.shape[0]
        buffer = self._buffer
        if (buffer.shape[0] < batch or buffer.shape[1:] != (vocab,) or buffer.dtype != x.dtype
                or buffer.device != x.device):
            buffer = self._buffer = torch.empty(batch, vocab, dtype=x.dtype, device=x.device)
        return torch.mm(x, weight.t(), out=buffer[:batch])


def _groupable(layer: nn.Module, x: torch.Tensor, groups: int, max_rows: int) -> bool:
    return (type(layer) is nn.Linear and layer.bias is None and x.dtype == torch.float32
            and x.device.type == "cpu" and x.shape[0] <= max_rows and layer.weight.dtype == torch.float32
            and layer.weight.shape[0] % groups == 0 and layer.weight.is_contiguous())


def _grouped_matmul(weight: torch.Tensor, x: torch.Tensor, groups: int) -> torch.Tensor:
    """``x @ weight^T`` as ``weight x^T`` in ``groups`` row groups: ``[B, in]`` -> ``[B, out]`` (contiguous)."""
    out_features, in_features = weight.shape
    batch = x.shape[0]
    grouped = weight.view(groups, out_features // groups, in_features)  # [G, out/G, in], no copy
    # x^T as a transposed view of contiguous [B, in] rows: MKL took 7x longer with a contiguous [in, B].
    columns = x.contiguous().t().unsqueeze(0).expand(groups, in_features, batch)  # [G, in, B]
    return torch.bmm(grouped, columns).view(out_features, batch).t().contiguous()

"""Whether this CPU multiplies bf16 matrices at speed, measured before a bf16 run starts.

CPUs with AVX512-BF16 or AMX multiply bf16 natively. On the others (AVX2 only: most laptops and many
servers) PyTorch emulates it: an Intel Xeon restricted to AVX2 multiplied bf16 at 2.5 GFLOP/s against 386 in
fp32, and SFT on it ran 186x slower in bf16 (``benchmarks/RESULTS.md``), so ``precision="bf16"`` (the
default, and LoRA's frozen bf16 base) would train far slower than ``"fp32"`` without a word. A short timing
says which case this is.
"""

from __future__ import annotations

import time
import warnings

import torch

#: bf16 slower than fp32 by more than this factor is worth a warning (native bf16 is at least as fast).
SLOWDOWN_WARNED = 3.0


class SlowBF16Warning(UserWarning):
    """precision='bf16' on a CPU that emulates bf16 matrix products."""


def matmul_rate(dtype: torch.dtype, size: int = 256, repeats: int = 3) -> float:
    """Best-of-``repeats`` FLOP/s of one square ``size`` matrix product in ``dtype`` on the CPU, at the
    current thread count, after one untimed product. Both dtypes together take a few milliseconds where bf16
    is native, about 0.08 s where it is emulated."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / max(best, 1e-9)


def warn_if_bf16_is_slow() -> None:
    """Warn (``SlowBF16Warning``) when a bf16 product on this CPU runs far slower than the same in fp32,
    naming the measured rates and ``precision='fp32'``."""
    bf16, fp32 = matmul_rate(torch.bfloat16), matmul_rate(torch.float32)
    slowdown = fp32 / bf16
    if slowdown > SLOWDOWN_WARNED:
        warnings.warn(
            f"precision='bf16' on a CPU without native bf16 (no AVX512-BF16 or AMX): a bf16 matrix product ran "
            f"{slowdown:.0f}x slower than in fp32 here ({bf16 / 1e9:.1f} vs {fp32 / 1e9:.1f} GFLOP/s), and training "
            f"(LoRA's frozen bf16 base included) slows down about as much; use precision='fp32' on this machine",
            SlowBF16Warning, stacklevel=3)

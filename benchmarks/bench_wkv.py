"""WKV7 forward+backward wall time on CPU: the ``chunked`` backend against the token-by-token ``reference``.

    python benchmarks/bench_wkv.py                  # B=4, H=12, N=64, T=512 and 4096, 2 threads
    python benchmarks/bench_wkv.py --threads 1 --lengths 512

Times one ``wkv7`` call plus the backward of fixed random cotangents of ``y`` and of the final state
(zero initial state), through the public dispatcher so bf16 inputs pay their upcast. Each row is the
median of ``--repeats`` runs after one warm-up run. The reference is slow and keeps every per-token
state for its backward (about 3.8 MB per token at B=4, H=12, N=64, i.e. ~16 GB at T=4096): at lengths
above ``--reference-full-max`` it is timed once, without warm-up (the shorter lengths warmed its code
path), and it is skipped when the machine does not have the memory. On a 2-core VM that single T=4096
run took ~8 minutes; ``--skip-reference`` leaves it out. Prints a Markdown table.

The machine's load matters: timings taken while another process used a core were up to 1.5x slower for
the chunked backend and up to 3x for the reference (which page-faults through gigabytes of autograd
state), so compare rows from one run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rwkvtune.ops import wkv7

LOG_DECAY_MIN = -0.6065306597126334
#: Bytes the reference's autograd graph keeps per token and per (batch, head) state element, measured
#: (1.96 GB at B=4, T=512, H=12, N=64): about five float32 copies of the state per token.
REFERENCE_BYTES_PER_STATE_ELEMENT = 20
HEADROOM_BYTES = 4 << 30


@dataclass
class Row:
    length: int
    backend: str
    dtype: str
    repeats: int
    seconds: float | None
    note: str = ""


def make_inputs(batch: int, length: int, heads: int, size: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """``r, w, k, v, a, b`` ``[B, T, H, N]`` leaf tensors distributed like RWKV-7's."""
    gen = torch.Generator().manual_seed(0)
    shape = (batch, length, heads, size)
    r, k, v, raw_w, raw_kappa = (torch.randn(shape, generator=gen) for _ in range(5))
    kappa = F.normalize(raw_kappa, dim=-1)
    alpha = torch.rand(shape, generator=gen)
    tensors = [r, LOG_DECAY_MIN * torch.sigmoid(raw_w), k, v, -kappa, kappa * alpha]
    return [x.to(dtype).requires_grad_() for x in tensors]


def cotangents(inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random gradients for ``y`` (like the inputs) and the final state (float32)."""
    batch, _, heads, size = inputs[0].shape
    gen = torch.Generator().manual_seed(1)
    dy = torch.randn(inputs[0].shape, generator=gen).to(inputs[0].dtype)
    return dy, torch.randn(batch, heads, size, size, generator=gen)


def fwd_bwd_seconds(backend: str, inputs: list[torch.Tensor]) -> float:
    """Wall time of one forward+backward."""
    dy, dfinal = cotangents(inputs)
    start = time.perf_counter()
    y, final = wkv7(*inputs, backend=backend)
    torch.autograd.grad([y, final], inputs, [dy, dfinal])
    return time.perf_counter() - start


def median_seconds(backend: str, inputs: list[torch.Tensor], repeats: int, warmup: bool) -> float:
    if warmup:
        fwd_bwd_seconds(backend, inputs)
    return statistics.median(fwd_bwd_seconds(backend, inputs) for _ in range(repeats))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_memory() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes (Linux), else ``None``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reference_row(args: argparse.Namespace, length: int) -> Row:
    need = REFERENCE_BYTES_PER_STATE_ELEMENT * args.batch * length * args.heads * args.size**2
    free = available_memory()
    if free is not None and free < need + HEADROOM_BYTES:
        return Row(length, "reference", "fp32", 0, None,
                   f"skipped: needs ~{need / 2**30:.0f} GB, {free / 2**30:.0f} GB available")
    inputs = make_inputs(args.batch, length, args.heads, args.size, torch.float32)
    if length <= args.reference_full_max:
        return Row(length, "reference", "fp32", args.reference_repeats,
                   median_seconds("reference", inputs, args.reference_repeats, warmup=True))
    return Row(length, "reference", "fp32", 1, fwd_bwd_seconds("reference", inputs), "single run, no warm-up")


def chunked_row(args: argparse.Namespace, length: int, dtype: torch.dtype) -> Row:
    inputs = make_inputs(args.batch, length, args.heads, args.size, dtype)
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    return Row(length, "chunked", name, args.repeats, median_seconds("chunked", inputs, args.repeats, warmup=True))


def markdown(rows: list[Row], batch: int) -> str:
    reference = {row.length: row.seconds for row in rows if row.backend == "reference"}
    lines = ["| T | backend | inputs | runs | ms / fwd+bwd | tokens/s | speed-up vs reference |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for row in rows:
        if row.seconds is None:
            lines.append(f"| {row.length} | {row.backend} | {row.dtype} | - | - | - | {row.note} |")
            continue
        ref = reference.get(row.length)
        speedup = f"{ref / row.seconds:.1f}x" if ref else "-"
        note = f" ({row.note})" if row.note else ""
        lines.append(f"| {row.length} | {row.backend} | {row.dtype} | {row.repeats}{note} | "
                     f"{row.seconds * 1e3:.1f} | {batch * row.length / row.seconds:,.0f} | {speedup} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--size", type=int, default=64, help="head size N")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs of the chunked backend")
    parser.add_argument("--reference-repeats", type=int, default=3, help="timed runs of the reference")
    parser.add_argument("--reference-full-max", type=int, default=1024,
                        help="longest T at which the reference gets warm-up and repeats; beyond: one run")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for length in sorted(args.lengths):
        rows.append(chunked_row(args, length, torch.float32))
        rows.append(chunked_row(args, length, torch.bfloat16))
        if not args.skip_reference:
            rows.append(reference_row(args, length))
    print(f"WKV7 forward+backward, B={args.batch}, H={args.heads}, N={args.size}, zero initial state")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()} "
          f"({torch.backends.cpu.get_cpu_capability()}), Python {platform.python_version()}\n")
    print(markdown(rows, args.batch))


if __name__ == "__main__":
    main()

"""Shared by the benchmarks: the machine's matmul rate and a model's matmul work per token."""

from __future__ import annotations

import time

import torch

from rwkvtune.config import RWKV7Config


def matmul_rate(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5,
                device: torch.device | str = "cpu") -> float:
    """Best-of-``repeats`` FLOP/s of a square ``size`` matmul in ``dtype`` on ``device`` (on the CPU: at the
    current thread count; on CUDA each product is timed to its end, not its launch)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def matmul_weights_per_token(config: RWKV7Config) -> int:
    """Weights used in a matmul per token: projections, low-rank MLPs, FFN and head (not the embedding
    lookup, not layer 0's unused value-residual MLP). Forward = 2 FLOPs each, forward+backward = 6."""
    c, f = config.n_embd, config.dim_ffn
    lora = config.dim_decay_lora + config.dim_iclr_lora + config.dim_gate_lora + config.dim_value_lora
    return config.n_layer * (4 * c * c + 2 * c * f + 2 * c * lora) - 2 * c * config.dim_value_lora + config.vocab_size * c

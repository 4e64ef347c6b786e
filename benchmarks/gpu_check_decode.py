"""GPU check section ``decode_*``: the generation engine's batched decode against the ``rwkv`` runtime.

Ours: ``GenerationEngine`` sessions of 8-token prompts decoding with temperature 1 and top-p 1 (the GRPO
defaults; no stop, so every row runs every step), tokens/s from the wall time of ``decode_steps`` steps
after two warm-up steps, sampling and stop checks included. The runtime: ``rwkv`` 0.8.32's model of the
same weights (``RWKV_V7_ON=1``, TorchScript, no custom CUDA kernel), one sequence, its forward only (no
sampling: its best case), in alternating rounds with ours at one sequence so that any drift of the
machine falls on both.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from gpu_check_plan import Plan, Record, random_model, sync

from rwkvtune.generation import GenerationEngine, SamplingParams
from rwkvtune.generation.engine import inference
from rwkvtune.hub import save_pretrained

#: The issue's target for the 0.1b shape at 256 sequences on an H200, sampling included.
TARGET_0_1B_256 = 100_000
ROUNDS = 3


def decode_rate(model, batch: int, steps: int, device: torch.device) -> float:
    """Tokens/s of ``steps`` decode steps with ``batch`` live rows (after two untimed steps)."""
    vocab = model.config.vocab_size
    prompts = torch.randint(1, vocab, (batch, 8), generator=torch.Generator().manual_seed(batch)).tolist()
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=steps + 3, stop=(), stop_token_ids=(), seed=0)
    with inference(model):
        session = next(GenerationEngine(model).sessions(prompts, params))
        for _ in range(2):
            session.advance()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            session.advance()
        sync(device)
    return batch * steps / (time.perf_counter() - start)


def runtime_rate(runtime, steps: int, device: torch.device) -> float:
    """Single-sequence tokens/s of the ``rwkv`` runtime's forward (no sampling)."""
    _, state = runtime.forward([1, 2, 3, 4, 5, 6, 7, 8], None)
    for _ in range(2):
        _, state = runtime.forward([9], state)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        _, state = runtime.forward([9], state)
    sync(device)
    return steps / (time.perf_counter() - start)


def load_runtime(model, directory: Path, strategy: str):
    """The ``rwkv`` runtime's model of ``model``'s weights, saved as an official ``.pth``."""
    os.environ["RWKV_V7_ON"] = "1"  # read when rwkv.model is first imported
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    from rwkv.model import RWKV

    if not (directory / "model.pth").exists():
        save_pretrained(model, directory)
    return RWKV(model=str(directory / "model"), strategy=strategy)


def decode(plan: Plan, record: Record, shape: str) -> None:
    config = plan.shapes[shape]
    dtype = torch.bfloat16 if plan.device.type == "cuda" else torch.float32
    model = random_model(config, device=plan.device, dtype=dtype).eval()
    dtype_name = str(dtype).removeprefix("torch.")
    record.line(f"{shape} decode ({dtype_name}, temperature 1, top-p 1, sampling and stop checks included):")
    rates = {}
    for batch in plan.decode_batches:
        rates[batch] = decode_rate(model, batch, plan.decode_steps, plan.device)
        record.set("tokens_per_s", rates)
        record.line(f"- {batch} sequences: {rates[batch]:,.0f} tokens/s ({1e3 * batch / rates[batch]:.2f} ms/step)")
    if shape == "rwkv7-0.1b" and 256 in rates and not plan.dry_run:
        met = rates[256] >= TARGET_0_1B_256
        record.set("target_256_met", met)
        record.line(f"- target >= {TARGET_0_1B_256:,} tokens/s at 256 sequences: {'met' if met else 'MISSED'}")
    with tempfile.TemporaryDirectory() as tmp:
        runtime_rows = {}
        for strategy in plan.runtime_strategies:
            runtime = load_runtime(model, Path(tmp), strategy)
            ours, theirs = [], []
            for _ in range(ROUNDS):
                ours.append(decode_rate(model, 1, plan.decode_steps * 2, plan.device))
                theirs.append(runtime_rate(runtime, plan.decode_steps * 2, plan.device))
            runtime_rows[strategy] = {"runtime": statistics.median(theirs), "ours": statistics.median(ours)}
            record.set("single_sequence_vs_runtime", runtime_rows)
            row = runtime_rows[strategy]
            record.line(f"- one sequence vs rwkv runtime '{strategy}' (medians of {ROUNDS} alternating rounds): "
                        f"ours {row['ours']:,.0f} tokens/s, runtime {row['runtime']:,.0f} tokens/s, "
                        f"ratio {row['ours'] / row['runtime']:.2f}x")
            del runtime

"""Decode throughput of the generation engine on CPU, against the ``rwkv`` runtime, with the sampler's share.

For each model shape and dtype: decode tokens/s at several numbers of concurrent sequences, from the
median step (temperature 1, top-p 1: the GRPO defaults; no stop, so every row runs the whole
measurement); the share of decode time spent in the sampler (timed around every ``sample_next`` call);
the ``rwkv`` runtime's single-sequence forward rate on the same weights (no sampling: its best case),
against ours as medians of alternating rounds; and "% of the fp32 matmul roofline" at 64 sequences:
tokens/s x 2 x (matmul weights per token) / the FLOP/s of a 2048^2 fp32 matmul measured in the same run.

    python benchmarks/bench_generation.py                     # L4-C256-V65536 and rwkv7-0.1b, fp32 and bf16
    python benchmarks/bench_generation.py --shapes L4-C256 --batches 1,8 --steps 8
    python benchmarks/bench_generation.py --unseeded                # timed weight layouts, not the pinned one
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import rwkvtune.generation.session as session_module
from rwkvtune import AutoModel
from rwkvtune.config import RWKV7Config, get_preset
from rwkvtune.generation import GenerationEngine, SamplingParams
from rwkvtune.generation.engine import inference

from roofline import matmul_rate, matmul_weights_per_token

SHAPES = {
    "L4-C256": lambda: RWKV7Config(n_layer=4, n_embd=256, vocab_size=65536),
    "rwkv7-0.1b": lambda: get_preset("rwkv7-0.1b"),
}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class SamplerClock:
    """Adds up the time spent in the sampler while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def installed(self):
        original = session_module.sample_next

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        session_module.sample_next = timed
        try:
            yield self
        finally:
            session_module.sample_next = original


def decode_rate(model, batch: int, steps: int, warmup: int, seed: int | None = 0) -> tuple[float, float, float]:
    """``(tokens/s, sampler share, ms per step)`` of ``steps`` decode steps with ``batch`` live rows, from the
    median step time (the sampler share over all steps). Seeded (as GRPO samples), the decoder takes the
    pinned weight layout; with ``seed=None`` the fastest one it times."""
    vocab = model.config.vocab_size
    prompts = torch.randint(1, vocab, (batch, 8), generator=torch.Generator().manual_seed(batch)).tolist()
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=warmup + steps + 1, stop=(),
                            stop_token_ids=(), seed=seed)
    clock = SamplerClock()
    with inference(model), clock.installed():
        session = next(GenerationEngine(model).sessions(prompts, params))
        for _ in range(warmup):
            session.advance()
        clock.seconds = 0.0
        step_seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            session.advance()
            step_seconds.append(time.perf_counter() - start)
    # The median step: a neighbour's burst on the shared machine moves a few steps, not the figure.
    median = statistics.median(step_seconds)
    return batch / median, clock.seconds / sum(step_seconds), 1e3 * median


def load_runtime(weights_stem: Path, strategy: str):
    """The ``rwkv`` runtime's model of the same weights (TorchScript, as its users run it)."""
    os.environ.setdefault("RWKV_V7_ON", "1")
    os.environ.setdefault("RWKV_JIT_ON", "1")
    from rwkv.model import RWKV

    return RWKV(model=str(weights_stem), strategy=strategy)


def runtime_rate(model, steps: int, warmup: int) -> float:
    """Single-sequence tokens/s of the ``rwkv`` runtime's forward (no sampling)."""
    logits, state = model.forward([1, 2, 3, 4, 5, 6, 7, 8], None)
    token = 9
    for _ in range(warmup):
        logits, state = model.forward([token], state)
    start = time.perf_counter()
    for _ in range(steps):
        logits, state = model.forward([token], state)
    return steps / (time.perf_counter() - start)


def single_sequence_rates(model, runtime, steps: int, warmup: int, rounds: int,
                          seed: int | None = 0) -> tuple[float, float]:
    """Median tokens/s of ours and of the runtime over ``rounds`` alternating rounds: on a shared machine
    a neighbour's load then falls on both sides alike."""
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(decode_rate(model, 1, steps, warmup, seed)[0])
        theirs.append(runtime_rate(runtime, steps, warmup))
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="L4-C256,rwkv7-0.1b", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--steps", type=int, default=24, help="measured decode steps (L4-C256)")
    parser.add_argument("--big-steps", type=int, default=6, help="measured decode steps (rwkv7-0.1b)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-runtime", action="store_true", help="skip the rwkv runtime baseline")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the single-sequence comparison")
    parser.add_argument("--unseeded", action="store_true",
                        help="sample without a seed: the decoder times its weight layouts (seeded: the pinned one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seed = None if args.unseeded else 0
    torch.manual_seed(0)
    batches = [int(b) for b in args.batches.split(",")]
    rate = matmul_rate()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {args.threads}, "
          f"fp32 2048^2 matmul {rate / 1e9:.0f} GFLOP/s\n")

    roofline_rows, runtime_rows = [], []
    for shape in args.shapes.split(","):
        config = SHAPES[shape]()
        steps = args.steps if shape == "L4-C256" else args.big_steps
        weights = matmul_weights_per_token(config)
        base = AutoModel.from_config(config).eval()
        print(f"## {shape}: L{config.n_layer}-C{config.n_embd}-V{config.vocab_size}, "
              f"{config.num_parameters() / 1e6:.1f}M params, {2 * weights / 1e6:.0f} MFLOP/token in matmuls, "
              f"{steps} measured steps\n")
        print("| dtype | sequences | tokens/s | ms / step | sampler share |")
        print("|---|---:|---:|---:|---:|")
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.dtypes.split(","):
                model = base.to(DTYPES[name])
                for batch in batches:
                    tokens, share, ms = decode_rate(model, batch, steps, args.warmup, seed)
                    print(f"| {name} | {batch} | {tokens:,.1f} | {ms:.1f} | {share:.1%} |", flush=True)
                    if batch == 64:
                        achieved = tokens * 2 * weights
                        roofline_rows.append(f"| {shape} | {name} | {tokens:,.1f} | {achieved / 1e9:.1f} | "
                                             f"{rate / 1e9:.0f} | {achieved / rate:.1%} |")
                if not args.no_runtime and 1 in batches:
                    model.save_pretrained(Path(tmp) / name)
                    runtime = load_runtime(Path(tmp) / name / "model", f"cpu {name}")
                    ours_single, theirs = single_sequence_rates(model, runtime, steps * 2, args.warmup, args.rounds,
                                                                seed)
                    runtime_rows.append(f"| {shape} | {name} | {theirs:,.1f} | {ours_single:,.1f} | "
                                        f"{ours_single / theirs:.2f}x |")
            base = base.float()
        print()

    if runtime_rows:
        print("## Single sequence: ours (sampling included) vs the rwkv runtime's forward (no sampling), "
              f"medians of {args.rounds} alternating rounds\n")
        print("| shape | dtype | rwkv runtime tokens/s | ours tokens/s | ours / runtime |")
        print("|---|---|---:|---:|---:|")
        print("\n".join(runtime_rows) + "\n")
    if roofline_rows:
        print("## 64 sequences: % of the fp32 matmul roofline\n")
        print("| shape | dtype | tokens/s | achieved GFLOP/s | fp32 matmul GFLOP/s | % of roofline |")
        print("|---|---|---:|---:|---:|---:|")
        print("\n".join(roofline_rows))


if __name__ == "__main__":
    main()

"""Infinite-context training on CPU: peak RSS and tokens/s as the row grows, against normal training.

Each row runs in its own process: ``SFTTrainer`` on one random row of ``ctx`` tokens per step
(micro_bsz 1), bf16, grad_cp on, the median of the trainer's per-step tokens/s after the first step, and
the peak RSS from after the model is built (``/proc/self/clear_refs``). infctx rows use chunk_ctx 512
with truncated BPTT; the baseline is normal training at ctx 512.

    python benchmarks/bench_infctx.py                       # both shapes (the 0.1b rows take ~15 min)
    python benchmarks/bench_infctx.py --shapes L4-C256
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

import torch
from roofline import matmul_rate

#: shape -> infctx row lengths
LENGTHS = {"L4-C256": (4096, 16384, 65536), "rwkv7-0.1b": (4096, 16384)}

ONE_RUN = r"""
import json, statistics, sys, tempfile
import torch
torch.set_num_threads(int(sys.argv[5]))
from rwkvtune.config import RWKV7Config, get_preset
from rwkvtune.model import new_model
from rwkvtune.training import SFTConfig, SFTTrainer
shape, train_type, ctx, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
config = get_preset("rwkv7-0.1b") if shape == "rwkv7-0.1b" else RWKV7Config(n_layer=4, n_embd=256, vocab_size=65536)
torch.manual_seed(0)
model = new_model(config)
open("/proc/self/clear_refs", "w").write("5")  # peak RSS from here
rows = [{"input_ids": torch.randint(1, 65536, (ctx,)).tolist()} for _ in range(steps)]
out = tempfile.mkdtemp()
args = SFTConfig(ctx_len=ctx, micro_bsz=1, epoch_count=1, precision="bf16", grad_cp=1, logging_steps=1,
                 warmup_steps=0, output_dir=out, epoch_save=0, train_type=train_type, chunk_ctx=min(512, ctx))
SFTTrainer(model, args, train_dataset=rows).train()
records = [json.loads(line) for line in open(out + "/metrics.jsonl")]
peak_kib = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
print(json.dumps({"tokens_per_s": statistics.median(r["tokens_per_s"] for r in records[1:]),
                  "peak_gib": peak_kib / 2**20}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="L4-C256,rwkv7-0.1b")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per row (the first is not timed)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
          f"bf16 2048^2 matmul {matmul_rate(torch.bfloat16) / 1e9:.0f} GFLOP/s")
    print("micro_bsz 1, bf16, grad_cp 1, chunk_ctx 512, truncated BPTT\n")
    print("| shape | train_type | ctx | tokens/s | vs normal at 512 | peak RSS (GiB) | vs normal at 512 |")
    print("|---|---|---|---|---|---|---|")
    for shape in (s.strip() for s in args.shapes.split(",")):
        baseline = None
        for train_type, ctx in [("normal", 512)] + [("infctx", n) for n in LENGTHS[shape]]:
            out = subprocess.run([sys.executable, "-c", ONE_RUN, shape, train_type, str(ctx), str(args.steps),
                                  str(args.threads)], capture_output=True, text=True)
            if out.returncode:
                print(f"| {shape} | {train_type} | {ctx} | failed: {out.stderr.strip().splitlines()[-1]} |")
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            baseline = baseline or result
            print(f"| {shape} | {train_type} | {ctx} | {result['tokens_per_s']:.0f} | "
                  f"{result['tokens_per_s'] / baseline['tokens_per_s']:.0%} | {result['peak_gib']:.2f} | "
                  f"{result['peak_gib'] / baseline['peak_gib']:.0%} |", flush=True)


if __name__ == "__main__":
    main()

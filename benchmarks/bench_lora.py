"""LoRA r=64 against full fine-tuning on CPU: trainer tokens/s and peak RSS at ctx 1024.

Each row runs in its own process. The model starts in bf16, as official checkpoints are, with random
weights (the values do not change the speed); full fine-tuning then trains float32 masters of every
weight, LoRA holds the frozen base in the compute dtype (bf16 under ``precision="bf16"``) and trains the
adapter in float32. Peak RSS is measured from after the model is built (``/proc/self/clear_refs``), so it
is what training adds on top of loading the model, plus the model itself. Tokens/s is the median of the
trainer's own per-step figures after the first step. grad_cp is on.

    python benchmarks/bench_lora.py                          # every row (the 1.5b row takes ~10 min)
    python benchmarks/bench_lora.py --rows 0.1b --steps 3
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

import torch
from roofline import matmul_rate

#: (shape, method, precision, micro_bsz)
ROWS = [
    ("rwkv7-0.1b", "full", "fp32", 4), ("rwkv7-0.1b", "lora", "fp32", 4),
    ("rwkv7-0.1b", "full", "bf16", 4), ("rwkv7-0.1b", "lora", "bf16", 4),
    ("rwkv7-1.5b", "lora", "bf16", 1),
]

ONE_RUN = r"""
import json, statistics, sys, tempfile
import torch
from torch import nn
torch.set_num_threads(int(sys.argv[6]))
from rwkvtune.config import get_preset
from rwkvtune.model import RWKV7
from rwkvtune.peft import LoraConfig, get_peft_model
from rwkvtune.training import SFTConfig, SFTTrainer
shape, method, precision, micro, ctx, steps = (sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]),
                                               int(sys.argv[5]), int(sys.argv[7]))
config = get_preset(shape)
with torch.device("meta"):
    model = RWKV7(config)
model.to_empty(device="cpu").to(torch.bfloat16)
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    for name, param in model.named_parameters():
        if name.endswith(("ln0.weight", "ln1.weight", "ln2.weight", "ln_x.weight", "ln_out.weight")):
            param.fill_(1.0)
        else:
            param.copy_(0.02 * torch.randn(param.shape, generator=gen))
    for buffer in model.buffers():
        buffer.zero_()
if method == "lora":
    model = get_peft_model(model, LoraConfig(r=64, lora_alpha=128), verbose=False)
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
open("/proc/self/clear_refs", "w").write("5")  # peak RSS from here: training on top of the loaded model
rows = [{"input_ids": torch.randint(1, 65536, (ctx,), generator=gen).tolist()} for _ in range(micro * steps)]
out = tempfile.mkdtemp()
args = SFTConfig(ctx_len=ctx, micro_bsz=micro, epoch_count=1, precision=precision, grad_cp=1, logging_steps=1,
                 warmup_steps=0, output_dir=out, epoch_save=0)
SFTTrainer(model, args, train_dataset=rows).train()
records = [json.loads(line) for line in open(out + "/metrics.jsonl")]
peak_kib = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
print(json.dumps({"tokens_per_s": statistics.median(r["tokens_per_s"] for r in records[1:]),
                  "peak_gib": peak_kib / 2**20, "trainable": trainable}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="0.1b,1.5b", help="which shapes: 0.1b, 1.5b (comma-separated)")
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per row (the first is not timed)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    wanted = {f"rwkv7-{s.strip()}" for s in args.rows.split(",")}
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
          f"bf16 2048^2 matmul {matmul_rate(torch.bfloat16) / 1e9:.0f} GFLOP/s, "
          f"fp32 {matmul_rate(torch.float32) / 1e9:.0f} GFLOP/s")
    print(f"ctx {args.ctx}, grad_cp 1, {args.steps} steps, LoRA r=64 alpha=128 on the auto targets\n")
    print("| shape | method | precision | micro_bsz | trainable params | tokens/s | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for shape, method, precision, micro in ROWS:
        if shape not in wanted:
            continue
        out = subprocess.run([sys.executable, "-c", ONE_RUN, shape, method, precision, str(micro), str(args.ctx),
                              str(args.threads), str(args.steps)], capture_output=True, text=True)
        if out.returncode:
            print(f"| {shape} | {method} | {precision} | {micro} | failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {shape} | {method} | {precision} | {micro} | {result['trainable'] / 1e6:.1f}M | "
              f"{result['tokens_per_s']:.0f} | {result['peak_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()

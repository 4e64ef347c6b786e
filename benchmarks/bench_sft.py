"""SFT trainer throughput and peak memory on CPU, against the bare model's forward+backward.

Each configuration runs in its own process (so peak RSS is its own): a few optimizer steps of
``SFTTrainer`` on random token rows of ``ctx_len`` tokens, the median of the trainer's own per-step
tokens/s after the first step; then the bare model (same dtype handling, same batch, chunked loss)
forward+backward without optimizer, data or checkpoints, the median step after a warm-up. MFU counts
6 FLOPs per matmul weight per token (head included).

    python benchmarks/bench_sft.py                       # both shapes, fp32 and bf16, grad_cp on and off
    python benchmarks/bench_sft.py --shapes L4-C256 --steps 4
    python benchmarks/bench_sft.py --malloc default      # without the trainer's malloc settings
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile

import torch
from roofline import matmul_rate, matmul_weights_per_token

from rwkvtune.config import RWKV7Config, get_preset

SHAPES = {"L4-C256": (4, 256), "rwkv7-0.1b": (12, 768)}

ONE_RUN = r"""
import json, statistics, sys, time, tempfile
import torch
torch.set_num_threads(int(sys.argv[6]))
from rwkvtune.config import RWKV7Config, get_preset
from rwkvtune.model import new_model
from rwkvtune.training import SFTConfig, SFTTrainer, base
n_layer, n_embd, ctx, micro, precision, threads, grad_cp, steps = (int(sys.argv[1]), int(sys.argv[2]),
    int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]))
if sys.argv[9] == "default":  # leave glibc's malloc as it is, for comparison
    base.keep_freed_host_memory = lambda: False
config = RWKV7Config(n_layer=n_layer, n_embd=n_embd, vocab_size=65536)
if (n_layer, n_embd) == (12, 768):
    config = get_preset("rwkv7-0.1b")
torch.manual_seed(0)
model = new_model(config)
rows = [{"input_ids": torch.randint(1, 65536, (ctx,)).tolist()} for _ in range(micro * (steps + 1))]
out = tempfile.mkdtemp()
args = SFTConfig(ctx_len=ctx, micro_bsz=micro, epoch_count=1, precision=precision, grad_cp=grad_cp,
                 logging_steps=1, warmup_steps=1, output_dir=out, epoch_save=0)
SFTTrainer(model, args, train_dataset=rows).train()
records = [json.loads(l) for l in open(out + "/metrics.jsonl")]
trainer_tps = statistics.median(r["tokens_per_s"] for r in records[1:])

ids = torch.randint(1, 65536, (micro, ctx))
model.train()
times = []
for i in range(steps + 1):
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    if i:
        times.append(time.perf_counter() - t)
bare_tps = micro * ctx / statistics.median(times)
peak_kib = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
print(json.dumps({"trainer_tps": trainer_tps, "bare_tps": bare_tps, "peak_gib": peak_kib / 2**20}))
"""


LOSS_MEMORY = r"""
import sys, torch, torch.nn.functional as F
torch.set_num_threads(2)
from rwkvtune.config import get_preset
from rwkvtune.model.loss import chunked_cross_entropy
config = get_preset("rwkv7-0.1b")
head = torch.nn.Linear(config.n_embd, config.vocab_size, bias=False)
hidden = torch.randn(4, 512, config.n_embd, requires_grad=True)
labels = torch.randint(0, config.vocab_size, (4, 512))
def peak():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 2**20
base = peak()
if sys.argv[1] == "chunked":
    loss_sum, n = chunked_cross_entropy(hidden, head, labels)
    (loss_sum / n).backward()
else:
    logits = head(hidden)[:, :-1].float()
    F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten()).backward()
print(peak() - base)
"""


def loss_memory() -> dict[str, float]:
    """Peak RSS growth (GiB) of the loss forward+backward at rwkv7-0.1b's head, micro_bsz 4, ctx 512."""
    return {mode: float(subprocess.run([sys.executable, "-c", LOSS_MEMORY, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("full", "chunked")}


def matmul_flops_per_token(n_layer: int, n_embd: int) -> float:
    config = get_preset("rwkv7-0.1b") if (n_layer, n_embd) == (12, 768) else RWKV7Config(
        n_layer=n_layer, n_embd=n_embd, vocab_size=65536)
    return 6 * matmul_weights_per_token(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--micro-bsz", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--malloc", choices=("trainer", "default"), default="trainer",
                        help="'default' keeps glibc's malloc settings instead of the trainer's (for comparison)")
    args = parser.parse_args()
    memory = loss_memory()
    print(f"cross-entropy over V=65536 for 4 x 512 tokens, forward+backward, peak RSS growth: full logits "
          f"{memory['full']:.2f} GiB, chunked (1024 positions) {memory['chunked']:.2f} GiB\n")
    torch.set_num_threads(args.threads)
    rate = matmul_rate(torch.bfloat16)
    print(f"torch {torch.__version__}, {platform.machine()}, {args.threads} threads; bf16 matmul "
          f"{rate / 1e9:.0f} GFLOP/s; ctx {args.ctx}, micro_bsz {args.micro_bsz}\n")
    print("| shape | precision | grad_cp | trainer tok/s | bare fwd+bwd tok/s | trainer/bare | peak RSS (GiB) "
          "| MFU vs bf16 matmul |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        n_layer, n_embd = SHAPES[shape]
        flops = matmul_flops_per_token(n_layer, n_embd)
        for precision in ("fp32", "bf16"):
            for grad_cp in (0, 1):
                out = subprocess.run([sys.executable, "-c", ONE_RUN, str(n_layer), str(n_embd), str(args.ctx),
                                      str(args.micro_bsz), precision, str(args.threads), str(grad_cp),
                                      str(args.steps), args.malloc], capture_output=True, text=True,
                                     cwd=tempfile.gettempdir())
                if out.returncode:
                    print(f"| {shape} | {precision} | {grad_cp} | failed: {out.stderr.strip().splitlines()[-1]} |")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {shape} | {precision} | {grad_cp} | {r['trainer_tps']:.0f} | {r['bare_tps']:.0f} | "
                      f"{r['trainer_tps'] / r['bare_tps']:.0%} | {r['peak_gib']:.2f} | "
                      f"{r['trainer_tps'] * flops / rate:.1%} |", flush=True)


if __name__ == "__main__":
    main()

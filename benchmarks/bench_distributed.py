"""Full fine-tuning on CPU processes: one process against DDP and FSDP (FSDP2) on two, same global batch.

Each configuration runs in its own process group (``SFTTrainer``, ``accelerator="cpu"``, gloo): a few
optimizer steps over random token rows of ``ctx`` tokens, ``global_bsz`` rows per step (one process: one
micro-batch of them; two processes: half each). tokens/s is the median of the trainer's own per-step rate
after the first step (all processes together); peak RSS is each process's ``VmHWM`` at the end (it
includes the whole model each process builds before FSDP shards it). Two processes share the machine's
cores, one torch thread each; the one-process rows run with 1 thread and with all of them.

    python benchmarks/bench_distributed.py                         # L4-C256 and rwkv7-0.1b, fp32
    python benchmarks/bench_distributed.py --shapes L4-C256 --ctx 512 --steps 3 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {"L4-C256": (4, 256), "rwkv7-0.1b": (12, 768)}

ONE_RUN = r"""
import json, os, sys
import torch
n_layer, n_embd, ctx, global_bsz, precision, threads, devices, strategy, steps, out = (
    int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]),
    int(sys.argv[7]), sys.argv[8], int(sys.argv[9]), sys.argv[10])
torch.set_num_threads(threads)
from rwkvtune.config import RWKV7Config, get_preset
from rwkvtune.model import new_model
from rwkvtune.training import SFTConfig, SFTTrainer
config = get_preset("rwkv7-0.1b") if (n_layer, n_embd) == (12, 768) else RWKV7Config(
    n_layer=n_layer, n_embd=n_embd, vocab_size=65536)
torch.manual_seed(0)
model = new_model(config)
rows = [{"input_ids": torch.randint(1, 65536, (ctx,)).tolist()} for _ in range(global_bsz * (steps + 1))]
args = SFTConfig(ctx_len=ctx, micro_bsz=global_bsz // devices, epoch_count=1, precision=precision, grad_cp=1,
                 logging_steps=1, warmup_steps=1, output_dir=out, epoch_save=0, accelerator="cpu",
                 devices=devices, strategy=strategy)
SFTTrainer(model, args, train_dataset=rows).train()
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
peak_kib = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
with open(os.path.join(out, f"peak_rank{rank}.json"), "w") as f:
    json.dump({"peak_gib": peak_kib / 2**20}, f)
"""


def run(shape: str, precision: str, threads: int, devices: int, strategy: str, args) -> dict:
    n_layer, n_embd = SHAPES[shape]
    with tempfile.TemporaryDirectory() as tmp:
        script, out = Path(tmp) / "one_run.py", Path(tmp) / "out"
        script.write_text(ONE_RUN)  # a file, not -c: Fabric's launcher starts the other processes from it
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script), str(n_layer), str(n_embd), str(args.ctx),
                               str(args.global_bsz), precision, str(threads), str(devices), strategy,
                               str(args.steps), str(out)], capture_output=True, text=True, cwd=tmp,
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if proc.returncode:
            return {"error": proc.stderr.strip().splitlines()[-1]}
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rates = sorted(r["tokens_per_s"] for r in records[1:])
        peaks = [json.loads((out / f"peak_rank{r}.json").read_text())["peak_gib"] for r in range(devices)]
        return {"tps": rates[len(rates) // 2], "peaks": peaks, "wall": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--global-bsz", type=int, default=4, help="rows per optimizer step over all processes")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"torch {torch.__version__}, {platform.machine()}, {cores} cores; {args.precision}, grad_cp=1, "
          f"ctx {args.ctx}, {args.global_bsz} rows per optimizer step, {args.steps} steps after the first\n")
    print("| shape | run | processes x threads | tok/s (all processes) | vs 1 process, all threads "
          "| peak RSS per process (GiB) | wall s |")
    print("|---|---|---|---|---|---|---|")
    runs = [("1 process", 1, cores, "auto"), ("1 process", 1, 1, "auto"), ("DDP", 2, 1, "ddp"),
            ("FSDP", 2, 1, "fsdp")]
    for shape in args.shapes.split(","):
        reference = None
        for name, devices, threads, strategy in runs:
            r = run(shape, args.precision, threads, devices, strategy, args)
            if "error" in r:
                print(f"| {shape} | {name} | {devices} x {threads} | failed: {r['error']} |||", flush=True)
                continue
            reference = reference or r["tps"]
            peaks = " / ".join(f"{p:.2f}" for p in r["peaks"])
            print(f"| {shape} | {name} | {devices} x {threads} | {r['tps']:.0f} | {r['tps'] / reference:.0%} | "
                  f"{peaks} | {r['wall']:.0f} |", flush=True)


if __name__ == "__main__":
    main()

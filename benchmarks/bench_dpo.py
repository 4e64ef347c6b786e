"""DPO's prompt read once against the two forwards a transformer trainer runs, on CPU.

A batch of ``--pairs`` preference pairs with ``--prompt``-token prompts and ``--answer``-token answers. "shared"
is what ``DPOTrainer`` runs (``model.continuations.score_continuations``): each prompt once, both answers from
copies of its state, the gradient of both answers back through the one prompt pass. "two forwards" runs
prompt + chosen and prompt + rejected as separate rows through ``RWKV7.score`` (the layout of TRL's
``DPOTrainer``), each reading the prompt. Both: forward and backward of the summed answer log-probs (the
DPO loss's cost on top is negligible), median seconds of ``--steps`` after a warm-up, and the process's peak
RSS (each layout in its own process).

    python benchmarks/bench_dpo.py
    python benchmarks/bench_dpo.py --shapes L12-C768 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

import torch

ONE_RUN = r"""
import json, statistics, sys, time
import torch
layout, n_layer, n_embd, pairs, prompt, answer, steps, threads, precision = sys.argv[1:10]
torch.set_num_threads(int(threads))
from rwkvtune.config import RWKV7Config
from rwkvtune.engine.master_weights import hold_for_training
from rwkvtune.model import new_model
from rwkvtune.model.continuations import score_continuations
torch.manual_seed(0)
model = new_model(RWKV7Config(n_layer=int(n_layer), n_embd=int(n_embd), vocab_size=65536))
dtype = torch.bfloat16 if precision == "bf16" else torch.float32
pairs, prompt, answer = int(pairs), int(prompt), int(answer)
prompts = torch.randint(1, 65536, (pairs, prompt))
answers = torch.randint(1, 65536, (2 * pairs, answer))
mask = torch.ones_like(answers, dtype=torch.bool)

def shared():
    logps, _ = score_continuations(model, prompts.tolist(), answers, mask, per_prompt=2)
    return logps.sum()

def two_forwards():
    rows = torch.cat([prompts.repeat_interleave(2, dim=0), answers], dim=1)        # [2P, prompt + answer]
    targets = torch.full_like(rows, -100)
    targets[:, prompt - 1:-1] = answers
    return model.score(rows, targets).logprobs.sum()

step = shared if layout == "shared" else two_forwards
times = []
for i in range(int(steps) + 1):
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype, enabled=precision == "bf16"):
        loss = step()
    loss.backward()
    model.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 2**20
print(json.dumps({"seconds": statistics.median(times[1:]), "peak_gib": peak}))
"""

SHAPES = {"L4-C256": (4, 256), "L12-C768": (12, 768)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="L4-C256,L12-C768")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--answer", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"{args.precision}; {args.pairs} pairs, prompts {args.prompt} tokens, answers {args.answer} tokens, "
          "V = 65536\n")
    print("| model | layout | tokens read | step s | peak RSS (GiB) |")
    print("|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        n_layer, n_embd = SHAPES[shape]
        for layout, tokens in (("shared", args.pairs * (args.prompt + 2 * args.answer)),
                               ("two forwards", 2 * args.pairs * (args.prompt + args.answer))):
            out = subprocess.run([sys.executable, "-c", ONE_RUN, "shared" if layout == "shared" else "two",
                                  str(n_layer), str(n_embd), str(args.pairs), str(args.prompt), str(args.answer),
                                  str(args.steps), str(args.threads), args.precision], capture_output=True, text=True)
            if out.returncode:
                print(f"| {shape} | {layout} | failed: {out.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {shape} | {layout} | {tokens} | {r['seconds']:.2f} | {r['peak_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()

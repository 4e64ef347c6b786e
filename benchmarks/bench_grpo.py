"""One GRPO step on CPU split into its phases, and the rollout's speed against the generation engine alone.

A new L4-C256-V65536 model (RWKV-LM's init), ``prompts`` prompts of 32 tokens x G=8 completions of
``--completion`` tokens (no stop: every completion runs to the limit), fp32, LoRA off. Each row runs the
trainer for ``--steps`` optimizer steps (one rollout each) and reports the median seconds per step of
each phase from ``metrics.jsonl``: rollout (sampling), reward, log-prob (the training forward), backward.
The baseline is ``rwkvtune.generation.generate`` on the same prompts and sampling settings in the same
process: completion tokens per second at the same number of sequences. A last column runs ``SFTTrainer`` on the
same model (fp32, no checkpointing) over as many tokens per step as GRPO trains on (rows of 512 tokens): its
peak RSS and seconds per step, the yardstick for GRPO's memory.

    python benchmarks/bench_grpo.py
    python benchmarks/bench_grpo.py --prompts 8 32 --completion 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

ONE_RUN = r"""
import json, statistics, sys, tempfile, time
import torch
torch.set_num_threads(int(sys.argv[4]))
from rwkvtune.config import RWKV7Config
from rwkvtune.generation import SamplingParams, generate
from rwkvtune.model import new_model
from rwkvtune.training import GRPOConfig, GRPOTrainer
prompts, completion, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = new_model(RWKV7Config(n_layer=4, n_embd=256, vocab_size=65536))
model.generation_config = {"stop": [], "stop_token_ids": []}
rows = [{"input_ids": torch.randint(1, 65536, (32,)).tolist()} for _ in range(prompts * steps)]
out = tempfile.mkdtemp()
open("/proc/self/clear_refs", "w").write("5")
config = GRPOConfig(micro_bsz=prompts, num_generations=8, max_completion_length=completion, precision="fp32",
                    grad_cp=0, logging_steps=1, output_dir=out, epoch_save=0, lr_init=1e-6)
GRPOTrainer(model, lambda completions, **kw: [float(len(c) % 7) for c in completions], config,
            train_dataset=rows).train()
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 2**20
records = [json.loads(line) for line in open(out + "/metrics.jsonl")][1:]
phases = {k: statistics.median(r[k] for r in records) for k in ("time/rollout", "time/reward", "time/logprob",
                                                                   "time/backward")}
params = SamplingParams(n=8, max_new_tokens=completion, stop=(), stop_token_ids=(), seed=0)
times = []
for _ in range(2):
    start = time.perf_counter()
    generate(model, [r["input_ids"] for r in rows[:prompts]], params)
    times.append(time.perf_counter() - start)
tokens = prompts * 8 * completion
print(json.dumps({**phases, "rollout_tps": tokens / phases["time/rollout"], "engine_tps": tokens / min(times),
                  "peak_gib": peak}))
"""

SFT_RUN = r"""
import json, statistics, sys, tempfile
import torch
torch.set_num_threads(int(sys.argv[3]))
from rwkvtune.config import RWKV7Config
from rwkvtune.model import new_model
from rwkvtune.training import SFTConfig, SFTTrainer
rows, steps = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = new_model(RWKV7Config(n_layer=4, n_embd=256, vocab_size=65536))
data = [{"input_ids": torch.randint(1, 65536, (512,)).tolist()} for _ in range(rows * steps)]
out = tempfile.mkdtemp()
open("/proc/self/clear_refs", "w").write("5")
config = SFTConfig(micro_bsz=rows, ctx_len=512, precision="fp32", grad_cp=0, logging_steps=1, output_dir=out,
                   epoch_save=0, epoch_count=1, warmup_steps=0)
SFTTrainer(model, config, train_dataset=data).train()
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 2**20
records = [json.loads(line) for line in open(out + "/metrics.jsonl")][1:]
tokens = rows * 512
print(json.dumps({"seconds": statistics.median(tokens / r["tokens_per_s"] for r in records), "peak_gib": peak}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 8], help="prompts per step (x 8 completions)")
    parser.add_argument("--completion", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"L4-C256-V65536, G=8, prompt 32 tokens, completion {args.completion} tokens, fp32, {args.threads} threads\n")
    print("| sequences | rollout s | reward s | log-prob s | backward s | rollout tok/s | engine tok/s | "
          "rollout / engine | peak RSS (GiB) | SFT, same tokens: step s, peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for prompts in args.prompts:
        out = subprocess.run([sys.executable, "-c", ONE_RUN, str(prompts), str(args.completion), str(args.steps),
                              str(args.threads)], capture_output=True, text=True, cwd=tempfile.gettempdir())
        if out.returncode:
            print(f"| {prompts * 8} | failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        sft_rows = max(prompts * 8 * args.completion // 512, 1)
        sft = subprocess.run([sys.executable, "-c", SFT_RUN, str(sft_rows), str(args.steps), str(args.threads)],
                             capture_output=True, text=True, cwd=tempfile.gettempdir())
        s = json.loads(sft.stdout.strip().splitlines()[-1]) if sft.returncode == 0 else None
        sft_cell = f"{sft_rows} x 512: {s['seconds']:.2f} s, {s['peak_gib']:.2f}" if s else "failed"
        print(f"| {prompts * 8} | {r['time/rollout']:.2f} | {r['time/reward']:.4f} | {r['time/logprob']:.2f} | "
              f"{r['time/backward']:.2f} | {r['rollout_tps']:.0f} | {r['engine_tps']:.0f} | "
              f"{r['rollout_tps'] / r['engine_tps']:.0%} | {r['peak_gib']:.2f} | {sft_cell} |", flush=True)


if __name__ == "__main__":
    main()

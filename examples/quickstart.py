"""The quick start: train a small RWKV-7 on a bundled synthetic instruction task, on CPU, in a few minutes.

    python examples/quickstart.py

It creates a new small RWKV-7 (RWKV-LM's init) as a hub directory, asks it a few questions, fine-tunes it
with ``SFTTrainer`` on generated chat rows (add two digits, say a word twice, next letter), shows the loss
falling, and asks the same questions again. Nothing is downloaded. ``--steps`` trades time for accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_tasks import make_dataset, make_turn  # noqa: E402

from rwkvtune import AutoModel, AutoTokenizer  # noqa: E402
from rwkvtune.config import RWKV7Config  # noqa: E402
from rwkvtune.generation import SamplingParams, generate  # noqa: E402
from rwkvtune.tokenizer import WorldTokenizer  # noqa: E402
from rwkvtune.training import SFTConfig, SFTTrainer  # noqa: E402


def ask(model, tokenizer, questions: list[str]) -> list[str]:
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q in questions]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    return [c.text.strip() for c in generate(model, prompts, params, tokenizer=tokenizer)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/quickstart")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (micro-batches of 16 rows)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.output_dir)

    base = out / "base"
    AutoModel.from_config(RWKV7Config(n_layer=3, n_embd=192), ctx_len=128).save_pretrained(
        base, tokenizer=WorldTokenizer.default())
    model = AutoModel.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)

    rng = random.Random(12345)  # held-out questions: another seed than the training rows
    held_out = [make_turn(rng) for _ in range(60)]
    questions = [q for q, _ in held_out]
    before = ask(model, tokenizer, questions)

    config = SFTConfig(ctx_len=128, micro_bsz=16, epoch_count=1, epoch_steps=args.steps, lr_init=2e-3,
                       lr_final=1e-4, warmup_steps=20, precision="fp32", grad_cp=0, logging_steps=25,
                       output_dir=str(out / "sft"), overwrite_output_dir=True, epoch_save=0)
    SFTTrainer(model, config, train_dataset=make_dataset(16 * args.steps), processing_class=tokenizer).train()
    losses = [json.loads(line)["loss"] for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    print("loss every 25 steps: " + " -> ".join(f"{x:.2f}" for x in losses))

    after = ask(model, tokenizer, questions)
    print("\n| question | before | after | expected |\n|---|---|---|---|")
    for (q, expected), b, a in list(zip(held_out, before, after))[:8]:
        print(f"| {q} | {b!r} | {a!r} | {expected} |")
    correct = sum(a == expected for (_, expected), a in zip(held_out, after))
    print(f"\nheld-out accuracy: {sum(b == e for (_, e), b in zip(held_out, before))}/{len(held_out)} before, "
          f"{correct}/{len(held_out)} after. Fine-tuned model: {out / 'sft' / 'final'}")


if __name__ == "__main__":
    main()

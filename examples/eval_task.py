"""Score a model on held-out prompts of the bundled synthetic task (what the GRPO example optimises).

    MODEL_PATH=runs/sft_grpo/final python examples/eval_task.py

Prints the mean exact-answer reward of NUM_SAMPLES [8] completions per prompt sampled at temperature 1, and
the greedy accuracy, over NUM_PROMPTS [96] prompts drawn with another seed than the training prompts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from example_setup import env  # noqa: E402
from synthetic_tasks import exact_answer, make_prompts  # noqa: E402

from rwkvtune import AutoModel, AutoTokenizer  # noqa: E402
from rwkvtune.generation import SamplingParams, generate  # noqa: E402


def main() -> None:
    torch.set_num_threads(env("THREADS", 2, int))
    path = env("MODEL_PATH", None)
    if path is None:
        raise SystemExit("set MODEL_PATH to a hub directory")
    model, tokenizer = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    rows = make_prompts(env("NUM_PROMPTS", 96, int), seed=999)
    prompts = [tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True) for row in rows]
    n = env("NUM_SAMPLES", 8, int)
    sampled = generate(model, prompts, SamplingParams(n=n, max_new_tokens=8, temperature=1.0, seed=0), tokenizer)
    rewards = exact_answer([c.text for c in sampled], [row["answer"] for row in rows for _ in range(n)])
    greedy = generate(model, prompts, SamplingParams(max_new_tokens=8, temperature=0.0), tokenizer)
    accuracy = sum(c.text.strip() == row["answer"] for c, row in zip(greedy, rows)) / len(rows)
    print(f"{path}: mean sampled reward {sum(rewards) / len(rewards):.3f}, greedy accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()

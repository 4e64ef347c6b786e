"""Score a model on held-out prompts of the bundled synthetic task (what the GRPO example optimises).

    MODEL_PATH=runs/sft_grpo/final python examples/eval_task.py

Prints, over NUM_PROMPTS [96] prompts drawn with another seed than the training prompts:
- the expected exact-answer reward at temperature 1: the probability that a sample is exactly the answer
  (its tokens, then the end of the turn), read from one teacher-forced forward per prompt. It is what GRPO
  maximises, free of sampling noise;
- the mean exact-answer reward of NUM_SAMPLES [8] completions per prompt sampled at temperature 1;
- the greedy accuracy.
THREADS [2] sets torch's threads.
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
from rwkvtune.tokenizer import WorldTokenizer  # noqa: E402

#: What a reply looks like in the chat format: a space after "Assistant:", the answer, the end of the turn.
REPLY = " {answer}\n\n"


@torch.no_grad()
def expected_exact_reward(model: torch.nn.Module, tokenizer: WorldTokenizer, rows: list[dict]) -> float:
    """Mean over ``rows`` (``make_prompts`` rows) of the probability, at temperature 1, of sampling exactly
    ``REPLY``'s tokens: the expected ``exact_answer`` reward, but for other tokenizations of the same text
    (which a World-tokenizer model practically never samples)."""
    total = 0.0
    for row in rows:
        prompt = tokenizer.encode(tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True))
        reply = tokenizer.encode(REPLY.format(answer=row["answer"]))
        ids = torch.tensor([prompt + reply])
        targets = torch.full_like(ids, -100)  # position t is scored against the token at t + 1
        targets[0, len(prompt) - 1:-1] = torch.tensor(reply)
        scores = model.score(ids, targets)
        total += scores.logprobs[targets != -100].sum().exp().item()
    return total / len(rows)


@torch.no_grad()
def greedy_accuracy(model: torch.nn.Module, tokenizer: WorldTokenizer, rows: list[dict]) -> float:
    """The share of ``rows`` (``make_prompts`` rows) whose greedy reply, stripped, is exactly the answer."""
    prompts = [tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True) for row in rows]
    greedy = generate(model, prompts, SamplingParams(max_new_tokens=8, temperature=0.0), tokenizer)
    return sum(c.text.strip() == row["answer"] for c, row in zip(greedy, rows)) / len(rows)


def main() -> None:
    torch.set_num_threads(env("THREADS", 2, int))
    path = env("MODEL_PATH", None)
    if path is None:
        raise SystemExit("set MODEL_PATH to a hub directory")
    model, tokenizer = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    rows = make_prompts(env("NUM_PROMPTS", 96, int), seed=999)
    expected = expected_exact_reward(model, tokenizer, rows)
    prompts = [tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True) for row in rows]
    n = env("NUM_SAMPLES", 8, int)
    sampled = generate(model, prompts, SamplingParams(n=n, max_new_tokens=8, temperature=1.0, seed=0), tokenizer)
    rewards = exact_answer([c.text for c in sampled], [row["answer"] for row in rows for _ in range(n)])
    accuracy = greedy_accuracy(model, tokenizer, rows)
    print(f"{path}: expected reward {expected:.3f}, mean sampled reward {sum(rewards) / len(rewards):.3f}, "
          f"greedy accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()

"""A small instruction-following task generated on the fly, so examples run with no downloads.

Three kinds of turns, each with one right answer a small RWKV-7 can learn on a CPU in minutes:
add two small numbers, say a word twice, and name the next letter of the alphabet. The same turns serve
GRPO as prompts with a verifiable answer (``make_prompts``, ``exact_answer``).
"""

from __future__ import annotations

import random
import string

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "rocket", "garden", "window",
         "silver", "candle", "forest", "bottle", "dragon", "pencil", "summer", "orange", "planet", "mirror"]


def make_turn(rng: random.Random) -> tuple[str, str]:
    """One (question, answer) pair."""
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randrange(10), rng.randrange(10)
        return f"What is {a} plus {b}?", str(a + b)
    if kind == 1:
        word = rng.choice(WORDS)
        return f"Say {word} twice.", f"{word} {word}"
    letter = rng.choice(string.ascii_lowercase[:-1])
    return f"Which letter comes after {letter}?", chr(ord(letter) + 1)


def make_dataset(n: int, seed: int = 0) -> list[dict]:
    """``n`` chat rows ``{"messages": [user, assistant]}`` (the trainer masks the user turn)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer = make_turn(rng)
        rows.append({"messages": [{"role": "user", "content": question},
                                  {"role": "assistant", "content": answer}]})
    return rows


def make_corpus(n: int, seed: int = 0) -> list[dict]:
    """``n`` plain-text rows ``{"text": ...}`` of the same facts, for the pretraining example."""
    rng = random.Random(seed)
    return [{"text": " ".join(f"{q} {a}." for q, a in (make_turn(rng) for _ in range(4)))} for _ in range(n)]


def make_prompts(n: int, seed: int = 1) -> list[dict]:
    """``n`` GRPO rows: ``{"messages": [user], "answer": ...}`` (the answer column reaches the rewards)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer = make_turn(rng)
        rows.append({"messages": [{"role": "user", "content": question}], "answer": answer})
    return rows


def exact_answer(completions, answer, **kwargs) -> list[float]:
    """1 when the reply is exactly the answer, else 0 (a verifiable reward)."""
    rewards = []
    for completion, expected in zip(completions, answer):
        text = (completion[0]["content"] if isinstance(completion, list) else completion).strip()
        rewards.append(1.0 if text == expected else 0.0)
    return rewards

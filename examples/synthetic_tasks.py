"""A small instruction-following task generated on the fly, so examples run with no downloads.

Three kinds of turns, each with one right answer a small RWKV-7 can learn on a CPU in minutes:
add two small numbers, say a word twice, and name the next letter of the alphabet. The same turns serve
GRPO as prompts with a verifiable answer (``make_prompts``, ``exact_answer``) and DPO as preference pairs, the
right answer against a plausible wrong one (``make_preferences``).
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


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer of the same kind as ``answer`` (a ``make_turn`` answer): a sum off by one or
    two, the word once or three times or another word twice, or a letter near the right one."""
    if answer.isdigit():
        total = int(answer)
        return str(rng.choice([x for x in (total - 2, total - 1, total + 1, total + 2) if x >= 0]))
    if " " in answer:
        word = answer.split()[0]
        other = rng.choice([w for w in WORDS if w != word])
        return rng.choice([word, f"{word} {word} {word}", f"{other} {other}"])
    right = ord(answer)
    return chr(rng.choice([c for c in (right - 2, right - 1, right + 1) if ord("a") <= c <= ord("z")]))


def make_preferences(n: int, seed: int = 2) -> list[dict]:
    """``n`` DPO rows in TRL's conversational form: ``{"prompt": [user], "chosen": [assistant: the right answer],
    "rejected": [assistant: a wrong answer of the same kind]}`` (seed 2: other turns than the SFT rows' 0,
    the GRPO prompts' 1 and eval_task's held-out 999)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer = make_turn(rng)
        rows.append({"prompt": [{"role": "user", "content": question}],
                     "chosen": [{"role": "assistant", "content": answer}],
                     "rejected": [{"role": "assistant", "content": wrong_answer(answer, rng)}]})
    return rows


def exact_answer(completions, answer, **kwargs) -> list[float]:
    """1 when the reply is exactly the answer, else 0 (a verifiable reward)."""
    rewards = []
    for completion, expected in zip(completions, answer):
        text = (completion[0]["content"] if isinstance(completion, list) else completion).strip()
        rewards.append(1.0 if text == expected else 0.0)
    return rewards

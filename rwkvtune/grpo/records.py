"""Rollouts as JSON lines (``save_rollout_steps``): one record per completion, appended to
``rollouts_step{N:06d}.jsonl`` for the optimizer step ``N`` that sampled them."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rwkvtune.grpo.rollout import Rollout


def rollouts_file(directory: Path, step: int) -> Path:
    """The JSONL file of optimizer step ``step``'s rollouts."""
    return Path(directory) / f"rollouts_step{step:06d}.jsonl"


def rollout_records(rollout: Rollout, *, step: int, reward_names: Sequence[str]) -> list[dict[str, Any]]:
    """One JSON-ready record per completion of ``rollout``: prompt, completion (text and sampled ids), the
    number of its tokens in the loss, why it ended, each function's reward (``None`` where missing), the
    combined reward and the advantage."""
    g = rollout.num_generations
    records = []
    for i, (text, reason) in enumerate(zip(rollout.completions, rollout.finish_reasons)):
        prompt = rollout.prompts[i // g]
        records.append({
            "step": step, "rollout": rollout.index, "prompt": prompt.prompt, "prompt_ids": prompt.ids,
            "completion": text, "completion_ids": rollout.completion_ids[i][rollout.sampled_mask[i]].tolist(),
            "completion_length": int(rollout.mask[i].sum()), "finish_reason": reason,
            "rewards": {name: _number(value) for name, value in zip(reward_names, rollout.rewards_per_func[i].tolist())},
            "reward": _number(float(rollout.rewards[i])), "advantage": float(rollout.advantages[i])})
    return records


def append_records(directory: Path, step: int, records: Sequence[dict[str, Any]]) -> Path:
    """Append ``records`` to step ``step``'s file in ``directory`` (created if needed); returns the file."""
    path = rollouts_file(directory, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value

"""The rollout in use, saved with each checkpoint (``rollout_buffer.pt``), so that a run resumed inside a
rollout trains on the same completions instead of sampling new ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rwkvtune.data.prompts import PromptRow
from rwkvtune.grpo.rollout import Rollout

ROLLOUT_BUFFER_FILE = "rollout_buffer.pt"


def load_saved_rollout(checkpoint: Path) -> dict[str, Any] | None:
    """What :meth:`RolloutBuffer.save` wrote into ``checkpoint``, or ``None`` where it wrote nothing."""
    path = Path(checkpoint) / ROLLOUT_BUFFER_FILE
    return torch.load(path, weights_only=True) if path.is_file() else None


class RolloutBuffer:
    """Holds the rollout in use, and the one a checkpoint saved until the resumed run asks for a rollout.

    Args:
        num_generations, world_size: the run's group size and number of processes (a saved rollout is
            reused only under the same ones).
        saved: what :func:`load_saved_rollout` read from the checkpoint resumed from, if anything.
    """

    def __init__(self, *, num_generations: int, world_size: int, saved: dict[str, Any] | None = None):
        self.num_generations, self.world_size = num_generations, world_size
        self.rollout: Rollout | None = None
        self._saved = saved

    def holds(self, index: int) -> bool:
        """Whether the rollout in use is rollout ``index``."""
        return self.rollout is not None and self.rollout.index == index

    def take_saved(self, index: int, prompts: list[PromptRow], indices: list[int]) -> Rollout | None:
        """The saved rollout if it is rollout ``index`` of the dataset rows ``indices`` (whose prompts are
        ``prompts``), else ``None``. Offered once: to the first rollout asked for after resuming."""
        saved, self._saved = self._saved, None
        if saved is None or saved.get("key") != self._key(index, indices):
            return None
        return Rollout(prompts=prompts, indices=indices, **{k: v for k, v in saved.items() if k != "key"})

    def save(self, directory: Path) -> None:
        """Write the rollout in use into ``directory`` (one process only: under DDP only rank 0 writes
        checkpoint files, and the rollout is sampled again on resume)."""
        if self.rollout is None or self.world_size > 1:
            return
        r = self.rollout
        torch.save({"key": self._key(r.index, r.indices), "index": r.index, "completion_ids": r.completion_ids,
                    "sampled_mask": r.sampled_mask, "mask": r.mask, "completions": r.completions,
                    "finish_reasons": r.finish_reasons, "rewards_per_func": r.rewards_per_func, "rewards": r.rewards,
                    "advantages": r.advantages, "num_items": r.num_items, "old_logps": r.old_logps,
                    "ref_logps": r.ref_logps}, Path(directory) / ROLLOUT_BUFFER_FILE)

    def _key(self, index: int, indices: list[int]) -> list[int]:
        """What a saved rollout must match to be reused: its index, prompts, group size and process count."""
        return [index, self.num_generations, self.world_size, *indices]

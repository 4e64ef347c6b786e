"""Training checkpoints: one directory per save, written under a temporary name and renamed.

``<output_dir>/batch{N}`` or ``epoch{N}`` holds ``state.pt`` (weights, optimizer, step, data position,
RNG; written by Fabric so sharded strategies work: one file on one process and under DDP, a directory
of shards under FSDP -- one ``.distcp`` file per process, ``.metadata`` and ``meta.pt`` with the rest --
and DeepSpeed's engine directory under DeepSpeed), ``trainer_state.json`` (step, epoch, position: easy
to read) and ``train_config.json`` (the resolved config). A run that trains an adapter keeps only the
trained tensors in ``state.pt`` (the frozen base is not copied into every checkpoint) and adds the
adapter's own files. A crash mid-save leaves only a ``.tmp`` directory beside the last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rwkvtune.engine.fabric import uses_deepspeed

CHECKPOINT_NAME = re.compile(r"^(batch|epoch)\d+$")
STATE_FILE = "state.pt"
TRAINER_STATE_FILE = "trainer_state.json"
CONFIG_FILE = "train_config.json"


@dataclass
class TrainProgress:
    """Where training stands: ``step`` optimizer steps done; ``epoch`` and ``window`` (optimizer steps
    already taken in that epoch) locate the next batch. ``total_steps``: the run's optimizer steps, which
    ``engine.loop.fit`` sets when it starts (derived from the plan and the config, so not saved)."""

    step: int = 0
    epoch: int = 0
    window: int = 0
    total_steps: int = 0

    def saved(self) -> dict[str, int]:
        """What a checkpoint records of it (``state.pt`` and ``trainer_state.json``)."""
        return {"step": self.step, "epoch": self.epoch, "window": self.window}


def rng_state() -> dict[str, Any]:
    """Every RNG a step may draw from, as plain containers and tensors (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (by step)."""
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)
             and (p / TRAINER_STATE_FILE).is_file()] if output_dir.is_dir() else []
    return sorted(found, key=lambda p: json.loads((p / TRAINER_STATE_FILE).read_text())["step"])


def resolve_resume(output_dir: Path, resume: str) -> Path:
    """The checkpoint directory ``resume`` names (``"latest"``: the newest complete one). Its ``state.pt``
    is a file, or a directory of shards (FSDP, DeepSpeed)."""
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        if not found:
            raise FileNotFoundError(f"resume_from_checkpoint='latest' but {output_dir} has no complete checkpoint")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).exists() or not (path / TRAINER_STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete rwkvtune checkpoint (expected {STATE_FILE}, a file or a "
                                f"directory of shards, and {TRAINER_STATE_FILE}); pass a batch*/epoch* directory "
                                "or 'latest'")
    return path


def save_checkpoint(fabric, output_dir: Path, name: str, *, model, optimizer, progress: TrainProgress,
                    config: dict[str, Any], keep: int, trainable_only: bool = False,
                    export: Callable[[Path], None] | None = None) -> Path:
    """Write checkpoint ``name`` atomically, then prune to the ``keep`` newest (0 = keep all).

    ``trainable_only``: keep only parameters with ``requires_grad`` in ``state.pt``. ``export(directory)``
    writes extra files into the checkpoint (global rank 0; an adapter's own format).
    """
    final = output_dir / name
    staging = output_dir / f".{name}.tmp"
    if fabric.is_global_zero:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    fabric.barrier()
    state = {"model": model, "optimizer": optimizer, "progress": progress.saved(), "rng": rng_state(),
             "trainable_only": trainable_only}
    keep_names = trainable_names(model) if trainable_only else None
    fabric.save(staging / STATE_FILE, state,
                filter={"model": lambda key, _: key in keep_names} if trainable_only else None)
    if fabric.is_global_zero:
        if export is not None:
            export(staging)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (staging / TRAINER_STATE_FILE).write_text(json.dumps(progress.saved(), indent=2) + "\n")
        for path in staging.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        if final.exists():  # the same step saved again (e.g. an epoch end that is also a batch save)
            shutil.rmtree(final)
        os.replace(staging, final)
        if keep:
            for old in checkpoint_dirs(output_dir)[:-keep]:
                shutil.rmtree(old)
    fabric.barrier()
    return final


def load_checkpoint(fabric, path: Path, *, model, optimizer) -> TrainProgress:
    """Restore weights, optimizer and RNG from ``path``; returns where training stood.

    A checkpoint with only the trained tensors must hold exactly the tensors ``model`` trains. A checkpoint
    resumes under the kind of strategy that wrote it: sharded (FSDP, DeepSpeed: ``state.pt`` is a directory)
    or whole tensors (one process, DDP: one file).
    """
    sharded, whole = (path / STATE_FILE).is_dir(), _holds_whole_tensors(fabric)
    if sharded == whole:
        written = ("under a sharded strategy (FSDP or DeepSpeed: state.pt is a directory of shards)" if sharded
                   else "on one process or under DDP (state.pt is one file)")
        raise ValueError(f"{path} was saved {written} and cannot resume under strategy "
                         f"{type(fabric.strategy).__name__}; resume with the strategy it was saved with (its "
                         f"{CONFIG_FILE} names it)")
    if not whole:  # DeepSpeed and FSDP restore their own, possibly sharded, state
        rest = fabric.load(path / STATE_FILE, {"model": model, "optimizer": optimizer}, weights_only=True)
        set_rng_state(rest["rng"])
        return TrainProgress(**rest["progress"])
    rest = fabric.load(path / STATE_FILE, weights_only=True)
    weights = rest["model"]
    module = getattr(model, "module", model)  # Fabric's wrapper -> the module itself
    expected = trainable_names(model) if rest.get("trainable_only") else set(module.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - set(module.state_dict()))
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model being trained (missing: {missing[:5]}, unexpected: "
                         f"{unexpected[:5]}); resume with the model, adapter and config the run was started with")
    module.load_state_dict(weights, strict=not rest.get("trainable_only"))
    optimizer.load_state_dict(rest["optimizer"])
    set_rng_state(rest["rng"])
    return TrainProgress(**rest["progress"])


def trainable_names(model) -> set[str]:
    """State-dict keys of the parameters ``model`` trains (Fabric's wrapper looked through)."""
    module = getattr(model, "module", model)
    return {name for name, param in module.named_parameters() if param.requires_grad}


def _holds_whole_tensors(fabric) -> bool:
    """Whether the strategy keeps every tensor whole on each process (one device, DDP): then a checkpoint is
    a plain state dict this module can check and load itself."""
    from lightning_fabric.strategies import DDPStrategy, SingleDeviceStrategy

    # DeepSpeed's strategy is a DDPStrategy subclass, but shards what it holds.
    return isinstance(fabric.strategy, (SingleDeviceStrategy, DDPStrategy)) and not uses_deepspeed(fabric)

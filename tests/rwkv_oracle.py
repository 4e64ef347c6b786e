"""The ``rwkv`` PyPI runtime (0.8.32, x070 path) as the reference for logits and state."""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("RWKV_V7_ON", "1")  # read when rwkv.model is imported
os.environ.setdefault("RWKV_JIT_ON", "1")


def load_reference(pth_file: Path, strategy: str = "cpu fp32"):
    """The runtime's model for ``pth_file`` (it appends ``.pth`` itself)."""
    from rwkv.model import RWKV

    assert pth_file.suffix == ".pth"
    return RWKV(model=str(pth_file.with_suffix("")), strategy=strategy)


def reference_token_by_token(model, tokens: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits ``[T, V]`` from one-token steps, and the final state list."""
    state, rows = None, []
    for token in tokens:
        logits, state = model.forward([token], state)
        rows.append(logits.float().clone())
    return torch.stack(rows), state


def reference_sequence(model, tokens: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits ``[T, V]`` from the runtime's multi-token path (``full_output=True``) and its final state."""
    logits, state = model.forward(list(tokens), None, full_output=True)
    return logits.float(), state

"""A fingerprint of a base model: its architecture and a hash of its weights.

Adapters and tuned states are only meaningful on the base they were trained on. The fingerprint saved
with them tells a base of another shape (an error: nothing could load) from one with the same shapes but
other weights (a warning: it loads, but the result is not what was trained). Hashing every byte of a 13B
model would take a minute, so each tensor contributes its name, shape and 4096 evenly spaced values,
taken as float32: the same base loaded in bf16 or fp32 gives the same hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch

from rwkvtune.config import RWKV7Config

_SAMPLES_PER_TENSOR = 4096


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, shape and 4096 evenly spaced values (as float32), by name."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach()
        flat = tensor.reshape(-1)
        step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        sample = flat[::step][:_SAMPLES_PER_TENSOR].to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def base_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """``{"architecture": {...RWKV7Config fields}, "weights_sha256": ...}`` of a plain ``RWKV7``
    (official keys: call it before adapters are inserted)."""
    return {"architecture": dataclasses.asdict(model.config), "weights_sha256": weights_hash(model.state_dict())}


def describe(architecture: dict[str, Any]) -> str:
    """``L12-C768-V65536`` for messages."""
    return f"L{architecture.get('n_layer')}-C{architecture.get('n_embd')}-V{architecture.get('vocab_size')}"


def architecture_problems(saved: dict[str, Any], config: RWKV7Config) -> list[str]:
    """``field: saved vs this base`` for every architecture field that differs."""
    current = dataclasses.asdict(config)
    return [f"{name}: {saved[name]} (trained on) vs {current.get(name)} (this base)"
            for name in sorted(saved) if saved[name] != current.get(name)]

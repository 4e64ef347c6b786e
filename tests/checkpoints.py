"""Tiny random RWKV-7 checkpoints in the official format, for tests.

Every tensor is random and non-zero (the RWKV-LM init zeroes whole paths, which would hide bugs), with
scales that keep activations in a realistic range.
"""

from __future__ import annotations

import torch

from rwkvtune.config import RWKV7Config, expected_shapes


def tiny_config(**overrides) -> RWKV7Config:
    """L2-C128-V1000 with every low-rank width different, so a swapped dimension cannot pass."""
    base = dict(n_layer=2, n_embd=128, vocab_size=1000, head_size=64, dim_ffn=512,
                dim_decay_lora=32, dim_iclr_lora=16, dim_value_lora=8, dim_gate_lora=48)
    base.update(overrides)
    return RWKV7Config(**base)


def random_state_dict(config: RWKV7Config, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                      layer0_value_lora: bool = True) -> dict[str, torch.Tensor]:
    """A state dict with the official keys and shapes of ``config`` filled with random values."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    out = {}
    for key, shape in expected_shapes(config, layer0_value_lora=layer0_value_lora).items():
        name = key.rsplit(".", 1)[-1] if not key.endswith((".weight", ".bias")) else key
        if key.endswith(("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight", "ln_x.weight")):
            value = 1 + 0.4 * (rand(*shape) - 0.5)
        elif key.endswith(".bias"):
            value = 0.1 * randn(*shape)
        elif key == "emb.weight":
            value = randn(*shape)
        elif key.endswith(".weight"):  # linear layers [out, in]
            value = randn(*shape) / shape[1] ** 0.5
        elif name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            value = rand(*shape)
        elif name == "w0":
            value = -5 + 7 * rand(*shape)
        elif name in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"):
            value = 0.3 * randn(*shape) / min(shape) ** 0.25
        elif name in ("a0", "v0"):
            value = randn(*shape)
        elif name == "k_k":
            value = 0.5 + rand(*shape)
        elif name == "k_a":
            value = 0.5 + rand(*shape)
        elif name == "r_k":
            value = 0.5 * randn(*shape)
        else:
            raise AssertionError(f"no random rule for {key}")
        out[key] = value.to(dtype).contiguous()
    return out

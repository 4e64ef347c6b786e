"""RWKV-LM's from-scratch initialisation of RWKV-7 (spec section 5).

The per-parameter formulas are part of the architecture: a model trained from a generic init (normal
matrices, zero mixes) learns far worse. With ``att.output`` and ``ffn.value`` at zero every block starts
as the identity, so the initial loss is about ``ln(V) + 0.125``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rwkvtune.config import RWKV7Config
from rwkvtune.model.rwkv7 import RWKV7


def _channel_ramps(config: RWKV7Config, layer_id: int) -> dict[str, torch.Tensor]:
    """The per-channel curves the init formulas are written in (float64, ``[C]`` each)."""
    c, n, n_layer = config.n_embd, config.head_size, config.n_layer
    ratio_0_to_1 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0  # L = 1 would divide by zero
    ratio_1_to_almost0 = 1.0 - layer_id / n_layer
    channel = torch.arange(c, dtype=torch.float64)
    ddd = channel / c
    linear = channel / (c - 1) - 0.5
    zig = ((channel % n) - (n - 1) / 2) / ((n - 1) / 2)
    return {
        "ddd": ddd,
        "linear": linear,
        "zigzag": zig * zig.abs(),
        "www": -6 + 6 * (channel / (c - 1)) ** (1 + ratio_0_to_1**0.3),
        "r10": torch.tensor(ratio_1_to_almost0, dtype=torch.float64),
    }


def _orthogonal_(tensor: torch.Tensor, gain: float) -> None:
    """Orthogonal init computed in float32 (QR is not implemented for half types) and copied in."""
    tmp = torch.empty(tensor.shape, dtype=torch.float32)
    nn.init.orthogonal_(tmp, gain=gain)
    tensor.copy_(tmp)


def _lowrank_gain(dim: int, c: int) -> float:
    return 0.1 * ((dim / c) ** 0.5 if dim > c else 1.0)


def value_lora_init(config: RWKV7Config, layer_id: int, *, seed: int | None = None) -> dict[str, torch.Tensor]:
    """Initial ``v0 [1, 1, C]``, ``v1 [C, Dv]``, ``v2 [Dv, C]`` of one layer, float32.

    Also fills layer 0's unused copies when a checkpoint lacks them, so that what we save loads strictly;
    with ``seed`` the result is the same on every call and the global RNG is left alone.
    """
    ramps = _channel_ramps(config, layer_id)
    v2 = torch.empty(config.dim_value_lora, config.n_embd)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        _orthogonal_(v2, _lowrank_gain(config.dim_value_lora, config.n_embd))
    return {
        "v0": (0.73 - 0.4 * ramps["linear"]).float().view(1, 1, -1),
        "v1": torch.zeros(config.n_embd, config.dim_value_lora),
        "v2": v2,
    }


@torch.no_grad()
def init_weights_(model: RWKV7) -> RWKV7:
    """Initialise every parameter of ``model`` as RWKV-LM does for a new model; returns ``model``."""
    config = model.config
    c, v = config.n_embd, config.vocab_size
    for block in model.blocks:
        att, ffn = block.att, block.ffn
        ramps = _channel_ramps(config, block.layer_id)
        ddd, r10 = ramps["ddd"], ramps["r10"]

        def mix(power: torch.Tensor) -> torch.Tensor:
            return (1.0 - ddd**power).view(1, 1, c)

        att.x_r.copy_(mix(0.2 * r10))
        att.x_w.copy_(mix(0.9 * r10))
        att.x_k.copy_(mix(0.7 * r10))
        att.x_v.copy_(mix(0.7 * r10))
        att.x_a.copy_(mix(0.9 * r10))
        att.x_g.copy_(mix(0.2 * r10))
        ffn.x_k.copy_(mix(r10**4))

        att.w0.copy_((ramps["www"] + 0.5 + 2.5 * ramps["zigzag"]).view(1, 1, c))
        att.a0.copy_((-0.19 + 0.3 * ramps["zigzag"] + 0.4 * ramps["linear"]).view(1, 1, c))
        for first, second, dim in ((att.w1, att.w2, config.dim_decay_lora), (att.a1, att.a2, config.dim_iclr_lora),
                                   (att.g1, att.g2, config.dim_gate_lora)):
            first.zero_()
            _orthogonal_(second, _lowrank_gain(dim, c))
        for name, value in value_lora_init(config, block.layer_id).items():
            getattr(att, name).copy_(value)
        att.k_k.copy_((0.71 - 0.1 * ramps["linear"]).view(1, 1, c))
        att.k_a.fill_(1.02)
        att.r_k.fill_(-0.04)

        _orthogonal_(att.receptance.weight, 1.0)
        _orthogonal_(att.key.weight, 0.1)
        _orthogonal_(att.value.weight, 1.0)
        att.output.weight.zero_()
        _orthogonal_(ffn.key.weight, 1.0)
        ffn.value.weight.zero_()
        att.ln_x.weight.fill_(((1 + block.layer_id) / config.n_layer) ** 0.7)
        att.ln_x.bias.zero_()

    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
    model.emb.weight.uniform_(-1e-4, 1e-4)
    _orthogonal_(model.head.weight, 0.5 * (v / c) ** 0.5 if v > c else 0.5)
    return model


def new_model(config: RWKV7Config, *, model_class: type[RWKV7] = RWKV7, **kwargs: Any) -> RWKV7:
    """A freshly initialised ``model_class(config, **kwargs)`` ready to train from scratch."""
    return init_weights_(model_class(config, **kwargs))

"""One decode step for a batch of sequences: token ids ``[B]`` and their states -> next-token logits.

``RWKV7.step`` runs the parallel forward with ``T = 1``: it builds a ``[B, 1, C]`` sequence, dispatches
the WKV7 operator and stacks a fresh copy of every layer's state. During decoding the engine owns the
state, so :class:`RWKV7Decoder` updates it in place instead, works on ``[B, C]`` rows, and folds the
WKV read-out into the state update (below). The math is the model's (spec section 2, ``T = 1``); a test
checks it against ``RWKV7.step``. This module holds only that math: on the CPU the plain linear layers
take the weight layouts that ``cpu_linear.decode_layouts`` picks (the fastest timed on whole steps, per row
bucket); on other devices, and for wrapped (e.g. LoRA) layers, they are called as modules. Per-token
Python and dispatch overhead is a large part of a small model's step, so the r/k/v projections run as one
batched product where they can, the four low-rank MLPs as two batched products on zero-padded stacks
of their weights (made once per decoder), and the norms as direct ATen calls.

Per head, with ``S`` ``[N(value), N(key)]``, decay ``w``, ``a = -kk``, ``b = kk * iclr``:
``S' = S diag(w) + (S a) b^T + v k^T`` and ``y = S' r = S (w * r) + (S a)(b . r) + v (k . r)``,
so one batched matmul of ``S`` with ``[a, w * r]`` gives both ``S a`` and the output, and the update is
one in-place scale plus one rank-2 ``baddbmm_``: one read and two in-place passes over the state, where
the parallel path builds the new state from three ``[B, H, N, N]`` temporaries and then copies it again
into the stacked state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rwkvtune.generation.cpu_linear import CpuLayouts, DecodeLinears, FormChooser, decode_layouts
from rwkvtune.model import RWKV7, RWKVState, base_model_of

#: ``log(decay) = -exp(-0.5) * sigmoid(w)`` (spec 2.3 step 5), as in the model.
_LOG_DECAY_SCALE = -0.6065306597126334
_KEY_NORM_EPS = 1e-12

StepFn = Callable[[torch.Tensor, RWKVState], tuple[torch.Tensor, RWKVState]]


def make_step_fn(model: nn.Module, chooser: FormChooser | None = None) -> StepFn:
    """The fastest correct step for ``model``: :class:`RWKV7Decoder` for an ``RWKV7``, else ``model.step``.

    ``chooser`` keeps the CPU weight-layout decisions (``cpu_linear``; default: its process-wide one).

    A wrapper with ``get_base_model()`` (HF peft's ``PeftModel``, a ``StateTunedModel``) is looked through:
    its base is the ``RWKV7`` with the adapter layers put in place, so the decoder runs them as modules (a
    tuned start state enters through prefill). Prompt and
    prefix tuning keep their virtual tokens in the wrapper's ``forward`` instead, which an RNN step
    cannot see: those are refused rather than silently ignored.
    """
    peft_config = getattr(model, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        raise ValueError(f"generation does not support peft {type(peft_config).__name__} (prompt/prefix tuning "
                         "adds virtual tokens in PeftModel.forward); use LoRA-style adapters")
    base = base_model_of(model)
    if isinstance(base, RWKV7):
        return RWKV7Decoder(base, chooser)
    return model.step


def _layer_norm(x: torch.Tensor, *, shape, weight, bias, eps: float) -> torch.Tensor:
    return torch.layer_norm(x, shape, weight, bias, eps)


def _group_norm(x: torch.Tensor, *, groups: int, weight, bias, eps: float) -> torch.Tensor:
    return torch.group_norm(x, groups, weight, bias, eps)


@dataclass(frozen=True)
class _TimeMixConstants:
    """A layer's time-mix parameters rearranged for batched decoding (copies, made once per decoder)."""

    mixes: torch.Tensor  # [6, 1, C]: x_r, x_k, x_v, x_w, x_a, x_g
    lora_in: torch.Tensor  # [4, C, D]: v1, w1, a1, g1, zero-padded to the widest
    lora_out: torch.Tensor  # [4, D, C]: v2, w2, a2, g2, zero-padded to the widest
    lora_bias: torch.Tensor  # [4, 1, C]: v0, w0, a0, 0
    k_k: torch.Tensor  # [C]
    k_a: torch.Tensor  # [C]
    one_minus_k_a: torch.Tensor  # [C]
    r_k: torch.Tensor  # [H, N]

    @classmethod
    def of(cls, att: nn.Module) -> _TimeMixConstants:
        with torch.no_grad():
            c = att.x_r.shape[-1]
            # Layer 0 has no value residual: its v0/v1/v2 are never read (zeros keep the unused gate finite).
            value = (att.v0, att.v1, att.v2) if att.layer_id else tuple(torch.zeros_like(t) for t in
                                                                         (att.v0, att.v1, att.v2))
            firsts, seconds = (value[1], att.w1, att.a1, att.g1), (value[2], att.w2, att.a2, att.g2)
            width = max(t.shape[1] for t in firsts)
            lora_in = firsts[0].new_zeros(4, c, width)
            lora_out = firsts[0].new_zeros(4, width, c)
            for i, (first, second) in enumerate(zip(firsts, seconds)):
                lora_in[i, :, : first.shape[1]] = first
                lora_out[i, : second.shape[0]] = second
            k_a = att.k_a.reshape(c).clone()
            return cls(
                mixes=torch.cat([att.x_r, att.x_k, att.x_v, att.x_w, att.x_a, att.x_g]),
                lora_in=lora_in, lora_out=lora_out,
                lora_bias=torch.cat([value[0], att.w0, att.a0, torch.zeros_like(att.a0)]),
                k_k=att.k_k.reshape(c).clone(), k_a=k_a, one_minus_k_a=1 - k_a, r_k=att.r_k.clone(),
            )


class ModuleLinears:
    """Every linear layer called as its module: the decoder's layers off the CPU (CUDA), where the CPU
    layout choice does not apply. Same methods as ``cpu_linear.DecodeLinears``."""

    @staticmethod
    def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``layer(x)``: ``[B, in]`` -> ``[B, out]``."""
        return layer(x)

    @staticmethod
    def stacked(layers: Sequence[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``layers[i](x[i])`` for ``x`` ``[n, B, in]`` -> ``n`` tensors ``[B, out]``."""
        return tuple(layer(rows) for layer, rows in zip(layers, x))

    @staticmethod
    def head(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The LM head ``layer(x)``: ``[B, C]`` -> ``[B, V]``."""
        return layer(x)


Linears = DecodeLinears | ModuleLinears
_MODULE_LINEARS = ModuleLinears()


class RWKV7Decoder:
    """Single-token decoding of an ``RWKV7`` that updates the given state in place.

    Call under ``torch.no_grad()``, with weights that do not change while it lives: on the CPU it may keep
    copies of them in a faster layout (``cpu_linear``), so make a new decoder for each generation. The
    returned logits may live in a buffer that the next call overwrites.

    Args:
        model: the model (its layers are read at every step; LoRA-wrapped layers run as modules).
        chooser: keeps the CPU layout decisions (default: ``cpu_linear``'s process-wide one); unused off the CPU.
    """

    def __init__(self, model: RWKV7, chooser: FormChooser | None = None):
        self.model = model
        config = model.config
        self.n_head, self.head_size = config.n_head, config.head_size
        called = [layer for block in model.blocks for layer in (
            block.att.receptance, block.att.key, block.att.value, block.att.output, block.ffn.key, block.ffn.value)]
        model_key = (type(model).__name__, config.n_layer, config.n_embd, config.dim_ffn, config.vocab_size)
        #: The CPU layout choice, or ``None`` off the CPU (every layer called as its module).
        self.layouts: CpuLayouts | None = decode_layouts(model.head, called, model_key, chooser)
        self._time_mix_constants: dict[int, _TimeMixConstants] = {}
        self._norms: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}

    def __call__(self, token_ids: torch.Tensor, state: RWKVState) -> tuple[torch.Tensor, RWKVState]:
        """``token_ids`` ``[B]`` -> ``(logits [B, V], state)``; ``state`` (``[L, B, ...]``) is updated in place."""
        if self.layouts is None:
            return self._step(token_ids, state, _MODULE_LINEARS)
        return self._step(token_ids, state, self.layouts.linears_for(token_ids.shape[0], self._trial(token_ids, state)))

    def _trial(self, token_ids: torch.Tensor, state: RWKVState) -> Callable[[DecodeLinears], object]:
        """A whole step in given linears on a copy of ``state`` (made at the first call, which the layout
        choice does not time): what ``CpuLayouts`` times when it meets a new row bucket."""
        scratch: list[RWKVState] = []

        def run(linears: DecodeLinears) -> object:
            if not scratch:
                scratch.append(state.clone())
            return self._step(token_ids, scratch[0], linears)

        return run

    def _step(self, token_ids: torch.Tensor, state: RWKVState, linears: Linears) -> tuple[torch.Tensor, RWKVState]:
        model = self.model
        x = model.emb(token_ids)  # [B, C]
        v_first = None
        for i, block in enumerate(model.blocks):
            if i == 0:
                x = self._norm(block.ln0)(x)
            out, v_first = self._time_mix(block.att, self._norm(block.ln1)(x), state, i, v_first, linears)
            x = x + out
            x = x + self._channel_mix(block.ffn, self._norm(block.ln2)(x), state.ffn_shift[i], linears)
        return linears.head(model.head, self._norm(model.ln_out)(x)), state

    def _time_mix(self, att: nn.Module, x: torch.Tensor, state: RWKVState, layer: int,
                  v_first: torch.Tensor | None, linears: Linears) -> tuple[torch.Tensor, torch.Tensor]:
        """x: ``[B, C]`` (LN1 output) -> ``(out [B, C], v_first [B, C])``; updates the layer's state."""
        batch, c = x.shape
        h, n = self.n_head, self.head_size
        const = self._constants(att, layer)
        shift = state.att_shift[layer]
        delta = shift - x
        shift.copy_(x)
        mixed = torch.addcmul(x, delta, const.mixes)  # [6, B, C]: inputs of r, k, v, w, a, g
        r, k, v = linears.stacked((att.receptance, att.key, att.value), mixed[:3])
        # The four low-rank MLPs (value residual, decay, in-context rate, gate) as two batched products.
        low = torch.bmm(mixed[2:], const.lora_in)  # [4, B, D]
        low[1].tanh_()
        low[3].sigmoid_()
        low = torch.baddbmm(const.lora_bias, low, const.lora_out)  # [4, B, C]
        low[0::2].sigmoid_()
        value_gate, w, iclr, g = low.unbind(0)

        kk = (k * const.k_k).view(batch, h, n)  # F.normalize, without its Python wrappers:
        kk = kk / torch.linalg.vector_norm(kk, dim=-1, keepdim=True).clamp_min_(_KEY_NORM_EPS)
        k = k * torch.addcmul(const.one_minus_k_a, iclr, const.k_a)  # k * (1 + (iclr - 1) * k_a)
        if layer == 0:
            v_first = v
        else:
            v = torch.lerp(v, v_first, value_gate)

        # WKV in float32 on [B*H, N] vectors (the model upcasts the same way).
        heads = (batch * h, n)
        decay = torch.sigmoid(w.float()).mul_(_LOG_DECAY_SCALE).exp_().view(heads)
        r32, k32, v32 = r.float().view(heads), k.float().view(heads), v.float().view(heads)
        a32 = -kk.float().view(heads)
        b32 = (kk * iclr.view(batch, h, n)).float().view(heads)
        wkv = state.wkv[layer].view(batch * h, n, n)  # [B*H, N(value), N(key)]
        # [a, w * r]^T S^T rather than S [a, w * r]: MKL ran this form of the same product 2x faster.
        read = torch.bmm(torch.stack((a32, decay * r32), dim=1), wkv.transpose(1, 2))  # [B*H, 2, N]: S a, S (w r)
        left = torch.stack((read[:, 0], v32), dim=-1)  # [B*H, N, 2]: S a, v
        right = torch.stack((b32, k32), dim=1)  # [B*H, 2, N]: b, k
        # y = S (w * r) + (S a)(b . r) + v (k . r)  [B*H, N, 1]
        y = torch.baddbmm(read[:, 1:].transpose(1, 2), left, torch.bmm(right, r32.unsqueeze(-1)))
        wkv.mul_(decay.unsqueeze(1))
        wkv.baddbmm_(left, right)  # S' = S diag(w) + (S a) b^T + v k^T

        y = self._norm(att.ln_x)(y.view(batch, c).to(x.dtype))
        bonus = (r.view(batch, h, n) * k.view(batch, h, n) * const.r_k).sum(-1, keepdim=True) * v.view(batch, h, n)
        return linears.linear(att.output, (y + bonus.view(batch, c)) * g), v_first

    def _norm(self, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """``module`` as a direct call of its ATen op when it is a plain ``LayerNorm``/``GroupNorm`` without
        forward hooks (a module call costs microseconds of hook checks and attribute lookups, per norm and
        token), else the module."""
        norm = self._norms.get(id(module))
        if norm is None:
            if module._forward_hooks or module._forward_pre_hooks:
                norm = module
            elif type(module) is nn.LayerNorm:
                shape, weight, bias, eps = module.normalized_shape, module.weight, module.bias, module.eps
                norm = functools.partial(_layer_norm, shape=shape, weight=weight, bias=bias, eps=eps)
            elif type(module) is nn.GroupNorm:
                groups, weight, bias, eps = module.num_groups, module.weight, module.bias, module.eps
                norm = functools.partial(_group_norm, groups=groups, weight=weight, bias=bias, eps=eps)
            else:
                norm = module
            self._norms[id(module)] = norm
        return norm

    def _constants(self, att: nn.Module, layer: int) -> _TimeMixConstants:
        constants = self._time_mix_constants.get(layer)
        if constants is None:
            constants = self._time_mix_constants[layer] = _TimeMixConstants.of(att)
        return constants

    @staticmethod
    def _channel_mix(ffn: nn.Module, x: torch.Tensor, shift: torch.Tensor, linears: Linears) -> torch.Tensor:
        """x: ``[B, C]`` (LN2 output) -> ``[B, C]``; ``shift`` ``[B, C]`` is updated in place."""
        delta = shift - x
        shift.copy_(x)
        hidden = torch.relu(linears.linear(ffn.key, torch.addcmul(x, delta, ffn.x_k.view(-1)))).square()
        return linears.linear(ffn.value, hidden)


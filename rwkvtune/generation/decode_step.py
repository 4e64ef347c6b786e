"""One decode step for a batch of sequences: token ids ``[B]`` and their states -> next-token logits.

``RWKV7.step`` runs the parallel forward with ``T = 1``: it builds a ``[B, 1, C]`` sequence, dispatches
the WKV7 operator and stacks a fresh copy of every layer's state. During decoding the engine owns the
state, so :class:`RWKV7Decoder` updates it in place instead, works on ``[B, C]`` rows, and folds the
WKV read-out into the state update (below). The math is the model's (spec section 2, ``T = 1``); a test
checks it against ``RWKV7.step``. Plain linear layers use the CPU fast paths of ``cpu_linear``; other
(wrapped, e.g. LoRA) layers are called as modules.

Per head, with ``S`` ``[N(value), N(key)]``, decay ``w``, ``a = -kk``, ``b = kk * iclr``:
``S' = S diag(w) + (S a) b^T + v k^T`` and ``y = S' r = S (w * r) + (S a)(b . r) + v (k . r)``,
so one batched matmul of ``S`` with ``[a, w * r]`` gives both ``S a`` and the output, and the update is
one in-place scale plus one rank-2 ``baddbmm_``: one read and two in-place passes over the state, where
the parallel path builds the new state from three ``[B, H, N, N]`` temporaries and then copies it again
into the stacked state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rwkvtune.generation.cpu_linear import HeadProjection, decode_linear
from rwkvtune.model import RWKV7, RWKVState

#: ``log(decay) = -exp(-0.5) * sigmoid(w)`` (spec 2.3 step 5), as in the model.
_LOG_DECAY_SCALE = -0.6065306597126334
_KEY_NORM_EPS = 1e-12

StepFn = Callable[[torch.Tensor, RWKVState], tuple[torch.Tensor, RWKVState]]


def make_step_fn(model: nn.Module) -> StepFn:
    """The fastest correct step for ``model``: :class:`RWKV7Decoder` for an ``RWKV7``, else ``model.step``.

    A wrapper with ``get_base_model()`` (HF peft's ``PeftModel``) is looked through: its base is the
    ``RWKV7`` with the adapter layers put in place, so the decoder runs them as modules. Prompt and
    prefix tuning keep their virtual tokens in the wrapper's ``forward`` instead, which an RNN step
    cannot see: those are refused rather than silently ignored.
    """
    peft_config = getattr(model, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        raise ValueError(f"generation does not support peft {type(peft_config).__name__} (prompt/prefix tuning "
                         "adds virtual tokens in PeftModel.forward); use LoRA-style adapters")
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    if isinstance(base, RWKV7):
        return RWKV7Decoder(base)
    return model.step


class RWKV7Decoder:
    """Single-token decoding of an ``RWKV7`` that updates the given state in place.

    Call under ``torch.no_grad()``. The parameters are read at each call, so a model trained between
    generations needs no new decoder. The returned logits live in a buffer that the next call overwrites.
    """

    def __init__(self, model: RWKV7):
        self.model = model
        config = model.config
        self.n_head, self.head_size = config.n_head, config.head_size
        self._head = HeadProjection()

    def __call__(self, token_ids: torch.Tensor, state: RWKVState) -> tuple[torch.Tensor, RWKVState]:
        """``token_ids`` ``[B]`` -> ``(logits [B, V], state)``; ``state`` (``[L, B, ...]``) is updated in place."""
        model = self.model
        x = model.emb(token_ids)  # [B, C]
        v_first = None
        for i, block in enumerate(model.blocks):
            if i == 0:
                x = block.ln0(x)
            out, v_first = self._time_mix(block.att, block.ln1(x), state, i, v_first)
            x = x + out
            x = x + self._channel_mix(block.ffn, block.ln2(x), state.ffn_shift[i])
        return self._head(model.head, model.ln_out(x)), state

    def _time_mix(self, att: nn.Module, x: torch.Tensor, state: RWKVState, layer: int,
                  v_first: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: ``[B, C]`` (LN1 output) -> ``(out [B, C], v_first [B, C])``; updates the layer's state."""
        batch, c = x.shape
        h, n = self.n_head, self.head_size
        shift = state.att_shift[layer]
        delta = shift - x
        shift.copy_(x)
        mixes = torch.cat((att.x_r, att.x_w, att.x_k, att.x_v, att.x_a, att.x_g))  # [6, 1, C]
        xr, xw, xk, xv, xa, xg = torch.addcmul(x, delta, mixes).unbind(0)  # six [B, C] in one op
        r = decode_linear(att.receptance, xr)
        w = torch.addmm(att.w0.view(c), torch.tanh(xw @ att.w1), att.w2)
        k = decode_linear(att.key, xk)
        v = decode_linear(att.value, xv)
        iclr = torch.sigmoid(torch.addmm(att.a0.view(c), xa @ att.a1, att.a2))
        g = torch.sigmoid(xg @ att.g1) @ att.g2

        kk = F.normalize((k * att.k_k.view(c)).view(batch, h, n), dim=-1, p=2.0, eps=_KEY_NORM_EPS)
        k = k * (1 + (iclr - 1) * att.k_a.view(c))
        if layer == 0:
            v_first = v
        else:
            v = torch.lerp(v, v_first, torch.sigmoid(torch.addmm(att.v0.view(c), xv @ att.v1, att.v2)))

        # WKV in float32 on [B*H, N] vectors (the model upcasts the same way).
        heads = (batch * h, n)
        decay = torch.exp(_LOG_DECAY_SCALE * torch.sigmoid(w.float())).view(heads)
        r32, k32, v32 = r.float().view(heads), k.float().view(heads), v.float().view(heads)
        a32 = -kk.float().view(heads)
        b32 = (kk * iclr.view(batch, h, n)).float().view(heads)
        wkv = state.wkv[layer].view(batch * h, n, n)  # [B*H, N(value), N(key)]
        read = torch.bmm(wkv, torch.stack((a32, decay * r32), dim=-1))  # [B*H, N, 2]: S a, S (w * r)
        left = torch.stack((read[..., 0], v32), dim=-1)  # [B*H, N, 2]: S a, v
        right = torch.stack((b32, k32), dim=1)  # [B*H, 2, N]: b, k
        # y = S (w * r) + (S a)(b . r) + v (k . r)  [B*H, N, 1]
        y = torch.baddbmm(read[..., 1:], left, torch.bmm(right, r32.unsqueeze(-1)))
        wkv.mul_(decay.unsqueeze(1))
        wkv.baddbmm_(left, right)  # S' = S diag(w) + (S a) b^T + v k^T

        y = att.ln_x(y.view(batch, c).to(x.dtype))
        bonus = (r.view(batch, h, n) * k.view(batch, h, n) * att.r_k).sum(-1, keepdim=True) * v.view(batch, h, n)
        return decode_linear(att.output, (y + bonus.view(batch, c)) * g), v_first

    @staticmethod
    def _channel_mix(ffn: nn.Module, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C]`` (LN2 output) -> ``[B, C]``; ``shift`` ``[B, C]`` is updated in place."""
        delta = shift - x
        shift.copy_(x)
        hidden = torch.relu(decode_linear(ffn.key, torch.addcmul(x, delta, ffn.x_k.view(-1)))).square()
        return decode_linear(ffn.value, hidden)


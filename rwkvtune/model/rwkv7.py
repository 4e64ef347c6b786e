"""RWKV-7 ("Goose", x070) as a torch module whose parameter names are the official checkpoint keys.

``RWKV7.state_dict()`` is an official ``.pth`` state dict and an official file loads with ``strict=True``
(spec section 1). The math follows spec section 2; the WKV recurrence itself is ``rwkvtune.ops.wkv7``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rwkvtune.config import RWKV7Config
from rwkvtune.model.loss import chunked_cross_entropy, chunked_token_logprobs
from rwkvtune.model.state import RWKVState
from rwkvtune.ops import check_backend_name, wkv7

if TYPE_CHECKING:  # for RWKV7.generate's annotations only
    from rwkvtune.generation import Completion, SamplingParams
    from rwkvtune.tokenizer import WorldTokenizer

#: ``log(decay) = -exp(-0.5) * sigmoid(w)`` keeps every decay in (0.545, 1) (spec 2.3 step 5).
_LOG_DECAY_SCALE = -0.6065306597126334
_LN_EPS = 1e-5
_KEY_NORM_EPS = 1e-12


def _token_shift(x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """``prev - x`` where ``prev`` is ``x`` delayed by one token and ``last`` [B, C] fills position 0.

    x: ``[B, T, C]`` -> ``[B, T, C]``.
    """
    prev = torch.cat([last.unsqueeze(1).to(x.dtype), x[:, :-1]], dim=1)
    return prev - x


class TimeMix(nn.Module):
    """RWKV-7 attention replacement (spec 2.3): token shift, low-rank MLPs, WKV7, GroupNorm, bonus, gate."""

    def __init__(self, config: RWKV7Config, layer_id: int, *, wkv_backend: str = "auto"):
        super().__init__()
        c, h, n = config.n_embd, config.n_head, config.head_size
        self.layer_id = layer_id
        self.n_head, self.head_size = h, n
        self.wkv_backend = check_backend_name(wkv_backend)

        def vector() -> nn.Parameter:
            return nn.Parameter(torch.empty(1, 1, c))

        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (vector() for _ in range(6))
        self.w0, self.a0, self.k_k, self.k_a = vector(), vector(), vector(), vector()
        self.w1 = nn.Parameter(torch.empty(c, config.dim_decay_lora))
        self.w2 = nn.Parameter(torch.empty(config.dim_decay_lora, c))
        self.a1 = nn.Parameter(torch.empty(c, config.dim_iclr_lora))
        self.a2 = nn.Parameter(torch.empty(config.dim_iclr_lora, c))
        self.g1 = nn.Parameter(torch.empty(c, config.dim_gate_lora))
        self.g2 = nn.Parameter(torch.empty(config.dim_gate_lora, c))
        value_lora = (torch.empty(1, 1, c), torch.empty(c, config.dim_value_lora), torch.empty(config.dim_value_lora, c))
        if layer_id == 0:
            # Layer 0 has no value residual, but official files carry v0/v1/v2 there and RWKV-LM loads
            # strictly: keep them as buffers so they are saved, never trained, and never "unused
            # parameters" under DDP.
            for name, tensor in zip(("v0", "v1", "v2"), value_lora):
                self.register_buffer(name, tensor)
        else:
            self.v0, self.v1, self.v2 = (nn.Parameter(t) for t in value_lora)
        self.r_k = nn.Parameter(torch.empty(h, n))
        self.receptance = nn.Linear(c, c, bias=False)
        self.key = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.output = nn.Linear(c, c, bias=False)
        self.ln_x = nn.GroupNorm(h, c, eps=_LN_EPS * n)

    def forward(
        self, x: torch.Tensor, shift: torch.Tensor, wkv_state: torch.Tensor, v_first: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: ``[B, T, C]`` (LN1 output); shift ``[B, C]``; wkv_state ``[B, H, N, N]`` float32;
        v_first ``[B, T, C]`` (layer 0's value; ``None`` in layer 0).

        Returns ``(out [B, T, C], new shift [B, C], new wkv_state, v_first)``.
        """
        batch, seq, c = x.shape
        h, n = self.n_head, self.head_size
        xx = _token_shift(x, shift)
        xr, xw, xk, xv, xa, xg = (torch.addcmul(x, xx, mix) for mix in
                                  (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))

        r = self.receptance(xr)
        w = self.w0 + torch.tanh(xw @ self.w1) @ self.w2
        k = self.key(xk)
        v = self.value(xv)
        iclr = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2

        kk = F.normalize((k * self.k_k).view(batch, seq, h, n), dim=-1, p=2.0, eps=_KEY_NORM_EPS)
        k = k * (1 + (iclr - 1) * self.k_a)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)

        log_decay = _LOG_DECAY_SCALE * torch.sigmoid(w.float())
        heads = (batch, seq, h, n)
        y, wkv_state = wkv7(
            r.view(heads), log_decay.view(heads), k.view(heads), v.view(heads),
            -kk, kk * iclr.view(heads), state=wkv_state, backend=self.wkv_backend,
        )
        y = self.ln_x(y.reshape(batch * seq, c)).view(batch, seq, c)
        bonus = (r.view(heads) * k.view(heads) * self.r_k).sum(dim=-1, keepdim=True) * v.view(heads)
        out = self.output((y + bonus.view(batch, seq, c)) * g)
        return out, x[:, -1], wkv_state, v_first


class ChannelMix(nn.Module):
    """RWKV-7 feed-forward (spec 2.4): token shift, squared-ReLU MLP of width ``dim_ffn``."""

    def __init__(self, config: RWKV7Config):
        super().__init__()
        self.x_k = nn.Parameter(torch.empty(1, 1, config.n_embd))
        self.key = nn.Linear(config.n_embd, config.dim_ffn, bias=False)
        self.value = nn.Linear(config.dim_ffn, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: ``[B, T, C]`` (LN2 output), shift ``[B, C]`` -> ``(out [B, T, C], new shift [B, C])``."""
        hidden = torch.relu(self.key(torch.addcmul(x, _token_shift(x, shift), self.x_k))).square()
        return self.value(hidden), x[:, -1]


class Block(nn.Module):
    """Pre-LN residual block: ``x + TimeMix(LN1 x)``, then ``x + ChannelMix(LN2 x)``; block 0 owns ``ln0``."""

    def __init__(self, config: RWKV7Config, layer_id: int, *, wkv_backend: str = "auto"):
        super().__init__()
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(config.n_embd, eps=_LN_EPS)
        self.ln1 = nn.LayerNorm(config.n_embd, eps=_LN_EPS)
        self.ln2 = nn.LayerNorm(config.n_embd, eps=_LN_EPS)
        self.att = TimeMix(config, layer_id, wkv_backend=wkv_backend)
        self.ffn = ChannelMix(config)

    def forward(
        self,
        x: torch.Tensor,
        v_first: torch.Tensor | None,
        att_shift: torch.Tensor,
        wkv_state: torch.Tensor,
        ffn_shift: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``[B, T, C]`` -> ``(x, v_first, att_shift, wkv_state, ffn_shift)`` after this block."""
        if self.layer_id == 0:
            x = self.ln0(x)
        att_out, att_shift, wkv_state, v_first = self.att(self.ln1(x), att_shift, wkv_state, v_first)
        x = x + att_out
        ffn_out, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + ffn_out, v_first, att_shift, wkv_state, ffn_shift


def base_model_of(model: nn.Module) -> nn.Module:
    """The model inside an adapter wrapper (HF peft's ``PeftModel``, rwkvtune's ``StateTunedModel``: anything
    with ``get_base_model()``), or ``model`` itself. A LoRA base holds the adapter layers in place."""
    return model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model


@dataclass
class RWKV7Output:
    """Model outputs.

    Attributes:
        logits: ``[B, T, V]`` (``None`` when ``labels`` were given: the loss never builds them whole).
        state: the state after the last token when asked for (else ``None``).
        loss: mean next-token cross-entropy over the target tokens (with ``labels``).
        loss_sum: summed cross-entropy, float32 scalar (with ``labels``), for normalising over a window.
        n_targets: number of target tokens, int64 scalar (with ``labels``).
    """

    logits: torch.Tensor | None
    state: RWKVState | None = None
    loss: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    n_targets: torch.Tensor | None = None


@dataclass
class RWKV7Scores:
    """``RWKV7.score`` outputs.

    Attributes:
        logprobs: ``[B, T]`` log-probability of each target token (0 where not scored), differentiable.
        entropies: ``[B, T]`` entropy of each position's tempered distribution (0 where not scored).
        state: the state after the last input token.
    """

    logprobs: torch.Tensor
    entropies: torch.Tensor
    state: RWKVState


class RWKV7(nn.Module):
    """The RWKV-7 language model.

    Args:
        config: the architecture (``RWKV7Config``; for checkpoints infer it with ``config_from_shapes``).
        wkv_backend: WKV7 backend for every layer (``"auto"``, ``"chunked"``, ``"reference"``, ``"fla"``).
        grad_cp: recompute each block in backward instead of storing its activations (less memory).

    Parameters are created uninitialised; call ``init_weights`` (``rwkvtune.model.init``) for a new model
    or load a checkpoint.
    """

    def __init__(self, config: RWKV7Config, *, wkv_backend: str = "auto", grad_cp: bool = False):
        super().__init__()
        self.config = config
        self.grad_cp = grad_cp
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(
            Block(config, i, wkv_backend=wkv_backend) for i in range(config.n_layer)
        )
        self.ln_out = nn.LayerNorm(config.n_embd, eps=_LN_EPS)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.emb.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.emb.weight.device

    def set_wkv_backend(self, backend: str) -> None:
        """Use ``backend`` for the WKV7 recurrence in every layer."""
        check_backend_name(backend)
        for block in self.blocks:
            block.att.wkv_backend = backend

    def zero_state(self, batch_size: int) -> RWKVState:
        """Zero state for ``batch_size`` new sequences on this model's device and dtype."""
        return RWKVState.zeros(self.config, batch_size, device=self.device, dtype=self.dtype)

    def initial_state(self, batch_size: int) -> RWKVState:
        """The state ``batch_size`` new sequences start from: zeros (a state-tuned wrapper returns its
        trained state here)."""
        return self.zero_state(batch_size)

    def forward_hidden(
        self, input_ids: torch.Tensor, state: RWKVState | None = None
    ) -> tuple[torch.Tensor, RWKVState]:
        """Run the blocks: ``input_ids`` ``[B, T]`` -> ``(ln_out output [B, T, C], state after token T-1)``."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, T] with T >= 1, got shape {tuple(input_ids.shape)}")
        if state is None:
            state = self.zero_state(input_ids.shape[0])
        elif state.batch_size != input_ids.shape[0] or state.n_layer != self.config.n_layer:
            raise ValueError(f"state holds {state.batch_size} sequences of {state.n_layer} layers; input_ids has "
                             f"{input_ids.shape[0]} rows for a {self.config.n_layer}-layer model")
        x = self.emb(input_ids)
        v_first = None
        att_shifts, wkvs, ffn_shifts = [], [], []
        for i, block in enumerate(self.blocks):
            args = (x, v_first, *state.layer(i))
            if self.grad_cp and torch.is_grad_enabled() and self.training:
                x, v_first, att_shift, wkv_state, ffn_shift = checkpoint(block, *args, use_reentrant=False)
            else:
                x, v_first, att_shift, wkv_state, ffn_shift = block(*args)
            att_shifts.append(att_shift)
            wkvs.append(wkv_state)
            ffn_shifts.append(ffn_shift)
        new_state = RWKVState(torch.stack(att_shifts), torch.stack(wkvs), torch.stack(ffn_shifts))
        return self.ln_out(x), new_state

    def forward(
        self,
        input_ids: torch.Tensor,
        state: RWKVState | None = None,
        return_state: bool = False,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
    ) -> RWKV7Output:
        """Parallel ("GPT mode") forward over ``input_ids`` ``[B, T]`` from ``state`` (zeros if ``None``).

        Returns ``RWKV7Output`` with ``logits`` ``[B, T, V]`` and, if ``return_state``, the state after
        the last token. With ``labels`` ``[B, T]`` (aligned with ``input_ids``, -100 = no loss; position
        ``t`` predicts ``labels[t + 1]``) it returns the loss instead of the logits, computed in chunks.
        ``shift_labels`` ``[B, T]`` are targets already shifted (position ``t`` predicts
        ``shift_labels[t]``), for a piece of a longer sequence whose last token predicts the next piece's
        first (as HF's ``shift_labels``); give one of the two.
        """
        if labels is not None and shift_labels is not None:
            raise ValueError("pass labels or shift_labels, not both")
        hidden, new_state = self.forward_hidden(input_ids, state)
        kept_state = new_state if return_state else None
        if labels is None and shift_labels is None:
            return RWKV7Output(self.head(hidden), kept_state)
        loss_sum, n_targets = chunked_cross_entropy(hidden, self.head, labels if labels is not None else shift_labels,
                                                    shifted=labels is None)
        return RWKV7Output(None, kept_state, loss_sum / n_targets.clamp(min=1), loss_sum, n_targets)

    def score(self, input_ids: torch.Tensor, targets: torch.Tensor, state: RWKVState | None = None, *,
              temperature: float = 1.0) -> RWKV7Scores:
        """Log-probabilities of given next tokens, for policy-gradient training (GRPO).

        ``input_ids`` ``[B, T]`` run from ``state`` (the initial state if ``None``); position ``t`` is scored
        against ``targets[:, t]`` (``-100``: not scored) under ``softmax(logits / temperature)``. The
        ``[B, T, V]`` logits are never built. Returns :class:`RWKV7Scores` with the state after the last token.
        """
        hidden, new_state = self.forward_hidden(input_ids, state)
        logprobs, entropies = chunked_token_logprobs(hidden, self.head, targets, temperature=temperature)
        return RWKV7Scores(logprobs, entropies, new_state)

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state: RWKVState | None = None) -> tuple[torch.Tensor, RWKVState]:
        """One RNN step for a batch: ``token_ids`` ``[B]`` -> ``(logits [B, V], new state)``."""
        out = self.forward(token_ids.view(-1, 1), state, return_state=True)
        return out.logits[:, 0], out.state

    def generate(self, prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
                 params: SamplingParams | None = None, tokenizer: WorldTokenizer | None = None) -> list[Completion]:
        """Sample completions: ``rwkvtune.generation.generate(self, prompts, params, tokenizer)``.

        Prompts are strings (with ``tokenizer``) or token-id lists; ``params`` is a ``SamplingParams``
        (default: the hub ``generation_config``). Returns one ``Completion`` per sample, prompt-major.
        """
        # The one upward import of the model layer (an exemption in tests/test_layering.py): generation is
        # built on the model, and this method only forwards to it.
        from rwkvtune.generation import generate

        return generate(self, prompts, params, tokenizer)

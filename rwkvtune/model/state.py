"""The RWKV-7 recurrent state: everything a sequence carries from one token to the next.

Per layer and sequence there are three pieces (spec section 3.1): the last LN1 output (time-mix token
shift), the WKV matrix ``[H, N(value), N(key)]`` in float32, and the last LN2 output (channel-mix token
shift). They are stored stacked over layers so that batch operations (clone, repeat rows for GRPO
groups, select rows, concatenate prompts) are one tensor op each.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rwkvtune.config import RWKV7Config


class RWKVState:
    """Recurrent state of a batch of sequences.

    Attributes:
        att_shift: ``[L, B, C]`` last time-mix input (LN1 output), model dtype.
        wkv: ``[L, B, H, N, N]`` WKV state, ``[value, key]`` layout as in the ``rwkv`` runtime, float32.
        ffn_shift: ``[L, B, C]`` last channel-mix input (LN2 output), model dtype.

    A plain class, not a dataclass: Lightning Fabric converts the floating tensors it finds in a
    module's inputs (inside tuples, dicts and dataclasses) to the mixed-precision dtype, which would round
    the float32 WKV state to bf16 each time infinite-context training passes it to the next chunk.
    """

    __slots__ = ("att_shift", "wkv", "ffn_shift")

    def __init__(self, att_shift: torch.Tensor, wkv: torch.Tensor, ffn_shift: torch.Tensor):
        self.att_shift = att_shift
        self.wkv = wkv
        self.ffn_shift = ffn_shift

    def __repr__(self) -> str:
        return f"RWKVState(layers={self.n_layer}, batch={self.batch_size}, wkv dtype={self.wkv.dtype})"

    @classmethod
    def zeros(cls, config: RWKV7Config, batch_size: int, *, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> RWKVState:
        """The state of fresh sequences (all zeros); ``dtype`` is the model's, the WKV part is float32."""
        n_layer, c, h, n = config.n_layer, config.n_embd, config.n_head, config.head_size
        return cls(
            att_shift=torch.zeros(n_layer, batch_size, c, device=device, dtype=dtype),
            wkv=torch.zeros(n_layer, batch_size, h, n, n, device=device, dtype=torch.float32),
            ffn_shift=torch.zeros(n_layer, batch_size, c, device=device, dtype=dtype),
        )

    @property
    def batch_size(self) -> int:
        return self.wkv.shape[1]

    @property
    def n_layer(self) -> int:
        return self.wkv.shape[0]

    @property
    def device(self) -> torch.device:
        return self.wkv.device

    def clone(self) -> RWKVState:
        return RWKVState(self.att_shift.clone(), self.wkv.clone(), self.ffn_shift.clone())

    def detach(self) -> RWKVState:
        """Cut the autograd history (truncated BPTT between chunks)."""
        return RWKVState(self.att_shift.detach(), self.wkv.detach(), self.ffn_shift.detach())

    def repeat_interleave(self, repeats: int) -> RWKVState:
        """Repeat each sequence ``repeats`` times in place order: rows ``[s0, s0, s1, s1, ...]``.

        This is how one prompt's state becomes the start of its ``n`` GRPO completions.
        """
        return RWKVState(*(x.repeat_interleave(repeats, dim=1) for x in self._parts()))

    def select(self, rows: torch.Tensor | Sequence[int] | slice) -> RWKVState:
        """Keep the sequences at ``rows`` (indices, a bool mask or a slice), in that order."""
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows, device=self.device)
        return RWKVState(*(x[:, rows] for x in self._parts()))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> RWKVState:
        """Move to ``device``; ``dtype`` applies to the shift parts only (the WKV state stays float32)."""
        return RWKVState(
            self.att_shift.to(device=device, dtype=dtype),
            self.wkv.to(device=device),
            self.ffn_shift.to(device=device, dtype=dtype),
        )

    @staticmethod
    def cat(states: Sequence[RWKVState]) -> RWKVState:
        """Stack the sequences of several states into one batch, in order."""
        if not states:
            raise ValueError("RWKVState.cat needs at least one state")
        return RWKVState(*(torch.cat(parts, dim=1) for parts in zip(*(s._parts() for s in states))))

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(att_shift [B, C], wkv [B, H, N, N], ffn_shift [B, C])`` of layer ``i``."""
        return self.att_shift[i], self.wkv[i], self.ffn_shift[i]

    def to_rwkv_list(self, row: int = 0) -> list[torch.Tensor]:
        """One sequence as the ``rwkv`` PyPI runtime's flat state list (``3L`` tensors, no batch dim)."""
        out: list[torch.Tensor] = []
        for i in range(self.n_layer):
            out += [self.att_shift[i, row].clone(), self.wkv[i, row].clone(), self.ffn_shift[i, row].clone()]
        return out

    @classmethod
    def from_rwkv_list(cls, flat: Sequence[torch.Tensor]) -> RWKVState:
        """Inverse of ``to_rwkv_list``: a batch of one sequence."""
        if len(flat) % 3:
            raise ValueError(f"an rwkv runtime state list has 3 tensors per layer; got {len(flat)} tensors")
        return cls(
            att_shift=torch.stack(list(flat[0::3]))[:, None],
            wkv=torch.stack(list(flat[1::3])).float()[:, None],
            ffn_shift=torch.stack(list(flat[2::3]))[:, None],
        )

    def _parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.att_shift, self.wkv, self.ffn_shift

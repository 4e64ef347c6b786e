"""The WKV7 operator contract and backend dispatch.

Every backend computes the same thing (``reference.wkv7_reference`` is the definition) from the same
inputs: ``r, w, k, v, a, b`` of shape ``[B, T, H, N]`` with ``w`` the *log decay* (``log(decay)``, in
``(-exp(-0.5), 0)`` for RWKV-7), and a state ``[B, H, N(value), N(key)]`` in float32 -- the ``rwkv``
runtime's layout. Backends that use another form of ``w`` or another state layout convert inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rwkvtune.ops.chunked import wkv7_chunked
from rwkvtune.ops.fla import fla_unavailable_reason, wkv7_fla
from rwkvtune.ops.reference import wkv7_reference

WKV7Fn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Backend:
    """One WKV7 implementation and the question it answers before running: why can't I run this?"""

    name: str
    fn: WKV7Fn
    unsupported: Callable[[torch.Tensor], str | None]
    #: Whether ``fn`` wants inputs already cast to the compute dtype (float32/float64).
    upcast_inputs: bool = True


def _always(_: torch.Tensor) -> str | None:
    return None


BACKENDS: dict[str, Backend] = {
    "reference": Backend("reference", wkv7_reference, _always),
    # chunked upcasts block by block itself: no float32 copies of whole bf16 inputs.
    "chunked": Backend("chunked", wkv7_chunked, _always, upcast_inputs=False),
    "fla": Backend("fla", wkv7_fla, fla_unavailable_reason, upcast_inputs=False),
}


def wkv7(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    state: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV7 over a sequence, with the recurrent state in and out.

    Args:
        r, w, k, v, a, b: ``[B, T, H, N]``, any float dtype; ``w`` is the log decay. In RWKV-7 terms
            ``a = -kappa_hat`` and ``b = kappa_hat * alpha`` (spec section 2.3).
        state: ``[B, H, N, N]`` initial state (``[value, key]`` layout); zeros when ``None``.
        backend: ``"auto"``, ``"reference"``, ``"chunked"`` or ``"fla"``. ``"auto"`` takes the
            single-step recurrence for ``T == 1``, ``fla`` on CUDA when it is installed, else
            ``chunked``.

    Returns:
        ``(y, final_state)``: ``y`` ``[B, T, H, N]`` in the dtype of ``r``; the state ``[B, H, N, N]``
        in float32 (float64 when the inputs are float64). The math runs in at least float32.
    """
    _check_shapes(r, w, k, v, a, b, state)
    chosen = BACKENDS[_resolve(backend, r)]
    reason = chosen.unsupported(r)
    if reason is not None:
        raise RuntimeError(f"wkv7 backend {chosen.name!r} cannot run here: {reason}")
    out_dtype = r.dtype
    compute = torch.float64 if r.dtype == torch.float64 else torch.float32
    batch, _, heads, size = r.shape
    if state is None:
        state = r.new_zeros(batch, heads, size, size, dtype=compute)
    else:
        state = state.to(compute)
    if chosen.upcast_inputs:
        r, w, k, v, a, b = (x.to(compute) for x in (r, w, k, v, a, b))
    # The recurrence must run in the precision chosen above, not in autocast's bf16/fp16 (mixed precision
    # training wraps the whole forward in autocast).
    with torch.autocast(device_type=r.device.type, enabled=False):
        y, final = chosen.fn(r, w, k, v, a, b, state)
    return y.to(out_dtype), final


def check_backend_name(backend: str) -> str:
    """``backend`` if it names a backend (or ``"auto"``); else a ``ValueError`` listing the choices."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown wkv7 backend {backend!r}; choose one of: auto, {', '.join(BACKENDS)}")
    return backend


def _resolve(backend: str, r: torch.Tensor) -> str:
    if check_backend_name(backend) != "auto":
        return backend
    if r.shape[1] == 1:
        return "reference"
    if r.is_cuda and r.dtype != torch.float64 and fla_unavailable_reason(r) is None:
        return "fla"
    return "chunked"


def _check_shapes(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
                  b: torch.Tensor, state: torch.Tensor | None) -> None:
    shape = r.shape
    if r.dim() != 4:
        raise ValueError(f"wkv7 inputs must be [B, T, H, N]; got r of shape {tuple(shape)}")
    for name, x in zip("wkvab", (w, k, v, a, b)):
        if x.shape != shape:
            raise ValueError(f"wkv7 input {name} has shape {tuple(x.shape)}, expected {tuple(shape)} like r")
    expected_state = (shape[0], shape[2], shape[3], shape[3])
    if state is not None and tuple(state.shape) != expected_state:
        raise ValueError(f"wkv7 state has shape {tuple(state.shape)}, expected [B, H, N, N] = {expected_state}")

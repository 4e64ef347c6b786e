"""WKV7 through flash-linear-attention's Triton kernels (CUDA only, optional ``fla`` extra).

fla takes the same ``w`` (log decay) but keeps its state key-major, ``[B, H, N(key), N(value)]``:
the transpose of our ``[value, key]`` layout, so the state is transposed on the way in and out.
"""

from __future__ import annotations

import functools

import torch

INSTALL_HINT = "install the fla extra: pip install 'rwkvtune[fla]'"


def fla_unavailable_reason(r: torch.Tensor) -> str | None:
    """``None`` when fla can run on ``r``'s device and dtype, else the reason and the fix."""
    if not r.is_cuda:
        return f"fla kernels need a CUDA tensor, got one on {r.device}; use backend='chunked' on CPU"
    if r.dtype == torch.float64:
        return "fla kernels do not take float64; use backend='chunked' or 'reference'"
    return _import_error()


@functools.lru_cache(maxsize=1)
def _import_error() -> str | None:
    """Why ``fla.ops.rwkv7`` cannot be imported (not installed, or broken, e.g. without triton), or ``None``."""
    try:
        import fla.ops.rwkv7  # noqa: F401
    except ImportError as err:
        return f"flash-linear-attention cannot be imported ({err}); {INSTALL_HINT}"
    return None


def wkv7_fla(r, w, k, v, a, b, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``wkv7_reference``; inputs run in ``r``'s dtype (the kernels accumulate in
    float32, as RWKV-LM's bf16 kernels do), the state stays float32."""
    from fla.ops.rwkv7 import chunk_rwkv7

    w, k, v, a, b = (x.to(r.dtype) for x in (w, k, v, a, b))
    y, final = chunk_rwkv7(r, w, k, v, a, b, scale=1.0,
                           initial_state=state.transpose(-1, -2).contiguous(), output_final_state=True)
    return y, final.transpose(-1, -2).float()

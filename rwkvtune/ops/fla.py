"""WKV7 through flash-linear-attention's Triton kernels (CUDA only, optional ``fla`` extra).

fla takes the same ``w`` (log decay) but keeps its state key-major, ``[B, H, N(key), N(value)]``:
the transpose of our ``[value, key]`` layout, so the state is transposed on the way in and out.

RWKV-7's log decay lies in ``[-exp(-0.5), 0)``. Releases of fla that take a ``lower_bound`` on it use
64-token chunks and tensor-core kernels once told so (fla's own RWKV-7 layer passes the same bound); without
it they fall back to 16-token chunks. ``bounded_decay=False`` leaves the bound out, for a ``w`` outside
that range and to compare the two paths.
"""

from __future__ import annotations

import functools
import inspect

import torch

INSTALL_HINT = "install the fla extra: pip install 'rwkvtune[fla]'"

#: The smallest RWKV-7 log decay, ``-exp(-0.5)`` (``log(decay) = -exp(-0.5) * sigmoid(.)``, spec 2.3 step 5).
LOG_DECAY_FLOOR = -0.6065306597126334


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


def wkv7_fla(r, w, k, v, a, b, state: torch.Tensor, *,
             bounded_decay: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``wkv7_reference``; inputs run in ``r``'s dtype (the kernels accumulate in
    float32, as RWKV-LM's bf16 kernels do), the state stays float32.

    Args:
        r, w, k, v, a, b: ``[B, T, H, N]`` (fla's layout too); ``w`` the log decay.
        state: ``[B, H, N(value), N(key)]`` float32; fla gets its transpose ``[B, H, N(key), N(value)]``.
        bounded_decay: tell fla that ``w >= LOG_DECAY_FLOOR`` (true of every RWKV-7 ``w``) where it takes
            the bound.

    Returns:
        ``y`` ``[B, T, H, N]`` and the final state ``[B, H, N(value), N(key)]`` in float32.
    """
    from fla.ops.rwkv7 import chunk_rwkv7

    w, k, v, a, b = (x.to(r.dtype) for x in (w, k, v, a, b))
    options = {"lower_bound": LOG_DECAY_FLOOR} if bounded_decay and _takes_lower_bound(chunk_rwkv7) else {}
    y, final = chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=state.transpose(-1, -2).contiguous(),
                           output_final_state=True, **options)
    return y, final.transpose(-1, -2).float()


@functools.lru_cache(maxsize=4)
def _takes_lower_bound(kernel) -> bool:
    """Whether this release's ``chunk_rwkv7`` has the ``lower_bound`` argument (0.6.0 has it, 0.5.0 not)."""
    try:
        return "lower_bound" in inspect.signature(kernel).parameters
    except (TypeError, ValueError):  # a compiled or wrapped callable without a readable signature
        return False

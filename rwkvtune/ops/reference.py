"""Token-by-token WKV7 scan: the executable specification every faster backend is tested against."""

from __future__ import annotations

import torch


def wkv7_reference(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the WKV7 recurrence one token at a time (spec section 2.3, step 6).

    Args:
        r, w, k, v, a, b: ``[B, T, H, N]``; ``w`` is the log decay (``log(decay) < 0``).
        state: ``[B, H, N(value), N(key)]``, the state before the first token.

    Returns:
        ``y`` ``[B, T, H, N]`` and the state after the last token, both in the dtype the math ran in
        (the caller picks it; ``ops.wkv7`` runs it in float32 or float64).

    Per head, with ``S`` indexed ``[value, key]``:
    ``S_t = S_{t-1} diag(exp(w_t)) + (S_{t-1} a_t) b_t^T + v_t k_t^T`` and ``y_t = S_t r_t``.
    """
    decay = torch.exp(w)
    outputs = []
    for t in range(r.shape[1]):
        sa = torch.einsum("bhij,bhj->bhi", state, a[:, t])
        state = (state * decay[:, t, :, None, :]
                 + sa[..., None] * b[:, t, :, None, :]
                 + v[:, t, :, :, None] * k[:, t, :, None, :])
        outputs.append(torch.einsum("bhij,bhj->bhi", state, r[:, t]))
    return torch.stack(outputs, dim=1), state

"""Cut one long token stream into training windows of ``ctx_len`` tokens.

Consecutive windows overlap by one token (stride ``ctx_len - 1``): labels are aligned with
``input_ids`` and the loss makes position ``t`` predict token ``t + 1``, so the first token of a
window is context only. With the overlap, every token of the stream except the very first is a
target exactly once. The last window holds whatever is left (at least 2 tokens) and is padded by
the collator.

Stream of N = 10 tokens, ctx_len = 4: windows [0:4], [3:7], [6:10] -> targets 1-3, 4-6, 7-9.
"""

from __future__ import annotations

import operator


def check_ctx_len(ctx_len: int) -> int:
    """``ctx_len`` as an int, at least 2 (one context token and one target)."""
    if isinstance(ctx_len, bool) or not isinstance(ctx_len, int) or ctx_len < 2:
        raise ValueError(f"ctx_len must be an int >= 2, got {ctx_len!r}")
    return ctx_len


def num_windows(num_tokens: int, ctx_len: int) -> int:
    """How many windows a stream of ``num_tokens`` gives (0 below 2 tokens: nothing to predict)."""
    if num_tokens < 2:
        return 0
    return -(-(num_tokens - 1) // (ctx_len - 1))


def window_bounds(index: int, num_tokens: int, ctx_len: int) -> tuple[int, int]:
    """``(start, stop)`` of window ``index`` (negative counts from the end, like a list).

    Raises:
        IndexError: ``index`` is out of range.
    """
    count = num_windows(num_tokens, ctx_len)
    index = operator.index(index)
    if index < 0:
        index += count
    if not 0 <= index < count:
        raise IndexError(f"window {index} out of range ({count} windows)")
    start = index * (ctx_len - 1)
    return start, min(start + ctx_len, num_tokens)

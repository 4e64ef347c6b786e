"""Validate token ids and labels coming from user data; errors name the row, the field and the position."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

IGNORE_INDEX = -100
"""Label of a position without loss (the HF / PyTorch cross-entropy convention)."""


def as_token_ids(values: Any, *, row: int, field: str, vocab_size: int) -> np.ndarray:
    """``values`` as an int64 array ``[T]`` of ids in ``0 .. vocab_size - 1``.

    Raises:
        ValueError: not a flat sequence of integers, or an id outside the vocabulary.
    """
    array = _as_int_array(values, row=row, field=field)
    bad = (array < 0) | (array >= vocab_size)
    if bad.any():
        position = int(bad.argmax())
        raise ValueError(
            f"row {row}: field {field!r} position {position} holds id {int(array[position])}, "
            f"outside the vocabulary (0 .. {vocab_size - 1})"
        )
    return array.astype(np.int64, copy=False)


def as_labels(values: Any, *, row: int, vocab_size: int, length: int, field: str = "labels") -> np.ndarray:
    """``values`` as an int64 array ``[length]`` of ids or ``-100`` (no loss).

    Labels are aligned with ``input_ids`` (same length; the loss shifts them), so a different
    length is an error rather than something to repair.

    Raises:
        ValueError: wrong length, not integers, or a value that is neither -100 nor a valid id.
    """
    array = _as_int_array(values, row=row, field=field)
    if len(array) != length:
        raise ValueError(
            f"row {row}: field {field!r} has {len(array)} values but 'input_ids' has {length}; labels must be "
            f"aligned with input_ids (same length, {IGNORE_INDEX} where there is no loss)"
        )
    bad = ((array < 0) & (array != IGNORE_INDEX)) | (array >= vocab_size)
    if bad.any():
        position = int(bad.argmax())
        raise ValueError(
            f"row {row}: field {field!r} position {position} holds {int(array[position])}; a label is a token id "
            f"(0 .. {vocab_size - 1}) or {IGNORE_INDEX} (no loss)"
        )
    return array.astype(np.int64, copy=False)


def _as_int_array(values: Any, *, row: int, field: str) -> np.ndarray:
    """A flat integer array of ``values`` (int64, or uint64 as given); range checks are the caller's."""
    if values is None:
        raise ValueError(f"row {row}: field {field!r} is missing (None)")
    if isinstance(values, (str, bytes)):
        raise ValueError(f"row {row}: field {field!r} must be a list of token ids, got {type(values).__name__}")
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):  # ragged nesting
        raise ValueError(f"row {row}: field {field!r} must be a flat list of token ids") from None
    if array.ndim != 1:
        raise ValueError(f"row {row}: field {field!r} must be a flat list of token ids, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype.kind in "iu":
        return array
    # Floats, bools, None, or ints too big for int64 (numpy then makes an object array): name the first,
    # scanning the original values (the array has already turned 1 into 1.0 next to a float).
    for position, value in enumerate(values if isinstance(values, Sequence) else array.tolist()):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"row {row}: field {field!r} position {position} holds {value!r}, not an integer token id")
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"row {row}: field {field!r} position {position} holds id {value}, outside any vocabulary")
    return array.astype(np.int64)

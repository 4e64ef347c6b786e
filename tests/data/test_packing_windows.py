"""Overlapping ctx_len windows: every token after the first is a target exactly once."""

from __future__ import annotations

import pytest

from rwkvtune.data import num_windows, window_bounds
from rwkvtune.data.packing import check_ctx_len


def test_example_from_the_docstring():
    assert [window_bounds(i, 10, 4) for i in range(num_windows(10, 4))] == [(0, 4), (3, 7), (6, 10)]


@pytest.mark.parametrize("ctx_len", [2, 3, 5, 8])
@pytest.mark.parametrize("num_tokens", [0, 1, 2, 3, 7, 8, 9, 10, 33])
def test_each_target_once(num_tokens, ctx_len):
    targets = []
    for index in range(num_windows(num_tokens, ctx_len)):
        start, stop = window_bounds(index, num_tokens, ctx_len)
        assert 2 <= stop - start <= ctx_len
        targets += range(start + 1, stop)  # position t predicts t + 1: the window's first token is context
    assert targets == list(range(1, num_tokens))


def test_negative_and_out_of_range_indices():
    assert window_bounds(-1, 10, 4) == (6, 10)
    with pytest.raises(IndexError):
        window_bounds(3, 10, 4)
    with pytest.raises(IndexError):
        window_bounds(0, 1, 4)


@pytest.mark.parametrize("bad", [1, 0, -5, 2.0, True, "8"])
def test_ctx_len_must_be_an_int_of_at_least_two(bad):
    with pytest.raises(ValueError, match="ctx_len"):
        check_ctx_len(bad)

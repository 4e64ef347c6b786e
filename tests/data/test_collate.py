"""Right padding, -100 labels and the attention mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkvtune.data import collate


def test_right_padding_and_masks():
    batch = collate([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": np.array([8]), "labels": torch.tensor([8])},
        {"input_ids": [9, 10]},  # no labels: every token
    ])
    assert batch["input_ids"].dtype == torch.long and batch["labels"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.bool
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100], [9, 10, -100]]
    assert batch["attention_mask"].tolist() == [[True, True, True], [True, False, False], [True, True, False]]


def test_pad_id_pad_to_and_multiple():
    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}]
    assert collate(rows, pad_id=7, pad_to=5)["input_ids"].tolist() == [[1, 2, 3, 7, 7]]
    assert collate(rows, pad_to_multiple_of=16)["labels"].shape == (1, 16)
    assert collate(rows, pad_to=5, pad_to_multiple_of=4)["attention_mask"].sum().item() == 3
    assert collate(rows, pad_to=5, pad_to_multiple_of=4)["input_ids"].shape == (1, 8)
    with pytest.raises(ValueError, match="more than pad_to=2"):
        collate(rows, pad_to=2)


def test_errors():
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(ValueError, match="batch row 1"):
        collate([{"input_ids": [1], "labels": [1]}, {"input_ids": [1, 2], "labels": [2]}])

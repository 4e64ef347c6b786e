"""RWKVState batch operations."""

import torch

from checkpoints import tiny_config
from rwkvtune.model import RWKVState


def numbered_state(batch: int) -> RWKVState:
    config = tiny_config(n_layer=2, n_embd=64)
    state = RWKVState.zeros(config, batch)
    rows = torch.arange(batch, dtype=torch.float32)
    return RWKVState(state.att_shift + rows[None, :, None], state.wkv + rows[None, :, None, None, None],
                     state.ffn_shift - rows[None, :, None])


def row_ids(state: RWKVState) -> list[int]:
    return state.att_shift[0, :, 0].long().tolist()


def test_zeros_layout():
    state = RWKVState.zeros(tiny_config(n_layer=3), 5, dtype=torch.bfloat16)
    assert state.att_shift.shape == (3, 5, 128) and state.att_shift.dtype == torch.bfloat16
    assert state.wkv.shape == (3, 5, 2, 64, 64) and state.wkv.dtype == torch.float32
    assert state.batch_size == 5 and state.n_layer == 3


def test_repeat_interleave_select_and_cat():
    state = numbered_state(3)
    assert row_ids(state.repeat_interleave(2)) == [0, 0, 1, 1, 2, 2]
    assert row_ids(state.select([2, 0])) == [2, 0]
    assert row_ids(state.select(torch.tensor([True, False, True]))) == [0, 2]
    assert row_ids(RWKVState.cat([state.select([1]), state])) == [1, 0, 1, 2]
    grown = state.repeat_interleave(2)
    assert torch.equal(grown.wkv[:, 3], state.wkv[:, 1]) and torch.equal(grown.ffn_shift[:, 4], state.ffn_shift[:, 2])


def test_clone_is_independent_and_to_keeps_wkv_float32():
    state = numbered_state(2)
    copy = state.clone()
    copy.wkv.add_(1)
    assert not torch.equal(copy.wkv, state.wkv)
    half = state.to(dtype=torch.bfloat16)
    assert half.att_shift.dtype == torch.bfloat16 and half.wkv.dtype == torch.float32


def test_rwkv_runtime_list_round_trip():
    state = numbered_state(3)
    flat = state.to_rwkv_list(row=1)
    assert len(flat) == 6 and flat[1].shape == (1, 64, 64)
    back = RWKVState.from_rwkv_list(flat)
    for a, b in zip(back._parts(), state.select([1])._parts()):
        assert torch.equal(a, b)

"""Infinite-context steps against the whole-row step: exact gradients without truncation, exact losses with it."""

from __future__ import annotations

import contextlib

import torch

from checkpoints import random_state_dict, tiny_config
from rwkvtune.data import collate
from rwkvtune.engine.steps import NoBackprop, chunked_step, full_sequence_step
from rwkvtune.model import RWKV7

CONFIG = tiny_config(n_layer=2, n_embd=64, vocab_size=300, dim_ffn=256, dim_decay_lora=32, dim_iclr_lora=32,
                     dim_value_lora=32, dim_gate_lora=32)


class Backward:
    """Plain ``loss.backward()``; records the units a step opens."""

    def __init__(self):
        self.finals: list[bool] = []

    def scope(self, final: bool):
        self.finals.append(final)
        return contextlib.nullcontext()

    def __call__(self, loss_sum):
        loss_sum.backward()


def model64() -> RWKV7:
    model = RWKV7(CONFIG).double()
    model.load_state_dict(random_state_dict(CONFIG, seed=4, dtype=torch.float64))
    return model


def batch() -> dict[str, torch.Tensor]:
    """Ragged rows: one shorter than a chunk, one ending mid-chunk, one several chunks long; prompt masks."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for length in (3, 17, 29):
        ids = torch.randint(1, 300, (length,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    return collate(rows)


def grads_of(step, model) -> tuple[torch.Tensor, dict[str, torch.Tensor], Backward]:
    model.zero_grad(set_to_none=True)
    backward = Backward()
    loss = step(model, batch(), backward)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, backward


def test_untruncated_chunks_give_the_full_sequence_gradient():
    model = model64()
    want_loss, want, _ = grads_of(full_sequence_step, model)
    got_loss, got, units = grads_of(chunked_step(8, truncated_bptt=False), model)
    assert units.finals == [False, False, False, True]  # 29 tokens in pieces of 8; one synced backward
    assert abs(got_loss - want_loss) <= 1e-12 * abs(want_loss)
    assert want.keys() == got.keys() and len(want) > 30
    for name in want:
        scale = want[name].abs().max()
        assert (got[name] - want[name]).abs().max() <= 1e-8 * scale, name


def test_truncated_chunks_keep_the_exact_loss_and_cut_the_gradient():
    model = model64()
    want_loss, want, _ = grads_of(full_sequence_step, model)
    got_loss, got, units = grads_of(chunked_step(8, truncated_bptt=True), model)
    assert units.finals == [False, False, False, True]
    assert abs(got_loss - want_loss) <= 1e-12 * abs(want_loss)
    assert not torch.allclose(got["blocks.0.att.w0"], want["blocks.0.att.w0"])  # no gradient through the state
    with torch.no_grad():  # evaluation runs the same pieces forward only
        assert abs(chunked_step(8, True)(model, batch(), NoBackprop()) - want_loss) <= 1e-12 * abs(want_loss)


def test_a_chunk_as_long_as_the_batch_is_the_normal_step():
    model = model64()
    want_loss, want, _ = grads_of(full_sequence_step, model)
    got_loss, got, units = grads_of(chunked_step(64, truncated_bptt=True), model)
    assert units.finals == [True] and abs(got_loss - want_loss) <= 1e-12 * abs(want_loss)
    assert all(torch.allclose(got[n], want[n], rtol=1e-10, atol=0) for n in want)


def test_exact_chunks_keep_no_head_gradient_per_piece():
    model = model64()
    weight = model.head.weight
    kept = []

    def pack(tensor):
        if tensor.shape == weight.shape and tensor.data_ptr() != weight.data_ptr():
            kept.append(tensor.shape)
        return tensor

    for truncated, most in ((False, 0), (True, 1)):  # a truncated piece's backward frees its own before the next
        kept.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.zero_grad(set_to_none=True)
            chunked_step(8, truncated_bptt=truncated)(model, batch(), Backward())
        assert len(kept) <= most * 4, (truncated, len(kept))
    kept.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        full_sequence_step(model, batch(), Backward())
    assert len(kept) == 1  # the fused loss: the head gradient formed in the forward pass

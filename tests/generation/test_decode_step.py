"""The in-place single-token decoder equals ``RWKV7.step`` (logits and every part of the state)."""

from __future__ import annotations

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from rwkvtune.generation.cpu_linear import HeadProjection, decode_linear
from rwkvtune.generation.decode_step import RWKV7Decoder, make_step_fn
from rwkvtune.model import RWKV7


@pytest.mark.parametrize("dtype,vocab,batch", [
    (torch.float32, 1000, 3),  # head: module call into the reused buffer
    (torch.float32, 1024, 3),  # head and block layers: grouped W x^T
    (torch.float32, 1024, 40),  # too many rows for the grouped forms
    (torch.bfloat16, 1024, 3),
])
def test_decoder_equals_model_step(dtype, vocab, batch):
    tol = 2e-5 if dtype == torch.float32 else 0.1  # bf16: different rounding order of the same math
    config = tiny_config(n_layer=3, vocab_size=vocab)
    model = RWKV7(config)
    model.load_state_dict(random_state_dict(config, seed=4))
    model = model.to(dtype).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        state = model(torch.randint(0, vocab, (batch, 6), generator=gen), return_state=True).state  # non-zero
        ours = state.clone()
        decoder = make_step_fn(model)
        assert isinstance(decoder, RWKV7Decoder)
        for _ in range(4):
            tokens = torch.randint(0, vocab, (batch,), generator=gen)
            expected, state = model.step(tokens, state)
            logits, returned = decoder(tokens, ours)
            assert returned is ours  # updated in place
            assert (logits.float() - expected.float()).abs().max().item() <= tol
            for part, (a, b) in zip(("att_shift", "wkv", "ffn_shift"), zip(ours._parts(), state._parts())):
                assert (a.float() - b.float()).abs().max().item() <= tol, part


@pytest.mark.parametrize("rows", [1, 4, 5, 33])
def test_decode_linear_and_head_equal_the_layer(rows):
    gen = torch.Generator().manual_seed(rows)
    layer = torch.nn.Linear(64, 128, bias=False)
    x = torch.randn(rows, 64, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(decode_linear(layer, x), layer(x))
        torch.testing.assert_close(decode_linear(layer, x.t().contiguous().t()), layer(x))  # strided rows
        head = torch.nn.Linear(64, 1024, bias=False)
        projection = HeadProjection()
        torch.testing.assert_close(projection(head, x), head(x))
        torch.testing.assert_close(projection(head, x[:1]), head(x[:1]))  # a smaller batch reuses the buffer


def test_wrapped_layers_are_called_as_modules():
    class Wrapped(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1.0

    layer = Wrapped(64, 64, bias=False)
    x = torch.randn(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(decode_linear(layer, x), layer(x))
        torch.testing.assert_close(HeadProjection()(layer, x), layer(x))


def test_generic_models_use_their_own_step():
    class Other(torch.nn.Module):
        def step(self, token_ids, state):
            return token_ids, state

    other = Other()
    assert make_step_fn(other) == other.step

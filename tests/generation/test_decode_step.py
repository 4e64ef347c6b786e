"""The in-place single-token decoder equals ``RWKV7.step`` (logits and every part of the state)."""

from __future__ import annotations

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from rwkvtune.generation import cpu_linear
from rwkvtune.generation.cpu_linear import FormChooser, HeadProjection, decode_linear
from rwkvtune.generation.decode_step import RWKV7Decoder, make_step_fn
from rwkvtune.model import RWKV7


class FixedChoice:
    """Stands in for the timing chooser: always (or never) the grouped form."""

    def __init__(self, grouped: bool):
        self.grouped = grouped

    def use_grouped(self, weight, x, groups):
        return self.grouped


@pytest.mark.parametrize("dtype,vocab,batch,grouped", [
    (torch.float32, 1000, 3, True),  # head: module call into the reused buffer (1000 rows do not split in 64)
    (torch.float32, 1024, 3, True),  # head and block layers: grouped W x^T
    (torch.float32, 1024, 3, False),  # the same shapes through F.linear
    (torch.float32, 1024, 40, True),  # too many rows for the grouped forms
    (torch.bfloat16, 1024, 3, True),
])
def test_decoder_equals_model_step(dtype, vocab, batch, grouped, monkeypatch):
    monkeypatch.setattr(cpu_linear, "_CHOOSER", FixedChoice(grouped))
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


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("rows", [1, 4, 5, 33])
def test_decode_linear_and_head_equal_the_layer(rows, grouped, monkeypatch):
    monkeypatch.setattr(cpu_linear, "_CHOOSER", FixedChoice(grouped))
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


class FakeClock:
    """A clock that only moves when the fake forms below advance it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def timed_chooser(linear_cost: float, grouped_cost: float, monkeypatch) -> tuple[FormChooser, list]:
    """A chooser whose two forms 'take' the given times; returns it and the log of timed forms."""
    clock = FakeClock()
    calls = []

    def fake_linear(x, weight):
        calls.append(("linear", x.shape[0]))
        clock.now += linear_cost
        return x @ weight.t()

    def fake_grouped(weight, x, groups):
        calls.append(("grouped", x.shape[0]))
        clock.now += grouped_cost
        return x @ weight.t()

    monkeypatch.setattr(cpu_linear.F, "linear", fake_linear)
    monkeypatch.setattr(cpu_linear, "_grouped_matmul", fake_grouped)
    return FormChooser(clock=clock, trials=2), calls


@pytest.mark.parametrize("linear_cost,grouped_cost,expected", [(2.0, 1.0, True), (1.0, 2.0, False)])
def test_form_chooser_keeps_the_faster_form_and_times_each_case_once(linear_cost, grouped_cost, expected,
                                                                     monkeypatch):
    chooser, calls = timed_chooser(linear_cost, grouped_cost, monkeypatch)
    weight = torch.zeros(128, 64)
    assert chooser.use_grouped(weight, torch.zeros(3, 64), 8) is expected
    assert sorted(calls) == [("grouped", 4), ("grouped", 4), ("linear", 4), ("linear", 4)]  # 3 rows -> bucket 4
    calls.clear()
    assert chooser.use_grouped(weight, torch.zeros(4, 64), 8) is expected  # same bucket: no new timing
    assert chooser.use_grouped(torch.ones(128, 64), torch.zeros(2, 64), 8) is expected  # same shape, other weight
    assert calls == [("linear", 2), ("grouped", 2), ("linear", 2), ("grouped", 2)]  # only the 2-row bucket
    calls.clear()
    chooser.use_grouped(weight.double(), torch.zeros(1, 64, dtype=torch.float64), 8)
    assert len(calls) == 4  # another dtype is another case


def test_grouped_matmul_equals_linear():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 48, generator=gen)
    for rows in (1, 3, 32):
        x = torch.randn(rows, 48, generator=gen)
        torch.testing.assert_close(cpu_linear._grouped_matmul(weight, x, 8), x @ weight.t())


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

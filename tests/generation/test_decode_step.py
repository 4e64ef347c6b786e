"""The in-place single-token decoder equals ``RWKV7.step`` (logits and every part of the state)."""

from __future__ import annotations

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from rwkvtune.generation import cpu_linear
from rwkvtune.generation.cpu_linear import DecodeLinears, Form, FormChooser, candidate_forms
from rwkvtune.generation.decode_step import RWKV7Decoder, make_step_fn
from rwkvtune.model import RWKV7


class FixedForm:
    """Stands in for the timing chooser: always the given form, and records the keys it was asked."""

    def __init__(self, form: Form):
        self.form = form
        self.chosen = []

    def get(self, key):
        return self.form if any(key == seen for seen, _ in self.chosen) else None

    def choose(self, key, forms, run):
        self.chosen.append((key, list(forms)))
        return self.form


def random_model(dtype: torch.dtype, vocab: int) -> RWKV7:
    config = tiny_config(n_layer=3, vocab_size=vocab)
    model = RWKV7(config)
    model.load_state_dict(random_state_dict(config, seed=4))
    return model.to(dtype).eval()


def assert_decoder_equals_model_step(model, decoder, batch: int, tol: float):
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        state = model(torch.randint(0, vocab, (batch, 6), generator=gen), return_state=True).state  # non-zero
        ours = state.clone()
        for _ in range(4):
            tokens = torch.randint(0, vocab, (batch,), generator=gen)
            expected, state = model.step(tokens, state)
            logits, returned = decoder(tokens, ours)
            assert returned is ours  # updated in place
            assert (logits.float() - expected.float()).abs().max().item() <= tol
            for part, (a, b) in zip(("att_shift", "wkv", "ffn_shift"), zip(ours._parts(), state._parts())):
                assert (a.float() - b.float()).abs().max().item() <= tol, part


@pytest.mark.parametrize("dtype,vocab,batch,form", [
    (torch.float32, 1000, 3, Form.GROUPED),  # head: F.linear (1000 rows do not split in 64 groups)
    (torch.float32, 1024, 3, Form.GROUPED),  # head and block layers: grouped W x^T
    (torch.float32, 1024, 3, Form.TRANSPOSED),  # transposed copies, r/k/v as one batched product
    (torch.float32, 1024, 3, Form.PLAIN),
    (torch.float32, 1024, 40, Form.PLAIN),  # above 32 rows only the plain form is a candidate
    (torch.bfloat16, 1024, 3, Form.FLOAT_TRANSPOSED),  # float32 copies of bf16 weights
    (torch.bfloat16, 1024, 3, Form.TRANSPOSED),
    (torch.bfloat16, 1024, 3, Form.PLAIN),
])
def test_decoder_equals_model_step(dtype, vocab, batch, form):
    tol = 2e-5 if dtype == torch.float32 else 0.1  # bf16: different rounding order of the same math
    model = random_model(dtype, vocab)
    chooser = FixedForm(form)
    decoder = RWKV7Decoder(model, chooser)
    assert make_step_fn(model).__class__ is RWKV7Decoder
    assert_decoder_equals_model_step(model, decoder, batch, tol)
    expected_forms = candidate_forms(dtype, torch.device("cpu"), batch, decoder.layouts.plain_weight_bytes)
    assert [forms for _, forms in chooser.chosen] == ([expected_forms] if len(expected_forms) > 1 else [])


def test_decoder_tunes_on_a_scratch_state_once_per_row_bucket():
    """The real chooser times whole steps on a copy of the state (a fake clock makes the transposed form
    fastest): the decoded numbers are still those of ``model.step``, only the chosen form's copies are
    kept, and a second decoder reuses the decision."""
    model = random_model(torch.float32, 1024)
    costs = {Form.PLAIN: 3e-3, Form.TRANSPOSED: 1e-3, Form.GROUPED: 2e-3}
    decoders = []
    now = [0.0]

    def clock():  # each reading advances by the cost of the form the newest decoder holds
        linears = decoders[-1].layouts.linears
        now[0] += costs[linears.form] if linears is not None else 0.0
        return now[0]

    chooser = FormChooser(clock=clock, trials=2)
    timed = []
    original_choose = chooser.choose

    def recording_choose(key, forms, run):
        timed.append((key, list(forms)))
        return original_choose(key, forms, run)

    chooser.choose = recording_choose
    for rows in (3, 4, 1):
        decoders.append(RWKV7Decoder(model, chooser))
        assert_decoder_equals_model_step(model, decoders[-1], rows, 2e-5)
        assert decoders[-1].layouts.linears.form is Form.TRANSPOSED and decoders[-1].layouts.linears._copies
    buckets = [key[1] for key, _ in timed]
    assert buckets == [4, 1]  # 3 rows -> bucket 4, timed at the first step; 4 rows: the same bucket
    assert timed[0][1] == [Form.PLAIN, Form.TRANSPOSED, Form.GROUPED]


def test_candidate_forms():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    small, large = 1 << 20, 3 << 30
    assert candidate_forms(torch.float32, cpu, 1, small) == [Form.PLAIN, Form.TRANSPOSED, Form.GROUPED]
    assert candidate_forms(torch.bfloat16, cpu, 16, small) == [Form.PLAIN, Form.TRANSPOSED, Form.FLOAT_TRANSPOSED]
    assert candidate_forms(torch.bfloat16, cpu, 17, small) == [Form.PLAIN, Form.TRANSPOSED]
    assert candidate_forms(torch.float32, cpu, 33, small) == [Form.PLAIN]
    assert candidate_forms(torch.float32, cuda, 1, small) == [Form.PLAIN]
    # Copies are bounded: too large for any copy, or for the float32 one (twice a bf16 model's bytes).
    assert candidate_forms(torch.float32, cpu, 1, large) == [Form.PLAIN, Form.GROUPED]
    assert candidate_forms(torch.bfloat16, cpu, 1, 1536 << 20) == [Form.PLAIN, Form.TRANSPOSED]


def test_layers_with_forward_hooks_are_called_as_modules():
    model = random_model(torch.float32, 1024)
    model.blocks[1].ffn.key.register_forward_hook(lambda module, args, out: out * 0.5)
    model.blocks[0].ln1.register_forward_hook(lambda module, args, out: out + 0.25)
    assert_decoder_equals_model_step(model, RWKV7Decoder(model, FixedForm(Form.TRANSPOSED)), 2, 2e-5)


@pytest.mark.parametrize("form", list(Form))
@pytest.mark.parametrize("rows", [1, 4, 5, 33])
def test_decode_linears_equal_the_layers(rows, form):
    gen = torch.Generator().manual_seed(rows)
    layers = [torch.nn.Linear(64, 128, bias=False) for _ in range(3)]
    x = torch.randn(3, rows, 64, generator=gen)
    head = torch.nn.Linear(64, 1024, bias=False)
    linears = DecodeLinears(form)
    with torch.no_grad():
        torch.testing.assert_close(linears.linear(layers[0], x[0]), layers[0](x[0]))
        torch.testing.assert_close(linears.linear(layers[0], x[0].t().contiguous().t()), layers[0](x[0]))  # strided
        for got, layer, rows_in in zip(linears.stacked(layers, x), layers, x):
            torch.testing.assert_close(got, layer(rows_in))
        torch.testing.assert_close(linears.head(head, x[0]), head(x[0]))
        torch.testing.assert_close(linears.head(head, x[0, :1]), head(x[0, :1]))  # a smaller batch reuses the buffer
        bf16 = torch.nn.Linear(64, 128, bias=False).to(torch.bfloat16)
        x16 = x[0].to(torch.bfloat16)
        torch.testing.assert_close(linears.linear(bf16, x16).float(), bf16(x16).float(), atol=0.05, rtol=0.02)


def test_decode_linears_keep_copies_only_for_their_life():
    """A copy is made once per weight and reused; a new DecodeLinears sees weights changed in place
    (also where the change does not bump the version counter, as fused AdamW and .data do)."""
    layer = torch.nn.Linear(64, 64, bias=False)
    x = torch.randn(2, 64)
    with torch.no_grad():
        linears = DecodeLinears(Form.TRANSPOSED)
        before = linears.linear(layer, x)
        assert len(linears._copies) == 1
        layer.weight.data.mul_(2.0)
        torch.testing.assert_close(linears.linear(layer, x), before)  # its copy: the weights it started with
        torch.testing.assert_close(DecodeLinears(Form.TRANSPOSED).linear(layer, x), layer(x))


class FakeClock:
    """A clock that only moves when the fake steps below advance it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("costs,expected", [((3e-3, 1e-3, 2e-3), Form.TRANSPOSED), ((1e-3, 3e-3, 2e-3), Form.PLAIN)])
def test_form_chooser_keeps_the_fastest_form_timing_each_after_an_untimed_run(costs, expected):
    clock = FakeClock()
    forms = [Form.PLAIN, Form.TRANSPOSED, Form.GROUPED]
    runs = []

    def run(form):
        clock.now += 1.0 if form not in runs else costs[forms.index(form)]  # the untimed first run is slow
        runs.append(form)

    chooser = FormChooser(clock=clock, trials=2)
    assert chooser.get("case") is None
    assert chooser.choose("case", forms, run) is expected
    assert runs == [f for f in forms for _ in range(3)]  # one form after the other: 1 untimed + 2 timed
    assert chooser.get("case") is expected
    assert chooser.get("other case") is None


def test_form_chooser_times_slow_steps_once():
    clock = FakeClock()
    runs = []

    def run(form):
        clock.now += 1.0
        runs.append(form)

    FormChooser(clock=clock, trials=3).choose("slow", [Form.PLAIN, Form.TRANSPOSED], run)
    assert runs == [Form.PLAIN, Form.PLAIN, Form.TRANSPOSED, Form.TRANSPOSED]


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
        for form in Form:
            linears = DecodeLinears(form)
            torch.testing.assert_close(linears.linear(layer, x), layer(x))
            torch.testing.assert_close(linears.head(layer, x), layer(x))
            torch.testing.assert_close(linears.stacked([layer, layer], torch.stack([x, x]))[1], layer(x))


def test_generic_models_use_their_own_step():
    class Other(torch.nn.Module):
        def step(self, token_ids, state):
            return token_ids, state

    other = Other()
    assert make_step_fn(other) == other.step

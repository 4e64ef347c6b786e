"""``cpu_linear.decode_layouts``, the one entry point of the CPU layout choice, the decoder without it, and
seeded generation's pinned layout."""

from __future__ import annotations

import torch
from test_decode_step import FixedForm, assert_decoder_equals_model_step, random_model

from rwkvtune.generation import SamplingParams, cpu_linear, generate
from rwkvtune.generation.cpu_linear import CpuLayouts, DecodeLinears, Form, FormChooser, decode_layouts
from rwkvtune.generation.decode_step import RWKV7Decoder, make_step_fn


def layers(device: str = "cpu") -> tuple[torch.nn.Linear, list[torch.nn.Module]]:
    head = torch.nn.Linear(32, 256, bias=False, device=device)
    return head, [torch.nn.Linear(32, 32, bias=False, device=device) for _ in range(3)]


def test_off_the_cpu_there_is_no_layout_choice():
    head, block = layers("meta")  # any device but the CPU: CUDA takes the same branch
    assert decode_layouts(head, block, "model") is None


def test_layouts_use_the_given_chooser_or_the_process_one(monkeypatch):
    head, block = layers()
    hooked = torch.nn.Linear(32, 32, bias=False)
    hooked.register_forward_hook(lambda module, args, out: out)
    block.append(hooked)  # not plain: called as a module, its weight not counted
    mine = FixedForm(Form.TRANSPOSED)
    layouts = decode_layouts(head, block, "model", mine)
    assert isinstance(layouts, CpuLayouts)
    assert layouts.plain_weight_bytes == sum(layer.weight.nbytes for layer in [head, *block[:3]])
    runs = []
    linears = layouts.linears_for(3, runs.append)
    assert isinstance(linears, DecodeLinears) and linears.form is Form.TRANSPOSED
    assert not runs  # FixedForm times nothing
    (key, forms), = mine.chosen
    assert key[1] == 4 and key[2] == torch.get_num_threads() and forms == [Form.PLAIN, Form.TRANSPOSED, Form.GROUPED]
    assert layouts.linears_for(4, runs.append) is linears  # same bucket: decided, same copies

    process = FormChooser()
    monkeypatch.setattr(cpu_linear, "_PROCESS_CHOOSER", process)
    timed = []
    chosen = decode_layouts(head, block, "model").linears_for(2, timed.append)
    assert len(process._chosen) == 1  # the process chooser timed the new case, each trial in the form it timed
    assert [linears.form for linears in timed] == [form for form in (Form.PLAIN, Form.TRANSPOSED, Form.GROUPED)
                                                   for _ in range(4)]
    assert chosen.form is process.get(next(iter(process._chosen)))


def test_many_rows_take_the_plain_form_without_timing():
    head, block = layers()
    chooser = FixedForm(Form.TRANSPOSED)
    never = []
    linears = decode_layouts(head, block, "model", chooser).linears_for(33, never.append)
    assert linears.form is Form.PLAIN and not never and not chooser.chosen


def test_decoder_without_layouts_calls_modules_and_equals_the_model_step():
    """The decoder's path on CUDA (no ``cpu_linear``: every layer called as its module), run on the CPU."""
    model = random_model(torch.float32, 1024)
    decoder = RWKV7Decoder(model, FixedForm(Form.TRANSPOSED))
    decoder.layouts = None
    assert_decoder_equals_model_step(model, decoder, 3, 2e-5)


def test_make_step_fn_hands_the_chooser_to_the_layouts():
    model = random_model(torch.float32, 1024)
    chooser = FixedForm(Form.GROUPED)
    step = make_step_fn(model, chooser)
    assert_decoder_equals_model_step(model, step, 2, 2e-5)
    assert step.layouts.linears.form is Form.GROUPED and chooser.chosen


def test_seeded_generation_times_no_layout_and_unseeded_does(monkeypatch):
    model = random_model(torch.float32, 1024)
    readings = []
    monkeypatch.setattr(cpu_linear, "_PROCESS_CHOOSER", FormChooser(clock=lambda: readings.append(1) or 0.0))
    prompts, short = [[5, 6, 7], [8, 9]], dict(max_new_tokens=3, stop=(), stop_token_ids=())
    generate(model, prompts, SamplingParams(n=2, seed=3, **short))
    generate(model, prompts, SamplingParams(n=2, **short), prompt_seeds=[1, 2])  # as GRPO samples
    assert not readings and not cpu_linear._PROCESS_CHOOSER._chosen
    generate(model, prompts, SamplingParams(n=2, **short))
    assert readings and cpu_linear._PROCESS_CHOOSER._chosen  # unseeded: the fastest layout, timed


def test_seeded_generation_repeats_bit_for_bit_whatever_a_process_timed(monkeypatch):
    """Each run stands for a new process whose timing chose another layout: seeded output stays the same."""
    model = random_model(torch.float32, 1024)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=11, stop=(), stop_token_ids=())
    runs = []
    for form in (Form.TRANSPOSED, Form.GROUPED, Form.PLAIN):
        process = FixedForm(form)
        monkeypatch.setattr(cpu_linear, "_PROCESS_CHOOSER", process)
        runs.append(generate(model, [[5, 6, 7], [8, 9]], params))
        assert not process.chosen
    for run in runs[1:]:
        assert [c.token_ids for c in run] == [c.token_ids for c in runs[0]]
        assert all(torch.equal(a.logprobs, b.logprobs) for a, b in zip(run, runs[0]))
    decoder = make_step_fn(model, cpu_linear.PINNED_CHOOSER)
    with torch.no_grad():
        decoder(torch.tensor([1, 2]), model.initial_state(2))
    assert decoder.layouts.linears.form is Form.PLAIN and not decoder.layouts.linears._copies

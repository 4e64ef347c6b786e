"""Sampling parameters, engine settings and prompt checks: every problem reported in one error."""

from __future__ import annotations

import pytest

from generation_fakes import NO_STOP
from rwkvtune.generation import GenerationEngine, SamplingParams, generate
from rwkvtune.generation.engine import plan_waves
from rwkvtune.hub.config_json import DEFAULT_GENERATION_CONFIG


def test_defaults_match_the_hub_generation_config():
    assert SamplingParams() == SamplingParams.from_generation_config(DEFAULT_GENERATION_CONFIG)
    params = SamplingParams()
    assert params.stop == ("\n\n",) and params.stop_token_ids == (0,) and params.n == 1


def test_one_error_lists_every_problem():
    with pytest.raises(ValueError) as info:
        SamplingParams(max_new_tokens=0, temperature=-1, top_p=1.5, top_k=-2, repetition_penalty=0,
                       presence_penalty=float("nan"), stop=("",), stop_token_ids=(-1,), seed=-3, n=0)
    message = str(info.value)
    for name in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty",
                 "stop must", "stop_token_ids", "seed", "n must"):
        assert name in message, name


@pytest.mark.parametrize("bad", [dict(max_new_tokens=2.5), dict(n=True), dict(top_p=0.0), dict(temperature="1")])
def test_wrong_types_and_ranges(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_a_single_stop_string_is_one_stop_string():
    assert SamplingParams(stop="\n\n").stop == ("\n\n",)
    assert SamplingParams(stop=["a", "bc"], stop_token_ids=[0, 261]).stop_token_ids == (0, 261)


def test_generation_config_ignores_other_keys_and_takes_overrides():
    params = SamplingParams.from_generation_config({"temperature": 0.5, "eos_token_id": 0}, top_k=3)
    assert params.temperature == 0.5 and params.top_k == 3
    with pytest.raises(TypeError):
        SamplingParams.from_generation_config({}, not_a_field=1)


def test_engine_settings_are_validated(tiny_model):
    with pytest.raises(ValueError) as info:
        GenerationEngine(tiny_model, prefill_chunk_size=0, max_prefill_batch_size=0, max_decode_batch_size=-2)
    for name in ("prefill_chunk_size", "max_prefill_batch_size", "max_decode_batch_size"):
        assert name in str(info.value)


def test_string_prompts_need_a_tokenizer(tiny_model):
    with pytest.raises(ValueError, match="prompt 1 is a string: pass tokenizer"):
        generate(tiny_model, [[1, 2], "hello"], SamplingParams(max_new_tokens=1))


def test_bad_prompts_are_listed_together(tiny_model):
    with pytest.raises(ValueError) as info:
        generate(tiny_model, [[], [5, 1000]], SamplingParams(max_new_tokens=1, **NO_STOP))
    assert "prompt 0 is empty" in str(info.value) and "prompt 1 has token ids outside [0, 1000)" in str(info.value)


def test_waves_keep_groups_whole_and_split_large_groups():
    assert plan_waves(5, 4, -1) == plan_waves(5, 4, 20)
    waves = plan_waves(5, 4, 9)  # two prompts (8 rows) per wave
    assert [w.prompts for w in waves] == [(0, 1), (2, 3), (4,)] and {w.samples for w in waves} == {4}
    waves = plan_waves(2, 5, 2)  # one prompt's samples in slices of 2
    assert [(w.prompts, w.samples, w.first_sample) for w in waves] == [
        ((0,), 2, 0), ((0,), 2, 2), ((0,), 1, 4), ((1,), 2, 0), ((1,), 2, 2), ((1,), 1, 4)]

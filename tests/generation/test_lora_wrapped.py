"""Generation through a LoRA-wrapped model (HF peft): the adapters are applied in prefill and in the fast
in-place decoder, disabling them gives the base model back, and generating leaves training untouched."""

from __future__ import annotations

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from generation_fakes import NO_STOP, random_prompts
from rwkvtune.generation import SamplingParams, generate
from rwkvtune.generation.decode_step import RWKV7Decoder, make_step_fn
from rwkvtune.model import RWKV7

peft = pytest.importorskip("peft")

TARGETS = ["receptance", "key", "value", "output", "head"]  # attention and FFN projections, and the head
LENGTHS = (6, 1, 13, 6)


def lora_model(seed: int = 0):
    """A random tiny RWKV-7 with random (non-zero) LoRA adapters on its projections and head."""
    config = tiny_config(n_layer=3)
    base = RWKV7(config)
    base.load_state_dict(random_state_dict(config, seed=seed))
    torch.manual_seed(seed)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    return base, peft.get_peft_model(base, lora)


def forward_continuation(model, completion, temperature: float) -> tuple[list[int], torch.Tensor]:
    """Argmax and ``log_softmax(logits / T)`` of the sampled tokens, from one parallel forward."""
    prompt, ids = completion.prompt_token_ids, completion.token_ids
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1: -1]
    logprobs = torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(ids)[:, None]).squeeze(1)
    return logits.argmax(-1).tolist(), logprobs


def test_the_fast_decoder_runs_the_adapters():
    base, wrapped = lora_model()
    step = make_step_fn(wrapped)
    assert isinstance(step, RWKV7Decoder) and step.model is base  # the peft base, adapter layers in place
    assert type(base.blocks[0].att.key).__module__.startswith("peft.")


def test_greedy_and_logprobs_follow_the_adapted_forward():
    _, wrapped = lora_model()
    wrapped.eval()
    prompts = random_prompts(LENGTHS, seed=1)
    greedy = generate(wrapped, prompts, SamplingParams(temperature=0, max_new_tokens=10, **NO_STOP))
    for completion in greedy:
        argmax, _ = forward_continuation(wrapped, completion, 1.0)
        assert argmax == completion.token_ids
    with wrapped.disable_adapter():
        plain = generate(wrapped, prompts, SamplingParams(temperature=0, max_new_tokens=10, **NO_STOP))
    assert [c.token_ids for c in plain] != [c.token_ids for c in greedy]  # the adapters change the output

    sampled = generate(wrapped, prompts, SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=8, n=2, seed=3,
                                                        **NO_STOP))
    for completion in sampled:
        _, logprobs = forward_continuation(wrapped, completion, 0.7)
        torch.testing.assert_close(completion.logprobs, logprobs, atol=1e-4, rtol=0)


def test_disabled_adapters_generate_what_the_base_model_generates():
    _, wrapped = lora_model(seed=2)
    config = tiny_config(n_layer=3)
    reference = RWKV7(config)
    reference.load_state_dict(random_state_dict(config, seed=2))
    prompts = random_prompts(LENGTHS, seed=4)
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=2, seed=5, **NO_STOP)
    with wrapped.disable_adapter():
        disabled = generate(wrapped, prompts, params)
    expected = generate(reference, prompts, params)
    assert [c.token_ids for c in disabled] == [c.token_ids for c in expected]
    for ours, theirs in zip(disabled, expected):
        torch.testing.assert_close(ours.logprobs, theirs.logprobs, atol=1e-5, rtol=0)


def test_generating_between_forward_and_backward_changes_no_gradient():
    _, wrapped = lora_model(seed=6)
    wrapped.train()
    ids = torch.tensor(random_prompts((12, 12), seed=7))

    def lora_grads(generate_in_between: bool) -> dict[str, torch.Tensor]:
        wrapped.zero_grad(set_to_none=True)
        loss = wrapped(ids, labels=ids).loss
        if generate_in_between:
            completions = generate(wrapped, ids.tolist(), SamplingParams(temperature=1.0, max_new_tokens=5, seed=0,
                                                                         **NO_STOP))
            assert not any(c.logprobs.requires_grad for c in completions)
            assert wrapped.training and all(m.training for m in wrapped.modules())  # train mode restored
        loss.backward()
        return {name: p.grad.clone() for name, p in wrapped.named_parameters() if p.requires_grad}

    without, with_generation = lora_grads(False), lora_grads(True)
    assert without.keys() == with_generation.keys() and all("lora_" in name for name in without)
    for name in without:
        torch.testing.assert_close(with_generation[name], without[name], atol=0, rtol=0)


def test_prompt_tuning_is_refused_not_ignored():
    class PromptTuned(torch.nn.Module):  # what a PeftModel with prompt tuning exposes (peft cannot wrap
        active_peft_config = peft.PromptTuningConfig(num_virtual_tokens=4)  # RWKV7 that way yet)

        def get_base_model(self):
            return RWKV7(tiny_config(n_layer=1))

    assert PromptTuned.active_peft_config.is_prompt_learning
    with pytest.raises(ValueError, match="PromptTuningConfig"):
        make_step_fn(PromptTuned())

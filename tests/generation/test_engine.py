"""The engine on a random tiny RWKV-7: greedy = parallel forward = rwkv runtime, logprobs = training
forward, seeds reproduce, rows are independent of their batch, prefill/decode limits change nothing."""

from __future__ import annotations

import copy

import torch

from generation_fakes import NO_STOP, StepCounter, random_prompts
from rwkv_oracle import load_reference
from rwkvtune.generation import GenerationEngine, SamplingParams, cpu_linear, generate, pad_completions
from rwkvtune.generation.cpu_linear import Form

LENGTHS = (7, 1, 19, 4, 19)  # different lengths, one single-token prompt, two of equal length


def forward_logprobs(model, completion, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax and ``log_softmax(logits / T)`` at each completion position, from one parallel forward."""
    prompt, ids = completion.prompt_token_ids, completion.token_ids
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1: -1]  # [T, V]
    logprobs = torch.log_softmax(logits / temperature, dim=-1).gather(1, torch.tensor(ids)[:, None]).squeeze(1)
    return logits.argmax(-1), logprobs


def test_greedy_equals_parallel_forward_and_rwkv_runtime(tiny_checkpoint):
    path, model = tiny_checkpoint
    prompts = random_prompts(LENGTHS)
    completions = generate(model, prompts, SamplingParams(temperature=0, max_new_tokens=12, **NO_STOP),
                           prefill_chunk_size=5)
    reference = load_reference(path)
    for completion, prompt in zip(completions, prompts):
        assert completion.finish_reason == "length" and len(completion.token_ids) == 12
        argmax, logprobs = forward_logprobs(model, completion, 1.0)
        assert argmax.tolist() == completion.token_ids
        torch.testing.assert_close(completion.logprobs, logprobs, atol=1e-4, rtol=0)

        logits, state = reference.forward(list(prompt), None)
        expected = []
        for _ in range(12):
            expected.append(int(logits.argmax()))
            logits, state = reference.forward([expected[-1]], state)
        assert expected == completion.token_ids


def test_sampled_logprobs_equal_training_forward_for_every_row(tiny_model):
    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, repetition_penalty=1.2, max_new_tokens=10,
                            n=2, seed=0, **NO_STOP)
    completions = generate(tiny_model, random_prompts(LENGTHS), params)
    assert [c.prompt_index for c in completions] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    for completion in completions:
        _, logprobs = forward_logprobs(tiny_model, completion, 0.8)
        torch.testing.assert_close(completion.logprobs, logprobs, atol=1e-4, rtol=0)


def test_same_seed_same_output_and_samples_differ(tiny_model):
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=4, seed=11, **NO_STOP)
    prompts = random_prompts((5, 9))
    first = generate(tiny_model, prompts, params)
    again = generate(tiny_model, prompts, params)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert len({tuple(c.token_ids) for c in first[:4]}) == 4  # the n samples of one prompt differ
    other = generate(tiny_model, prompts, SamplingParams(temperature=1.0, max_new_tokens=8, n=4, seed=12, **NO_STOP))
    assert [c.token_ids for c in other] != [c.token_ids for c in first]


def test_a_row_does_not_depend_on_its_batch(tiny_model):
    prompts = random_prompts(LENGTHS, seed=5)
    greedy = SamplingParams(temperature=0, max_new_tokens=10, **NO_STOP)
    batched = generate(tiny_model, prompts, greedy)
    for index, prompt in enumerate(prompts):
        alone = generate(tiny_model, [prompt], greedy)[0]
        assert alone.token_ids == batched[index].token_ids
        torch.testing.assert_close(alone.logprobs, batched[index].logprobs, atol=1e-5, rtol=0)


def test_memory_limits_do_not_change_the_output(tiny_model):
    prompts = random_prompts(LENGTHS, seed=2)
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=6, n=3, seed=4, **NO_STOP)
    unbounded = generate(tiny_model, prompts, params)
    for limits in (dict(prefill_chunk_size=3, max_prefill_batch_size=2, max_decode_batch_size=4),
                   dict(max_decode_batch_size=2), dict(max_decode_batch_size=1, prefill_chunk_size=1)):
        bounded = generate(tiny_model, prompts, params, **limits)
        assert [(c.prompt_index, c.sample_index, c.token_ids) for c in bounded] == \
               [(c.prompt_index, c.sample_index, c.token_ids) for c in unbounded], limits
        for a, b in zip(bounded, unbounded):
            torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


def test_generic_model_path_matches_and_finished_rows_leave(tiny_model):
    prompts = random_prompts((3, 8, 5), seed=9)
    params = SamplingParams(temperature=0, max_new_tokens=9, **NO_STOP)
    fast = generate(tiny_model, prompts, params)
    counter = StepCounter(tiny_model)
    generic = generate(counter, prompts, params)
    assert [c.token_ids for c in generic] == [c.token_ids for c in fast]
    assert counter.step_batch_sizes == [3] * 8  # no step after the last token

    # Stop at the first token each row produced at some later step: rows finish at different times.
    stop_ids = (fast[0].token_ids[2], fast[1].token_ids[5])
    counter.step_batch_sizes.clear()
    stopped = generate(counter, prompts, SamplingParams(temperature=0, max_new_tokens=9, stop=(),
                                                        stop_token_ids=stop_ids))
    lengths = [len(c.token_ids) for c in stopped]
    assert [c.finish_reason for c in stopped] == ["stop" if n < 9 else "length" for n in lengths]
    assert counter.step_batch_sizes == [sum(n > step for n in lengths) for step in range(1, max(lengths))]
    assert lengths[0] <= 3 and lengths[1] <= 6


def test_eval_mode_no_grad_and_training_flag_restored(tiny_model):
    tiny_model.train()
    completion = tiny_model.generate([[1, 2, 3]], SamplingParams(max_new_tokens=3, seed=0, **NO_STOP))[0]
    assert tiny_model.training and not completion.logprobs.requires_grad
    tiny_model.eval()


class AlwaysTransposed:
    """A form chooser that has always chosen transposed weight copies."""

    def get(self, key):
        return Form.TRANSPOSED


def test_an_engine_sees_weights_changed_between_calls(tiny_model, monkeypatch):
    """With transposed copies of the weights (they last one call), a change that does not bump the
    version counter (``.data``, as fused AdamW writes) must show in the next call."""
    monkeypatch.setattr(cpu_linear, "_PROCESS_CHOOSER", AlwaysTransposed())
    model = copy.deepcopy(tiny_model)
    engine = GenerationEngine(model)
    params = SamplingParams(temperature=0, max_new_tokens=6, **NO_STOP)
    prompts = random_prompts((5, 3))
    before = engine.generate(prompts, params)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data.add_(torch.randn_like(parameter) * 0.5)
    after = engine.generate(prompts, params)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    for completion in after:
        argmax, _ = forward_logprobs(model, completion, 1.0)
        assert argmax.tolist() == completion.token_ids


def test_bf16_model_generates(tiny_checkpoint):
    path, _ = tiny_checkpoint
    from rwkvtune import AutoModel

    model = AutoModel.from_pretrained(path, dtype="bf16").eval()
    completions = generate(model, random_prompts((4, 6)), SamplingParams(max_new_tokens=5, seed=1, n=2, **NO_STOP))
    assert all(len(c.token_ids) == 5 and torch.isfinite(c.logprobs).all() for c in completions)


def test_padded_stack_and_single_prompt_forms(tiny_model):
    params = SamplingParams(temperature=0, max_new_tokens=4, stop=(), stop_token_ids=())
    single = generate(tiny_model, [5, 6, 7], params)
    assert len(single) == 1 and single[0].prompt_token_ids == [5, 6, 7]
    assert generate(tiny_model, torch.tensor([5, 6, 7]), params)[0].token_ids == single[0].token_ids
    short = SamplingParams(temperature=0, max_new_tokens=2, stop=(), stop_token_ids=())
    both = single + generate(tiny_model, [[9]], short)
    padded = pad_completions(both, pad_token_id=0)
    assert padded.token_ids.shape == (2, 4) and padded.mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert padded.token_ids[1, 2:].tolist() == [0, 0] and padded.logprobs[1, 2:].tolist() == [0.0, 0.0]
    assert torch.equal(padded.logprobs[0], single[0].logprobs) and single[0].mask.all()

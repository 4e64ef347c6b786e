"""The engine on CUDA gives the CPU's greedy tokens (fp32) and runs in bf16 (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from generation_fakes import NO_STOP, random_prompts
from rwkvtune import AutoModel
from rwkvtune.generation import SamplingParams, generate


@pytest.mark.cuda
def test_cuda_greedy_matches_cpu_and_bf16_runs(tiny_checkpoint):
    path, cpu_model = tiny_checkpoint
    prompts = random_prompts((6, 1, 11))
    greedy = SamplingParams(temperature=0, max_new_tokens=8, **NO_STOP)
    expected = generate(cpu_model, prompts, greedy)
    model = AutoModel.from_pretrained(path, dtype="fp32", device="cuda").eval()
    got = generate(model, prompts, greedy, max_decode_batch_size=2)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-3, rtol=0)

    sampled = SamplingParams(temperature=1.0, top_p=0.9, top_k=100, max_new_tokens=8, n=2, seed=0, **NO_STOP)
    bf16 = AutoModel.from_pretrained(path, dtype="bf16", device="cuda").eval()
    completions = generate(bf16, prompts, sampled)
    assert len(completions) == 6 and all(torch.isfinite(c.logprobs).all() for c in completions)

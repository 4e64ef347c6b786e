"""Training log-probs of sampled completions equal the generation engine's sampling log-probs, and the
gradient through the shared prompt state equals the one of scoring every row from scratch."""

from __future__ import annotations

import torch

from checkpoints import random_state_dict, tiny_config
from rwkvtune.generation import SamplingParams, generate, pad_completions
from rwkvtune.model.continuations import score_continuations
from rwkvtune.model import RWKV7

CONFIG = tiny_config(n_layer=2, n_embd=64, vocab_size=400, dim_ffn=256, dim_decay_lora=32, dim_iclr_lora=32,
                     dim_value_lora=32, dim_gate_lora=32)
PROMPTS = [[5, 9, 33, 120], [7], [250, 3, 3]]
G = 3


def model() -> RWKV7:
    m = RWKV7(CONFIG)
    m.load_state_dict(random_state_dict(CONFIG, seed=6))
    return m


def sampled(m: RWKV7, temperature: float):
    completions = generate(m, PROMPTS, SamplingParams(n=G, max_new_tokens=9, temperature=temperature, seed=1,
                                                      stop_token_ids=list(range(0, 400, 5))))  # ragged
    return pad_completions(completions)


def test_scores_equal_the_engines_sampling_logprobs():
    m = model()
    for temperature in (1.0, 0.7):
        padded = sampled(m, temperature)
        assert padded.mask.sum() > 3 * G and not padded.mask.all()  # ragged completions
        with torch.no_grad():
            logprobs, entropies = score_continuations(m, PROMPTS, padded.token_ids, padded.mask, per_prompt=G,
                                                      temperature=temperature)
        assert (logprobs - padded.logprobs).abs().max() <= 1e-4
        assert (entropies[padded.mask] > 0).all() and (entropies[~padded.mask] == 0).all()


def test_shared_prompt_state_gives_the_gradient_of_scoring_each_row_alone():
    m = model()
    padded = sampled(m, 1.0)
    logprobs, _ = score_continuations(m, PROMPTS, padded.token_ids, padded.mask, per_prompt=G)
    (logprobs * padded.mask).sum().backward()
    shared = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    total = 0
    for row in range(len(padded.token_ids)):  # prompt + completion as one sequence, no sharing
        prompt = PROMPTS[row // G]
        length = int(padded.mask[row].sum())
        ids = torch.tensor([prompt + padded.token_ids[row, :length].tolist()])
        targets = torch.full_like(ids, -100)
        targets[0, len(prompt) - 1:-1] = ids[0, len(prompt):]
        total = total + m.score(ids, targets).logprobs.sum()
    total.backward()
    for name, param in m.named_parameters():
        assert torch.allclose(shared[name], param.grad, atol=1e-5, rtol=1e-4), name

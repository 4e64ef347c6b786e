"""Prompt once, continue many: the scores and gradients of answers that share their prompt's state equal those
of full separate forwards (float64, 1e-10), whatever the rounds the prompts are read in; and the head's
fused log-prob/entropy function equals plain autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from checkpoints import random_state_dict, tiny_config
from rwkvtune.model import RWKV7
from rwkvtune.model.continuations import read_prompts, score_continuations
from rwkvtune.model.loss import _chunk_logprobs, chunked_token_logprobs

CONFIG = tiny_config(n_layer=2, n_embd=64, vocab_size=300, dim_ffn=128, dim_decay_lora=16, dim_iclr_lora=16,
                     dim_value_lora=16, dim_gate_lora=16)
PROMPTS = [[5, 9, 33, 120, 7, 8], [7], [250, 3, 3], [11, 12]]
#: Two answers per prompt (a DPO pair: chosen, rejected), of different lengths.
ANSWERS = [[4, 5, 6], [9], [1, 2], [8, 8, 8, 8], [17, 3, 60], [44], [2, 2, 2, 2, 2], [6, 7]]


def model() -> RWKV7:
    """float64, with the sequential WKV recurrence: the chunked one's rounding depends on where a sequence is
    cut (it scales by decay products up to e^60), which would blur the comparison at 1e-10."""
    m = RWKV7(CONFIG).double()
    m.load_state_dict(random_state_dict(CONFIG, seed=4))
    m.set_wkv_backend("reference")
    return m


def padded(answers: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(map(len, answers))
    ids = torch.tensor([a + [0] * (longest - len(a)) for a in answers])
    mask = torch.tensor([[True] * len(a) + [False] * (longest - len(a)) for a in answers])
    return ids, mask


def separate_forwards(m: RWKV7, weights: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each answer's token log-probs from a full forward of prompt + answer, and a weighted sum's graph."""
    rows, total = [], torch.zeros((), dtype=torch.float64)
    for k, answer in enumerate(ANSWERS):
        prompt = PROMPTS[k // 2]
        logits = m(torch.tensor([prompt + answer])).logits[0].double()
        logprobs = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1).gather(1, torch.tensor(answer)[:, None])[:, 0]
        rows.append(logprobs)
        total = total + (logprobs * weights[k, :len(answer)]).sum()
    return rows, total


@pytest.mark.parametrize("rounds", [dict(), dict(chunk_size=2), dict(chunk_size=1, max_batch_size=1)])
def test_shared_prompt_scores_and_gradients_equal_separate_forwards(rounds):
    torch.manual_seed(0)
    ids, mask = padded(ANSWERS)
    weights = torch.randn(ids.shape, dtype=torch.float64)
    m = model()
    logprobs, entropies = score_continuations(m, PROMPTS, ids, mask, per_prompt=2, **rounds)
    ((logprobs * weights).sum()).backward()
    shared_grads = {name: p.grad.clone() for name, p in m.named_parameters()}
    m.zero_grad()
    expected, total = separate_forwards(m, weights)
    total.backward()
    for k, row in enumerate(expected):
        assert torch.allclose(logprobs[k, :len(row)], row, rtol=0, atol=1e-10)
    assert (logprobs[~mask] == 0).all() and (entropies[~mask] == 0).all() and (entropies[mask] > 0).all()
    # The decay is computed in float32 even in a float64 model (as the official runtime does), so the gradient
    # through it is rounded to float32: summing two answers' gradients before or after that rounding differs by
    # float32 rounding (the log-probs above carry no such difference).
    for name, p in m.named_parameters():
        assert (shared_grads[name] - p.grad).abs().max() <= 1e-6 * p.grad.abs().max(), name


def test_each_prompt_is_read_once_in_batched_rounds():
    m = model()
    calls = []

    def advance(ids, state, n_done):
        calls.append(tuple(ids.shape))
        return None, m.forward_hidden(ids, state)[1]

    prompts = [[1, 2, 3], [4], [5, 6, 7], [8, 9, 10, 11, 12]]
    state, outputs = read_prompts(prompts, initial_state=m.initial_state, advance=advance)
    # lengths 1, 3, 3, 5: rounds of 4 rows x 1 token, 3 rows x 2, 1 row x 2 -- 8 prompt tokens read, no padding
    assert calls == [(4, 1), (3, 2), (1, 2)] and outputs is None
    for row, prompt in enumerate(prompts):
        alone = m.forward_hidden(torch.tensor([prompt]))[1]
        assert torch.allclose(state.wkv[:, row], alone.wkv[:, 0], atol=1e-12)
        assert torch.allclose(state.att_shift[:, row], alone.att_shift[:, 0], atol=1e-12)


def test_empty_prompts_and_mismatched_rows_are_refused():
    m = model()
    ids, mask = padded(ANSWERS[:2])
    with pytest.raises(ValueError, match="at least one token"):
        score_continuations(m, [[]], ids, mask, per_prompt=2)
    with pytest.raises(ValueError, match="2 continuations for 2 prompts x 2"):
        score_continuations(m, [[1], [2]], ids, mask, per_prompt=2)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_head_logprobs_and_entropies_equal_autograd(temperature):
    torch.manual_seed(1)
    head = nn.Linear(16, 50, bias=False).double()
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    targets[0, :2] = -100
    keep = targets != -100
    w_logprobs, w_entropies = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    for use_entropy in (True, False):
        logprobs, entropies = chunked_token_logprobs(hidden, head, targets, temperature=temperature, chunk_size=4)
        loss = (logprobs * w_logprobs).sum() + (entropies * w_entropies).sum() * use_entropy
        fused = torch.autograd.grad(loss, (hidden, head.weight))
        ref_lp, ref_ent = _chunk_logprobs(head, hidden[keep], targets[keep], temperature)
        assert torch.allclose(logprobs[keep], ref_lp, atol=1e-12) and torch.allclose(entropies[keep], ref_ent, atol=1e-12)
        ref_loss = (ref_lp * w_logprobs[keep]).sum() + (ref_ent * w_entropies[keep]).sum() * use_entropy
        for got, want in zip(fused, torch.autograd.grad(ref_loss, (hidden, head.weight))):
            assert torch.allclose(got, want, atol=1e-12)


def test_fused_head_under_bf16_autocast_matches_the_module_path():
    torch.manual_seed(2)
    head = nn.Linear(32, 64, bias=False)
    hidden = torch.randn(2, 5, 32, requires_grad=True)
    targets = torch.randint(0, 64, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, _ = chunked_token_logprobs(hidden, head, targets)
        module, _ = _chunk_logprobs(head, hidden.reshape(-1, 32), targets.reshape(-1), 1.0)
    assert fused.dtype == torch.float32
    assert torch.equal(fused.reshape(-1), module)  # the same bf16 matmul, then the float32 softmax
    grads = torch.autograd.grad(fused.sum(), (hidden, head.weight))
    want = torch.autograd.grad(module.sum(), (hidden, head.weight))
    for got, ref in zip(grads, want):
        assert torch.allclose(got, ref, atol=2e-2, rtol=2e-2)

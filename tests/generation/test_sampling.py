"""The sampler: exact draw frequencies, truncation rules, penalties, and the returned logprobs."""

from __future__ import annotations

import pytest
import torch

from rwkvtune.generation import SamplingParams
from rwkvtune.generation.penalties import Penalties
from rwkvtune.generation.randomness import UniformStreams, completion_seed
from rwkvtune.generation.sampling import _draw_full, _draw_truncated, sample_next


def grid(count: int) -> torch.Tensor:
    """Evenly spread uniforms: an inverse-CDF draw then hits token i about ``p_i * count`` times."""
    return (torch.arange(count, dtype=torch.float64) + 0.5) / count


def reference_draw(scaled: torch.Tensor, top_k: int, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """Top-k then top-p by sorting the whole row, the textbook way: ``[B, V]``, ``[B]`` -> ``[B]``."""
    out = []
    for row, uniform in zip(scaled, u):
        values, ids = row.sort(descending=True)
        if top_k:
            values, ids = values[:top_k], ids[:top_k]
        probs = torch.softmax(values.double(), dim=-1)
        cum = probs.cumsum(-1)
        probs = probs * ((cum - probs) < top_p)
        cdf = probs.cumsum(-1) / probs.sum()
        out.append(ids[torch.searchsorted(cdf, uniform[None], right=True).clamp(max=len(ids) - 1)])
    return torch.cat(out)


@pytest.mark.parametrize("vocab", [512, 1000])  # 1000: not a multiple of the 256-token block
def test_full_draw_hits_each_token_in_proportion(vocab):
    probs = torch.softmax(torch.randn(vocab, generator=torch.Generator().manual_seed(vocab)) * 2, dim=-1)
    probs[[0, 7, vocab - 1]] = 0.0  # zero-probability tokens, also at both ends, must never come out
    probs /= probs.sum()
    draws = 4000
    tokens = _draw_full(probs.expand(draws, vocab).contiguous(), grid(draws))
    counts = torch.bincount(tokens, minlength=vocab).double()
    assert counts[[0, 7, vocab - 1]].sum() == 0
    assert (counts - probs.double() * draws).abs().max() <= 1.5


def test_extreme_uniforms_never_pick_zero_probability_tokens():
    probs = torch.zeros(4, 600)
    probs[:, 300] = 0.25
    probs[:, 301] = 0.75
    tokens = _draw_full(probs, torch.tensor([0.0, 1e-300, 0.5, 1 - 2**-53], dtype=torch.float64))
    assert tokens.tolist() == [300, 300, 301, 301]


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (50, 0.7), (0, 0.9), (0, 0.5), (0, 0.3)])
def test_truncated_draw_equals_sorting_the_whole_row(top_k, top_p):
    gen = torch.Generator().manual_seed(top_k + int(100 * top_p))
    # Peaked rows (the nucleus is in the top 64), wider ones (in the top 1024) and flat ones (full sort).
    scaled = torch.cat([torch.randn(3, 3000, generator=gen) * scale for scale in (5.0, 1.5, 0.1)])
    u = torch.rand(9, generator=gen, dtype=torch.float64)
    assert torch.equal(_draw_truncated(scaled, top_k, top_p, u), reference_draw(scaled, top_k, top_p, u))


def test_top_k_keeps_only_the_k_most_likely_in_proportion():
    logits = torch.log(torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15]))
    params = SamplingParams(top_k=2)
    tokens, _ = sample_next(logits.expand(1000, 5), params, grid(1000))
    counts = torch.bincount(tokens, minlength=5).tolist()
    assert counts[0] == counts[2] == counts[4] == 0
    assert abs(counts[1] - 1000 * 0.4 / 0.7) <= 1 and abs(counts[3] - 1000 * 0.3 / 0.7) <= 1


def test_greedy_takes_the_argmax_and_reports_temperature_one_logprobs():
    logits = torch.randn(3, 70, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    tokens, logprobs = sample_next(logits, SamplingParams(temperature=0), None)
    expected = torch.log_softmax(logits.float(), dim=-1)
    assert torch.equal(tokens, logits.float().argmax(-1))
    torch.testing.assert_close(logprobs, expected.gather(1, tokens[:, None]).squeeze(1))


@pytest.mark.parametrize("settings", [dict(), dict(top_k=20), dict(top_p=0.5), dict(repetition_penalty=1.3),
                                      dict(presence_penalty=0.5, frequency_penalty=0.2, top_k=10, top_p=0.9)])
def test_logprobs_are_of_the_raw_logits_at_the_sampling_temperature(settings):
    params = SamplingParams(temperature=0.7, **settings)
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(1)) * 3
    penalties = None
    if params.has_penalties:
        penalties = Penalties(params, 6, 300, 4, logits.device)
        for _ in range(3):
            penalties.record(torch.randint(0, 300, (6,), generator=torch.Generator().manual_seed(2)))
    tokens, logprobs = sample_next(logits, params, torch.rand(6, dtype=torch.float64), penalties)
    expected = torch.log_softmax(logits / 0.7, dim=-1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs, expected)


@pytest.mark.parametrize("settings", [dict(temperature=0), dict(), dict(top_p=0.8, repetition_penalty=1.5)])
def test_large_batches_are_sampled_in_chunks_like_single_rows(settings):
    params = SamplingParams(**settings)
    logits = torch.randn(40, 65536, generator=torch.Generator().manual_seed(3)) * 3  # > 32 rows: two chunks
    u = torch.rand(40, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    penalties = Penalties(params, 40, 65536, 2, logits.device) if params.has_penalties else None
    if penalties is not None:
        penalties.record(logits.argmax(-1))
    tokens, logprobs = sample_next(logits, params, u, penalties)
    for row in (0, 31, 32, 39):
        if penalties is not None:
            single = Penalties(params, 1, 65536, 2, logits.device)
            single.record(logits[row:row + 1].argmax(-1))
        one_token, one_logprob = sample_next(logits[row:row + 1], params, u[row:row + 1],
                                             single if penalties is not None else None)
        assert one_token.item() == tokens[row].item()
        torch.testing.assert_close(one_logprob[0], logprobs[row])


def test_penalties_follow_the_documented_rules():
    params = SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.1)
    penalties = Penalties(params, 1, 4, 3, torch.device("cpu"))
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    for token in (0, 1, 0):
        penalties.record(torch.tensor([token]))
    # token 0: 2 / 2 - 0.5 - 2 * 0.1; token 1: -2 * 2 - 0.5 - 1 * 0.1; tokens 2, 3 never generated.
    torch.testing.assert_close(penalties.apply(logits), torch.tensor([[0.3, -4.6, 1.0, 0.5]]))
    assert logits.tolist() == [[2.0, -2.0, 1.0, 0.5]]  # the raw logits are left alone


def test_each_stream_depends_only_on_its_seed():
    seeds = [completion_seed(7, i) for i in range(5)]
    assert len(set(seeds)) == 5 and completion_seed(8, 0) != seeds[0]

    def stream_values(row_seeds, steps, block):
        streams = UniformStreams(row_seeds, block=block)
        return torch.stack([streams.next() for _ in range(steps)], dim=1)  # [rows, steps]

    together = UniformStreams(seeds, block=3)
    first = torch.stack([together.next() for _ in range(7)], dim=1)  # crosses block refills
    torch.testing.assert_close(first[2], stream_values(seeds[2:3], 7, block=4)[0])
    together.select([4, 1])  # rows leave mid-block
    later = torch.stack([together.next() for _ in range(3)], dim=1)
    torch.testing.assert_close(later, stream_values([seeds[4], seeds[1]], 10, block=5)[:, 7:])


@pytest.mark.parametrize("shift", [0.0, 200.0, -200.0])  # exp overflows / the whole row underflows
def test_full_draw_without_max_shift_falls_back_when_exp_cannot_represent_the_row(shift):
    """The unshifted exp path and the max-shifted fallback both draw by the inverse CDF in vocabulary
    order and return log_softmax at the drawn token."""
    logits = torch.randn(5, 700, generator=torch.Generator().manual_seed(5)) * 3
    u = torch.rand(5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    tokens, logprobs = sample_next(logits + shift, SamplingParams(), u)
    cdf = torch.softmax(logits.double(), dim=-1).cumsum(-1)  # vocabulary order, as the two-level draw
    assert torch.equal(tokens, torch.searchsorted(cdf, u[:, None], right=True).squeeze(1))
    expected = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs, expected)


def test_a_dominant_token_has_logprob_at_most_zero():
    logits = torch.full((3, 65536), -30.0)
    logits[:, 123] = 30.0
    tokens, logprobs = sample_next(logits, SamplingParams(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    assert tokens.tolist() == [123, 123, 123]
    assert (logprobs <= 0).all() and (logprobs > -1e-6).all()

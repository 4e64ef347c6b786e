"""Pick the next token of every row: penalties, temperature, top-k, top-p, one inverse-CDF draw.

Speed matters at a 65536-token vocabulary, where every pass over the logits of 64 rows costs
milliseconds on a CPU. So:

* a plain temperature draw is one ``exp`` pass (no max shift, unless the row totals show overflow or
  underflow) plus a two-level inverse CDF on the unnormalised weights (block sums of 256 tokens, then
  one block), never a cumulative sum over the whole vocabulary; ``torch.multinomial`` draws one
  exponential per vocabulary entry instead (~40x slower here);
* top-k and top-p work on a small ``torch.topk`` candidate set; top-p tries a larger set, then a full
  sort, only for rows whose candidates hold less than ``top_p`` of the mass;
* each row uses one uniform number per step, from its own stream (``randomness.UniformStreams``).

The returned logprobs are always ``log_softmax(raw_logits / T)`` at the sampled token, with ``T`` the
sampling temperature (1 for greedy): what the trainer recomputes, before any penalty or truncation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rwkvtune.generation.params import SamplingParams
from rwkvtune.generation.penalties import Penalties

#: Tokens per block of the two-level inverse CDF (256 blocks at a 65536 vocabulary).
_BLOCK = 256
#: Candidate set sizes tried, in turn, before top-p sorts a whole row (5 ms per row at V = 65536 on
#: this CPU; ``topk`` of 64 takes 0.13 ms, of 1024 1.3 ms). Peaked rows stop at the first.
_TOP_P_CANDIDATES = (64, 1024)
#: Most bytes of one float32 ``[rows, V]`` temporary in the sampler (32 rows at V = 65536).
_CHUNK_BYTES = 8 << 20
#: Smallest row total of ``exp(logits)`` trusted without shifting by the row max: above it, tokens lost
#: to float32 underflow (exp(x) < 1e-45) have probability below 1e-25.
_MIN_TOTAL = 1e-20


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    uniforms: torch.Tensor | None,
    penalties: Penalties | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row.

    Args:
        logits: ``[B, V]`` raw model logits, any float dtype.
        params: sampling settings.
        uniforms: ``[B]`` numbers in [0, 1) (float64, any device); unused (may be ``None``) when greedy.
        penalties: generated-token history, or ``None`` when no penalty is set.

    Returns:
        ``(tokens [B] int64, logprobs [B] float32)`` on the logits' device.
    """
    batch, vocab = logits.shape
    # On the CPU, work on a few rows at a time: float32 temporaries of 256 rows x 65536 are 64 MiB each,
    # and glibc maps every allocation above 32 MiB fresh from the kernel, paying a page fault per 4 KiB
    # on each step (softmax over 256 rows: 37 ms fresh vs 11 ms in chunks). Chunks stay in reused heap.
    rows = max(1, _CHUNK_BYTES // (4 * vocab))
    if batch <= rows or logits.device.type != "cpu":
        return _sample_rows(logits, params, uniforms, penalties, slice(None))
    parts = [_sample_rows(logits[start:start + rows], params,
                          None if uniforms is None else uniforms[start:start + rows],
                          penalties, slice(start, start + rows))
             for start in range(0, batch, rows)]
    return torch.cat([tokens for tokens, _ in parts]), torch.cat([logprobs for _, logprobs in parts])


def _sample_rows(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor | None,
                 penalties: Penalties | None, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """``sample_next`` for the rows ``rows`` of the batch (``logits`` holds just those rows)."""
    raw = logits.float()
    processed = penalties.apply(raw, rows) if penalties is not None else raw
    if params.greedy:
        tokens = processed.argmax(dim=-1)
        return tokens, _logprobs_of(raw, tokens, 1.0)
    temperature = params.temperature
    scaled = processed / temperature if temperature != 1.0 else processed
    u = uniforms.to(device=logits.device, dtype=torch.float64)
    if params.top_k == 0 and params.top_p >= 1.0:
        # exp() without the row max first: one pass instead of softmax's three. It is exact unless some
        # exp overflows or the whole row underflows, which the row totals show; then shift by the max.
        weights = torch.exp(scaled)
        blocks = _block_sums(weights)
        totals = blocks.double().sum(dim=-1)
        if bool(((totals > _MIN_TOTAL) & (totals < float("inf"))).all()):
            tokens = _draw_full(weights, u, blocks)
            if processed is raw:
                # The sampling distribution is the logprob distribution: log p = scaled - log(total).
                # Clamped: exp values rounded to float32 can put a dominant token's logprob a hair above 0.
                logprobs = scaled.gather(1, tokens[:, None]).squeeze(1).double() - totals.log()
                return tokens, logprobs.clamp_(max=0.0).float()
            return tokens, _logprobs_of(raw, tokens, temperature)
        tokens = _draw_full(torch.softmax(scaled, dim=-1), u)
        return tokens, _logprobs_of(raw, tokens, temperature)
    tokens = _draw_truncated(scaled, params.top_k, params.top_p, u)
    return tokens, _logprobs_of(raw, tokens, temperature)


def _logprobs_of(raw: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log_softmax(raw / temperature)`` at ``tokens``: ``[B, V]``, ``[B]`` -> ``[B]``."""
    scaled = raw / temperature if temperature != 1.0 else raw
    return torch.log_softmax(scaled, dim=-1).gather(1, tokens[:, None]).squeeze(1)


def _draw_truncated(scaled: torch.Tensor, top_k: int, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """Top-k and/or top-p draw from temperature-scaled logits ``[B, V]`` -> tokens ``[B]``."""
    batch, vocab = scaled.shape
    if top_k > 0:
        values, ids = torch.topk(scaled, min(top_k, vocab), dim=-1)  # sorted, most likely first
        probs = torch.softmax(values, dim=-1)  # renormalised over the top-k set, as in Hugging Face
        return _draw_sorted(probs, ids, top_p, u)

    probs = torch.softmax(scaled, dim=-1)
    tokens = torch.empty(batch, dtype=torch.long, device=scaled.device)
    pending = torch.arange(batch, device=scaled.device)  # rows whose nucleus is not found yet
    for size in _TOP_P_CANDIDATES:
        candidates, ids = torch.topk(probs[pending], min(size, vocab), dim=-1)  # sorted, most likely first
        covered = candidates.sum(dim=-1) >= top_p  # the nucleus lies inside the candidates
        done = covered.nonzero().squeeze(1)
        if done.numel():
            tokens[pending[done]] = _draw_sorted(candidates[done], ids[done], top_p, u[pending[done]])
        pending = pending[~covered]
        if not pending.numel():
            return tokens
    full_probs, full_ids = probs[pending].sort(dim=-1, descending=True)
    tokens[pending] = _draw_sorted(full_probs, full_ids, top_p, u[pending])
    return tokens


def _draw_sorted(probs: torch.Tensor, ids: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """Draw from the top-p nucleus of ``probs`` ``[B, K]`` sorted in descending order; ``ids`` ``[B, K]`` are
    their token ids -> tokens ``[B]``."""
    if top_p < 1.0:
        probs = _nucleus(probs, top_p)
        # Only the longest nucleus matters for the draw: a flat distribution's nucleus can be short of V.
        longest = int((probs > 0).sum(dim=-1).max())
        probs, ids = probs[:, :longest], ids[:, :longest]
    return ids.gather(1, _inverse_cdf(probs, u)[0][:, None]).squeeze(1)


def _nucleus(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token after the smallest prefix holding ``top_p`` of the mass: ``[B, K]`` -> ``[B, K]``.

    ``sorted_probs`` is in descending order; a token is kept when the mass before it is below ``top_p``,
    so the most likely token always stays.
    """
    before = sorted_probs.cumsum(dim=-1) - sorted_probs
    return sorted_probs * (before < top_p)


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw index ``i`` of each row with probability ``weights[i] / sum(weights)``.

    Args:
        weights: ``[B, K]`` non-negative, at least one positive per row.
        u: ``[B]`` float64 uniforms in [0, 1).

    Returns:
        ``(index [B], residual [B])``: ``residual`` is where ``u`` fell inside the chosen entry, rescaled
        to [0, 1]; it is again uniform, so a second level can reuse it instead of a new random number.
    """
    cum = weights.double().cumsum(dim=-1)  # float64: exact enough for 1e-9 probabilities at V = 65536
    total = cum[:, -1]
    # Keep the target strictly below the total, so the search always lands on an entry of positive weight
    # (searchsorted(right=True) returns the first i with cum[i] > target, and cum only grows where w > 0).
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    index = torch.searchsorted(cum, target[:, None], right=True).squeeze(1).clamp_(max=weights.shape[1] - 1)
    chosen = weights.gather(1, index[:, None]).squeeze(1).double()
    start = cum.gather(1, index[:, None]).squeeze(1) - chosen
    residual = ((target - start) / chosen).clamp_(0.0, 1.0)
    return index, residual


def _block_sums(weights: torch.Tensor) -> torch.Tensor:
    """``weights`` ``[B, V]`` summed in blocks of ``_BLOCK`` tokens -> ``[B, ceil(V / _BLOCK)]``."""
    batch, vocab = weights.shape
    whole = vocab // _BLOCK * _BLOCK
    sums = weights[:, :whole].view(batch, -1, _BLOCK).sum(dim=-1)
    if whole == vocab:
        return sums
    return torch.cat((sums, weights[:, whole:].sum(dim=-1, keepdim=True)), dim=1)


def _draw_full(weights: torch.Tensor, u: torch.Tensor, block_sums: torch.Tensor | None = None) -> torch.Tensor:
    """Draw from full-vocabulary weights ``[B, V]`` (non-negative, not necessarily normalised) -> tokens ``[B]``.

    Two levels: first a block of ``_BLOCK`` tokens by its mass (``block_sums``, computed when not given),
    then a token inside that block: two passes over the weights instead of a cumulative sum over all ``V``.
    """
    batch, vocab = weights.shape
    blocks = _block_sums(weights) if block_sums is None else block_sums
    block, residual = _inverse_cdf(blocks, u)  # [B]
    if vocab % _BLOCK:  # the last block is short: pad with zero weight, which is never drawn
        weights = F.pad(weights, (0, blocks.shape[1] * _BLOCK - vocab))
    tiles = weights.view(batch, -1, _BLOCK)
    tile = tiles.gather(1, block[:, None, None].expand(batch, 1, _BLOCK)).squeeze(1)  # [B, _BLOCK]
    inner, _ = _inverse_cdf(tile, residual)
    return block * _BLOCK + inner

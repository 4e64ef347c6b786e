"""Next-token cross-entropy over a large vocabulary without holding the full ``[B, T, V]`` logits.

The head is applied to ``chunk_size`` target positions at a time, so the logits in memory are one chunk's
``[chunk, V]`` float32 (RWKV-LM's head_chunk and TRL's chunked NLL do the same). Prompt and padding
positions (label -100) are dropped before the head, so they cost nothing.

For a plain ``nn.Linear`` head the gradient is computed in the same pass (as Liger's fused linear
cross-entropy does): ``d loss / d logits = softmax - onehot`` is formed in place of each chunk's logits and
multiplied straight into the hidden-state and weight gradients, which backward only scales. That is
three matmuls and one pass over the logits per chunk, where autograd with checkpointing needs four
matmuls (the recomputed forward) and three passes (log-softmax, its recomputation, its backward); on a
CPU the bf16 loss of rwkv7-0.1b's 65536-way head over 2048 tokens went from 2.3 s to 1.4 s. The price: the
head's float32 ``[V, C]`` weight gradient exists from the forward pass on (1 GiB at V = 65536, C = 4096)
instead of only from the start of backward. Any other head (one wrapped by a LoRA adapter, or sharded by
ZeRO-3) is called as a module, chunk by chunk under activation checkpointing.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
_FUSED_ALLOWED = contextvars.ContextVar("rwkvtune_fused_loss", default=True)


@contextlib.contextmanager
def gradients_formed_in_backward() -> Iterator[None]:
    """Within the block the loss keeps no gradient from its forward to its backward (the checkpointed
    module path instead of the fused one).

    For graphs whose one backward follows several forwards (exact infinite-context training): the fused
    path would keep one ``[V, C]`` float32 head gradient per forward until then.
    """
    token = _FUSED_ALLOWED.set(False)
    try:
        yield
    finally:
        _FUSED_ALLOWED.reset(token)


def chunked_cross_entropy(
    hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, *, chunk_size: int = 1024, shifted: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss and the number of target tokens.

    Args:
        hidden: ``[B, T, C]`` final hidden states (after ``ln_out``).
        head: the output projection ``[..., C] -> [..., V]``; a wrapped head (a LoRA adapter on it) is
            called as a module, so it is trained too.
        labels: ``[B, T]`` aligned with the inputs (HF convention); position ``t`` predicts
            ``labels[:, t + 1]``; ``-100`` marks positions without loss.
        chunk_size: target positions per head chunk.
        shifted: ``labels`` are already the targets, position ``t`` predicting ``labels[:, t]`` (a piece of
            a longer sequence, whose last position predicts the next piece's first token).

    Returns:
        ``(loss_sum, n_targets)``: a float32 scalar (float64 for a float64 model) and an int64 scalar. Divide by the number of target
        tokens of the whole accumulation window, not of this micro-batch.
    """
    targets = labels if shifted else labels[:, 1:]
    keep = targets != IGNORE_INDEX
    hidden = (hidden if shifted else hidden[:, :-1])[keep]  # [N, C]
    targets = targets[keep]                             # [N]
    # The fused path reads the weight directly. A weight that DeepSpeed ZeRO-3 partitions (it carries a
    # ``ds_id``) is whole only inside its module's own forward, and its gradient must come through there.
    if _FUSED_ALLOWED.get() and type(head) is nn.Linear and head.bias is None and not hasattr(head.weight, "ds_id"):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype
        loss_sum = _FusedLinearCrossEntropy.apply(hidden, head.weight, targets, chunk_size, dtype,
                                                  torch.is_grad_enabled())
        return loss_sum, keep.sum()
    total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    for start in range(0, targets.numel(), chunk_size):
        h, y = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        if needs_grad:
            total = total + checkpoint(_chunk_loss_sum, head, h, y, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(head, h, y)
    return total, keep.sum()


def chunked_token_logprobs(
    hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, *, temperature: float = 1.0, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities and entropies of the tempered next-token distribution, in chunks.

    Args:
        hidden: ``[B, T, C]`` final hidden states.
        head: the output projection (an adapter on it takes part: it is called as a module).
        targets: ``[B, T]``: the token position ``t`` is scored against (already shifted); ``-100``: skip.
        temperature: the logits are divided by it before the softmax (the sampling temperature).
        chunk_size: scored positions per head chunk. No ``[positions, V]`` tensor is kept for backward:
            each chunk's logits are formed again there.

    Returns:
        ``(logprobs, entropies)``, both ``[B, T]`` in float32 (float64 for a float64 model) and 0 at
        skipped positions; both differentiable.
    """
    keep = targets != IGNORE_INDEX
    rows, wanted = hidden[keep], targets[keep]                                   # [N, C], [N]
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    if type(head) is nn.Linear and head.bias is None and not hasattr(head.weight, "ds_id"):
        device = rows.device.type
        matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype
        logprobs, entropies = _FusedTokenLogprobs.apply(rows, head.weight, wanted, temperature, chunk_size,
                                                        matmul_dtype)
    else:
        needs_grad = torch.is_grad_enabled() and (rows.requires_grad or any(p.requires_grad for p in head.parameters()))
        pieces = []
        for start in range(0, wanted.numel(), chunk_size):
            args = (head, rows[start:start + chunk_size], wanted[start:start + chunk_size], temperature)
            pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False) if needs_grad
                          else _chunk_logprobs(*args))
        empty = rows.new_zeros((0,), dtype=dtype)
        logprobs = torch.cat([lp for lp, _ in pieces]) if pieces else empty
        entropies = torch.cat([h for _, h in pieces]) if pieces else empty
    scattered_logprobs = hidden.new_zeros(targets.shape, dtype=dtype).masked_scatter(keep, logprobs.to(dtype))
    scattered_entropies = hidden.new_zeros(targets.shape, dtype=dtype).masked_scatter(keep, entropies.to(dtype))
    return scattered_logprobs, scattered_entropies


def _chunk_logprobs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature     # [n, V]
    log_z = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(1, targets[:, None]).squeeze(1) - log_z
    entropies = log_z - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)              # H = log Z - E[z]
    return logprobs, entropies


class _FusedTokenLogprobs(torch.autograd.Function):
    """``log p(targets_i)`` and the entropy ``H_i`` of ``softmax(hidden_i @ weight^T / temperature)``.

    ``hidden`` ``[N, C]``, ``weight`` ``[V, C]``, ``targets`` ``[N]`` -> ``(logprobs [N], entropies [N])``
    in float32 (float64 for float64 matmuls). The loss on them is not known in the forward pass (a policy
    gradient weighs each token by its advantage), so unlike the cross-entropy the gradient cannot be formed
    there: backward forms each chunk's logits again and writes ``d/dz`` in their place, with
    ``d logp_i / dz = onehot - p`` and ``d H / dz = -p (log p + H)``. Only ``hidden``, ``weight`` and two
    numbers per position are kept between the passes, and every chunk reuses the same ``[chunk, V]``
    buffers (fresh ones cost a page fault per 4 KiB on a CPU).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size, dtype):  # type: ignore[override]
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        n = targets.numel()
        logprobs = torch.empty(n, dtype=compute, device=hidden.device)
        entropies = torch.empty(n, dtype=compute, device=hidden.device)
        log_z = torch.empty(n, dtype=compute, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            # (no buffers, not even the head's weight in the matmul dtype, for a forward that scores nothing:
            # a prompt's forward in prompt-once scoring)
            buffers = _LogitBuffers(hidden, weight, chunk_size, dtype, compute) if n else None
            for start in range(0, n, chunk_size):
                part = slice(start, start + chunk_size)
                z = buffers.logits(hidden[part], temperature)                                  # [n, V]
                target_z = z.gather(1, targets[part, None]).squeeze(1)
                peak = z.amax(dim=-1, keepdim=True)
                shifted = z.sub_(peak)
                probs = buffers.spare(len(target_z)).copy_(shifted).exp_()
                mass = probs.sum(dim=-1)
                # E[z] - peak, as a batched dot product (no third [n, V] tensor)
                expected = torch.bmm(probs.unsqueeze(1), shifted.unsqueeze(2)).view(-1) / mass
                log_z[part] = peak.squeeze(1) + mass.log()
                logprobs[part] = target_z - log_z[part]
                entropies[part] = mass.log() - expected                                        # log Z - E[z]
        ctx.save_for_backward(hidden, weight, targets, log_z, entropies)
        ctx.temperature, ctx.chunk_size, ctx.dtype = temperature, chunk_size, dtype
        ctx.set_materialize_grads(False)
        return logprobs, entropies

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropies):  # type: ignore[override]
        hidden, weight, targets, log_z, entropies = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        n = targets.numel()
        if grad_logprobs is None and grad_entropies is None or not (want_hidden or want_weight) or n == 0:
            return None, None, None, None, None, None
        compute = log_z.dtype
        grad_logprobs = grad_logprobs if grad_logprobs is not None else log_z.new_zeros(n)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=compute, device=weight.device) if want_weight else None
        with torch.autocast(hidden.device.type, enabled=False):
            buffers = _LogitBuffers(hidden, weight, ctx.chunk_size, ctx.dtype, compute)
            for start in range(0, n, ctx.chunk_size):
                part = slice(start, start + ctx.chunk_size)
                rows = torch.arange(len(targets[part]), device=targets.device)
                log_p = buffers.logits(hidden[part], ctx.temperature).sub_(log_z[part, None])  # [n, V]
                probs = buffers.spare(len(rows)).copy_(log_p).exp_()
                gl = grad_logprobs[part, None].to(compute)
                if grad_entropies is None:
                    dz = probs.mul_(-gl)                                                        # -p gl
                else:
                    # -p (gl + gH (log p + H)), written over log p
                    gh = grad_entropies[part, None].to(compute)
                    dz = log_p.add_(entropies[part, None]).mul_(gh).add_(gl).mul_(probs).neg_()
                dz[rows, targets[part]] += gl.squeeze(1)                                       # + gl onehot
                dz.div_(ctx.temperature)
                g = buffers.low(dz)
                if want_hidden:
                    grad_hidden[part] = g @ buffers.weight
                if want_weight:
                    buffers.add_weight_grad(grad_weight, g, hidden[part])
        grad_weight = grad_weight.to(weight.dtype) if want_weight else None
        return grad_hidden, grad_weight, None, None, None, None


class _LogitBuffers:
    """The ``[chunk, V]`` buffers of one pass over a head, reused by every chunk.

    Matrix products run in ``dtype`` (the autocast dtype, else the weight's); the softmax in ``compute``
    (float32, float64 for float64 models).
    """

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, chunk_size: int, dtype: torch.dtype,
                 compute: torch.dtype):
        rows = max(min(chunk_size, hidden.shape[0]), 1)
        self.weight = weight.to(dtype)
        self.dtype = dtype
        self.main = hidden.new_empty((rows, weight.shape[0]), dtype=compute)
        self.other = hidden.new_empty((rows, weight.shape[0]), dtype=compute)
        self.low_buffer = hidden.new_empty((rows, weight.shape[0]), dtype=dtype) if dtype != compute else None
        self.product = None

    def logits(self, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
        """``hidden [n, C] @ weight^T / temperature`` in the main buffer ``[n, V]``."""
        n = hidden.shape[0]
        out = self.main[:n]
        if self.low_buffer is not None:
            out.copy_(torch.mm(hidden.to(self.dtype), self.weight.t(), out=self.low_buffer[:n]))
        else:
            torch.mm(hidden.to(self.dtype), self.weight.t(), out=out)
        return out.div_(temperature) if temperature != 1.0 else out

    def spare(self, n: int) -> torch.Tensor:
        """The second ``[n, V]`` buffer."""
        return self.other[:n]

    def low(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` in the matmul dtype (a copy in the low-precision buffer when that differs)."""
        return values if self.low_buffer is None else self.low_buffer[:values.shape[0]].copy_(values)

    def add_weight_grad(self, grad_weight: torch.Tensor, g: torch.Tensor, hidden: torch.Tensor) -> None:
        """``grad_weight += g^T [V, n] @ hidden [n, C]``: in place when the matmul runs in ``grad_weight``'s
        dtype; else the product in the matmul dtype (one reused buffer: no mixed-dtype addmm on the CPU),
        summed in the compute dtype."""
        if grad_weight.dtype == self.dtype:
            grad_weight.addmm_(g.t(), hidden.to(self.dtype))
            return
        if self.product is None:
            self.product = torch.empty(self.weight.shape, dtype=self.dtype, device=self.weight.device)
        grad_weight += torch.mm(g.t(), hidden.to(self.dtype), out=self.product)


def _chunk_loss_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden)
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, reduction="sum")


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """``sum_i CE(hidden_i @ weight^T, targets_i)`` with its gradients formed in the forward pass.

    ``hidden`` ``[N, C]``, ``weight`` ``[V, C]``, ``targets`` ``[N]``; the matmuls run in ``dtype`` (the
    autocast dtype, else the weight's), the softmax in float32. ``grad_enabled``: the caller's grad mode
    (inside ``forward`` autograd is always off); without it no gradient is formed.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, dtype, grad_enabled):  # type: ignore[override]
        want_hidden, want_weight = (grad_enabled and wanted for wanted in ctx.needs_input_grad[:2])
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            h_all = hidden.to(dtype)
            grad_hidden = torch.empty_like(hidden) if want_hidden else None
            # The softmax and the sums run in float32, or in float64 for float64 models (exactness tests).
            compute = torch.float64 if dtype == torch.float64 else torch.float32
            grad_weight = torch.zeros(weight.shape, dtype=compute, device=weight.device) if want_weight else None
            total = torch.zeros((), dtype=compute, device=hidden.device)
            # One set of chunk buffers, reused by every chunk: fresh [n, V] temporaries cost a page fault
            # per 4 KiB on a CPU (glibc maps allocations above 32 MiB anew each time); reusing them took the
            # bf16 loss of rwkv7-0.1b's head over 2048 tokens from 1.2 to 1.0 s.
            rows = min(chunk_size, targets.numel())
            logits_buffer = hidden.new_empty((rows, weight.shape[0]), dtype=compute)
            low = dtype != compute  # the matmuls write dtype; the softmax runs in compute
            low_buffer = hidden.new_empty((rows, weight.shape[0]), dtype=dtype) if low else None
            weight_part = torch.empty(weight.shape, dtype=dtype, device=weight.device) if low and want_weight else None
            for start in range(0, targets.numel(), chunk_size):
                h, y = h_all[start:start + chunk_size], targets[start:start + chunk_size]
                n = y.numel()
                logits = logits_buffer[:n]  # [n, V]
                if low:
                    logits.copy_(torch.mm(h, w.t(), out=low_buffer[:n]))
                else:
                    torch.mm(h, w.t(), out=logits)
                target_logit = logits.gather(1, y[:, None]).squeeze(1)
                peak = logits.amax(dim=-1, keepdim=True)
                probs = logits.sub_(peak).exp_()
                mass = probs.sum(dim=-1, keepdim=True)
                total += (peak + mass.log()).sum() - target_logit.sum()
                if want_hidden or want_weight:
                    probs.div_(mass)[torch.arange(n, device=y.device), y] -= 1.0  # softmax - onehot
                    g = low_buffer[:n].copy_(probs) if low else probs
                    if want_hidden:
                        grad_hidden[start:start + n] = g @ w
                    if want_weight:
                        if low:  # no mixed-dtype addmm on the CPU: the bf16 product, then a compute-dtype sum
                            grad_weight += torch.mm(g.t(), h, out=weight_part)
                        else:
                            grad_weight.addmm_(g.t(), h)
        ctx.save_for_backward(*(t for t in (grad_hidden, grad_weight) if t is not None))
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        # Not in place: with retain_graph the saved gradients serve a second backward.
        saved = list(ctx.saved_tensors)
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = saved.pop(0) * grad_total if want_hidden else None
        grad_weight = (saved.pop(0) * grad_total).to(ctx.weight_dtype) if want_weight else None
        return grad_hidden, grad_weight, None, None, None, None

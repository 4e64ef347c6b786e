"""Chunked WKV7: parallel inside chunks of ``c`` tokens, sequential only across chunks (spec 4.3).

Per (batch, head), with ``S`` the ``[value, key]`` state, the recurrence
``S_t = S_{t-1} diag(exp(w_t)) + (S_{t-1} a_t) b_t^T + v_t k_t^T``, ``y_t = S_t r_t`` is unrolled over a
chunk of ``c`` tokens. The code carries the key-major state ``Z = S^T`` (``[N_k, N_v]``) so that every
product is a plain row-major ``bmm``; token vectors are stacked as rows (``[c, N]``).

With ``L_t = sum_{s<=t} w_s`` (cumulative log decay inside the chunk, ``L_0 = 0``) and
``u_t = S_{t-1} a_t`` (rows of ``U``):

* ``Q_rb[t,s] = <r_t e^{L_t - L_s}, b_s>``, ``Q_rk`` likewise with ``k``  (``s <= t``, else 0)
* ``M_ab[t,s] = <a_t e^{L_{t-1} - L_s}, b_s>``, ``M_ak`` likewise with ``k`` (``s < t``, else 0)
* ``R~ = r e^{L_t}``, ``A~ = a e^{L_{t-1}}``, ``b^ = b e^{L_c - L_t}``, ``k^ = k e^{L_c - L_t}``

and from the state ``Z0`` entering the chunk:

1. ``U = T (A~ Z0 + M_ak V)`` with ``T = (I - M_ab)^{-1}``, i.e. ``U = W Z0 + U0`` (``W = T A~``,
   ``U0 = T M_ak V``);
2. ``Y = R~ Z0 + [Q_rb, Q_rk] [U; V]``;
3. ``Z1 = diag(e^{L_c}) Z0 + [b^; k^]^T [U; V]``, the state entering the next chunk.

Everything without ``Z0`` (the Gram matrix ``[[Q_rb, Q_rk], [M_ab, M_ak]]``, ``T``, ``W``, ``U0``) is
computed for a block of chunks at once, batched over chunks x batch x heads; the loop over chunks is
four small ``bmm`` per chunk. ``T`` is exact as ``(I + M)(I + M^2)(I + M^4)...`` because ``M`` is
nilpotent. The Gram matrix factorises the pairwise decays, ``e^{L_t - L_s} = e^{L_t - L_c} e^{L_c - L_s}``:
exact in every product, and no factor exceeds ``e^{|L_c|}``, at most ``e^{9.7}`` for 16 tokens and
RWKV-7's log decay range ``(-0.6065, 0)``. Stronger decays (other parametrisations) shorten the chunk
so that ``|L_c| <= 60`` in float32 (``_safe_chunk``).

The backward is written by hand. Autograd through this math would keep a dozen ``[B, T, H, N]``-sized
intermediates (gigabytes per layer at ``T = 4096``); instead the forward saves the inputs and the state
entering each block of chunks (a block is ~``BLOCK_ELEMENTS / (B H N)`` tokens), and the backward
re-runs each block's forward to get its chunk states and ``U``, then runs the adjoint recurrence
backwards over the chunks: ``dU = b^ dZ1 + Q_rb^T dY``, ``dRHS = T^T dU``,
``dZ0 = diag(e^{L_c}) dZ1 + [R~; A~]^T [dY; dRHS]``; the input gradients follow from ``dU``, ``dRHS``
and ``dZ1`` by batched products again. The products that touch an ``N x N`` state run inside the
chunk loops, where the state is in cache: on CPU, batched ``bmm`` over ``[chunks * B * H, N, N]``
operands is memory-bound and several times slower. Work is done block by block, reusing one set of
buffers, because on CPU touching freshly allocated memory costs about as much as the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

#: Chunk length. Measured fwd+bwd at B=4, H=12, N=64 on a 2-core AVX-512 CPU, T=512 and 4096: 16 and
#: 32 are within noise (32 halves the loop steps but doubles the ``c^2 N`` work), 64 is ~1.4x slower.
#: 16 also keeps the per-block state buffers smaller, and is RWKV-LM's CUDA chunk length.
DEFAULT_CHUNK = 16
#: Longest chunk allowed: beyond it the ``c^2 N`` and ``c^3`` work outweighs the shorter loop.
MAX_CHUNK = 64
#: Target element count of one ``[chunks, B * H, c, N]`` block tensor. Blocks bound the temporaries
#: (they do not grow with T) and keep them near cache; 2^17..2^18 measured best, 2^20 ~25% slower.
BLOCK_ELEMENTS = 1 << 17


def wkv7_chunked(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV7 over a sequence, chunk-parallel; same contract as ``reference.wkv7_reference``.

    Args:
        r, w, k, v, a, b: ``[B, T, H, N]``, any ``T``; ``w`` is the log decay. Normally float32 or
            float64 like ``state``; lower-precision inputs are also accepted and upcast block by block.
        state: ``[B, H, N(value), N(key)]`` initial state; its dtype is the one the math runs in.
        chunk_size: tokens per chunk, ``1..64``; the result does not depend on it beyond rounding.

    Returns:
        ``y`` ``[B, T, H, N]`` in the inputs' dtype and the final state ``[B, H, N, N]`` in the state's.
        Differentiable (first order) in all seven tensors.
    """
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK}, got {chunk_size}")
    return _WKV7Chunked.apply(r, w, k, v, a, b, state, _safe_chunk(w, chunk_size, state.dtype))


def _safe_chunk(w: torch.Tensor, chunk: int, dtype: torch.dtype) -> int:
    """``chunk``, or a shorter one if the decays are so strong that ``e^{+-L_c}`` would leave ``dtype``'s range.

    Never shorter for RWKV-7's ``w > -0.6065`` (``|L_c| <= 38.8`` at ``c = 64``); stronger decays (other
    parametrisations) get the chunk that keeps ``|L_c| <= limit``, down to one token per chunk.
    """
    limit = 60.0 if torch.finfo(dtype).max < 1e100 else 600.0
    steepest = -float(w.detach().min()) if w.numel() else 0.0
    if not steepest * chunk > limit:  # also NaN: let it propagate to the loss, where training reports it
        return chunk
    return max(1, int(limit // steepest))


class _WKV7Chunked(torch.autograd.Function):
    """Block-by-block forward and backward; only the states entering each block are saved."""

    @staticmethod
    def forward(ctx, r, w, k, v, a, b, state, chunk_size):  # type: ignore[override]
        layout = _Layout.of(r, chunk_size)
        y = torch.empty_like(r)
        z = state.transpose(-1, -2).reshape(layout.groups, layout.size, layout.size)
        block_starts = []
        scratch = _Scratch(like=state)
        for lo, hi in layout.blocks():
            x = _Inputs.gather(layout, lo, hi, scratch, r, w, k, v, a, b)
            block_starts.append(z)
            states, _, y_block = _forward_block(_ChunkTerms.compute(x), x, z, scratch, with_outputs=True)
            layout.scatter(y, lo, y_block)
            z = states[-1].clone()
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(r, w, k, v, a, b, *block_starts)
            ctx.layout = layout
        final = z.reshape(state.shape).transpose(-1, -2).contiguous()
        return y, final

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dfinal):  # type: ignore[override]
        # Like the forward (see ops.wkv7), the math must not be downcast by an enclosing autocast.
        with torch.autocast(device_type=dy.device.type, enabled=False):
            layout: _Layout = ctx.layout
            r, w, k, v, a, b, *block_starts = ctx.saved_tensors
            groups, size = layout.groups, layout.size
            dz = dfinal.transpose(-1, -2).reshape(groups, size, size)
            grads = [torch.empty_like(x) for x in (r, w, k, v, a, b)]
            scratch = _Scratch(like=dfinal)
            for (lo, hi), z in reversed(list(zip(layout.blocks(), block_starts))):
                x = _Inputs.gather(layout, lo, hi, scratch, r, w, k, v, a, b)
                terms = _ChunkTerms.compute(x)
                # Re-run the block's scan for its chunk states and U: cheaper than keeping them all.
                states, u, _ = _forward_block(terms, x, z, scratch, with_outputs=False)
                dy_block = layout.gather(dy, lo, hi, scratch.get("dy", (hi - lo, groups, layout.chunk, size)))
                dz, block_grads = _backward_block(terms, x, u, states, dy_block, dz, scratch)
                for out, g in zip(grads, block_grads):
                    layout.scatter(out, lo, g)
            dstate = dz.reshape(layout.batch, layout.heads, size, size).transpose(-1, -2).contiguous()
            return (*grads, dstate, None)


class _Scratch:
    """Buffers reused by every block of one pass, by name.

    All blocks but the last have the same shapes. On CPU, writing into memory that was just used is
    much cheaper than into freshly allocated pages, which the allocator would otherwise hand out (and
    the kernel zero) for every block.
    """

    def __init__(self, like: torch.Tensor) -> None:
        self._like = like
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` in the compute dtype (that of ``like``)."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[1:] != shape[1:] or buffer.shape[0] < shape[0]:
            buffer = self._like.new_empty(shape)
            self._buffers[name] = buffer
        return buffer[:shape[0]]


@dataclass(frozen=True)
class _Layout:
    """How ``[B, T, H, N]`` maps onto blocks of chunks, each block chunk-major ``[n, G = B * H, c, N]``:
    chunk ``i`` of every (batch, head) is then one contiguous batch of ``[c, N]`` matrices."""

    batch: int
    length: int
    heads: int
    size: int
    chunk: int

    @staticmethod
    def of(r: torch.Tensor, chunk: int) -> _Layout:
        return _Layout(*r.shape, chunk)

    @property
    def groups(self) -> int:
        """Independent recurrences, one per (batch, head)."""
        return self.batch * self.heads

    @property
    def n_chunks(self) -> int:
        return -(-self.length // self.chunk)

    def blocks(self) -> list[tuple[int, int]]:
        """``(first, end)`` chunk indices of each block, in time order."""
        step = max(1, BLOCK_ELEMENTS // (self.groups * self.chunk * self.size))
        return [(lo, min(lo + step, self.n_chunks)) for lo in range(0, self.n_chunks, step)]

    def gather(self, x: torch.Tensor, lo: int, hi: int, out: torch.Tensor) -> torch.Tensor:
        """Chunks ``lo..hi`` of ``x [B, T, H, N]`` into ``out``, a contiguous ``[hi - lo, G, c, N]``.

        Tokens past ``T`` are zeros: with ``w = k = v = a = b = r = 0`` a step leaves the state as it is
        and outputs 0, so padding the ragged last chunk is exact (and its gradients are dropped).
        """
        c, n = self.chunk, hi - lo
        piece = x[:, lo * c:hi * c]
        short = n * c - piece.shape[1]
        if short:
            piece = torch.nn.functional.pad(piece, (0, 0, 0, 0, 0, short))
        target = out.view(n, self.batch, self.heads, c, self.size)
        target.copy_(piece.view(self.batch, n, c, self.heads, self.size).permute(1, 0, 3, 2, 4))
        return out

    def scatter(self, out: torch.Tensor, lo: int, x: torch.Tensor) -> None:
        """Inverse of ``gather``: write ``x [n, G, c, N]`` into ``out [B, T, H, N]`` from chunk ``lo``."""
        n, _, c, size = x.shape
        x = x.view(n, self.batch, self.heads, c, size).permute(1, 0, 3, 2, 4)
        start = lo * c
        full = min(n, (self.length - start) // c)
        target = out[:, start:start + full * c]
        target.view(self.batch, full, c, self.heads, size).copy_(x[:, :full])
        if full < n:
            rest = self.length - start - full * c
            out[:, start + full * c:] = x[:, full, :rest]


@dataclass
class _Inputs:
    """One block of the six inputs, chunk-major, each ``[n, G, c, N]``."""

    r: torch.Tensor
    w: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor

    @staticmethod
    def gather(layout: _Layout, lo: int, hi: int, scratch: _Scratch, *xs: torch.Tensor) -> _Inputs:
        shape = (hi - lo, layout.groups, layout.chunk, layout.size)
        names = ("r", "w", "k", "v", "a", "b")
        return _Inputs(*(layout.gather(x, lo, hi, scratch.get(name, shape)) for name, x in zip(names, xs)))


@dataclass
class _ChunkTerms:
    """The state-free quantities of a block of ``n`` chunks, batched as ``m = n * G`` matrices.

    Shapes (``c`` tokens, ``N`` head size; ``[x; y]`` stacks rows):
        ra ``[m, 2c, N]``: ``[R~; A~] = [r e^{L_t}; a e^{L_{t-1}}]``.
        bk ``[m, 2c, N]``: ``[b^; k^] = [b e^{L_c - L_t}; k e^{L_c - L_t}]``.
        gram ``[m, 2c, 2c]``: ``[[Q_rb, Q_rk], [M_ab, M_ak]]``; ``mask`` ``[2c, 2c]`` its 0/1 pattern.
        tinv ``[m, c, c]``: ``(I - M_ab)^{-1}``.
        cum_exp ``[m, c, N]``: ``e^{L_t}``; decay ``[m, 1, N]``: ``e^{L_c}`` (a view of its last row).
    """

    ra: torch.Tensor
    bk: torch.Tensor
    gram: torch.Tensor
    mask: torch.Tensor
    tinv: torch.Tensor
    cum_exp: torch.Tensor
    decay: torch.Tensor

    @staticmethod
    def compute(x: _Inputs) -> _ChunkTerms:
        n, groups, c, size = x.r.shape
        cum_exp = torch.cumsum(_flat(x.w), dim=1).exp_()    # e^{L_t}, [m, c, N]
        decay = cum_exp[:, -1:]
        ra = cum_exp.new_empty(n * groups, 2 * c, size)
        torch.mul(_flat(x.r), cum_exp, out=ra[:, :c])
        ra[:, c] = _flat(x.a)[:, 0]                           # e^{L_0} = 1
        torch.mul(_flat(x.a)[:, 1:], cum_exp[:, :-1], out=ra[:, c + 1:])
        tail = decay / cum_exp                                # e^{L_c - L_t} <= 1
        bk = torch.cat([_flat(x.b) * tail, _flat(x.k) * tail], dim=1)
        # Pairwise decays e^{L_t - L_s} = e^{L_t - L_c} e^{L_c - L_s}: the first factor is at most
        # e^{|L_c|}, which _safe_chunk keeps far inside the float range.
        mask = _mask(c, ra)
        gram = torch.bmm(ra / decay, bk.transpose(1, 2)).mul_(mask)
        tinv = _unit_lower_inverse(gram[:, c:, :c])
        return _ChunkTerms(ra, bk, gram, mask, tinv, cum_exp, decay)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``[n, G, ...]`` -> ``[n * G, ...]`` (a view)."""
    return x.flatten(0, 1)


def _per_chunk(x: torch.Tensor, n: int) -> torch.Tensor:
    """``[n * G, ...]`` -> ``[n, G, ...]`` so ``x[i]`` is chunk ``i`` of every group (a view)."""
    return x.view(n, x.shape[0] // n, *x.shape[1:])


def _mask(c: int, like: torch.Tensor) -> torch.Tensor:
    """``[2c, 2c]`` 0/1 mask: the ``r`` rows see ``s <= t`` (``y_t`` uses ``S_t``), the ``a`` rows
    only ``s < t`` (``u_t`` uses ``S_{t-1}``)."""
    t = torch.arange(c, device=like.device)
    lower = (t[:, None] >= t[None, :]).to(like.dtype)
    strict = (t[:, None] > t[None, :]).to(like.dtype)
    return torch.cat([lower, strict], dim=0).repeat(1, 2)


def _unit_lower_inverse(m: torch.Tensor) -> torch.Tensor:
    """``(I - m)^{-1}`` for strictly lower-triangular ``m [batch, c, c]``.

    ``m^c = 0``, so ``(I - m)^{-1} = sum_{j<c} m^j = (I + m)(I + m^2)(I + m^4)...``: ``log2 c`` rounds of
    two batched matmuls, faster on CPU than a batched triangular solve of tiny matrices.
    """
    c = m.shape[-1]
    inv = m + torch.eye(c, dtype=m.dtype, device=m.device)
    power, span = m, 2
    while span < c:
        power = torch.bmm(power, power)
        inv = torch.baddbmm(inv, inv, power)
        span *= 2
    return inv


def _forward_block(
    terms: _ChunkTerms, x: _Inputs, z: torch.Tensor, scratch: _Scratch, with_outputs: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run the scan over one block of ``n`` chunks.

    Args:
        z: ``[G, N_k, N_v]`` state entering the block.
        with_outputs: compute ``Y`` too (the backward's re-run needs only states and ``U``).

    Returns:
        ``states`` ``[n + 1, G, N_k, N_v]`` (``states[i]`` enters chunk ``i``, ``states[n]`` leaves the
        block), ``U`` ``[n, G, c, N_v]`` and ``Y`` ``[n, G, c, N_v]`` (or ``None``).
    """
    n, groups, c, size = x.v.shape
    # [W | U0] = T [A~ | M_ak V]: step 1 without the state.
    m_ak_v = torch.bmm(terms.gram[:, c:, c:], _flat(x.v))
    w_u0 = torch.bmm(terms.tinv, torch.cat([terms.ra[:, c:], m_ak_v], dim=2))
    w_mat, u0 = _per_chunk(w_u0[..., :size], n), _per_chunk(w_u0[..., size:], n)
    r_tilde, gram_r = _per_chunk(terms.ra[:, :c], n), _per_chunk(terms.gram[:, :c], n)
    bk_t, decay_t = _per_chunk(terms.bk.transpose(1, 2), n), _per_chunk(terms.decay.transpose(1, 2), n)
    states = scratch.get("states", (n + 1, groups, size, size))
    states[0] = z
    u = scratch.get("u", x.v.shape)
    y = scratch.get("y", x.v.shape) if with_outputs else None
    for i in range(n):
        z = states[i]
        torch.baddbmm(u0[i], w_mat[i], z, out=u[i])
        uv = torch.cat([u[i], x.v[i]], dim=1)
        if y is not None:
            torch.bmm(r_tilde[i], z, out=y[i]).baddbmm_(gram_r[i], uv)            # step 2
        torch.bmm(bk_t[i], uv, out=states[i + 1]).addcmul_(z, decay_t[i])     # step 3
    return states, u, y


def _backward_block(
    terms: _ChunkTerms,
    x: _Inputs,
    u: torch.Tensor,
    states: torch.Tensor,
    dy: torch.Tensor,
    dz: torch.Tensor,
    scratch: _Scratch,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Gradients for one block of ``n`` chunks.

    Args:
        u: ``[n, G, c, N_v]`` the forward's ``U``.
        states: ``[n, G, N_k, N_v]`` (or longer) the state entering each chunk.
        dy: ``[n, G, c, N_v]`` gradient of the block's outputs.
        dz: ``[G, N_k, N_v]`` gradient of the state leaving the block.

    Returns:
        The gradient of the state entering the block and ``(dr, dw, dk, dv, da, db)``, each
        ``[n, G, c, N]``.
    """
    n, groups, c, size = dy.shape
    du_y = _per_chunk(torch.bmm(terms.gram[:, :c, :c].transpose(1, 2), _flat(dy)), n)   # Q_rb^T dY
    tinv_t = _per_chunk(terms.tinv.transpose(1, 2), n)
    ra_t = _per_chunk(terms.ra.transpose(1, 2), n)
    b_hat, k_hat = _per_chunk(terms.bk[:, :c], n), _per_chunk(terms.bk[:, c:], n)
    decay_t = _per_chunk(terms.decay.transpose(1, 2), n)
    uv = torch.cat([u, x.v], dim=2)                                          # [n, G, 2c, N_v]
    pair = (n, groups, 2 * c, size)
    dy_rhs = scratch.get("dy_rhs", pair)                                  # [dY; dRHS]
    d_ra = scratch.get("d_ra", pair)                                      # [dR~; dA~]
    d_bk = scratch.get("d_bk", pair)                                      # [db^; dk^]
    dv = scratch.get("dv", dy.shape)
    d_decay = scratch.get("d_decay", (n, groups, size))
    for i in reversed(range(n)):
        z0 = states[i]
        du = torch.baddbmm(du_y[i], b_hat[i], dz)
        torch.cat([dy[i], torch.bmm(tinv_t[i], du)], dim=1, out=dy_rhs[i])
        torch.bmm(dy_rhs[i], z0.transpose(1, 2), out=d_ra[i])
        torch.bmm(uv[i], dz.transpose(1, 2), out=d_bk[i])
        torch.bmm(k_hat[i], dz, out=dv[i])
        torch.sum(dz * z0, dim=2, out=d_decay[i])
        dz = torch.bmm(ra_t[i], dy_rhs[i]).addcmul_(dz, decay_t[i])
    grads = _chunk_grads(terms, *(_flat(t) for t in (uv, dy_rhs, d_ra, d_bk, dv, d_decay)))
    return dz, tuple(g.view(n, groups, c, size) for g in grads)


def _chunk_grads(
    terms: _ChunkTerms,
    uv: torch.Tensor,
    dy_rhs: torch.Tensor,
    d_ra: torch.Tensor,
    d_bk: torch.Tensor,
    dv: torch.Tensor,
    d_decay: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Input gradients of a block from the gradients of its chunk quantities (batched, no state).

    Args (``m`` chunks x groups); ``d_ra``, ``d_bk`` and ``dv`` are completed in place:
        uv, dy_rhs: ``[m, 2c, N_v]``: ``[U; V]`` and ``[dY; dRHS]``.
        d_ra, d_bk: ``[m, 2c, N_k]``: gradients of ``[R~; A~]`` and ``[b^; k^]`` through the state.
        dv: ``[m, c, N_v]``: ``k^ dZ1``, the part of ``dV`` through the next state.
        d_decay: ``[m, N_k]``: gradient of ``e^{L_c}``.

    Returns:
        ``(dr, dw, dk, dv, da, db)``, each ``[m, c, N]``.
    """
    c = dy_rhs.shape[1] // 2
    ra, bk, cum_exp = terms.ra, terms.bk, terms.cum_exp
    # Through the state, b^ and k^ also depend on L_c (e^{L_c - L_t}); through the Gram matrix they
    # do not (there e^{L_c} cancels), so take this part before adding the Gram path.
    d_total = (d_bk * bk).sum(1) + d_decay * terms.decay[:, 0]
    d_gram = torch.bmm(dy_rhs, uv.transpose(1, 2)).mul_(terms.mask)
    dv.baddbmm_(terms.gram[:, :, c:].transpose(1, 2), dy_rhs)
    # gram = (ra e^{-L_c}) bk^T, so its gradient reaches ra and bk scaled by e^{-L_c}.
    inv_decay = 1.0 / terms.decay
    d_ra.addcmul_(torch.bmm(d_gram, bk), inv_decay)
    d_bk.addcmul_(torch.bmm(d_gram.transpose(1, 2), ra), inv_decay)
    # Each x e^{phi} factor sends d(x e^{phi}) * (x e^{phi}) to phi.
    d_cum = d_ra[:, :c] * ra[:, :c] - d_bk[:, :c] * bk[:, :c] - d_bk[:, c:] * bk[:, c:]
    dw = _log_decay_grad(d_cum, d_ra[:, c:] * ra[:, c:], d_total)
    # Back from the scaled rows to the inputs: r, a by e^{L_t}, e^{L_{t-1}}; b, k by e^{L_c - L_t}.
    dr, da = d_ra[:, :c].mul_(cum_exp), d_ra[:, c:]
    da[:, 1:].mul_(cum_exp[:, :-1])
    tail = terms.decay / cum_exp
    db, dk = d_bk[:, :c].mul_(tail), d_bk[:, c:].mul_(tail)
    return dr, dw, dk, dv, da, db


def _log_decay_grad(d_cum: torch.Tensor, d_cum_prev: torch.Tensor, d_total: torch.Tensor) -> torch.Tensor:
    """Gradient of ``w`` from the gradients of its cumulative sums inside each chunk.

    Args:
        d_cum: ``[m, c, N]`` gradient of ``L_t = sum_{s<=t} w_s``.
        d_cum_prev: ``[m, c, N]`` gradient of ``L_{t-1} = sum_{s<t} w_s``.
        d_total: ``[m, N]`` gradient of ``L_c``.

    Returns:
        ``dw_s = sum_{t>=s} d_cum_t + sum_{t>s} d_cum_prev_t + d_total``, ``[m, c, N]``.
    """
    suffix = torch.flip(torch.cumsum(torch.flip(d_cum.add_(d_cum_prev), [1]), dim=1), [1])
    return suffix.sub_(d_cum_prev).add_(d_total[:, None])

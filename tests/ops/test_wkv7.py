"""WKV7 operator: the chunked backend against the token-by-token reference, and the dispatcher."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from rwkvtune.ops import chunked, wkv7
from rwkvtune.ops.chunked import wkv7_chunked
from rwkvtune.ops.reference import wkv7_reference

torch.set_num_threads(1)

LOG_DECAY_MIN = -0.6065306597126334  # -exp(-1/2): RWKV-7's log decay lies in (LOG_DECAY_MIN, 0)
NAMES = ("r", "w", "k", "v", "a", "b")


def make_inputs(batch: int, length: int, heads: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """Float64 ``r, w, k, v, a, b`` ``[B, T, H, N]`` distributed like RWKV-7's (spec 2.3)."""
    gen = torch.Generator().manual_seed(seed)

    def randn() -> torch.Tensor:
        return torch.randn(batch, length, heads, size, generator=gen, dtype=torch.float64)

    r, k, v = randn(), randn(), randn()
    w = LOG_DECAY_MIN * torch.sigmoid(randn())
    kappa = F.normalize(randn(), dim=-1)                 # unit norm per head
    alpha = torch.rand(batch, length, heads, size, generator=gen, dtype=torch.float64)
    return [r, w, k, v, -kappa, kappa * alpha]


def make_state(batch: int, heads: int, size: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(batch, heads, size, size, generator=gen, dtype=torch.float64)


Result = tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]


def outputs_and_grads(fn: Callable, inputs: list[torch.Tensor], state: torch.Tensor, seed: int = 2) -> Result:
    """Run ``fn`` and backpropagate fixed random cotangents of ``y`` and of the final state.

    Returns ``(y, final, grads)`` with grads for the six inputs, then the initial state when it
    requires grad.
    """
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    leaves = list(inputs)
    if state.requires_grad:
        state = state.detach().clone().requires_grad_()
        leaves.append(state)
    y, final = fn(*inputs, state)
    gen = torch.Generator().manual_seed(seed)
    dy = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    dfinal = torch.randn(final.shape, generator=gen, dtype=final.dtype)
    grads = torch.autograd.grad([y, final], leaves, [dy, dfinal])
    return y.detach(), final.detach(), grads


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """Max abs error within ``tol`` (relative to the largest expected value when that exceeds 1)."""
    err = (actual - expected).abs().max().item()
    assert err <= tol * max(1.0, expected.abs().max().item()), f"{what}: max error {err:.3g}"


def assert_results_close(got: Result, want: Result, tol: float) -> None:
    """Outputs, final state and every gradient of two ``outputs_and_grads`` results agree."""
    assert_close(got[0], want[0], tol, "y")
    assert_close(got[1], want[1], tol, "final state")
    assert len(got[2]) == len(want[2])
    for name, g, g_want in zip(NAMES + ("state",), got[2], want[2]):
        assert_close(g, g_want, tol, f"d{name}")


@pytest.mark.parametrize("length", [1, 15, 16, 37, 100])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_matches_reference_float64(length: int, with_state: bool) -> None:
    inputs = make_inputs(2, length, 2, 8)
    state = make_state(2, 2, 8).requires_grad_() if with_state else torch.zeros(2, 2, 8, 8, dtype=torch.float64)
    got = outputs_and_grads(wkv7_chunked, inputs, state)
    assert got[0].dtype == got[1].dtype == torch.float64
    assert_results_close(got, outputs_and_grads(wkv7_reference, inputs, state), 1e-10)


def test_chunked_matches_reference_head_size_64() -> None:
    inputs = make_inputs(1, 70, 1, 64, seed=3)
    state = make_state(1, 1, 64).requires_grad_()
    got = outputs_and_grads(wkv7_chunked, inputs, state)
    assert_results_close(got, outputs_and_grads(wkv7_reference, inputs, state), 1e-10)


def test_chunked_across_many_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny blocks: every chunk is its own block, so block-boundary state passing is exercised."""
    monkeypatch.setattr(chunked, "BLOCK_ELEMENTS", 1)
    inputs = make_inputs(2, 37, 2, 8, seed=4)
    state = make_state(2, 2, 8).requires_grad_()
    got = outputs_and_grads(lambda *xs: wkv7_chunked(*xs, chunk_size=4), inputs, state)
    assert_results_close(got, outputs_and_grads(wkv7_reference, inputs, state), 1e-10)


def test_gradcheck_against_finite_differences() -> None:
    """The hand-written backward, checked directly (ragged T, several chunks, initial state)."""
    inputs = [x.requires_grad_() for x in make_inputs(2, 7, 1, 4, seed=13)]
    state = make_state(2, 1, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda *xs: wkv7_chunked(*xs, chunk_size=3), (*inputs, state))


@pytest.mark.parametrize("chunk_size", [1, 5, 32, 64])
def test_chunk_size_does_not_change_the_result(chunk_size: int) -> None:
    inputs = make_inputs(2, 100, 2, 8, seed=5)
    state = make_state(2, 2, 8).requires_grad_()
    got = outputs_and_grads(lambda *xs: wkv7_chunked(*xs, chunk_size=chunk_size), inputs, state)
    assert_results_close(got, outputs_and_grads(wkv7_chunked, inputs, state), 1e-11)


@pytest.mark.parametrize("chunk_size", [0, 65])
def test_chunk_size_out_of_range(chunk_size: int) -> None:
    inputs = make_inputs(1, 4, 1, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        wkv7_chunked(*inputs, torch.zeros(1, 1, 4, 4, dtype=torch.float64), chunk_size=chunk_size)


@pytest.mark.parametrize("log_decay", [LOG_DECAY_MIN, -1e-6])
def test_float32_at_the_ends_of_the_decay_range(log_decay: float) -> None:
    """Largest chunk, strongest/weakest decay everywhere: the factorised exponentials stay accurate."""
    inputs = make_inputs(1, 128, 2, 64, seed=6)
    inputs[1] = torch.full_like(inputs[1], log_decay)
    state = make_state(1, 2, 64)
    y_ref, s_ref = wkv7_reference(*inputs, state)
    y, s = wkv7_chunked(*(x.float() for x in inputs), state.float(), chunk_size=64)
    assert y.dtype == s.dtype == torch.float32
    assert_close(y.double(), y_ref, 1e-5, "y")
    assert_close(s.double(), s_ref, 1e-5, "final state")


def test_bfloat16_inputs_through_dispatcher() -> None:
    """bf16 in, bf16 out, float32 math: the error is the bf16 rounding of ``y``.

    Measured over 5 seeds, as a fraction of max |y|: 2.4e-3 .. 3.4e-3 for the bf16 ``y`` (half a bf16
    ulp at the largest outputs), 2e-7 when the same inputs go in as float32; the float32 final state
    1.3e-7 of its max.
    """
    inputs = [x.to(torch.bfloat16) for x in make_inputs(2, 100, 2, 64, seed=7)]
    state = make_state(2, 2, 64).float()
    y_ref, s_ref = wkv7_reference(*(x.double() for x in inputs), state.double())
    y, s = wkv7(*inputs, state=state, backend="chunked")
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert_close(y.double(), y_ref, 5e-3, "y")
    assert_close(s.double(), s_ref, 1e-5, "final state")
    # The whole path is differentiable back to the bf16 inputs.
    leaves = [x.clone().requires_grad_() for x in inputs]
    y, s = wkv7(*leaves, state=state, backend="chunked")
    (y.float().square().sum() + s.sum()).backward()
    assert all(x.grad is not None and x.grad.dtype == torch.bfloat16 for x in leaves)


def test_low_precision_inputs_are_upcast_per_block() -> None:
    """bf16 inputs straight into the backend: math in the state's dtype, y and grads in bf16."""
    inputs = [x.to(torch.bfloat16) for x in make_inputs(1, 40, 2, 16, seed=11)]
    state = make_state(1, 2, 16).float()
    y_ref, s_ref = wkv7_reference(*(x.double() for x in inputs), state.double())
    y32, s32 = wkv7_chunked(*(x.float() for x in inputs), state)
    leaves = [x.clone().requires_grad_() for x in inputs]
    y, s = wkv7_chunked(*leaves, state)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert torch.equal(y, y32.to(torch.bfloat16)) and torch.equal(s, s32)
    assert_close(s.double(), s_ref, 1e-5, "final state")
    (y.float().square().sum() + s.sum()).backward()
    assert all(x.grad is not None and x.grad.dtype == torch.bfloat16 for x in leaves)


def test_decays_beyond_rwkv7_range_shrink_the_chunk() -> None:
    """log decay -3 per token would overflow float32 in a 64-token chunk; the chunk shrinks instead."""
    inputs = make_inputs(1, 50, 1, 8, seed=12)
    inputs[1] = torch.full_like(inputs[1], -3.0)
    state = make_state(1, 1, 8)
    y_ref, s_ref = wkv7_reference(*inputs, state)
    y, s = wkv7_chunked(*(x.float() for x in inputs), state.float(), chunk_size=64)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert_close(y.double(), y_ref, 1e-5, "y")
    assert_close(s.double(), s_ref, 1e-5, "final state")


def test_state_carry_equals_one_pass() -> None:
    inputs = make_inputs(2, 53, 2, 8, seed=8)
    state = make_state(2, 2, 8)
    y_all, s_all = wkv7(*inputs, state=state, backend="chunked")
    split = 21
    y1, s1 = wkv7(*(x[:, :split] for x in inputs), state=state, backend="chunked")
    y2, s2 = wkv7(*(x[:, split:] for x in inputs), state=s1, backend="chunked")
    assert_close(torch.cat([y1, y2], dim=1), y_all, 1e-12, "y")
    assert_close(s2, s_all, 1e-12, "final state")


def test_auto_backend_on_cpu_is_chunked_and_zero_state_by_default() -> None:
    inputs = make_inputs(1, 20, 2, 8, seed=9)
    y_auto, s_auto = wkv7(*inputs)
    y, s = wkv7_chunked(*inputs, torch.zeros(1, 2, 8, 8, dtype=torch.float64))
    assert torch.equal(y_auto, y) and torch.equal(s_auto, s)


def test_runs_under_no_grad() -> None:
    inputs = make_inputs(1, 40, 1, 8, seed=10)
    state = make_state(1, 1, 8)
    with torch.no_grad():
        y, s = wkv7_chunked(*inputs, state)
    y_ref, s_ref = wkv7_reference(*inputs, state)
    assert_close(y, y_ref, 1e-10, "y")
    assert_close(s, s_ref, 1e-10, "final state")


def test_unknown_backend_names_the_choices() -> None:
    inputs = make_inputs(1, 3, 1, 4)
    with pytest.raises(ValueError, match="nope") as info:
        wkv7(*inputs, backend="nope")
    for choice in ("auto", "reference", "chunked", "fla"):
        assert choice in str(info.value)


def test_wrong_state_shape() -> None:
    inputs = make_inputs(1, 3, 2, 4)
    with pytest.raises(ValueError, match="state"):
        wkv7(*inputs, state=torch.zeros(1, 2, 4, 5, dtype=torch.float64))


def test_wrong_input_shape() -> None:
    inputs = make_inputs(1, 3, 2, 4)
    inputs[2] = inputs[2][:, :2]
    with pytest.raises(ValueError, match="input k"):
        wkv7(*inputs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_fla_on_cpu_points_to_chunked() -> None:
    inputs = [x.float() for x in make_inputs(1, 3, 1, 4)]
    with pytest.raises(RuntimeError, match="chunked"):
        wkv7(*inputs, backend="fla")

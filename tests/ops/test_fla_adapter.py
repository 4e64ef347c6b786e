"""The fla adapter's layout logic on the CPU, with fla's ``chunk_rwkv7`` replaced by a stand-in.

fla's Triton kernels run only on a GPU, but what ``ops/fla.py`` adds around them -- the state transposed
between our ``[B, H, value, key]`` and fla's key-major ``[N, H, key, value]``, the dtype casts, the decay
bound, the unavailable-reason messages -- is plain torch. The stand-in follows fla's contract (its
docstring in fla-core 0.6.0: inputs ``[B, T, H, K]``, ``initial_state`` and the final state ``[N, H, K, V]``,
output in the inputs' dtype) on top of our reference scan, so a missing or doubled transpose shows as a
wrong output or state.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

import rwkvtune.ops.fla as fla_adapter
from rwkvtune.ops import wkv7
from rwkvtune.ops.reference import wkv7_reference
from rwkvtune.ops.wkv7 import BACKENDS, Backend


class StandIn:
    """``fla.ops.rwkv7.chunk_rwkv7`` in fla's layouts, computed by the reference scan; records its calls."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
                 lower_bound=None):
        self.calls.append({"dtype": r.dtype, "state": initial_state, "scale": scale, "lower_bound": lower_bound,
                           "output_final_state": output_final_state})
        batch, _, heads, size = r.shape
        assert initial_state.shape == (batch, heads, size, size) and initial_state.is_contiguous()
        value_key = initial_state.float().transpose(-1, -2)  # fla's [N, H, K, V] -> the reference's [B, H, V, K]
        y, final = wkv7_reference(*(x.float() for x in (r, w, k, v, a, b)), value_key)
        return y.to(r.dtype), (final.transpose(-1, -2).contiguous() if output_final_state else None)


class WithoutBound(StandIn):
    """A release whose ``chunk_rwkv7`` has no ``lower_bound`` argument (fla 0.5.0 and older)."""

    def __call__(self, r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None):
        return super().__call__(r, w, k, v, a, b, scale, initial_state, output_final_state, cu_seqlens)


def install(monkeypatch, kernel) -> None:
    """Make ``from fla.ops.rwkv7 import chunk_rwkv7`` return ``kernel`` (a fake package where fla is absent)."""
    try:
        import fla.ops.rwkv7 as real
    except ImportError:
        for name in ("fla", "fla.ops", "fla.ops.rwkv7"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        monkeypatch.setattr(sys.modules["fla.ops.rwkv7"], "chunk_rwkv7", kernel, raising=False)
    else:
        monkeypatch.setattr(real, "chunk_rwkv7", kernel)


def inputs(batch=2, length=37, heads=3, size=16, seed=0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Float32 ``r, w, k, v, a, b`` ``[B, T, H, N]`` in RWKV-7's ranges and a non-symmetric initial state."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, length, heads, size)
    r, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    w = fla_adapter.LOG_DECAY_FLOOR * torch.sigmoid(torch.randn(shape, generator=gen))
    kappa = F.normalize(torch.randn(shape, generator=gen), dim=-1)
    b = kappa * torch.rand(shape, generator=gen)
    state = 0.5 * torch.randn(batch, heads, size, size, generator=gen)
    assert not torch.allclose(state, state.transpose(-1, -2))  # a transpose would show
    return [r, w, k, v, -kappa, b], state


def reference(xs: list[torch.Tensor], state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return wkv7_reference(*(x.double() for x in xs), state.double())


def test_output_and_final_state_equal_the_reference_from_a_nonzero_state(monkeypatch):
    kernel = StandIn()
    install(monkeypatch, kernel)
    xs, state = inputs()
    y, final = fla_adapter.wkv7_fla(*xs, state)
    expected_y, expected_state = reference(xs, state)
    assert y.dtype == torch.float32 and final.dtype == torch.float32 and final.shape == state.shape
    torch.testing.assert_close(y.double(), expected_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final.double(), expected_state, rtol=1e-5, atol=1e-5)
    call = kernel.calls[0]
    torch.testing.assert_close(call["state"], state.transpose(-1, -2))  # key-major on the way in
    assert call["scale"] == 1.0 and call["output_final_state"]
    assert torch.equal(state, inputs()[1])  # the caller's state is not changed


def test_the_dispatcher_casts_bf16_inputs_and_keeps_the_state_float32(monkeypatch):
    """Through ``wkv7(backend="fla")`` (its CUDA check waived): bf16 in, bf16 out, float32 state; the
    inputs reach fla in one dtype, and the result is the reference's on the rounded inputs."""
    kernel = StandIn()
    install(monkeypatch, kernel)
    monkeypatch.setitem(BACKENDS, "fla", Backend("fla", fla_adapter.wkv7_fla, lambda r: None, upcast_inputs=False))
    xs, state = inputs(seed=1)
    bf16 = [x.to(torch.bfloat16) for x in xs]
    bf16[1] = xs[1]  # a float32 decay among bf16 inputs is cast to r's dtype
    y, final = wkv7(*bf16, state=state, backend="fla")
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    assert kernel.calls[0]["dtype"] == torch.bfloat16 and kernel.calls[0]["state"].dtype == torch.float32
    expected_y, expected_state = reference([x.to(torch.bfloat16) for x in xs], state)
    torch.testing.assert_close(y.double(), expected_y, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(final.double(), expected_state, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel_class,bounded,expected", [
    (StandIn, True, fla_adapter.LOG_DECAY_FLOOR),
    (StandIn, False, None),
    (WithoutBound, True, None),  # an older release: the bound is not passed (it would be a TypeError)
])
def test_the_decay_bound_goes_only_where_it_is_taken(monkeypatch, kernel_class, bounded, expected):
    kernel = kernel_class()
    install(monkeypatch, kernel)
    xs, state = inputs(length=5)
    fla_adapter.wkv7_fla(*xs, state, bounded_decay=bounded)
    assert kernel.calls[0]["lower_bound"] == expected


def test_unavailable_reasons_name_the_fix(monkeypatch):
    cpu = torch.zeros(1)
    assert "backend='chunked'" in fla_adapter.fla_unavailable_reason(cpu)
    cuda_like = types.SimpleNamespace(is_cuda=True, dtype=torch.float64, device="cuda:0")
    assert "backend='chunked'" in fla_adapter.fla_unavailable_reason(cuda_like)
    # fla missing (or broken): the reason names the extra to install.
    monkeypatch.setitem(sys.modules, "fla.ops.rwkv7", None)  # makes the import fail, installed or not
    monkeypatch.setattr(fla_adapter, "_import_error", fla_adapter._import_error.__wrapped__)
    reason = fla_adapter.fla_unavailable_reason(types.SimpleNamespace(is_cuda=True, dtype=torch.bfloat16))
    assert reason is not None and "pip install 'rwkvtune[fla]'" in reason
    with pytest.raises(RuntimeError, match=r"backend 'fla' cannot run here: .*backend='chunked'"):
        wkv7(*inputs(length=3)[0], backend="fla")

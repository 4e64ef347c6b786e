"""CUDA paths (run where a GPU is present; skipped elsewhere): same results as the CPU reference."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from rwkvtune.model import RWKV7
from rwkvtune.ops import wkv7

pytestmark = pytest.mark.cuda


def wkv_inputs(batch=2, length=100, heads=4, size=64, seed=0, device="cuda"):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, length, heads, size)
    r, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    w = -0.6065306597126334 * torch.sigmoid(torch.randn(shape, generator=gen))
    kk = torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=-1)
    b = kk * torch.rand(shape, generator=gen)
    return [x.to(device) for x in (r, w, k, v, -kk, b)]


@pytest.mark.parametrize("backend", [
    "chunked",
    pytest.param("fla", marks=pytest.mark.skipif(importlib.util.find_spec("fla") is None,
                                                 reason="flash-linear-attention not installed")),
])
def test_backend_on_cuda_matches_reference_with_state_in_and_out(backend):
    """Values, final state, and the gradients of every input and of the initial state (training path)."""
    tol = 1e-3 if backend == "chunked" else 5e-3  # fla runs its matmuls in tf32/bf16
    results = []
    start = 0.1 * torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(5)).cuda()
    for name, dtype in ((backend, torch.float32), ("reference", torch.float64)):
        inputs = [x.to(dtype).requires_grad_() for x in wkv_inputs()]
        state = start.to(dtype).requires_grad_()
        y, final = wkv7(*inputs, state=state, backend=name)
        (y.double().sin().sum() + final.double().square().sum()).backward()
        results.append([y, final, *(x.grad for x in inputs), state.grad])
    for got, expected in zip(*results):
        scale = expected.abs().max().item() + 1e-6
        assert (got.double() - expected).abs().max().item() < tol * max(1.0, scale)


@torch.no_grad()
def test_model_on_cuda_matches_cpu():
    config = tiny_config()
    cpu = RWKV7(config)
    cpu.load_state_dict(random_state_dict(config))
    gpu = RWKV7(config, wkv_backend="chunked").cuda()
    gpu.load_state_dict(cpu.state_dict())
    ids = torch.randint(0, config.vocab_size, (2, 50))
    expected = cpu(ids).logits
    got = gpu(ids.cuda()).logits.cpu()
    assert (got - expected).abs().max().item() < 1e-3

"""RWKV7 forward modes agree with each other; dtypes, grad checkpointing and the init behave."""

from __future__ import annotations

import math

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from rwkvtune.config import RWKV7Config
from rwkvtune.model import RWKV7, RWKVState, new_model


def make_model(config=None, seed=0, **kwargs) -> RWKV7:
    config = config or tiny_config()
    model = RWKV7(config, **kwargs)
    model.load_state_dict(random_state_dict(config, seed=seed))
    return model.eval()


@pytest.fixture(scope="module")
def model64() -> RWKV7:
    model = make_model()
    return model.double()


def tokens(batch: int, length: int, vocab: int = 1000, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_parallel_equals_single_steps(model64):
    ids = tokens(2, 19)
    out = model64(ids, return_state=True)
    state, rows = None, []
    for t in range(ids.shape[1]):
        logits, state = model64.step(ids[:, t], state)
        rows.append(logits)
    assert torch.allclose(torch.stack(rows, dim=1), out.logits, atol=1e-10, rtol=0)
    for a, b in zip(state._parts(), out.state._parts()):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("split", [1, 7, 16, 30])
def test_state_carry_equals_one_pass(model64, split):
    ids = tokens(3, 41)
    whole = model64(ids, return_state=True)
    first = model64(ids[:, :split], return_state=True)
    second = model64(ids[:, split:], state=first.state, return_state=True)
    assert torch.allclose(torch.cat([first.logits, second.logits], dim=1), whole.logits, atol=1e-10, rtol=0)
    for a, b in zip(second.state._parts(), whole.state._parts()):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@torch.no_grad()
def test_chunked_and_reference_backends_agree(model64):
    ids = tokens(2, 37)
    model64.set_wkv_backend("reference")
    expected = model64(ids).logits
    model64.set_wkv_backend("chunked")
    got = model64(ids).logits
    model64.set_wkv_backend("auto")
    assert torch.allclose(got, expected, atol=1e-10, rtol=0)


def test_grad_checkpointing_gives_the_same_gradients():
    ids = tokens(2, 20)
    grads = []
    for grad_cp in (False, True):
        model = make_model(grad_cp=grad_cp).train()
        state = model.zero_state(2)
        state = RWKVState(state.att_shift, state.wkv.requires_grad_(), state.ffn_shift)
        out = model(ids, state=state, return_state=True)
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), ids.flatten()) + out.state.wkv.square().mean()
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()} | {"state": state.wkv.grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5), name


def test_layer0_value_lora_is_saved_but_not_trained():
    model = make_model()
    names = dict(model.named_parameters())
    assert "blocks.0.att.v0" not in names and "blocks.1.att.v0" in names
    assert {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"} <= set(model.state_dict())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_run_forward_and_backward(dtype):
    reference = make_model()
    model = make_model().to(dtype).train()
    ids = tokens(2, 21)
    out = model(ids, return_state=True)
    assert out.logits.dtype == dtype and out.state.wkv.dtype == torch.float32
    out.logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        expected = reference(ids).logits
    # bf16 keeps 8 bits of mantissa: logits of this random model (|logit| <~ 5) stay within ~0.15.
    err = (out.logits.float() - expected).abs().max().item()
    assert err < (0.3 if dtype == torch.bfloat16 else 0.05), err


def test_bad_inputs_are_named():
    model = make_model()
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="state holds 2 sequences"):
        model(tokens(3, 4), state=model.zero_state(2))


@torch.no_grad()
def test_new_model_blocks_start_as_identity_and_loss_is_near_ln_v():
    config = RWKV7Config(n_layer=2, n_embd=128, vocab_size=256)
    torch.manual_seed(0)
    model = new_model(config).eval()
    ids = tokens(4, 64, vocab=256)
    logits = model(ids).logits
    x = model.blocks[0].ln0(model.emb(ids))
    assert torch.equal(logits, model.head(model.ln_out(x)))
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()).item()
    assert abs(loss - (math.log(256) + 0.125)) < 0.1


def test_single_layer_init_does_not_divide_by_zero():
    model = new_model(RWKV7Config(n_layer=1, n_embd=64, vocab_size=100))
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())


@torch.no_grad()
def test_other_head_sizes_work_in_torch_paths():
    config = tiny_config(head_size=32)  # 4 heads of 32
    model = make_model(config).double()
    ids = tokens(2, 21)
    whole = model(ids, return_state=True)
    assert whole.state.wkv.shape == (2, 2, 4, 32, 32)
    model.set_wkv_backend("reference")
    assert torch.allclose(model(ids).logits, whole.logits, atol=1e-10, rtol=0)

"""Optimizer groups (RWKV-LM), LR schedule, and the chunked cross-entropy."""

import math

import pytest
import torch
import torch.nn.functional as F

from checkpoints import random_state_dict, tiny_config
from rwkvtune.config.train import SFTConfig
from rwkvtune.engine import build_optimizer, lr_at_step, param_groups
from rwkvtune.model.loss import chunked_cross_entropy
from rwkvtune.model import RWKV7


@pytest.fixture(scope="module")
def model():
    m = RWKV7(tiny_config())
    m.load_state_dict(random_state_dict(tiny_config()))
    return m


def test_groups_follow_rwkv_lm(model):
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, weight_decay=0.1)}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert decay == {n for n, p in model.named_parameters()
                     if n.endswith((".receptance.weight", ".key.weight", ".value.weight", ".output.weight"))
                     or n in ("emb.weight", "head.weight")}
    assert {names[id(p)] for p in groups["w0"]["params"]} == {"blocks.0.att.w0", "blocks.1.att.w0"}
    assert groups["w0"]["lr"] == 2e-3 and groups["w0"]["weight_decay"] == 0.0
    assert "blocks.1.att.w1" in {names[id(p)] for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_frozen_model_is_an_error(model):
    frozen = RWKV7(tiny_config(n_layer=1))
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen, SFTConfig())


def test_schedule_warmup_and_ends():
    kw = dict(total_steps=100, lr_init=1e-3, lr_final=1e-5, warmup_steps=10)
    assert lr_at_step(0, **kw) == pytest.approx(1e-4)
    assert lr_at_step(9, **kw) == pytest.approx(1e-3)
    assert lr_at_step(10, **kw) == pytest.approx(1e-3)
    assert lr_at_step(99, **kw) == pytest.approx(1e-5)
    mid = lr_at_step(10 + 89 // 2, **kw)
    assert mid == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (44 / 89))))
    assert lr_at_step(50, **kw, schedule="constant") == 1e-3
    assert lr_at_step(99, **kw, schedule="linear") == pytest.approx(1e-5)


def test_chunked_loss_equals_full_logits_loss_and_gradients(model):
    ids = torch.randint(0, 1000, (3, 17), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :5] = -100   # a prompt
    labels[2, 12:] = -100  # padding
    grads = []
    for chunked in (False, True):
        model.zero_grad()
        hidden, _ = model.forward_hidden(ids)
        if chunked:
            loss_sum, n = chunked_cross_entropy(hidden, model.head, labels, chunk_size=7)
            loss = loss_sum / n
        else:
            logits = model.head(hidden)[:, :-1]
            loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert n.item() == 3 * 16 - 4 - 5


def test_forward_with_labels_returns_the_same_loss(model):
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(3))
    out = model(ids, labels=ids)
    logits = model(ids).logits[:, :-1]
    expected = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    assert out.logits is None and out.n_targets.item() == 16
    assert torch.allclose(out.loss, expected, atol=1e-6)


class WrappedHead(torch.nn.Linear):
    """A head that is not a plain ``nn.Linear`` (as a LoRA-wrapped one): takes the module path."""


def loss_and_grads(head, hidden, labels, **kwargs):
    hidden = hidden.detach().requires_grad_(True)
    head.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kwargs.pop("bf16", False)):
        loss_sum, n = chunked_cross_entropy(hidden, head, labels, chunk_size=kwargs.pop("chunk_size", 5))
    loss_sum.backward()
    return loss_sum.detach(), hidden.grad, head.weight.grad, n


def heads(vocab: int = 300, width: int = 32):
    plain = torch.nn.Linear(width, vocab, bias=False)
    wrapped = WrappedHead(width, vocab, bias=False)
    wrapped.weight.data.copy_(plain.weight.data)
    return plain, wrapped


def test_fused_loss_equals_the_module_path_in_fp32_and_bf16():
    gen = torch.Generator().manual_seed(1)
    plain, wrapped = heads()
    hidden = torch.randn(2, 13, 32, generator=gen)
    labels = torch.randint(0, 300, (2, 13), generator=gen)
    labels[1, 8:] = -100
    for bf16, tol in ((False, 1e-6), (True, 2e-2)):
        fused, reference = (loss_and_grads(head, hidden, labels, bf16=bf16) for head in (plain, wrapped))
        assert fused[3] == reference[3] == 2 * 12 - 5
        for ours, theirs in zip(fused[:3], reference[:3]):
            torch.testing.assert_close(ours, theirs, atol=tol * max(1.0, theirs.abs().max().item()), rtol=0)
    assert fused[2].dtype == torch.float32  # the weight's own dtype, not the autocast dtype


def test_fused_loss_forms_only_the_gradients_asked_for():
    gen = torch.Generator().manual_seed(2)
    plain, _ = heads()
    hidden = torch.randn(1, 9, 32, generator=gen, requires_grad=True)
    labels = torch.randint(0, 300, (1, 9), generator=gen)
    plain.weight.requires_grad_(False)  # a frozen head (adapters elsewhere)
    loss_sum, _ = chunked_cross_entropy(hidden, plain, labels, chunk_size=4)
    loss_sum.backward()
    assert plain.weight.grad is None and hidden.grad is not None
    with torch.no_grad():
        again, _ = chunked_cross_entropy(hidden, plain, labels, chunk_size=4)
    assert again.grad_fn is None and torch.equal(again, loss_sum.detach())


def test_fused_loss_backward_twice_with_retained_graph():
    gen = torch.Generator().manual_seed(3)
    plain, _ = heads()
    hidden = torch.randn(1, 7, 32, generator=gen, requires_grad=True)
    labels = torch.randint(0, 300, (1, 7), generator=gen)
    loss_sum, _ = chunked_cross_entropy(hidden, plain, labels, chunk_size=4)
    (2 * loss_sum).backward(retain_graph=True)
    first = plain.weight.grad.clone()
    plain.weight.grad = None
    (2 * loss_sum).backward()
    torch.testing.assert_close(plain.weight.grad, first, atol=0, rtol=0)

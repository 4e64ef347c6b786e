"""Frozen matrices held in the compute dtype: same numbers as autocast over float32, half the memory."""

from __future__ import annotations

import torch

from checkpoints import random_state_dict, tiny_config
from rwkvtune.engine.master_weights import hold_for_training
from rwkvtune.model import RWKV7
from rwkvtune.peft import LoraConfig, get_peft_model

CONFIG = tiny_config(n_layer=2, n_embd=64, vocab_size=1000, dim_ffn=256, dim_decay_lora=32, dim_iclr_lora=32,
                     dim_value_lora=32, dim_gate_lora=32)


def lora_model() -> torch.nn.Module:
    base = RWKV7(CONFIG)
    # bf16-representable weights, as in every official checkpoint
    base.load_state_dict(random_state_dict(CONFIG, seed=0, dtype=torch.bfloat16))
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, train_parts=["ln"], init_lora_weights="gaussian"),
                           verbose=False)
    return model


def loss_and_grads(model) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_frozen_matrices_in_bf16_give_the_same_loss_and_gradients():
    reference = lora_model().float()  # every weight float32: autocast casts the matrices in each product
    held = lora_model()
    restore = hold_for_training(held, torch.bfloat16)
    dtypes = {n: p.dtype for n, p in held.named_parameters()}
    assert dtypes["base_model.model.blocks.0.att.key.base_layer.weight"] == torch.bfloat16
    assert dtypes["base_model.model.blocks.0.att.w1"] == torch.bfloat16 and dtypes["base_model.model.head.weight"] == torch.bfloat16
    for name in ("blocks.0.att.key.lora_A.default.weight", "blocks.0.ln1.weight", "emb.weight", "blocks.0.att.x_r",
                 "blocks.1.att.r_k"):
        assert dtypes["base_model.model." + name] == torch.float32, name
    want_loss, want_grads = loss_and_grads(reference)
    got_loss, got_grads = loss_and_grads(held)
    assert torch.equal(got_loss, want_loss)
    assert want_grads.keys() == got_grads.keys()
    for name in want_grads:
        assert torch.equal(got_grads[name], want_grads[name]), name
    restore()
    assert {n: p.dtype for n, p in held.named_parameters()} == {n: p.dtype for n, p in lora_model().named_parameters()}


def test_full_training_keeps_float32_masters_of_everything():
    model = RWKV7(CONFIG)
    model.load_state_dict(random_state_dict(CONFIG, seed=0, dtype=torch.bfloat16))
    model.to(torch.bfloat16)
    restore = hold_for_training(model, torch.bfloat16)
    assert {t.dtype for t in [*model.parameters(), *model.buffers()]} == {torch.float32}
    restore()
    assert {t.dtype for t in [*model.parameters(), *model.buffers()]} == {torch.bfloat16}


def test_a_float32_base_that_bf16_would_round_stays_float32():
    base = RWKV7(CONFIG)
    base.load_state_dict(random_state_dict(CONFIG, seed=0))  # float64 draws: not bf16-representable
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, LoraConfig(r=4), verbose=False)
    restore = hold_for_training(model, torch.bfloat16, restore_trained=False)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    restore()
    after = {k.replace(".base_layer", ""): v for k, v in model.get_base_model().state_dict().items() if "lora_" not in k}
    assert all(torch.equal(after[k], before[k]) for k in before)

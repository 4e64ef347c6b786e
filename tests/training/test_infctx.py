"""Infinite-context training through the trainers: same updates as whole rows (untruncated), same losses
(truncated), LoRA and state tuning, resume."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from rwkvtune.model import RWKV7
from rwkvtune.peft import LoraConfig, StateTuningConfig, load_adapter
from rwkvtune.training import PretrainConfig, PretrainTrainer, SFTConfig, SFTTrainer

CONFIG = tiny_config(n_layer=2, n_embd=64, vocab_size=500, dim_ffn=256, dim_decay_lora=32, dim_iclr_lora=32,
                     dim_value_lora=32, dim_gate_lora=32)
FAST = dict(precision="fp32", grad_cp=0, warmup_steps=0, logging_steps=1, lr_init=1e-3, lr_final=1e-3, ctx_len=32,
            micro_bsz=2, epoch_count=1, accumulate_grad_batches=2, epoch_save=0)
INFCTX = dict(train_type="infctx", chunk_ctx=8)


def model() -> RWKV7:
    m = RWKV7(CONFIG)
    m.load_state_dict(random_state_dict(CONFIG, seed=2))
    return m


def rows(n: int = 8) -> list[dict]:
    gen = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 500, (int(torch.randint(5, 31, (1,), generator=gen)),), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    return out


def losses(path) -> list[float]:
    return [json.loads(line)["loss"] for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_untruncated_infctx_trains_what_whole_rows_train(tmp_path):
    normal, chunked = model(), model()
    SFTTrainer(normal, SFTConfig(output_dir=str(tmp_path / "n"), **FAST), train_dataset=rows()).train()
    SFTTrainer(chunked, SFTConfig(output_dir=str(tmp_path / "c"), truncated_bptt=False, **INFCTX, **FAST),
               train_dataset=rows()).train()
    assert losses(tmp_path / "c") == pytest.approx(losses(tmp_path / "n"), abs=1e-5)
    want, got = normal.state_dict(), chunked.state_dict()
    assert all(torch.allclose(got[k], want[k], atol=1e-5, rtol=0) for k in want)
    assert not torch.equal(want["blocks.0.att.w0"], model().state_dict()["blocks.0.att.w0"])  # it did train


def test_truncated_infctx_has_the_exact_first_loss_and_pretraining_works(tmp_path):
    SFTTrainer(model(), SFTConfig(output_dir=str(tmp_path / "n"), **FAST), train_dataset=rows()).train()
    SFTTrainer(model(), SFTConfig(output_dir=str(tmp_path / "t"), **INFCTX, **FAST), train_dataset=rows()).train()
    assert losses(tmp_path / "t")[0] == pytest.approx(losses(tmp_path / "n")[0], abs=1e-5)
    documents = [{"input_ids": row["input_ids"], "labels": row["input_ids"]} for row in rows()]
    result = PretrainTrainer(model(), PretrainConfig(output_dir=str(tmp_path / "p"), **INFCTX,
                                                     **{**FAST, "accumulate_grad_batches": 1}),
                             train_dataset=documents).train()
    assert result["step"] >= 2 and torch.isfinite(torch.tensor(result["loss"]))


def test_infctx_with_lora_trains_only_the_adapter_and_merges_exactly(tmp_path):
    base = model()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    trainer = SFTTrainer(base, SFTConfig(output_dir=str(tmp_path), **INFCTX, **{**FAST, "lr_init": 1e-2,
                                                                                "lr_final": 1e-2}),
                         train_dataset=rows(), peft_config=LoraConfig(r=4, lora_alpha=8))
    trainer.train()
    adapted = trainer.model.eval()
    with adapted.disable_adapter():
        plain = {k.replace(".base_layer", ""): v for k, v in adapted.get_base_model().state_dict().items()
                 if "lora_" not in k}
        assert all(torch.equal(plain[k], before[k]) for k in before)
    ids = torch.tensor([rows(1)[0]["input_ids"]])
    with torch.no_grad():
        trained = adapted(ids).logits
        merged = load_adapter(model(), tmp_path / "final").merge_and_unload()(ids).logits
    assert (merged - trained).abs().max() < 1e-5 and (trained - model()(ids).logits).abs().max() > 1e-3


def test_infctx_resume_continues_exactly(tmp_path):
    common = dict(**INFCTX, **{**FAST, "epoch_count": 2, "accumulate_grad_batches": 1}, save_every_n_batches=3,
                  save_total_limit=0)
    SFTTrainer(model(), SFTConfig(output_dir=str(tmp_path / "a"), **common), train_dataset=rows()).train()
    b = tmp_path / "b"
    SFTTrainer(model(), SFTConfig(output_dir=str(b), **common), train_dataset=rows()).train()
    for name in ("batch6", "final"):
        shutil.rmtree(b / name)
    (b / "metrics.jsonl").write_text("")
    SFTTrainer(model(), SFTConfig(output_dir=str(b), resume_from_checkpoint="latest", **common),
               train_dataset=rows()).train()
    assert losses(b) == pytest.approx(losses(tmp_path / "a")[3:], abs=1e-6)


def test_infctx_state_tuning_trains_the_start_state(tmp_path):
    trainer = SFTTrainer(model(), SFTConfig(output_dir=str(tmp_path), **INFCTX, **FAST), train_dataset=rows(),
                         peft_config=StateTuningConfig())
    trainer.train()
    assert trainer.model.time_state.abs().max() > 0 and (tmp_path / "final" / "state_tuning.safetensors").is_file()


def test_bf16_infctx_matches_bf16_normal_training_on_the_first_step(tmp_path):
    bf16 = {**FAST, "precision": "bf16", "grad_cp": 1}
    SFTTrainer(model(), SFTConfig(output_dir=str(tmp_path / "n"), **bf16), train_dataset=rows()).train()
    SFTTrainer(model(), SFTConfig(output_dir=str(tmp_path / "t"), **INFCTX, **bf16), train_dataset=rows()).train()
    normal, chunked = losses(tmp_path / "n"), losses(tmp_path / "t")
    assert chunked[0] == pytest.approx(normal[0], abs=2e-2) and all(map(math.isfinite, chunked))

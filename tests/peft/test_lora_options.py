"""peft options through rwkvtune.peft (DoRA, rsLoRA, PiSSA, bias), target and train_parts selection, the
trainer's ``peft_config=`` entry and LoRA resume."""

from __future__ import annotations

import json
import shutil

import peft
import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from rwkvtune.model import RWKV7
from rwkvtune.peft import AUTO_TARGETS, LoraConfig, RWKVPeftModel, get_peft_model, load_adapter
from rwkvtune.peft.targets import train_part_parameters
from rwkvtune.training import SFTConfig, SFTTrainer

CONFIG = tiny_config(n_layer=2, n_embd=64, vocab_size=1000, dim_ffn=256, dim_decay_lora=32, dim_iclr_lora=32,
                     dim_value_lora=32, dim_gate_lora=32)
IDS = torch.tensor([[3, 99, 512, 7, 7, 80, 999, 1, 64]])
FAST = dict(precision="fp32", grad_cp=0, warmup_steps=0, logging_steps=1, lr_init=1e-2, lr_final=1e-3)


def base_model(seed: int = 0) -> RWKV7:
    model = RWKV7(CONFIG)
    model.load_state_dict(random_state_dict(CONFIG, seed=seed))
    return model


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Stand-in for training: move every trainable tensor by a random step."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(IDS).logits[0]


@pytest.mark.parametrize("options", [dict(use_dora=True), dict(use_rslora=True), dict(init_lora_weights="pissa"),
                                     dict(bias="all"), dict(target_modules=["att", "head"])],
                         ids=["dora", "rslora", "pissa", "bias", "att+head"])
def test_peft_options_save_load_and_merge_exactly(options, tmp_path):
    model = get_peft_model(base_model(), LoraConfig(r=4, lora_alpha=8, train_parts=["ln"], **options), verbose=False)
    perturb(model)
    trained = logits(model)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    if "init_lora_weights" in options:  # saved as the plain LoRA of twice the rank, valid on the original base
        assert saved["r"] == 8 and saved["init_lora_weights"] is True
    reloaded = load_adapter(base_model(), tmp_path)
    assert (logits(reloaded) - trained).abs().max() < 1e-5
    if "init_lora_weights" not in options:  # disabled: the base exactly, trained biases and train parts included
        for adapted in (model, reloaded):
            with adapted.disable_adapter():
                assert torch.equal(logits(adapted), logits(base_model()))
    merged = reloaded.merge_and_unload()
    assert type(merged) is RWKV7 and (logits(merged) - trained).abs().max() < 1e-5
    assert (logits(model.merge_and_unload()) - trained).abs().max() < 1e-5


def test_pissa_on_a_bf16_base_saves_an_exact_plain_lora(tmp_path):
    model = get_peft_model(base_model().to(torch.bfloat16), LoraConfig(r=4, init_lora_weights="pissa"), verbose=False)
    perturb(model)
    trained = logits(model)
    model.save_pretrained(tmp_path)
    reloaded = load_adapter(base_model().to(torch.bfloat16), tmp_path)
    assert (logits(reloaded.merge_and_unload(dtype=torch.float32)) - trained).abs().max() < 1e-4
    assert model.merge_and_unload().dtype == torch.bfloat16  # the base's dtype when it was wrapped


def test_disabling_a_base_rewriting_init_is_refused():
    model = get_peft_model(base_model(), LoraConfig(r=4, init_lora_weights="pissa"), verbose=False)
    with pytest.raises(ValueError, match="moved part of the base weights into the adapter"):
        with model.disable_adapter():
            pass


def test_auto_targets_and_train_parts_select_the_intended_tensors():
    model = get_peft_model(base_model(), LoraConfig(r=4, train_parts="emb, head"), verbose=False)
    adapted = sorted(name.removeprefix("base_model.model.").removesuffix(".base_layer")
                     for name, module in model.named_modules() if name.endswith("base_layer"))
    assert adapted == sorted(f"blocks.{i}.{t}" for i in range(2) for t in AUTO_TARGETS)
    trainable = {name.removeprefix("base_model.model.") for name, p in model.named_parameters()
                 if p.requires_grad and "lora_" not in name}
    assert trainable == {"emb.weight", "head.weight"}
    names = {name for name, _ in train_part_parameters(base_model(), ["time"])}
    assert "blocks.0.att.v0" not in names and "blocks.1.att.v0" in names  # layer 0's are unused buffers
    assert {"blocks.0.att.x_r", "blocks.1.att.r_k", "blocks.0.ffn.x_k", "blocks.1.att.g2"} <= names
    assert not any(name.endswith(".weight") for name in names)
    with pytest.raises(ValueError, match="'head' is both a LoRA target and a train_part"):
        LoraConfig(target_modules=["head"], train_parts=["head"])


def test_a_plain_peft_config_and_an_already_wrapped_model(tmp_path):
    model = get_peft_model(base_model(), peft.LoraConfig(r=2, target_modules=["att.key"]), verbose=False)
    assert isinstance(model, RWKVPeftModel)
    with pytest.raises(ValueError, match="already has an adapter"):
        get_peft_model(model, LoraConfig())
    with pytest.raises(ValueError, match="pass either a wrapped model or peft_config"):
        SFTTrainer(model, SFTConfig(output_dir=str(tmp_path)), train_dataset=[{"input_ids": [1, 2]}],
                   peft_config=LoraConfig())
    with pytest.raises(TypeError, match="unsupported peft config IA3Config"):
        get_peft_model(base_model(), peft.IA3Config(target_modules=["key"], feedforward_modules=[]))


def rows(n: int = 8) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [{"input_ids": (ids := torch.randint(1, 1000, (12,), generator=gen).tolist()), "labels": ids} for _ in range(n)]


def test_peft_config_entry_and_exact_resume(tmp_path):
    common = dict(ctx_len=16, micro_bsz=2, epoch_count=2, save_every_n_batches=3, save_total_limit=0, epoch_save=0,
                  **FAST)
    lora = LoraConfig(r=4, lora_alpha=8, train_parts=["ln"])
    torch.manual_seed(0)  # the same fresh adapter (lora_A is random) in both runs
    SFTTrainer(base_model(), SFTConfig(output_dir=str(tmp_path / "a"), **common), train_dataset=rows(),
               peft_config=lora).train()
    b = tmp_path / "b"
    torch.manual_seed(0)
    SFTTrainer(base_model(), SFTConfig(output_dir=str(b), **common), train_dataset=rows(), peft_config=lora).train()
    for name in ("batch6", "final"):
        shutil.rmtree(b / name)
    torch.manual_seed(123)  # a different fresh adapter: resume must overwrite it
    SFTTrainer(base_model(), SFTConfig(output_dir=str(b), resume_from_checkpoint="latest", **common),
               train_dataset=rows(), peft_config=LoraConfig(r=4, lora_alpha=8, train_parts=["ln"],
                                                            init_lora_weights="gaussian")).train()
    first = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()][-5:]
    assert [m["step"] for m in resumed] == [4, 5, 6, 7, 8]
    for m in resumed:
        assert m["loss"] == pytest.approx(first[m["step"] - 1]["loss"], abs=1e-6)
    a_model, b_model = (load_adapter(base_model(), d / "final") for d in (tmp_path / "a", b))
    assert (logits(a_model) - logits(b_model)).abs().max() < 1e-6
    with pytest.raises(ValueError, match=r"cannot resume from .*batch3: it was trained with another adapter or base:"
                                         r"\n  lora_alpha: 8 in the checkpoint vs 128 now"):
        SFTTrainer(base_model(), SFTConfig(output_dir=str(b), resume_from_checkpoint=str(b / "batch3"), **common),
                   train_dataset=rows(), peft_config=LoraConfig(r=4, target_modules=["att.key"])).train()


def test_lora_under_deepspeed_is_refused_up_front(tmp_path):
    pytest.importorskip("deepspeed")
    with pytest.raises(ValueError, match="do not run under strategy='deepspeed_stage_2' yet"):
        SFTTrainer(base_model(), SFTConfig(output_dir=str(tmp_path), strategy="deepspeed_stage_2", **FAST),
                   train_dataset=rows(), peft_config=LoraConfig(r=2))


def test_seed_snippet_as_written_trains_in_bf16_and_restores_dtypes(tmp_path):
    model = base_model().to(torch.bfloat16)  # AutoModel.from_pretrained of an official (bf16) checkpoint
    lora_config = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.0)
    model = get_peft_model(model, lora_config)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    config = SFTConfig(ctx_len=16, micro_bsz=4, epoch_count=3, output_dir=str(tmp_path))  # precision="bf16", grad_cp=1
    trainer = SFTTrainer(model=model, args=config, train_dataset=rows())
    result = trainer.train()
    assert result["step"] == 6 and torch.isfinite(torch.tensor(result["loss"]))
    assert {name: p.dtype for name, p in model.named_parameters()} == dtypes  # lora_* float32, base bf16
    reloaded = load_adapter(base_model().to(torch.bfloat16), tmp_path / "final")
    assert torch.equal(logits(reloaded), logits(model))

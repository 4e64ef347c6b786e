"""The seed's SFT + LoRA path end to end: train (with train_parts), checkpoint, merge with the CLI, load the
merged model here and in the ``rwkv`` runtime; and every bad input the merge can meet."""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import save_file

from checkpoints import random_state_dict, tiny_config
from rwkv_oracle import load_reference, reference_sequence
from rwkvtune import AutoModel, AutoTokenizer
from rwkvtune.cli.merge_lora import main as merge_main
from rwkvtune.hub import load_weights
from rwkvtune.peft import LoraConfig, get_peft_model, load_adapter
from rwkvtune.tokenizer import WorldTokenizer
from rwkvtune.training import SFTConfig, SFTTrainer

TINY = dict(n_layer=2, n_embd=64, dim_ffn=256, dim_decay_lora=32, dim_iclr_lora=32, dim_value_lora=32,
            dim_gate_lora=32)
PROMPT = "User: say 3\n\nAssistant:"


def make_hub(path: Path, seed: int, **overrides) -> Path:
    config = tiny_config(vocab_size=65536, **{**TINY, **overrides})
    model = AutoModel.from_config(config, ctx_len=64)
    model.load_state_dict(random_state_dict(config, seed=seed))
    model.save_pretrained(path, tokenizer=WorldTokenizer.default())
    return path


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*"))
            if p.is_file()}


def logits_of(model, ids: list[int]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The seed snippet (plus train_parts) on a tiny hub, at a high learning rate, fp32, grad_cp on."""
    root = tmp_path_factory.mktemp("lora")
    hub = make_hub(root / "base", seed=1)
    before = tree_digest(hub)
    tokenizer = AutoTokenizer.from_pretrained(hub)

    def prepare_data(example):
        prompt_ids = tokenizer.encode(f"User: {example['instruction']}\n\nAssistant: ")
        completion_ids = tokenizer.encode(example["output"])
        return {"input_ids": prompt_ids + completion_ids, "labels": [-100] * len(prompt_ids) + completion_ids}

    dataset = Dataset.from_list([{"instruction": f"say {i}", "output": f"{i}\n\n"} for i in range(8)]).map(prepare_data)

    # --- the seed's "SFT + LoRA" snippet, with train_parts and test-sized settings ---
    model = AutoModel.from_pretrained(str(hub))
    lora_config = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.0, train_parts=["ln", "time"])
    model = get_peft_model(model, lora_config)
    config = SFTConfig(ctx_len=64, micro_bsz=4, epoch_count=1, lr_init=1e-2, lr_final=1e-2, warmup_steps=0,
                       precision="fp32", grad_cp=1, output_dir=str(root / "output_sft"))
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset)
    result = trainer.train()
    return dict(root=root, hub=hub, before=before, model=model, result=result, out=root / "output_sft",
                ids=tokenizer.encode(PROMPT))


def test_lora_run_writes_adapter_checkpoints_not_the_base(run):
    out = run["out"]
    assert run["result"]["step"] == 2 and math.isfinite(run["result"]["loss"])
    for name in ("epoch1", "final"):
        files = {p.name for p in (out / name).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "train_parts.safetensors",
                "rwkvtune_adapter.json"} <= files, files
        assert "model.pth" not in files
    assert {"state.pt", "trainer_state.json", "train_config.json"} <= {p.name for p in (out / "epoch1").iterdir()}
    base_size = (run["hub"] / "model.pth").stat().st_size
    # the adapter (r=64 on C=64 is full rank here) plus its Adam moments, against a 65536-token embedding and head
    assert sum(p.stat().st_size for p in (out / "epoch1").iterdir()) < base_size / 4
    state = torch.load(out / "epoch1" / "state.pt", weights_only=True)
    assert state["trainable_only"] and all("lora_" in k or "base_layer" not in k for k in state["model"])
    assert not any(k.endswith(("emb.weight", "head.weight")) for k in state["model"])


def test_merge_cli_gives_the_trained_model_here_and_in_the_rwkv_runtime(run):
    merged_dir = run["root"] / "merged"
    assert merge_main(["-b", str(run["hub"]), "-l", str(run["out"] / "epoch1"), "-o", str(merged_dir),
                       "--precision", "fp32"]) == 0
    assert {"config.json", "model.pth", "vocab.txt", "tokenizer_config.json", "generation_config.json",
            "merge_info.json"} <= {p.name for p in merged_dir.iterdir()}
    assert (merged_dir / "vocab.txt").read_bytes() == (run["hub"] / "vocab.txt").read_bytes()
    trained = logits_of(run["model"], run["ids"])
    merged = AutoModel.from_pretrained(merged_dir)
    assert merged.dtype == torch.float32
    assert (logits_of(merged, run["ids"]) - trained).abs().max().item() <= 1e-5
    expected, _ = reference_sequence(load_reference(merged_dir / "model.pth"), run["ids"])
    assert (expected - trained).abs().max().item() < 1e-4
    assert tree_digest(run["hub"]) == run["before"]  # the base directory is untouched


def test_only_the_intended_tensors_change(run):
    base = load_weights(run["hub"] / "model.pth")
    merged_dir = run["root"] / "merged-only"
    assert merge_main(["-b", str(run["hub"]), "-l", str(run["out"] / "final"), "-o", str(merged_dir),
                       "--precision", "fp32", "--save-format", "safetensors"]) == 0
    merged = load_weights(merged_dir / "model.safetensors")
    changed = {key for key in base if not torch.equal(base[key], merged[key])}
    projections = {f"blocks.{i}.{m}.weight" for i in range(2) for m in
                   ("att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value")}
    norms = {key for key in base if ".ln" in key or key.startswith("ln_out")}
    time = {f"blocks.{i}.att.{n}" for i in range(2) for n in
            ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "w1", "w2", "a0", "a1", "a2", "g1", "g2", "k_k", "k_a",
             "r_k")} | {"blocks.1.att.v0", "blocks.1.att.v1", "blocks.1.att.v2"} | {f"blocks.{i}.ffn.x_k" for i in range(2)}
    assert changed == projections | norms | time
    assert {"emb.weight", "head.weight", "blocks.0.att.v0"}.isdisjoint(changed)


def test_adapter_disabled_is_the_base_and_reloaded_adapter_is_the_trained_model(run):
    model = run["model"]
    base = AutoModel.from_pretrained(run["hub"])
    with model.disable_adapter():
        assert torch.equal(logits_of(model, run["ids"]), logits_of(base, run["ids"]))
    trained = logits_of(model, run["ids"])
    assert not torch.equal(trained, logits_of(base, run["ids"]))
    for name in ("final", "epoch1"):
        reloaded = load_adapter(AutoModel.from_pretrained(run["hub"]), run["out"] / name)
        assert torch.equal(logits_of(reloaded, run["ids"]), trained), name
    merged = load_adapter(AutoModel.from_pretrained(run["hub"]), run["out"] / "final").merge_and_unload()
    assert (logits_of(merged, run["ids"]) - trained).abs().max().item() <= 1e-5


def test_adapter_for_another_base_shape_is_refused_before_writing(run, capsys):
    other = make_hub(run["root"] / "wider", seed=2, n_embd=128)
    out = run["root"] / "refused"
    assert merge_main(["-b", str(other), "-l", str(run["out"] / "final"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "trained on a L2-C64-V65536 base" in err and "n_embd: 64 (trained on) vs 128 (this base)" in err
    assert not out.exists() and not list(run["root"].glob(".refused*"))


def test_missing_adapter_file_is_named(run, capsys):
    broken = run["root"] / "broken"
    shutil.copytree(run["out"] / "final", broken)
    (broken / "adapter_model.safetensors").unlink()
    out = run["root"] / "never"
    assert merge_main(["-b", str(run["hub"]), "-l", str(broken), "-o", str(out)]) == 2
    assert "adapter_model.safetensors missing" in capsys.readouterr().err and not out.exists()
    (broken / "adapter_model.safetensors").write_bytes((run["out"] / "final" / "adapter_model.safetensors").read_bytes())
    (broken / "train_parts.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="train_parts.safetensors is missing"):
        load_adapter(AutoModel.from_pretrained(run["hub"]), broken)
    save_file({"blocks.0.ln1.weight": torch.ones(64)}, str(broken / "train_parts.safetensors"))
    base = AutoModel.from_pretrained(run["hub"])
    with pytest.raises(ValueError, match="does not hold the train parts ln, time of this base"):
        load_adapter(base, broken)
    assert type(base.blocks[0].att.key) is torch.nn.Linear  # refused before any adapter layer went in
    assert merge_main(["-b", str(run["hub"]), "-l", str(run["root"] / "nowhere"), "-o", str(out)]) == 2
    assert "LoRA directory not found" in capsys.readouterr().err


def test_existing_output_needs_overwrite(run, capsys):
    out = run["root"] / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["-b", str(run["hub"]), "-l", str(run["out"] / "final"), "-o", str(out)]
    assert merge_main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert merge_main([*args, "--overwrite"]) == 0
    merged = AutoModel.from_pretrained(out)
    assert merged.dtype == torch.bfloat16 and not (out / "keep.txt").exists()  # --precision defaults to bf16
    for target in (run["hub"], run["out"], run["out"] / "final"):  # never over what the merge reads
        assert merge_main(["-b", str(run["hub"]), "-l", str(run["out"] / "final"), "-o", str(target),
                           "--overwrite"]) == 2
        assert "which the merge reads" in capsys.readouterr().err
    assert (run["out"] / "epoch1").is_dir() and (run["out"] / "final" / "adapter_config.json").is_file()


def test_same_shape_other_weights_warns_naming_both(run):
    other = make_hub(run["root"] / "other-weights", seed=7)
    with pytest.warns(UserWarning, match=r"trained on base L2-C64-V65536 \(weights sha256 [0-9a-f]{16}.*other weights "
                                         r"\(sha256 [0-9a-f]{16}"):
        load_adapter(AutoModel.from_pretrained(other), run["out"] / "final")


def test_unknown_target_module_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown LoRA target_modules \['query'\].*att.receptance.*ffn.value.*head"):
        LoraConfig(target_modules=["query", "key"])
    with pytest.raises(ValueError, match="unknown train_parts"):
        LoraConfig(train_parts=["layernorm"])

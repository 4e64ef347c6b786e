"""The Hugging Face (fla) layout both ways: bit-identical round trips, ``rwkv7-hf`` (an independent
pure-PyTorch implementation of that layout) reading what we export and writing what we load, a model trained
here reaching it, and bad directories named."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import random_state_dict, tiny_config
from rwkv_oracle import load_reference, reference_sequence
from rwkvtune import AutoModel, AutoTokenizer
from rwkvtune.cli.create_hub import create_hub
from rwkvtune.hub.hf_layout import NOT_CARRIED
from rwkvtune.tokenizer import WorldTokenizer
from rwkvtune.tokenizer.vocab import DEFAULT_VOCAB_PATH

SHAPES = {
    "L2-C128": tiny_config(vocab_size=1000),
    "L3-C64-H32": tiny_config(n_layer=3, n_embd=64, head_size=32, dim_ffn=224, vocab_size=2000, dim_decay_lora=16,
                              dim_iclr_lora=8, dim_value_lora=24, dim_gate_lora=32),
}
IDS = [5, 17, 230, 999, 3, 64, 128, 7, 1]


def official_model(shape: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    model = AutoModel.from_config(SHAPES[shape]).to(dtype)
    model.load_state_dict(random_state_dict(SHAPES[shape], seed=seed, dtype=dtype))
    return model.eval()


@torch.no_grad()
def logits(model, ids: list[int] = IDS) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_official_to_hf_to_official_is_bit_identical(tmp_path, shape, dtype):
    model = official_model(shape, dtype)
    model.save_pretrained(tmp_path / "hf", format="hf", tokenizer=WorldTokenizer.default())
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "rwkv_vocab_v20230424.txt",
        "tokenizer_config.json"]
    back = AutoModel.from_pretrained(tmp_path / "hf")
    original, loaded = model.state_dict(), back.state_dict()
    assert loaded.keys() == original.keys()
    for key in original:
        if key not in NOT_CARRIED:  # layer 0's unused value-residual MLP: not in the layout
            assert loaded[key].dtype == dtype and torch.equal(loaded[key], original[key]), key
    # and through the CLI: official .pth -> HF directory -> official .pth, file to file
    torch.save(original, tmp_path / "src.pth")
    create_hub(tmp_path / "cli_hf", tmp_path / "src.pth", "auto", save_format="hf")
    create_hub(tmp_path / "cli_back", tmp_path / "cli_hf", "auto")
    again = torch.load(tmp_path / "cli_back" / "model.pth", weights_only=True)
    assert again.keys() == original.keys()
    assert all(torch.equal(again[k], original[k]) and again[k].dtype == dtype for k in original if k not in NOT_CARRIED)


@pytest.mark.parametrize("shape", SHAPES)
def test_exported_directory_gives_our_logits_in_rwkv7_hf(tmp_path, shape):
    pytest.importorskip("rwkv7_hf")
    from hf_oracle import hf_logits

    model = official_model(shape)
    model.save_pretrained(tmp_path / "hf", save_format="hf")
    assert (hf_logits(tmp_path / "hf", IDS) - logits(model)).abs().max().item() < 1e-4
    # sharded: the index and every shard, read by transformers there and by us here
    from rwkvtune.hub.hf_directory import save_hf_directory

    save_hf_directory(model.state_dict(), model.config, tmp_path / "sharded", ctx_len=4096, max_shard_bytes=200_000)
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert (hf_logits(tmp_path / "sharded", IDS) - logits(model)).abs().max().item() < 1e-4
    assert torch.equal(logits(AutoModel.from_pretrained(tmp_path / "sharded").eval()), logits(model))


def test_a_directory_written_by_rwkv7_hf_loads_here(tmp_path):
    pytest.importorskip("rwkv7_hf")
    from hf_oracle import convert_with_rwkv7_hf

    for dtype, precision in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        source = tmp_path / f"official-{precision}.pth"
        torch.save(random_state_dict(SHAPES["L2-C128"], seed=4, dtype=dtype), source)
        theirs = convert_with_rwkv7_hf(source, tmp_path / f"theirs-{precision}", precision=precision,
                                       vocab_file=DEFAULT_VOCAB_PATH)
        loaded = AutoModel.from_pretrained(theirs).eval()
        assert loaded.dtype == dtype
        from_pth = AutoModel.from_pretrained(source).eval()
        assert torch.equal(logits(loaded), logits(from_pth))
    expected, _ = reference_sequence(load_reference(tmp_path / "official-fp32.pth"), IDS)
    assert (logits(AutoModel.from_pretrained(tmp_path / "theirs-fp32")) - expected).abs().max().item() < 1e-4
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "theirs-fp32")
    assert tokenizer.encode("Hello 世界\n\n") == WorldTokenizer.default().encode("Hello 世界\n\n")


def test_a_model_trained_here_reaches_rwkv7_hf_and_decodes_the_same(tmp_path):
    """SFT with LoRA from an HF directory (the trainer's model= path), merged onto it into an HF directory by
    rwkvtune-merge-lora, greedy-decoded by rwkv7-hf."""
    pytest.importorskip("rwkv7_hf")
    from hf_oracle import hf_greedy

    from rwkvtune.generation import SamplingParams, generate
    from rwkvtune.peft import LoraConfig
    from rwkvtune.training import SFTConfig, SFTTrainer

    official_model("L2-C128").save_pretrained(tmp_path / "base", format="hf", tokenizer=WorldTokenizer.default())
    gen = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1, 1000, (16,), generator=gen).tolist()} for _ in range(8)]
    config = SFTConfig(output_dir=str(tmp_path / "run"), ctx_len=16, micro_bsz=4, epoch_count=2, precision="fp32",
                       grad_cp=0, warmup_steps=0, lr_init=1e-2, lr_final=1e-2, accelerator="cpu")
    trainer = SFTTrainer(str(tmp_path / "base"), config, train_dataset=rows,
                         peft_config=LoraConfig(r=8, lora_alpha=16, train_parts=["ln"]))
    trainer.train()
    merge = subprocess.run([sys.executable, "-m", "rwkvtune.cli.merge_lora", "-b", str(tmp_path / "base"), "-l",
                            str(tmp_path / "run" / "final"), "-o", str(tmp_path / "merged"), "--precision", "fp32",
                            "--save-format", "hf"], capture_output=True, text=True, timeout=300)
    assert merge.returncode == 0, merge.stderr[-3000:]
    assert (tmp_path / "merged" / "merge_info.json").is_file()
    prompt = rows[0]["input_ids"][:6]
    params = SamplingParams(temperature=0, max_new_tokens=10, stop=(), stop_token_ids=())
    ours = generate(trainer.model, [prompt], params)[0].token_ids
    assert hf_greedy(tmp_path / "merged", prompt, 10) == ours
    base_only = generate(AutoModel.from_pretrained(tmp_path / "base"), [prompt], params)[0].token_ids
    assert ours != base_only  # the training changed what the model says


@pytest.fixture
def exported(tmp_path) -> Path:
    official_model("L2-C128").save_pretrained(tmp_path / "good", format="hf", tokenizer=WorldTokenizer.default())
    return tmp_path / "good"


def broken_copy(exported: Path, name: str) -> Path:
    copy = exported.parent / name
    shutil.copytree(exported, copy)
    return copy


def test_bad_directories_are_named_and_nothing_is_written(exported):
    other = broken_copy(exported, "llama")
    data = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**data, "model_type": "llama",
                                                   "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match=r"llama/config.json describes model_type='llama'.*not RWKV-7"):
        AutoModel.from_pretrained(other)

    hybrid = broken_copy(exported, "hybrid")
    (hybrid / "config.json").write_text(json.dumps({**data, "attn": {"layers": [1], "num_heads": 2}}))
    with pytest.raises(ValueError, match="attn: softmax-attention layers mixed in"):
        AutoModel.from_pretrained(hybrid)

    tensors = load_file(exported / "model.safetensors")
    lacking = broken_copy(exported, "lacking")
    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.attn.k_k"}, lacking / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacking/model.safetensors: 1 tensor\(s\) of the architecture are missing: "
                                         r"model\.layers\.1\.attn\.k_k"):
        AutoModel.from_pretrained(lacking)

    extra = broken_copy(exported, "extra")
    save_file({**tensors, "model.layers.0.attn.v_lora.lora.0.weight": torch.zeros(8, 128)}, extra / "model.safetensors")
    with pytest.raises(ValueError, match=r"extra/model.safetensors: 1 tensor\(s\) that RWKV-7's fla layout does not "
                                         r"have: model\.layers\.0\.attn\.v_lora\.lora\.0\.weight"):
        AutoModel.from_pretrained(extra)

    model = official_model("L2-C128")
    from rwkvtune.hub.hf_directory import save_hf_directory

    sharded = save_hf_directory(model.state_dict(), model.config, exported.parent / "sharded", ctx_len=4096,
                                max_shard_bytes=200_000)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    moved = broken_copy(sharded, "moved")
    first = sorted(set(index.values()))[0]
    part = load_file(moved / first)
    key = sorted(part)[0]
    save_file({k: v for k, v in part.items() if k != key}, moved / first)
    with pytest.raises(ValueError, match=rf"moved/{first} does not hold what model.safetensors.index.json says: "
                                         rf"lacks {re.escape(key)}; holds unlisted nothing"):
        AutoModel.from_pretrained(moved)
    gone = sorted(set(index.values()))[1]
    (sharded / gone).unlink()
    with pytest.raises(FileNotFoundError, match=rf"lists 1 shard\(s\) missing from .*sharded: {gone} \(holding "
                                                rf"{'|'.join(k for k, v in index.items() if v == gone)}"):
        AutoModel.from_pretrained(sharded)

    # nothing written when the input is refused
    for bad in (other, lacking, sharded):
        with pytest.raises((ValueError, FileNotFoundError)):
            create_hub(exported.parent / f"out-{bad.name}", bad, "auto")
        assert not (exported.parent / f"out-{bad.name}").exists()
    merge = subprocess.run([sys.executable, "-m", "rwkvtune.cli.merge_lora", "-b", str(lacking), "-l",
                            str(exported), "-o", str(exported.parent / "merged")], capture_output=True, text=True)
    assert merge.returncode != 0 and not (exported.parent / "merged").exists()


def test_a_tokenizer_other_than_rwkv_world_is_refused(exported):
    assert AutoTokenizer.from_pretrained(exported).encode("User: hi") == [24281, 59, 4571]
    edited = broken_copy(exported, "edited")
    vocab = edited / "rwkv_vocab_v20230424.txt"
    lines = vocab.read_text(encoding="utf-8").splitlines(keepends=True)
    vocab.write_text("".join(lines[:-1]), encoding="utf-8")  # one token fewer: another vocabulary
    with pytest.raises(ValueError, match=r"edited/rwkv_vocab_v20230424.txt is not the RWKV World vocabulary"):
        AutoTokenizer.from_pretrained(edited)
    foreign = broken_copy(exported, "foreign")
    vocab = foreign / "rwkv_vocab_v20230424.txt"
    vocab.unlink()
    (foreign / "tokenizer_config.json").unlink()
    (foreign / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    with pytest.raises(ValueError, match=r"foreign/tokenizer.json is a Hugging Face tokenizer, not the RWKV World"):
        AutoTokenizer.from_pretrained(foreign)

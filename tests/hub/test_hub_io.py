"""Hub directories: save/load round trips, the rwkv runtime reading what we save, strict errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from rwkv_oracle import load_reference, reference_sequence
from rwkvtune import AutoModel, AutoTokenizer
from rwkvtune.hub import load_weights, save_tokenizer
from rwkvtune.tokenizer import WorldTokenizer


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "rwkv7-tiny.pth"
    torch.save(random_state_dict(tiny_config(), seed=3, dtype=torch.bfloat16), path)
    return path


def test_load_keeps_every_weight_and_dtype(official_file):
    model = AutoModel.from_pretrained(official_file)
    original = torch.load(official_file, weights_only=True)
    assert model.dtype == torch.bfloat16
    saved = model.state_dict()
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in original)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("save_format", ["pth", "safetensors"])
def test_save_pretrained_round_trips(official_file, tmp_path, save_format):
    model = AutoModel.from_pretrained(official_file, dtype="fp32")
    model.save_pretrained(tmp_path / "out", save_format=save_format, tokenizer=WorldTokenizer.default())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["config.json", f"model.{save_format}", "generation_config.json", "vocab.txt", "tokenizer_config.json"])
    again = AutoModel.from_pretrained(tmp_path / "out")
    assert again.dtype == torch.float32 and again.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert AutoTokenizer.from_pretrained(tmp_path / "out").encode("User: hi") == [24281, 59, 4571]


@torch.no_grad()
def test_saved_model_loads_in_rwkv_runtime_with_identical_logits(tmp_path):
    config = tiny_config()
    path = tmp_path / "src.pth"
    torch.save(random_state_dict(config, seed=5, layer0_value_lora=False), path)
    model = AutoModel.from_pretrained(path).eval()
    model.save_pretrained(tmp_path / "hub")
    saved = load_weights(tmp_path / "hub" / "model.pth")
    assert "blocks.0.att.v0" in saved  # written so RWKV-LM's strict load accepts it
    ids = list(range(3, 40, 3))
    expected, _ = reference_sequence(load_reference(tmp_path / "hub" / "model.pth"), ids)
    assert (model(torch.tensor([ids])).logits[0] - expected).abs().max().item() <= 1e-4


def test_load_converts_dtype(official_file):
    model = AutoModel.from_pretrained(official_file, dtype="bf16")
    fp16 = AutoModel.from_pretrained(official_file, dtype=torch.float16)
    assert model.dtype == torch.bfloat16 and fp16.dtype == torch.float16
    for bad in ("int8", torch.int64):
        with pytest.raises(ValueError, match="unsupported dtype"):
            AutoModel.from_pretrained(official_file, dtype=bad)


def test_truncated_file_gives_one_clear_error(official_file, tmp_path):
    data = official_file.read_bytes()
    broken = tmp_path / "broken.pth"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read weights file .*broken\.pth.*truncated"):
        AutoModel.from_pretrained(broken)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="cannot read weights file"):
        AutoModel.from_pretrained(garbage)


def test_non_official_state_dict_lists_the_problems(tmp_path):
    state = random_state_dict(tiny_config())
    state["blocks.1.att.extra"] = torch.zeros(3)
    del state["ln_out.bias"]
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"(?s)odd\.pth.*missing keys \(1\): ln_out\.bias.*unexpected keys \(1\)"):
        AutoModel.from_pretrained(path)
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="not a flat state dict"):
        AutoModel.from_pretrained(path)


def test_missing_paths_and_tokenizer_file(tmp_path, official_file):
    with pytest.raises(FileNotFoundError, match="model path not found"):
        AutoModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no weights in"):
        AutoModel.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"tokenizer file missing: .*vocab\.txt"):
        AutoTokenizer.from_pretrained(tmp_path / "empty")


def test_rwkvtune_010_directory_loads_and_disagreement_is_reported(tmp_path, official_file, caplog):
    hub = tmp_path / "old"
    hub.mkdir()
    (hub / "model.pth").write_bytes(official_file.read_bytes())
    # config.json as rwkvtune 0.1.0 wrote it, including its wrong dim_ffn (3.5 C).
    old = {"model_type": "rwkv7", "architectures": ["RWKV7Model"], "n_layer": 2, "n_embd": 128,
           "vocab_size": 1000, "head_size_a": 64, "ctx_len": 4096, "dim_att_lora": 32, "dim_gate_lora": 48,
           "dim_mv_lora": 8, "dim_att": 128, "dim_ffn": 448, "head_size_divisor": 8,
           "transformers_version": "rwkvtune-0.1.0"}
    (hub / "config.json").write_text(json.dumps(old))
    (hub / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RWKV_TOKENIZER", "eos_token": "\n\n"}))
    save_tokenizer(WorldTokenizer.default(), tmp_path / "tok")
    (hub / "vocab.txt").write_bytes((tmp_path / "tok" / "vocab.txt").read_bytes())
    with caplog.at_level(logging.WARNING):
        model = AutoModel.from_pretrained(hub)
    # 0.1.0 used one width for decay and ICLR; these weights have 32 and 16, which is reported.
    assert "dim_iclr_lora: 32 in config.json vs 16 in the weights" in caplog.text
    assert "dim_ffn" not in caplog.text
    assert model.ctx_len == 4096
    assert AutoTokenizer.from_pretrained(hub).apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True) == "User: hi\n\nAssistant:"


def test_rewriting_the_loaded_file_in_place_does_not_touch_the_model(tmp_path, official_file):
    path = tmp_path / "model.pth"
    path.write_bytes(official_file.read_bytes())
    model = AutoModel.from_pretrained(path)  # same dtype: the default still gives the model its own memory
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path.write_bytes(b"")  # a non-atomic rewrite truncates the file first
    torch.save(model.state_dict(), path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_generation_config_is_not_shared_between_models(official_file):
    first = AutoModel.from_pretrained(official_file)
    first.generation_config["stop"].append("###")
    assert AutoModel.from_pretrained(official_file).generation_config["stop"] == ["\n\n"]


def test_bare_file_ignores_files_beside_it(tmp_path, official_file):
    path = tmp_path / "model.pth"
    path.write_bytes(official_file.read_bytes())
    (tmp_path / "config.json").write_text("not json")
    assert AutoModel.from_pretrained(path).hub_config == {}
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        AutoModel.from_pretrained(tmp_path)


def test_unknown_wkv_backend_fails_before_loading(official_file):
    with pytest.raises(ValueError, match="unknown wkv7 backend 'cuda'.*auto, reference, chunked, fla"):
        AutoModel.from_pretrained(official_file, wkv_backend="cuda")


def test_saved_files_get_normal_permissions(tmp_path, official_file):
    import os

    old = os.umask(0o022)
    try:
        AutoModel.from_pretrained(official_file).save_pretrained(tmp_path / "out", tokenizer=WorldTokenizer.default())
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "out").iterdir()} == {"0o644"}

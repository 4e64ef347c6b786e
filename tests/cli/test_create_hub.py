"""rwkvtune-create-hub: exact round trips, architecture checks, nothing written on error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from rwkvtune import AutoModel, AutoTokenizer
from rwkvtune.cli.create_hub import main
from rwkvtune.hub import load_weights


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "rwkv7-g1-tiny-20250101-ctx4096.pth"
    torch.save(random_state_dict(tiny_config(), seed=11, dtype=torch.bfloat16, layer0_value_lora=False), path)
    return path


def test_round_trip_changes_no_weight(official_file, tmp_path):
    out = tmp_path / "hub"
    assert main(["--output-dir", str(out), "--model-file", str(official_file), "--config-name", "auto"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.pth", "tokenizer_config.json", "vocab.txt"]
    original = torch.load(official_file, weights_only=True)
    loaded = AutoModel.from_pretrained(out).state_dict()
    for key, value in original.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    config = json.loads((out / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["head_size_a"], config["ctx_len"]) == (2, 128, 64, 4096)
    assert AutoTokenizer.from_pretrained(out).encode("\n\n") == [261]


def test_safetensors_and_back(official_file, tmp_path):
    st = tmp_path / "st"
    assert main(["--output-dir", str(st), "--model-file", str(official_file), "--config-name", "auto",
                 "--save-format", "safetensors", "--ctx-len", "1024"]) == 0
    back = tmp_path / "back"
    assert main(["--output-dir", str(back), "--model-file", str(st / "model.safetensors"),
                 "--config-name", "auto"]) == 0
    original = torch.load(official_file, weights_only=True)
    for path in (st / "model.safetensors", back / "model.pth"):
        loaded = load_weights(path)
        assert loaded.keys() == original.keys() and all(torch.equal(loaded[k], original[k]) for k in original)
    assert json.loads((st / "config.json").read_text())["ctx_len"] == 1024


def test_link_weights_and_custom_template(official_file, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    out = tmp_path / "linked"
    assert main(["--output-dir", str(out), "--model-file", str(official_file), "--config-name", "auto",
                 "--link-weights", "--chat-template", str(template)]) == 0
    assert (out / "model.pth").is_symlink() and (out / "model.pth").resolve() == official_file.resolve()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<user>hi"


def test_wrong_config_name_names_the_dimensions(official_file, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["--output-dir", str(out), "--model-file", str(official_file), "--config-name", "rwkv7-0.1b"]) == 2
    err = capsys.readouterr().err
    assert "n_layer: 2 vs 12" in err and "n_embd: 128 vs 768" in err and "vocab_size: 1000 vs 65536" in err
    assert not out.exists()


def test_errors_write_nothing(official_file, tmp_path, capsys):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(official_file.read_bytes()[:1000])
    bad_template = tmp_path / "bad.jinja"
    bad_template.write_text("{% for m in messages %}")  # never closed
    cases = [
        (["--model-file", str(broken), "--config-name", "auto"], "cannot read weights file"),
        (["--model-file", str(tmp_path / "missing.pth"), "--config-name", "auto"], "weights file not found"),
        (["--model-file", str(official_file), "--config-name", "rwkv7-9b"], "unknown config name"),
        (["--model-file", str(official_file), "--config-name", "auto", "--chat-template", "nope.jinja"],
         "chat template file not found"),
        (["--model-file", str(official_file), "--config-name", "auto", "--link-weights", "--save-format",
          "safetensors"], "--link-weights needs --save-format pth"),
        (["--model-file", str(official_file), "--config-name", "auto", "--chat-template", str(bad_template)],
         "does not work"),
    ]
    for args, message in cases:
        assert main(["--output-dir", str(tmp_path / "out"), *args]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jinja", "broken.pth"]  # no temporary leftovers


def test_existing_output_dir_needs_overwrite(official_file, tmp_path, capsys):
    out = tmp_path / "hub"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    assert main(["--output-dir", str(out), "--model-file", str(official_file), "--config-name", "auto"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "user data"
    assert main(["--output-dir", str(out), "--model-file", str(official_file), "--config-name", "auto",
                 "--overwrite"]) == 0
    assert not (out / "mine.txt").exists() and (out / "model.pth").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]


def test_console_script_help_lists_every_flag():
    result = subprocess.run([sys.executable, "-m", "rwkvtune.cli.create_hub", "--help"],
                            capture_output=True, text=True, check=True)
    for flag in ("--output-dir", "--model-file", "--config-name", "--ctx-len", "--chat-template",
                 "--link-weights", "--save-format", "--overwrite"):
        assert flag in result.stdout


def test_relinking_a_directory_onto_itself_is_refused(official_file, tmp_path, capsys):
    out = tmp_path / "hub"
    assert main(["--output-dir", str(out), "--model-file", str(official_file), "--config-name", "auto"]) == 0
    args = ["--output-dir", str(out), "--model-file", str(out / "model.pth"), "--config-name", "auto", "--overwrite"]
    assert main([*args, "--link-weights"]) == 2
    assert "cannot point into" in capsys.readouterr().err
    assert main([*args, "--ctx-len", "2048"]) == 0  # copying is fine: the copy is made before the swap
    assert torch.equal(load_weights(out / "model.pth")["emb.weight"], load_weights(official_file)["emb.weight"])


def test_unwritable_output_is_a_message_not_a_traceback(official_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--output-dir", str(blocker / "hub"), "--model-file", str(official_file),
                 "--config-name", "auto"]) == 2
    assert "rwkvtune-create-hub: error:" in capsys.readouterr().err

"""The tokenizer files of a hub directory: ``vocab.txt`` and ``tokenizer_config.json``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from rwkvtune.hub.files import TOKENIZER_CONFIG_FILE, VOCAB_FILE, atomic_write, read_json, write_json
from rwkvtune.tokenizer import WorldTokenizer, render_chat


def tokenizer_config(chat_template: str) -> dict[str, Any]:
    """``tokenizer_config.json`` content (field names as rwkvtune 0.1.0 wrote them)."""
    return {
        "tokenizer_class": "RWKV_TOKENIZER",
        "vocab_file": VOCAB_FILE,
        "eos_token": "\n\n",
        "eos_token_id": 0,
        "add_bos_token": False,
        "add_eos_token": False,
        "chat_template": chat_template,
    }


def check_chat_template(template: str, source: str) -> None:
    """Render a probe conversation so a broken template fails now, naming ``source``, not at training time."""
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
             {"role": "assistant", "content": "a"}]
    try:
        render_chat(probe, template, add_generation_prompt=True)
    except ValueError as err:
        raise ValueError(f"chat template {source} does not work: {err}") from None


def write_tokenizer_files(save_directory: str | os.PathLike, vocab_file: str | os.PathLike, chat_template: str) -> None:
    """Copy ``vocab_file`` to ``vocab.txt`` and write ``tokenizer_config.json``, each atomically."""
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / VOCAB_FILE, lambda tmp: shutil.copyfile(vocab_file, tmp))
    write_json(out / TOKENIZER_CONFIG_FILE, tokenizer_config(chat_template))


def save_tokenizer(tokenizer: WorldTokenizer, save_directory: str | os.PathLike) -> None:
    """Write ``tokenizer``'s vocab and chat template into ``save_directory``."""
    if tokenizer.vocab_file is None:
        raise ValueError("this tokenizer was not loaded from a vocab file, so there is no vocab.txt to save")
    write_tokenizer_files(save_directory, tokenizer.vocab_file, tokenizer.chat_template)


def load_tokenizer(path: str | os.PathLike) -> WorldTokenizer:
    """Load ``vocab.txt`` and the chat template of ``tokenizer_config.json`` from a hub directory.

    Raises ``FileNotFoundError`` naming the missing file.
    """
    hub_dir = Path(path)
    if hub_dir.is_file():
        hub_dir = hub_dir.parent
    if not hub_dir.is_dir():
        raise FileNotFoundError(f"model path not found: {hub_dir}")
    vocab = hub_dir / VOCAB_FILE
    if not vocab.is_file():
        raise FileNotFoundError(f"tokenizer file missing: {vocab}. Copy vocab.txt (rwkv_vocab_v20230424.txt) "
                                "into the directory, or re-create it with rwkvtune-create-hub")
    template = None
    if (hub_dir / TOKENIZER_CONFIG_FILE).is_file():
        template = read_json(hub_dir / TOKENIZER_CONFIG_FILE).get("chat_template")
    return WorldTokenizer.from_file(vocab, chat_template=template)

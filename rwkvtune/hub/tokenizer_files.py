"""The tokenizer files of a hub directory (``vocab.txt`` and ``tokenizer_config.json``), and of a Hugging
Face directory in fla's layout (the vocabulary as ``rwkv_vocab_v20230424.txt``, which must be RWKV World's)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from rwkvtune.hub.files import TOKENIZER_CONFIG_FILE, VOCAB_FILE, atomic_write, read_json, write_json
from rwkvtune.hub.hf_directory import is_hf_directory
from rwkvtune.tokenizer import WorldTokenizer, render_chat
from rwkvtune.tokenizer.vocab import DEFAULT_VOCAB_DIGEST, DEFAULT_VOCAB_PATH, load_vocab, table_digest

logger = logging.getLogger(__name__)


#: Where a directory's vocabulary may be: ours, then the name RWKV's Hugging Face repositories and llama.cpp use.
VOCAB_NAMES = (VOCAB_FILE, DEFAULT_VOCAB_PATH.name)


def tokenizer_config(chat_template: str, vocab_file: str = VOCAB_FILE) -> dict[str, Any]:
    """``tokenizer_config.json`` content (field names as rwkvtune 0.1.0 wrote them)."""
    return {
        "tokenizer_class": "RWKV_TOKENIZER",
        "vocab_file": vocab_file,
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


def write_tokenizer_files(save_directory: str | os.PathLike, vocab_file: str | os.PathLike, chat_template: str,
                          vocab_name: str = VOCAB_FILE) -> None:
    """Copy ``vocab_file`` to ``vocab_name`` and write ``tokenizer_config.json``, each atomically."""
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / vocab_name, lambda tmp: shutil.copyfile(vocab_file, tmp))
    write_json(out / TOKENIZER_CONFIG_FILE, tokenizer_config(chat_template, vocab_name))


def save_tokenizer(tokenizer: WorldTokenizer, save_directory: str | os.PathLike, vocab_name: str = VOCAB_FILE) -> None:
    """Write ``tokenizer``'s vocab (as ``vocab_name``) and chat template into ``save_directory``."""
    if tokenizer.vocab_file is None:
        raise ValueError("this tokenizer was not loaded from a vocab file, so there is no vocab.txt to save")
    write_tokenizer_files(save_directory, tokenizer.vocab_file, tokenizer.chat_template, vocab_name)


def load_tokenizer(path: str | os.PathLike) -> WorldTokenizer:
    """Load the vocabulary (``vocab.txt``, or ``rwkv_vocab_v20230424.txt``) and the chat template of
    ``tokenizer_config.json`` from a hub directory or a Hugging Face directory in fla's layout.

    A Hugging Face directory's vocabulary must be the RWKV World vocabulary, the one rwkvtune's tokenizer
    implements; a chat template there that does not render as jinja2 is replaced by the RWKV default.

    Raises ``FileNotFoundError`` naming the missing file, ``ValueError`` for another tokenizer.
    """
    hub_dir = Path(path)
    if hub_dir.is_file():
        hub_dir = hub_dir.parent
    if not hub_dir.is_dir():
        raise FileNotFoundError(f"model path not found: {hub_dir}")
    settings = read_json(hub_dir / TOKENIZER_CONFIG_FILE) if (hub_dir / TOKENIZER_CONFIG_FILE).is_file() else {}
    named = settings.get("vocab_file")
    candidates = ([named] if isinstance(named, str) and (hub_dir / named).is_file() else []) + list(VOCAB_NAMES)
    vocab = next((hub_dir / name for name in candidates if (hub_dir / name).is_file()), None)
    foreign = is_hf_directory(hub_dir)
    if vocab is None:
        if foreign and (hub_dir / "tokenizer.json").is_file():
            raise ValueError(f"{hub_dir / 'tokenizer.json'} is a Hugging Face tokenizer, not the RWKV World vocabulary "
                             f"rwkvtune tokenizes with; the model needs {DEFAULT_VOCAB_PATH.name} beside it")
        raise FileNotFoundError(f"tokenizer file missing: {hub_dir / VOCAB_FILE}. Copy vocab.txt "
                                "(rwkv_vocab_v20230424.txt) into the directory, or re-create it with "
                                "rwkvtune-create-hub")
    template = settings.get("chat_template")
    if foreign:
        if table_digest(load_vocab(vocab)) != DEFAULT_VOCAB_DIGEST:
            raise ValueError(f"{vocab} is not the RWKV World vocabulary (rwkv_vocab_v20230424), the one rwkvtune "
                             "tokenizes with: this model was trained with another tokenizer")
        if template:
            try:
                check_chat_template(template, str(hub_dir / TOKENIZER_CONFIG_FILE))
            except ValueError as err:
                logger.warning("%s; using the RWKV chat template instead", err)
                template = None
    return WorldTokenizer.from_file(vocab, chat_template=template)

"""Shared by the example scripts: settings from environment variables, and a default model to train."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from rwkvtune import AutoModel
from rwkvtune.config import RWKV7Config
from rwkvtune.tokenizer import WorldTokenizer


def env(name: str, default: Any, cast: Callable[[str], Any] = str) -> Any:
    """``cast(os.environ[name])``, or ``default`` when the variable is unset or empty."""
    value = os.environ.get(name)
    return default if value in (None, "") else cast(value)


def model_path_or_tiny(output_dir: str, ctx_len: int) -> str:
    """``$MODEL_PATH``, or a new tiny RWKV-7 (L2-C128) hub directory beside ``output_dir``."""
    path = env("MODEL_PATH", None)
    if path is not None:
        return path
    path = str(Path(output_dir).parent / "tiny-rwkv7-base")
    if not Path(path).exists():
        print(f"MODEL_PATH not set: creating a new tiny RWKV-7 (L2-C128) in {path}")
        AutoModel.from_config(RWKV7Config(n_layer=2, n_embd=128), ctx_len=ctx_len).save_pretrained(
            path, tokenizer=WorldTokenizer.default())
    return path

"""``AutoModel`` / ``AutoTokenizer``: load and save hub directories (and bare weight files).

A hub directory holds ``config.json``, ``model.pth`` or ``model.safetensors`` (official keys),
``vocab.txt``, ``tokenizer_config.json`` and ``generation_config.json``. Loading is strict: the
architecture is inferred from the weights, and a missing, unexpected or mis-shaped key is an error.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from rwkvtune.config import RWKV7Config
from rwkvtune.config.model import LAYER0_OPTIONAL_KEYS
from rwkvtune.hub.config_json import DEFAULT_CTX_LEN, config_to_json, report_disagreements
from rwkvtune.hub.files import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    VOCAB_FILE,
    WEIGHTS_FILES,
    atomic_write,
    read_json,
    write_json,
)
from rwkvtune.hub.weights import load_rwkv7_weights, save_weights
from rwkvtune.model import RWKV7
from rwkvtune.model.init import new_model, value_lora_init
from rwkvtune.tokenizer import WorldTokenizer

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}

#: Sampling defaults written to ``generation_config.json``: stop at the end of a chat turn.
DEFAULT_GENERATION_CONFIG: dict[str, Any] = {
    "max_new_tokens": 256,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "repetition_penalty": 1.0,
    "stop": ["\n\n"],
    "stop_token_ids": [0],
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``, ``"float32"``, ``torch.float16``, ... -> a torch dtype (``None`` stays ``None``)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}") from None


def find_weights_file(path: str | os.PathLike) -> Path:
    """The weights file of a hub directory, or ``path`` itself when it is a file."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"model path not found: {path} (expected a hub directory or a .pth/.safetensors file)")
    for name in WEIGHTS_FILES.values():
        if (path / name).is_file():
            return path / name
    if any((path / name).is_symlink() for name in WEIGHTS_FILES.values()):
        raise FileNotFoundError(f"the weights link in {path} points to a missing file; re-create the directory "
                                "with rwkvtune-create-hub")
    raise FileNotFoundError(f"no weights in {path}: expected {' or '.join(WEIGHTS_FILES.values())}; "
                            "create the directory with rwkvtune-create-hub")


class PretrainedRWKV7(RWKV7):
    """An ``RWKV7`` that knows its hub metadata and can save itself as a hub directory.

    ``hub_config`` holds the non-architecture fields of ``config.json`` (``ctx_len``, names, ...), kept
    on save.
    """

    def __init__(self, config: RWKV7Config, *, hub_config: dict[str, Any] | None = None,
                 generation_config: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.hub_config = dict(hub_config or {})
        self.generation_config = dict(generation_config or DEFAULT_GENERATION_CONFIG)

    @property
    def ctx_len(self) -> int:
        return int(self.hub_config.get("ctx_len", DEFAULT_CTX_LEN))

    def save_pretrained(self, save_directory: str | os.PathLike, *, save_format: str = "pth",
                        tokenizer: WorldTokenizer | None = None) -> Path:
        """Write ``config.json``, the weights (official keys) and ``generation_config.json``, each atomically.

        With ``tokenizer`` the tokenizer files are written too, making a complete hub directory.
        """
        if save_format not in WEIGHTS_FILES:
            raise ValueError(f"unknown save format {save_format!r}; choose one of: {', '.join(WEIGHTS_FILES)}")
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        save_weights(self.state_dict(), out / WEIGHTS_FILES[save_format], save_format)
        # A stale weights file of the other format would be ambiguous on the next load.
        for other in WEIGHTS_FILES.values():
            if other != WEIGHTS_FILES[save_format] and (out / other).exists():
                (out / other).unlink()
        extra = {k: v for k, v in self.hub_config.items() if k not in config_to_json(self.config)}
        write_json(out / CONFIG_FILE, config_to_json(self.config, ctx_len=self.ctx_len, **extra))
        write_json(out / GENERATION_CONFIG_FILE, self.generation_config)
        if tokenizer is not None:
            save_tokenizer(tokenizer, out)
        return out


def load_model(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    wkv_backend: str = "auto",
    grad_cp: bool = False,
) -> PretrainedRWKV7:
    """Load a model from a hub directory (or a ``.pth``/``.safetensors`` file), strictly.

    Args:
        path: hub directory, or a weights file in the official format.
        dtype: ``"fp32"``, ``"bf16"``, ``"fp16"`` (or a torch dtype); default: the file's dtype.
        device: where the weights go (default CPU); tensors are moved one at a time.
        wkv_backend: WKV7 backend (``"auto"``, ``"chunked"``, ``"reference"``, ``"fla"``).
        grad_cp: gradient checkpointing per block.

    Raises:
        FileNotFoundError: no such path, or no weights in the directory.
        ValueError: the file is corrupt, or its keys/shapes are not an RWKV-7 model's (all listed).
    """
    weights_file = find_weights_file(path)
    hub_dir = weights_file.parent if Path(path).is_file() else Path(path)
    state, config = load_rwkv7_weights(weights_file)

    hub_config: dict[str, Any] = {}
    if (hub_dir / CONFIG_FILE).is_file():
        hub_config = read_json(hub_dir / CONFIG_FILE)
        report_disagreements(config, hub_config, str(hub_dir / CONFIG_FILE))
    generation_config = None
    if (hub_dir / GENERATION_CONFIG_FILE).is_file():
        generation_config = read_json(hub_dir / GENERATION_CONFIG_FILE)

    target_dtype = resolve_dtype(dtype) or state["emb.weight"].dtype
    target_device = torch.device(device) if device is not None else torch.device("cpu")
    if any(key not in state for key in LAYER0_OPTIONAL_KEYS):
        # Files without layer 0's unused value-residual weights still load; we fill them so that what we
        # save loads strictly in RWKV-LM.
        for name, value in value_lora_init(config, 0).items():
            state.setdefault(f"blocks.0.att.{name}", value)
    # Convert one tensor at a time and hand the results to the module as they are (assign=True): the
    # memory-mapped file is never copied whole, so loading needs ~1x the model's size, not 2x.
    state = {key: value.to(device=target_device, dtype=target_dtype) for key, value in state.items()}
    with torch.device("meta"):
        model = PretrainedRWKV7(config, hub_config=hub_config, generation_config=generation_config,
                                wkv_backend=wkv_backend, grad_cp=grad_cp)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def save_tokenizer(tokenizer: WorldTokenizer, save_directory: str | os.PathLike) -> None:
    """Write ``vocab.txt`` and ``tokenizer_config.json`` (with the chat template) into ``save_directory``."""
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / VOCAB_FILE, lambda tmp: shutil.copyfile(tokenizer.vocab_file, tmp))
    write_json(out / TOKENIZER_CONFIG_FILE, tokenizer_config(tokenizer.chat_template))


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


class AutoModel:
    """Entry point mirroring ``transformers.AutoModel`` for RWKV-7 hub directories."""

    from_pretrained = staticmethod(load_model)

    @staticmethod
    def from_config(config: RWKV7Config, *, ctx_len: int = DEFAULT_CTX_LEN, **kwargs: Any) -> PretrainedRWKV7:
        """A new model of ``config`` with RWKV-LM's from-scratch initialisation."""
        return new_model(config, model_class=PretrainedRWKV7, hub_config={"ctx_len": ctx_len}, **kwargs)


class AutoTokenizer:
    """Entry point mirroring ``transformers.AutoTokenizer``: the RWKV World tokenizer of a hub directory."""

    from_pretrained = staticmethod(load_tokenizer)

"""The JSON metadata of a hub directory: ``config.json`` (ours and rwkvtune 0.1.0's) and ``generation_config.json``.

The file is descriptive: the architecture is always read from the weights. We write the 0.1.0 field
names where they mean the same thing (``head_size_a``, ``dim_att_lora`` for the decay/ICLR width,
``dim_mv_lora`` for the value width) so our directories load there too, plus explicit names for the
widths 0.1.0 could not tell apart. 0.1.0's ``dim_ffn`` (``3.5 * C``) is wrong for every RWKV-7 model,
so it is only compared when the file was written by us.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

from rwkvtune.config import RWKV7Config
from rwkvtune.hub.files import CONFIG_FILE, GENERATION_CONFIG_FILE, write_json
from rwkvtune.version import __version__

logger = logging.getLogger(__name__)

DEFAULT_CTX_LEN = 4096

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


def config_to_json(config: RWKV7Config, *, ctx_len: int = DEFAULT_CTX_LEN, **extra: Any) -> dict[str, Any]:
    """The ``config.json`` content describing ``config``; ``extra`` fields (e.g. ``model_name``) are kept."""
    data: dict[str, Any] = {
        "model_type": "rwkv7",
        "architectures": ["RWKV7"],
        "n_layer": config.n_layer,
        "n_embd": config.n_embd,
        "vocab_size": config.vocab_size,
        "head_size_a": config.head_size,
        "dim_att": config.n_embd,
        "dim_ffn": config.dim_ffn,
        "dim_att_lora": config.dim_decay_lora,
        "dim_decay_lora": config.dim_decay_lora,
        "dim_iclr_lora": config.dim_iclr_lora,
        "dim_mv_lora": config.dim_value_lora,
        "dim_gate_lora": config.dim_gate_lora,
        "ctx_len": ctx_len,
        "tie_word_embeddings": False,
        "eos_token_id": 0,
        "rwkvtune_version": __version__,
    }
    data.update(extra)
    return data


def _declared_dims(data: dict[str, Any]) -> dict[str, Any]:
    """The architecture fields a ``config.json`` states, in our names."""
    names = {"n_layer": "n_layer", "n_embd": "n_embd", "vocab_size": "vocab_size", "head_size_a": "head_size",
             "dim_decay_lora": "dim_decay_lora", "dim_iclr_lora": "dim_iclr_lora", "dim_mv_lora": "dim_value_lora",
             "dim_gate_lora": "dim_gate_lora"}
    dims = {ours: data[theirs] for theirs, ours in names.items() if data.get(theirs) is not None}
    if data.get("dim_att_lora") is not None:  # 0.1.0 used one width for both decay and ICLR
        dims.setdefault("dim_decay_lora", data["dim_att_lora"])
        dims.setdefault("dim_iclr_lora", data["dim_att_lora"])
    if "rwkvtune_version" in data and data.get("dim_ffn") is not None:
        dims["dim_ffn"] = data["dim_ffn"]
    return dims


def dims_disagreements(config: RWKV7Config, dims: dict[str, Any]) -> list[str]:
    """``field: config.json value vs weights value`` for each of ``dims`` (``RWKV7Config`` names) that
    ``config`` contradicts."""
    return [f"{name}: {value} in config.json vs {getattr(config, name)} in the weights"
            for name, value in dims.items() if value != getattr(config, name)]


def report_disagreements(config: RWKV7Config, data: dict[str, Any], source: str,
                         dims: dict[str, Any] | None = None) -> None:
    """Log a warning when ``config.json`` contradicts the weights (the weights win). ``dims``: the
    dimensions it states, for a ``config.json`` that is not a hub directory's (a Hugging Face one)."""
    problems = dims_disagreements(config, _declared_dims(data) if dims is None else dims)
    if problems:
        logger.warning("%s disagrees with the weights; using the architecture of the weights:\n  %s",
                       source, "\n  ".join(problems))


def write_model_metadata(save_directory: str | os.PathLike, config: RWKV7Config, *, ctx_len: int,
                         generation_config: dict[str, Any] | None = None, **extra: Any) -> None:
    """Write ``config.json`` and ``generation_config.json`` (defaults unless given), each atomically."""
    out = Path(save_directory)
    write_json(out / CONFIG_FILE, config_to_json(config, ctx_len=ctx_len, **extra))
    write_json(out / GENERATION_CONFIG_FILE, copy.deepcopy(generation_config or DEFAULT_GENERATION_CONFIG))

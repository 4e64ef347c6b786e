"""Hugging Face model directories in fla's RWKV-7 layout (``hf_layout``): read and write them.

A directory holds ``config.json`` (fla's ``RWKV7Config``), ``model.safetensors`` or shards listed in
``model.safetensors.index.json``, and the RWKV World vocabulary as ``rwkv_vocab_v20230424.txt`` (the name
llama.cpp's HF-to-GGUF converter reads), with ``tokenizer_config.json`` for the chat template. Reading is
strict: every tensor must be one of the layout's, every tensor the architecture needs must be there, and
every shard the index names must hold what it says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rwkvtune.config import RWKV7Config, config_from_shapes, expected_shapes
from rwkvtune.config.model import check_state_dict_shapes
from rwkvtune.hub.config_json import report_disagreements
from rwkvtune.hub.files import CONFIG_FILE, GENERATION_CONFIG_FILE, read_json, write_json
from rwkvtune.hub.hf_layout import (NOT_CARRIED, check_hf_config, declared_dims, from_hf, hf_config, hf_key,
                                    is_hf_config, to_hf)
from rwkvtune.hub.weights import load_weights, save_weights
from rwkvtune.model.init import value_lora_init

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
VOCAB_NAME = "rwkv_vocab_v20230424.txt"
#: transformers' default largest shard.
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9


def is_hf_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory whose ``config.json`` is a Hugging Face model's (``hf_layout``)."""
    config = Path(path) / CONFIG_FILE
    return Path(path).is_dir() and config.is_file() and is_hf_config(read_json(config))


def load_hf_directory(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], RWKV7Config, dict[str, Any]]:
    """An fla-layout directory's tensors as an official state dict, the architecture they imply and its
    ``config.json``. Layer
    0's ``v0``/``v1``/``v2``, which the layout does not carry and no runtime reads, get RWKV-LM's initial
    values (in the file's dtype), so that what is saved from it loads strictly in RWKV-LM.

    Raises:
        ValueError: ``config.json`` is not RWKV-7's, a tensor is not in the layout, one the architecture
            needs is missing or mis-shaped, or a shard does not hold what the index says (each named).
        FileNotFoundError: no weights, or a shard the index lists is missing.
    """
    directory = Path(path)
    data = read_json(directory / CONFIG_FILE)
    check_hf_config(data, str(directory / CONFIG_FILE))
    tensors = read_tensors(directory)
    # the file the tensors came from: the single file, or the index of the shards
    source = directory / (INDEX_FILE if (directory / INDEX_FILE).is_file() else SINGLE_FILE)
    state = from_hf(tensors, str(source))
    try:
        config = config_from_shapes({key: tuple(value.shape) for key, value in state.items()})
    except ValueError as err:
        raise ValueError(f"{source}: cannot read an RWKV-7 architecture from its tensors ({err})") from None
    needed = [hf_key(key) for key in expected_shapes(config) if key not in NOT_CARRIED]
    missing = [key for key in needed if key not in tensors]
    if missing:
        raise ValueError(f"{source}: {len(missing)} tensor(s) of the architecture are missing: "
                         f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    try:
        check_state_dict_shapes(config, {key: tuple(value.shape) for key, value in state.items()})
    except ValueError as err:
        raise ValueError(f"{source} (official names below): {err}") from None
    report_disagreements(config, data, str(directory / CONFIG_FILE), dims=declared_dims(data))
    dtype = state["emb.weight"].dtype
    for name, value in value_lora_init(config, 0, seed=0).items():
        state[f"blocks.0.att.{name}"] = value.to(dtype)
    return state, config, data


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors``, or of the shards ``model.safetensors.index.json`` lists."""
    index = directory / INDEX_FILE
    if not index.is_file():
        if not (directory / SINGLE_FILE).is_file():
            raise FileNotFoundError(f"no weights in {directory}: expected {SINGLE_FILE}, or {INDEX_FILE} with its "
                                    "shards (pytorch_model.bin files are not read: save the model with safetensors)")
        return load_weights(directory / SINGLE_FILE)
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no weight_map of tensor names to shard files")
    shards: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        shards.setdefault(shard, []).append(key)
    absent = [shard for shard in shards if not (directory / shard).is_file()]
    if absent:
        raise FileNotFoundError(f"{index} lists {len(absent)} shard(s) missing from {directory}: "
                                + ", ".join(f"{shard} (holding {shards[shard][0]}, ...)" for shard in absent[:3]))
    tensors: dict[str, torch.Tensor] = {}
    for shard, keys in shards.items():
        part = load_weights(directory / shard)
        lacking, unlisted = sorted(set(keys) - set(part)), sorted(set(part) - set(keys))
        if lacking or unlisted:
            raise ValueError(f"{directory / shard} does not hold what {INDEX_FILE} says: lacks "
                             f"{', '.join(lacking[:5]) or 'nothing'}; holds unlisted "
                             f"{', '.join(unlisted[:5]) or 'nothing'}")
        tensors.update(part)
    return tensors


def save_hf_directory(state: dict[str, torch.Tensor], config: RWKV7Config, save_directory: str | os.PathLike, *,
                      ctx_len: int, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, **extra: Any) -> Path:
    """Write ``state`` (official keys) as an fla-layout directory: ``config.json``, the weights (one file, or
    shards of at most ``max_shard_bytes`` with their index) and a Hugging Face ``generation_config.json``.
    Each file is written atomically; weight files of another layout or shard count are removed."""
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in to_hf(state).items()}
    shards = _split(tensors, max_shard_bytes)
    names = [SINGLE_FILE] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                                                     for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_weights(shard, out / name, "safetensors")
    if len(shards) > 1:
        write_json(out / INDEX_FILE, {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                                      "weight_map": {key: name for name, shard in zip(names, shards) for key in shard}})
    written = {*names, INDEX_FILE} if len(shards) > 1 else {SINGLE_FILE}
    for stale in out.iterdir():  # an earlier save's weights would be read instead of, or besides, these
        if stale.name not in written and _holds_weights(stale.name):
            stale.unlink()
    dtype = next(iter(tensors.values())).dtype
    write_json(out / CONFIG_FILE, hf_config(config, dtype=dtype, ctx_len=ctx_len, **extra))
    write_json(out / GENERATION_CONFIG_FILE, {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
    return out


def _holds_weights(name: str) -> bool:
    """Whether a file of this name is read as weights (ours, or of this layout)."""
    shard = name.startswith("model-") and name.endswith(".safetensors")
    return shard or name in ("model.pth", SINGLE_FILE, INDEX_FILE)


def _split(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """``tensors`` in order, in shards of at most ``max_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, value in tensors.items():
        if shards[-1] and size + value.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += value.nbytes
    return shards

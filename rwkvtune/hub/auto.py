"""``AutoModel`` / ``AutoTokenizer``: load and save hub directories (and bare weight files).

A hub directory holds ``config.json``, ``model.pth`` or ``model.safetensors`` (official keys),
``vocab.txt``, ``tokenizer_config.json`` and ``generation_config.json``. Loading is strict: the
architecture is inferred from the weights, and a missing, unexpected or mis-shaped key is an error.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from rwkvtune.config import RWKV7Config
from rwkvtune.config.model import LAYER0_OPTIONAL_KEYS
from rwkvtune.hub.config_json import (
    DEFAULT_CTX_LEN,
    DEFAULT_GENERATION_CONFIG,
    config_to_json,
    report_disagreements,
    write_model_metadata,
)
from rwkvtune.hub.files import CONFIG_FILE, GENERATION_CONFIG_FILE, WEIGHTS_FILES, read_json
from rwkvtune.hub.hf_directory import VOCAB_NAME as HF_VOCAB_NAME
from rwkvtune.hub.hf_directory import is_hf_directory, load_hf_directory, save_hf_directory
from rwkvtune.hub.tokenizer_files import load_tokenizer, save_tokenizer
from rwkvtune.hub.weights import load_rwkv7_weights, save_weights
from rwkvtune.model import RWKV7
from rwkvtune.model.init import new_model, value_lora_init
from rwkvtune.ops import check_backend_name
from rwkvtune.tokenizer import WorldTokenizer
from rwkvtune.version import __version__

#: ``save_pretrained`` formats: a hub directory with official keys in a ``.pth`` or ``.safetensors`` file, or
#: a Hugging Face directory in fla's layout.
DIRECTORY_FORMATS = (*WEIGHTS_FILES, "hf")

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}

def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``, ``"float32"``, ``torch.float16``, ... -> a torch dtype (``None`` stays ``None``)."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in DTYPES.values()):
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unsupported dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")


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
        self.hub_config = copy.deepcopy(hub_config or {})
        self.generation_config = copy.deepcopy(generation_config or DEFAULT_GENERATION_CONFIG)

    @property
    def ctx_len(self) -> int:
        return int(self.hub_config.get("ctx_len", DEFAULT_CTX_LEN))

    def save_pretrained(self, save_directory: str | os.PathLike, *, save_format: str = "pth",
                        tokenizer: WorldTokenizer | None = None,
                        state_dict: dict[str, torch.Tensor] | None = None, format: str | None = None) -> Path:
        """Write ``config.json``, the weights and ``generation_config.json``, each atomically.

        ``save_format`` (or its alias ``format``): ``"pth"`` or ``"safetensors"`` (a hub directory, official
        keys), or ``"hf"`` (a Hugging Face directory in fla's layout, for transformers with fla and
        llama.cpp's converter). With ``tokenizer`` the tokenizer files are written too, making a complete
        directory; ``state_dict`` replaces the module's own tensors (e.g. weights gathered from a sharded run).
        """
        return save_pretrained(self, save_directory, save_format=format or save_format, tokenizer=tokenizer,
                               ctx_len=self.ctx_len, hub_config=self.hub_config,
                               generation_config=self.generation_config, state_dict=state_dict)


def save_pretrained(model: RWKV7, save_directory: str | os.PathLike, *, save_format: str = "pth",
                    tokenizer: WorldTokenizer | None = None, ctx_len: int = DEFAULT_CTX_LEN,
                    hub_config: dict[str, Any] | None = None,
                    generation_config: dict[str, Any] | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save any ``RWKV7`` as a hub directory, or with ``save_format="hf"`` a Hugging Face directory (see
    ``PretrainedRWKV7.save_pretrained``)."""
    if save_format not in DIRECTORY_FORMATS:
        raise ValueError(f"unknown save format {save_format!r}; choose one of: {', '.join(DIRECTORY_FORMATS)}")
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    if save_format == "hf":
        save_hf_directory(model.state_dict() if state_dict is None else state_dict, model.config, out,
                          ctx_len=ctx_len, rwkvtune_version=__version__)
        if tokenizer is not None:
            save_tokenizer(tokenizer, out, vocab_name=HF_VOCAB_NAME)
        return out
    save_weights(model.state_dict() if state_dict is None else state_dict, out / WEIGHTS_FILES[save_format],
                 save_format)
    # A stale weights file of the other format would be ambiguous on the next load.
    for other in WEIGHTS_FILES.values():
        if other != WEIGHTS_FILES[save_format] and (out / other).exists():
            (out / other).unlink()
    extra = {k: v for k, v in (hub_config or {}).items() if k not in config_to_json(model.config)}
    write_model_metadata(out, model.config, ctx_len=ctx_len, generation_config=generation_config, **extra)
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
    mmap: bool = False,
) -> PretrainedRWKV7:
    """Load a model from a hub directory, a Hugging Face directory in fla's layout (``hub.hf_layout``), or
    a ``.pth``/``.safetensors`` file, strictly.

    The file is memory-mapped and its tensors are converted or copied one at a time, so loading needs
    about 1x the model's size in RAM, never 2x.

    Args:
        path: hub directory, Hugging Face directory (``config.json`` with ``"model_type": "rwkv7"``, fla's
            ``RWKV7ForCausalLM`` keys in ``model.safetensors`` or shards), or a weights file in the official
            format. For a bare file, files beside it (``config.json``, ...) are not read.
        dtype: ``"fp32"``, ``"bf16"``, ``"fp16"`` (or a torch dtype); default: the file's dtype.
        device: where the weights go (default CPU); tensors are moved one at a time.
        wkv_backend: WKV7 backend (``"auto"``, ``"chunked"``, ``"reference"``, ``"fla"``).
        grad_cp: gradient checkpointing per block.
        mmap: keep the weights backed by the ``.pth`` file when no conversion is needed (CPU, same
            dtype): near-zero load time and RAM for inference, but the file must not be rewritten in
            place while the model lives (rwkvtune's own writers replace files atomically, which is safe).

    Raises:
        FileNotFoundError: no such path, or no weights in the directory.
        ValueError: the file is corrupt, or its keys/shapes are not an RWKV-7 model's (all listed).
    """
    check_backend_name(wkv_backend)
    hub_config: dict[str, Any] = {}
    generation_config = None
    hub_dir = Path(path)
    if is_hf_directory(hub_dir):
        # A Hugging Face directory's metadata is not ours: its sequence length stands for ctx_len, and its
        # generation_config.json holds transformers' fields, not our stop strings.
        state, config, data = load_hf_directory(hub_dir)
        hub_config = {"ctx_len": data.get("max_position_embeddings", DEFAULT_CTX_LEN)}
    else:
        state, config = load_rwkv7_weights(find_weights_file(path))
        if hub_dir.is_dir():
            if (hub_dir / CONFIG_FILE).is_file():
                hub_config = read_json(hub_dir / CONFIG_FILE)
                report_disagreements(config, hub_config, str(hub_dir / CONFIG_FILE))
            if (hub_dir / GENERATION_CONFIG_FILE).is_file():
                generation_config = read_json(hub_dir / GENERATION_CONFIG_FILE)

    target_dtype = resolve_dtype(dtype) or state["emb.weight"].dtype
    target_device = torch.device(device) if device is not None else torch.device("cpu")
    if any(key not in state for key in LAYER0_OPTIONAL_KEYS):
        # Files without layer 0's unused value-residual weights still load; we fill them so that what we
        # save loads strictly in RWKV-LM.
        for name, value in value_lora_init(config, 0, seed=0).items():
            state.setdefault(f"blocks.0.att.{name}", value)
    # Convert one tensor at a time and hand the results to the module as they are (assign=True): the
    # memory-mapped file is never copied whole, so loading needs ~1x the model's size, not 2x.
    state = {key: _materialize(value, target_device, target_dtype, keep_mapped=mmap) for key, value in state.items()}
    with torch.device("meta"):
        model = PretrainedRWKV7(config, hub_config=hub_config, generation_config=generation_config,
                                wkv_backend=wkv_backend, grad_cp=grad_cp)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _materialize(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype, *, keep_mapped: bool) -> torch.Tensor:
    """``tensor`` on ``device`` in ``dtype``, in memory of its own unless ``keep_mapped`` allows sharing the file's.

    A tensor left on the file's mapping dies with the file: a non-atomic rewrite of it (``torch.save`` to
    the same path, ``cp``) would truncate the pages under the model.
    """
    out = tensor.to(device=device, dtype=dtype)
    if not keep_mapped and out.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
        out = out.clone()
    return out


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

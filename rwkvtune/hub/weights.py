"""Reading and writing weight files (``.pth`` and ``.safetensors``) safely.

Loading never executes pickled code (``weights_only=True``) and memory-maps where it can, so a
multi-GB file is paged in on use instead of read into RAM and then copied.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rwkvtune.config import RWKV7Config, config_from_shapes
from rwkvtune.config.model import check_state_dict_shapes
from rwkvtune.hub.files import atomic_write

SAVE_FORMATS = ("pth", "safetensors")


def weights_format(path: str | os.PathLike) -> str:
    """``"safetensors"`` for a ``.safetensors`` file, else ``"pth"`` (the RWKV convention)."""
    return "safetensors" if str(path).endswith(".safetensors") else "pth"


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a flat ``{key: tensor}`` state dict from ``path``, memory-mapped when possible.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for one that is
    truncated, corrupt, not a weights file, or not a flat dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if weights_format(path) == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = _load_pth(path)
    except (FileNotFoundError, PermissionError, MemoryError):
        raise
    except Exception as err:  # torch, zipfile, pickle and safetensors each raise their own types
        raise ValueError(f"cannot read weights file {path}: {_first_line(err)}. The file is truncated, "
                         "corrupt or not a PyTorch/safetensors weights file; download or export it again") from err
    return _check_flat(state, path)


def load_rwkv7_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], RWKV7Config]:
    """Load an official-format RWKV-7 state dict and the architecture its shapes imply.

    Strict: raises one ``ValueError`` (naming the file) listing every missing, unexpected or mis-shaped key.
    """
    state = load_weights(path)
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    try:
        config = config_from_shapes(shapes)
        check_state_dict_shapes(config, shapes)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return state, config


def _load_pth(path: Path) -> object:
    # mmap needs the zip format every torch >= 1.6 writes; fall back to a plain read for legacy files.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _check_flat(state: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    nested = [key for key, value in state.items() if isinstance(value, dict)]
    if nested:
        raise ValueError(f"{path} is not a flat state dict: {', '.join(map(repr, nested[:5]))} hold nested dicts "
                         "(a training checkpoint?). Save its model weights alone, e.g. torch.save(ckpt['state_dict'])")
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor) or not isinstance(key, str)]
    if bad:
        raise ValueError(f"{path} is not a state dict of tensors: entries {bad[:5]} are not tensors")
    return state


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, save_format: str | None = None) -> None:
    """Write ``state`` to ``path`` atomically as ``pth`` (torch zip) or ``safetensors``."""
    save_format = save_format or weights_format(path)
    if save_format not in SAVE_FORMATS:
        raise ValueError(f"unknown save format {save_format!r}; choose one of: {', '.join(SAVE_FORMATS)}")
    # Plain contiguous CPU tensors: what the rwkv runtime and RWKV-LM expect to find in a file.
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    if save_format == "safetensors":
        from safetensors.torch import save_file

        atomic_write(path, lambda tmp: save_file(tensors, tmp))
    else:
        atomic_write(path, lambda tmp: torch.save(tensors, tmp))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__

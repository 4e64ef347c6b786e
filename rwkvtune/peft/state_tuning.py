"""State tuning: train only the WKV state every sequence starts from, one ``[H, N, N]`` matrix per layer.

The model is frozen; the tuned state is the whole "adapter" (a few MB even for large models) and acts as a
learned, zero-cost prompt. It cannot be merged into the weights: it is loaded beside the base model.

Layout of the saved file (``state_tuning.safetensors``): key ``blocks.{i}.att.time_state``, float32, shape
``[H, N(value), N(key)]``. That is RWKV-PEFT's key and layout for RWKV-7 state files (its kernels take the
transpose, ``[H, key, value]``) and the ``rwkv`` runtime's layout for the WKV part of the state (the second
of the three tensors per layer), so a tuned state enters that runtime as it is, with zero token shifts
(``StateTunedModel.initial_state(1).to_rwkv_list()``). RWKV-PEFT ``.pth`` state files of RWKV-7 load
unchanged (those of RWKV-6 used ``[H, key, value]`` and do not apply). The safetensors metadata holds the
base model's fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from rwkvtune.hub.files import atomic_write
from rwkvtune.model import RWKV7, RWKV7Output, RWKV7Scores, RWKVState
from rwkvtune.peft.fingerprint import architecture_problems, base_fingerprint, describe
from rwkvtune.version import __version__

if TYPE_CHECKING:  # for StateTunedModel.generate's annotations only
    from rwkvtune.generation import Completion, SamplingParams
    from rwkvtune.tokenizer import WorldTokenizer

STATE_FILE = "state_tuning.safetensors"
STATE_KEY = "blocks.{}.att.time_state"
FORMAT = "rwkvtune-state-tuning"


class StateTunedModel(nn.Module):
    """An ``RWKV7`` (frozen) whose sequences start from a trained WKV state.

    Every path that starts a sequence (``forward`` / ``forward_hidden`` without a state, training,
    ``generate`` and the generation engine's prefill) starts from :meth:`initial_state`; a state passed
    explicitly is used as it is.

    Args:
        model: the base model; its parameters are frozen.
        time_state: ``[L, H, N, N]`` starting values (``[value, key]`` layout); zeros when ``None``.
    """

    def __init__(self, model: RWKV7, time_state: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(model, RWKV7):
            raise TypeError(f"state tuning needs a plain RWKV7 model, got {type(model).__name__}")
        config = model.config
        shape = (config.n_layer, config.n_head, config.head_size, config.head_size)
        if time_state is None:
            time_state = torch.zeros(shape)
        elif tuple(time_state.shape) != shape:
            raise ValueError(f"time_state has shape {tuple(time_state.shape)}; this model needs {shape} (L, H, N, N)")
        self.base_fingerprint = base_fingerprint(model)
        self.model = model.requires_grad_(False)
        self.time_state = nn.Parameter(time_state.detach().to(device=model.device, dtype=torch.float32).clone())

    @property
    def config(self):
        return self.model.config

    @property
    def head(self) -> nn.Module:
        return self.model.head

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def generation_config(self) -> dict[str, Any] | None:
        return getattr(self.model, "generation_config", None)

    def get_base_model(self) -> RWKV7:
        """The frozen ``RWKV7`` (what the generation engine's decoder runs)."""
        return self.model

    def initial_state(self, batch_size: int) -> RWKVState:
        """``batch_size`` copies of the tuned state (zero token shifts); differentiable in ``time_state``."""
        zeros = self.model.zero_state(batch_size)
        wkv = self.time_state.unsqueeze(1).repeat(1, batch_size, 1, 1, 1)  # [L, B, H, N, N]
        return RWKVState(zeros.att_shift, wkv, zeros.ffn_shift)

    def zero_state(self, batch_size: int) -> RWKVState:
        """The untuned all-zero state."""
        return self.model.zero_state(batch_size)

    def forward_hidden(self, input_ids: torch.Tensor, state: RWKVState | None = None):
        """``RWKV7.forward_hidden`` from the tuned state when ``state`` is ``None``."""
        return self.model.forward_hidden(input_ids, state if state is not None else self.initial_state(len(input_ids)))

    def forward(self, input_ids: torch.Tensor, state: RWKVState | None = None, return_state: bool = False,
                labels: torch.Tensor | None = None, shift_labels: torch.Tensor | None = None) -> RWKV7Output:
        """``RWKV7.forward`` from the tuned state when ``state`` is ``None``."""
        start = state if state is not None else self.initial_state(input_ids.shape[0])
        return self.model(input_ids, start, return_state=return_state, labels=labels, shift_labels=shift_labels)

    def score(self, input_ids: torch.Tensor, targets: torch.Tensor, state: RWKVState | None = None, *,
              temperature: float = 1.0) -> RWKV7Scores:
        """``RWKV7.score`` from the tuned state when ``state`` is ``None``."""
        start = state if state is not None else self.initial_state(input_ids.shape[0])
        return self.model.score(input_ids, targets, start, temperature=temperature)

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state: RWKVState | None = None) -> tuple[torch.Tensor, RWKVState]:
        """One RNN step (``RWKV7.step``) from the tuned state when ``state`` is ``None``."""
        return self.model.step(token_ids, state if state is not None else self.initial_state(len(token_ids)))

    def generate(self, prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
                 params: SamplingParams | None = None, tokenizer: WorldTokenizer | None = None) -> list[Completion]:
        """``rwkvtune.generation.generate(self, ...)``: every prompt is read from the tuned state."""
        # An upward import (exempted in tests/test_layering.py), as in RWKV7.generate: this only forwards.
        from rwkvtune.generation import generate

        return generate(self, prompts, params, tokenizer)

    def check_resume(self, checkpoint: str | os.PathLike) -> None:
        """Refuse to resume from a state tuned on another base (the shapes are checked on load)."""
        path = Path(checkpoint) / STATE_FILE
        if not path.is_file():
            return
        saved = load_state(path, self.model)[1] or {}
        if saved.get("weights_sha256", self.base_fingerprint["weights_sha256"]) != self.base_fingerprint["weights_sha256"]:
            raise ValueError(f"cannot resume from {checkpoint}: its state was tuned on a base with weights sha256 "
                             f"{saved['weights_sha256'][:16]}..., this base has "
                             f"{self.base_fingerprint['weights_sha256'][:16]}...; resume with the base the run started with")

    def save_pretrained(self, save_directory: str | os.PathLike, *,
                        state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write ``state_tuning.safetensors`` into ``save_directory``; returns the file's path.

        ``state_dict`` (this module's keys) replaces the live tensor, e.g. one gathered from a sharded run.
        """
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        state = self.time_state if state_dict is None else state_dict["time_state"]
        return save_state(state, out / STATE_FILE, self.base_fingerprint)


def save_state(time_state: torch.Tensor, path: str | os.PathLike, fingerprint: dict[str, Any]) -> Path:
    """Write ``[L, H, N, N]`` as a state file (keys ``blocks.{i}.att.time_state``), atomically."""
    tensors = {STATE_KEY.format(i): layer.detach().to("cpu", torch.float32).contiguous()
               for i, layer in enumerate(time_state)}
    metadata = {"format": FORMAT, "layout": "[H, N(value), N(key)] float32 per layer", "base": json.dumps(fingerprint),
                "rwkvtune_version": __version__}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return Path(path)


def load_state(path: str | os.PathLike, model: RWKV7) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """``([L, H, N, N] float32, base fingerprint or None)`` from a state file (ours or RWKV-PEFT's ``.pth``)
    or a directory holding ``state_tuning.safetensors``, checked against ``model``'s shapes."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"state file not found: {path} (pass a {STATE_FILE}, a state-tuning checkpoint "
                                "directory, or an RWKV-PEFT .pth state file)")
    fingerprint = None
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        fingerprint = json.loads(metadata["base"]) if "base" in metadata else None
    else:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    config = model.config
    shape = (config.n_head, config.head_size, config.head_size)
    expected = [STATE_KEY.format(i) for i in range(config.n_layer)]
    problems = [f"{key} missing" for key in expected if key not in tensors]
    problems += [f"{key} has shape {tuple(tensors[key].shape)}, expected {shape}"
                 for key in expected if key in tensors and tuple(tensors[key].shape) != shape]
    problems += [f"unexpected key {key}" for key in tensors if key not in expected]
    if problems:
        raise ValueError(f"{path} is not a state for this model ({describe(dataclasses.asdict(config))}, H={config.n_head}, "
                         f"N={config.head_size}):\n  " + "\n  ".join(problems[:10]))
    if fingerprint is not None:
        mismatch = architecture_problems(fingerprint.get("architecture", {}), config)
        if mismatch:
            raise ValueError(f"the state in {path} was tuned on a {describe(fingerprint['architecture'])} base; this "
                             f"base is {describe(dataclasses.asdict(config))}:\n  " + "\n  ".join(mismatch))
    return torch.stack([tensors[key].float() for key in expected]), fingerprint


def load_state_tuning(model: RWKV7, path: str | os.PathLike) -> StateTunedModel:
    """``model`` starting from the state saved at ``path``; warns when it was tuned on other weights."""
    time_state, saved = load_state(path, model)
    tuned = StateTunedModel(model, time_state)
    if saved is not None and saved.get("weights_sha256") != tuned.base_fingerprint["weights_sha256"]:
        warnings.warn(f"the state in {path} was tuned on a base with weights sha256 "
                      f"{str(saved.get('weights_sha256'))[:16]}..., but this base has "
                      f"{tuned.base_fingerprint['weights_sha256'][:16]}...: it loads, but the result is not what "
                      "was trained", stacklevel=2)
    return tuned

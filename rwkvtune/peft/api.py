"""Entry points: wrap a model for LoRA or state tuning, load a saved adapter or state, look through wrappers."""

from __future__ import annotations

import os
from pathlib import Path

import peft
from torch import nn

from rwkvtune.model import RWKV7
from rwkvtune.peft.config import StateTuningConfig
from rwkvtune.peft.lora import ADAPTER_WEIGHTS_FILE, RWKVPeftModel, wrap_lora
from rwkvtune.peft.state_tuning import STATE_FILE, StateTunedModel, load_state_tuning

PeftConfigLike = peft.LoraConfig | StateTuningConfig


def get_peft_model(model: RWKV7, peft_config: PeftConfigLike, adapter_name: str = "default",
                   *, verbose: bool = True) -> RWKVPeftModel | StateTunedModel:
    """``model`` ready for parameter-efficient training; prints trainable vs total parameters.

    Args:
        model: a plain ``RWKV7`` (e.g. ``AutoModel.from_pretrained(...)``).
        peft_config: ``rwkvtune.peft.LoraConfig`` (or any peft LoRA config) -> ``RWKVPeftModel``;
            ``StateTuningConfig`` -> ``StateTunedModel``.
        adapter_name: peft's adapter name.
        verbose: print the parameter counts.
    """
    if isinstance(peft_config, StateTuningConfig):
        if not isinstance(model, RWKV7):
            raise TypeError(f"state tuning needs a plain RWKV7 model, got {type(model).__name__}")
        wrapped: nn.Module = (load_state_tuning(model, peft_config.init_state) if peft_config.init_state
                              else StateTunedModel(model))
    elif isinstance(peft_config, peft.LoraConfig):
        wrapped = wrap_lora(model, peft_config, adapter_name)
    else:
        raise TypeError(f"unsupported peft config {type(peft_config).__name__}: use rwkvtune.peft.LoraConfig "
                        "(LoRA, DoRA, PiSSA, ...) or rwkvtune.peft.StateTuningConfig")
    if verbose:
        trainable, total = count_parameters(wrapped)
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")
    return wrapped


def load_adapter(model: RWKV7, path: str | os.PathLike, *, is_trainable: bool = False,
                 ) -> RWKVPeftModel | StateTunedModel:
    """Put a saved adapter onto the plain base ``model``: a LoRA adapter directory or checkpoint directory
    (-> ``RWKVPeftModel``), or a tuned state (a state-tuning checkpoint directory or state file ->
    ``StateTunedModel``). ``is_trainable``: train it further (else it is frozen)."""
    path = Path(path)
    if path.name == ADAPTER_WEIGHTS_FILE:
        path = path.parent
    if path.is_file() or (path / STATE_FILE).is_file():
        tuned = load_state_tuning(model, path)
        tuned.time_state.requires_grad_(is_trainable)
        return tuned
    return RWKVPeftModel.from_pretrained(model, path, is_trainable=is_trainable)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (each tensor once)."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

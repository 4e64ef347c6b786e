"""``LoraConfig`` (HF peft's, with the seed README's defaults and RWKV's ``train_parts``) and ``StateTuningConfig``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import peft

from rwkvtune.peft.targets import AUTO_TARGETS, TRAIN_PARTS, VALID_TARGETS, resolve_target_modules, resolve_train_parts


@dataclass
class LoraConfig(peft.LoraConfig):
    """HF peft's ``LoraConfig`` with RWKV-7 defaults; every peft option that works on linear layers passes
    through (``use_dora``, ``use_rslora``, ``init_lora_weights`` including ``"pissa"``, ``bias``, ...).

    ``target_modules`` is resolved at construction: ``"auto"`` becomes the attention receptance / key /
    value / output and the channel-mix key / value projections of every block. The object is a
    ``peft.LoraConfig`` and also works with ``peft.get_peft_model`` (without ``train_parts``).
    """

    r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha: the update is scaled by lora_alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    target_modules: Any = field(default="auto", metadata={
        "help": f"'auto' ({', '.join(AUTO_TARGETS)}) or a list of: {', '.join(VALID_TARGETS)}."})
    train_parts: Any = field(default=None, metadata={
        "help": f"Full-rank tensors trained beside LoRA, saved with the adapter and merged: any of "
                f"{', '.join(TRAIN_PARTS)} (a list or comma-separated); None = LoRA only. 'ln' = every "
                "LayerNorm/GroupNorm; 'time' = the time-mix/channel-mix tensors that are not projections "
                "(x_*, w0-w2, a0-a2, v0-v2, g1-g2, k_k, k_a, r_k); 'emb' and 'head' = those matrices."})

    def __post_init__(self) -> None:
        self.target_modules = resolve_target_modules(self.target_modules)
        self.train_parts = resolve_train_parts(self.train_parts)
        if "head" in self.train_parts and "head" in self.target_modules:
            raise ValueError("'head' is both a LoRA target and a train_part; choose one (train_parts trains it "
                             "full-rank, a LoRA target adds a low-rank update)")
        super().__post_init__()

    def to_peft(self) -> peft.LoraConfig:
        """The same settings as a plain ``peft.LoraConfig`` (what ``adapter_config.json`` holds)."""
        own = {f.name for f in dataclasses.fields(LoraConfig)} - {f.name for f in dataclasses.fields(peft.LoraConfig)}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init and f.name not in own}
        values["target_modules"] = sorted(self.target_modules)
        return peft.LoraConfig(**values)


@dataclass
class StateTuningConfig:
    """Train only each layer's initial WKV state (``[H, N, N]`` float32 per layer); the model is frozen.

    Attributes:
        init_state: a state file to start from (one saved by rwkvtune, or an RWKV-PEFT ``.pth``);
            ``None`` starts from zeros (the untuned model's behaviour).
    """

    init_state: str | None = None

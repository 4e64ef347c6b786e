"""What a LoRA run on RWKV-7 can adapt (``target_modules``) and train beside it (``train_parts``).

Module names follow the official checkpoint keys (``blocks.N.att.key``, ``blocks.N.ffn.value``, ``head``).
peft matches a target name against the end of a module's dotted name, so ``"key"`` adapts both the
attention and the channel-mix key projections, and ``"att.key"`` only the attention one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from torch import nn

#: The linear projections of a block, by their qualified names, and the output head.
ATTENTION_TARGETS = ("att.receptance", "att.key", "att.value", "att.output")
FFN_TARGETS = ("ffn.key", "ffn.value")
#: ``target_modules="auto"``: every projection inside the blocks (RWKV-PEFT's default set); not the head.
AUTO_TARGETS = ATTENTION_TARGETS + FFN_TARGETS
#: Every name accepted in ``target_modules``: qualified names, their short forms, and the head.
VALID_TARGETS = AUTO_TARGETS + ("receptance", "key", "value", "output", "att", "ffn", "head")

#: ``train_parts``: full-rank tensors trained beside LoRA, matched on official keys.
TRAIN_PARTS: dict[str, re.Pattern[str]] = {
    # every LayerNorm / GroupNorm weight and bias: ln0, ln1, ln2, att.ln_x, ln_out
    "ln": re.compile(r"(^|\.)ln(0|1|2|_x|_out)\.(weight|bias)$"),
    # the time-mix and channel-mix tensors that are not projections: token-shift mixes, decay, in-context
    # rate, value-residual and gate low-rank MLPs with their biases, key scalings, the bonus (RWKV-PEFT's
    # "time" on RWKV-6, whose names all started with time_)
    "time": re.compile(r"^blocks\.\d+\.(att\.(x_[rwkvag]|[wav][012]|g[12]|k_k|k_a|r_k)|ffn\.x_k)$"),
    "emb": re.compile(r"^emb\.weight$"),
    "head": re.compile(r"^head\.weight$"),
}


def resolve_target_modules(target_modules: str | Iterable[str] | None) -> list[str]:
    """``"auto"`` (or ``None``) -> :data:`AUTO_TARGETS`; a list is checked name by name.

    ``"att"`` and ``"ffn"`` stand for all projections of that half of the block.

    Raises:
        ValueError: an unknown name (all listed, with the valid ones).
    """
    if target_modules is None or isinstance(target_modules, str):
        names = list(AUTO_TARGETS) if target_modules in (None, "auto") else [target_modules]
    else:
        names = list(target_modules)
    unknown = [name for name in names if name not in VALID_TARGETS]
    if unknown or not names:
        raise ValueError(f"unknown LoRA target_modules {unknown or names!r} for RWKV-7; choose 'auto' or names "
                         f"from: {', '.join(VALID_TARGETS)}")
    expanded: list[str] = []
    for name in names:
        for target in {"att": ATTENTION_TARGETS, "ffn": FFN_TARGETS}.get(name, (name,)):
            if target not in expanded:
                expanded.append(target)
    return expanded


def resolve_train_parts(train_parts: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"ln,time"``, ``["ln", "time"]`` or ``None`` -> a tuple of part names in a fixed order."""
    if train_parts is None:
        return ()
    names = [p.strip() for p in train_parts.split(",") if p.strip()] if isinstance(train_parts, str) \
        else list(train_parts)
    unknown = [name for name in names if name not in TRAIN_PARTS]
    if unknown:
        raise ValueError(f"unknown train_parts {unknown!r}; choose from: {', '.join(TRAIN_PARTS)}")
    return tuple(part for part in TRAIN_PARTS if part in names)


def train_part_parameters(model: nn.Module, parts: Iterable[str]) -> Iterator[tuple[str, nn.Parameter]]:
    """``(official key, parameter)`` of every parameter of a plain ``RWKV7`` that ``parts`` select."""
    patterns = [TRAIN_PARTS[part] for part in parts]
    for name, param in model.named_parameters():
        if any(pattern.search(name) for pattern in patterns):
            yield name, param

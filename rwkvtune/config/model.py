"""RWKV-7 architecture: the dimensions a checkpoint's tensor shapes fix, and the official size presets.

The architecture of a checkpoint always comes from its weights (``config_from_shapes``); presets and
``config.json`` only serve as a check against it. Released sizes do not follow one formula for the
low-rank widths (the 0.4B gate is 128, 13.3B is its own), so nothing here derives them from ``n_embd``
when loading.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

#: Dimension names in the order they are reported.
ARCH_FIELDS = (
    "n_layer",
    "n_embd",
    "vocab_size",
    "head_size",
    "dim_ffn",
    "dim_decay_lora",
    "dim_iclr_lora",
    "dim_value_lora",
    "dim_gate_lora",
)


@dataclass(frozen=True)
class RWKV7Config:
    """Architecture of one RWKV-7 model.

    Attributes:
        n_layer: number of blocks ``L``.
        n_embd: model width ``C`` (a multiple of ``head_size``).
        vocab_size: rows of ``emb.weight`` and ``head.weight`` (65536 for the World tokenizer).
        head_size: channels per head ``N`` (64 in every official model).
        dim_ffn: channel-mix hidden width ``F`` (``4 * n_embd`` in every official model).
        dim_decay_lora: low-rank width of the decay MLP (``att.w1``/``w2``).
        dim_iclr_lora: low-rank width of the in-context learning rate MLP (``att.a1``/``a2``).
        dim_value_lora: low-rank width of the value-residual MLP (``att.v1``/``v2``).
        dim_gate_lora: low-rank width of the output gate MLP (``att.g1``/``g2``).
    """

    n_layer: int
    n_embd: int
    vocab_size: int = 65536
    head_size: int = 64
    dim_ffn: int | None = None
    dim_decay_lora: int | None = None
    dim_iclr_lora: int | None = None
    dim_value_lora: int | None = None
    dim_gate_lora: int | None = None

    def __post_init__(self) -> None:
        # Unset widths take RWKV-LM's current suggestion for *new* models (spec section 5).
        c = self.n_embd
        defaults = {
            "dim_ffn": 4 * c,
            "dim_decay_lora": _round32(2.5 * c**0.5),
            "dim_iclr_lora": _round32(2.5 * c**0.5),
            "dim_value_lora": _round32(1.7 * c**0.5),
            "dim_gate_lora": _round32(5.0 * c**0.5),
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        problems = [f"{name} must be a positive integer, got {getattr(self, name)!r}"
                    for name in ARCH_FIELDS
                    if not isinstance(getattr(self, name), int) or getattr(self, name) < 1]
        if not problems and self.n_embd % self.head_size:
            problems.append(f"n_embd ({self.n_embd}) must be a multiple of head_size ({self.head_size})")
        if problems:
            raise ValueError("invalid RWKV-7 config: " + "; ".join(problems))

    @property
    def n_head(self) -> int:
        """Number of heads ``H = n_embd / head_size``."""
        return self.n_embd // self.head_size

    def arch_dict(self) -> dict[str, int]:
        """The dimensions as a plain dict, in ``ARCH_FIELDS`` order."""
        return {name: getattr(self, name) for name in ARCH_FIELDS}

    def differences(self, other: RWKV7Config) -> list[str]:
        """Human-readable ``name: ours vs theirs`` lines for every dimension that differs."""
        return [f"{name}: {getattr(self, name)} vs {getattr(other, name)}"
                for name in ARCH_FIELDS if getattr(self, name) != getattr(other, name)]

    def num_parameters(self, *, layer0_value_lora: bool = True) -> int:
        """Parameter count of the checkpoint (spec section 1.5)."""
        c, f = self.n_embd, self.dim_ffn
        lora = self.dim_decay_lora + self.dim_iclr_lora + self.dim_value_lora + self.dim_gate_lora
        total = 2 * self.vocab_size * c + 4 * c + self.n_layer * (19 * c + 4 * c * c + 2 * c * f + 2 * c * lora)
        if not layer0_value_lora:
            total -= c + 2 * c * self.dim_value_lora
        return total

    def replace(self, **changes: Any) -> RWKV7Config:
        return dataclasses.replace(self, **changes)


def _round32(x: float) -> int:
    return max(32, 32 * round(x / 32))


def _preset(n_layer: int, n_embd: int, dw: int, dv: int, dg: int) -> RWKV7Config:
    return RWKV7Config(n_layer=n_layer, n_embd=n_embd, vocab_size=65536, head_size=64, dim_ffn=4 * n_embd,
                       dim_decay_lora=dw, dim_iclr_lora=dw, dim_value_lora=dv, dim_gate_lora=dg)


#: Official released sizes (spec section 6), keyed by the ``--config-name`` users pass.
PRESETS: dict[str, RWKV7Config] = {
    "rwkv7-0.1b": _preset(12, 768, 64, 32, 128),
    "rwkv7-0.4b": _preset(24, 1024, 64, 32, 128),
    "rwkv7-1.5b": _preset(24, 2048, 96, 64, 256),
    "rwkv7-2.9b": _preset(32, 2560, 96, 64, 320),
    "rwkv7-7.2b": _preset(32, 4096, 128, 96, 480),
    "rwkv7-13.3b": _preset(61, 4096, 192, 128, 384),
}

#: Training context length written into ``config.json`` per preset (the ``ctxN`` of the release).
PRESET_CTX_LEN: dict[str, int] = {name: (8192 if name == "rwkv7-13.3b" else 4096) for name in PRESETS}


def get_preset(name: str) -> RWKV7Config:
    """The preset called ``name``; an unknown name lists the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown config name {name!r}; choose one of: {', '.join(PRESETS)}, "
                         "or 'auto' to infer the architecture from the weights") from None


_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")

#: Keys whose shapes fix the architecture, and what reading them needs.
_SHAPE_SOURCES = ("emb.weight", "blocks.0.att.r_k", "blocks.0.att.w1", "blocks.0.att.a1", "blocks.0.att.g1",
                  "blocks.0.ffn.key.weight")


def config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> RWKV7Config:
    """Infer the architecture from a state dict's key -> shape mapping (spec section 1.4).

    Raises ``ValueError`` naming the missing keys when the mapping is not an RWKV-7 state dict.
    """
    missing = [key for key in _SHAPE_SOURCES if key not in shapes]
    layers = {int(m.group(1)) for key in shapes if (m := _BLOCK_KEY.match(key))}
    if layers and max(layers) >= 1 and "blocks.1.att.v1" not in shapes:
        missing.append("blocks.1.att.v1")
    if missing:
        hint = _prefix_hint(shapes)
        raise ValueError("not an RWKV-7 state dict: missing " + ", ".join(missing) + (f". {hint}" if hint else ""))
    # Every key the dimensions are read from is a matrix in the official format (r_k is [H, N]).
    not_2d = [f"{key} {tuple(shapes[key])}" for key in (*_SHAPE_SOURCES, "blocks.1.att.v1")
              if key in shapes and len(shapes[key]) != 2]
    if not_2d:
        raise ValueError("not an RWKV-7 state dict in the official layout: these must be 2-D: " + ", ".join(not_2d))
    vocab_size, n_embd = shapes["emb.weight"]
    n_head, head_size = shapes["blocks.0.att.r_k"]
    n_layer = max(layers) + 1
    if n_layer >= 2:
        dim_value_lora = shapes["blocks.1.att.v1"][1]
    elif "blocks.0.att.v1" in shapes:
        dim_value_lora = shapes["blocks.0.att.v1"][1]
    else:
        dim_value_lora = None  # unused in a one-layer model; the default width is as good as any
    return RWKV7Config(
        n_layer=n_layer,
        n_embd=n_embd,
        vocab_size=vocab_size,
        head_size=head_size,
        dim_ffn=shapes["blocks.0.ffn.key.weight"][0],
        dim_decay_lora=shapes["blocks.0.att.w1"][1],
        dim_iclr_lora=shapes["blocks.0.att.a1"][1],
        dim_value_lora=dim_value_lora,
        dim_gate_lora=shapes["blocks.0.att.g1"][1],
    )


def _prefix_hint(shapes: Mapping[str, Sequence[int]]) -> str:
    """Explain the usual reason official keys are missing: a wrapper prefix added by a trainer."""
    for key in shapes:
        if key.endswith("emb.weight") and key != "emb.weight":
            prefix = key[: -len("emb.weight")]
            return (f"The keys carry the prefix {prefix!r} (a training wrapper's state dict?); "
                    "strip it so the keys are the official ones (emb.weight, blocks.0.att.r_k, ...).")
    return ""


def expected_shapes(config: RWKV7Config, *, layer0_value_lora: bool = True) -> dict[str, tuple[int, ...]]:
    """Every key of an official checkpoint of this architecture with its shape (spec section 1.2)."""
    c, f, v = config.n_embd, config.dim_ffn, config.vocab_size
    h, n = config.n_head, config.head_size
    shapes: dict[str, tuple[int, ...]] = {"emb.weight": (v, c)}
    for i in range(config.n_layer):
        p = f"blocks.{i}."
        if i == 0:
            shapes[p + "ln0.weight"] = shapes[p + "ln0.bias"] = (c,)
        for ln in ("ln1", "ln2", "att.ln_x"):
            shapes[f"{p}{ln}.weight"] = shapes[f"{p}{ln}.bias"] = (c,)
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            shapes[f"{p}att.{name}"] = (1, 1, c)
        for name, dim in (("w", config.dim_decay_lora), ("a", config.dim_iclr_lora), ("g", config.dim_gate_lora)):
            shapes[f"{p}att.{name}1"] = (c, dim)
            shapes[f"{p}att.{name}2"] = (dim, c)
        if i > 0 or layer0_value_lora:
            shapes[p + "att.v0"] = (1, 1, c)
            shapes[p + "att.v1"] = (c, config.dim_value_lora)
            shapes[p + "att.v2"] = (config.dim_value_lora, c)
        shapes[p + "att.r_k"] = (h, n)
        for proj in ("receptance", "key", "value", "output"):
            shapes[f"{p}att.{proj}.weight"] = (c, c)
        shapes[p + "ffn.x_k"] = (1, 1, c)
        shapes[p + "ffn.key.weight"] = (f, c)
        shapes[p + "ffn.value.weight"] = (c, f)
    shapes["ln_out.weight"] = shapes["ln_out.bias"] = (c,)
    shapes["head.weight"] = (v, c)
    return shapes


#: Layer-0 value-residual keys: unused by the math, present in official files, optional on load.
LAYER0_OPTIONAL_KEYS = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def check_state_dict_shapes(config: RWKV7Config, shapes: Mapping[str, Sequence[int]]) -> None:
    """Raise one ``ValueError`` listing every missing, unexpected and mis-shaped key."""
    expected = expected_shapes(config)
    missing = [k for k in expected if k not in shapes and k not in LAYER0_OPTIONAL_KEYS]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k}: {tuple(shapes[k])} (expected {expected[k]})"
             for k in expected if k in shapes and tuple(shapes[k]) != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): " + ", ".join(_clip(missing)))
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(_clip(unexpected)))
        if wrong:
            parts.append(f"wrong shapes ({len(wrong)}): " + ", ".join(_clip(wrong)))
        raise ValueError("state dict does not match an RWKV-7 model of "
                         f"{_describe(config)}:\n  " + "\n  ".join(parts))


def _clip(items: list[str], limit: int = 12) -> list[str]:
    return items if len(items) <= limit else items[:limit] + [f"... and {len(items) - limit} more"]


def _describe(config: RWKV7Config) -> str:
    return f"L{config.n_layer}-C{config.n_embd}-V{config.vocab_size}"

"""The Hugging Face layout of RWKV-7 (flash-linear-attention's ``RWKV7ForCausalLM``), both ways.

What transformers with fla, fla itself and llama.cpp's HF-to-GGUF converter read. The facts come from fla's
``utils/convert_from_rwkv7.py`` and ``fla/layers/rwkv7.py``; official key -> fla key:

* ``emb.weight`` -> ``model.embeddings.weight``; ``ln_out`` -> ``model.norm``; ``head.weight`` -> ``lm_head.weight``
* ``blocks.{i}.ln0`` -> ``model.layers.{i}.pre_norm`` (layer 0 only); ``ln1`` -> ``attn_norm``; ``ln2`` -> ``ffn_norm``
* ``att.receptance|key|value|output`` -> ``attn.r_proj|k_proj|v_proj|o_proj``; ``att.ln_x`` -> ``attn.g_norm``
* the low-rank MLPs ``{w,a,v,g}1`` ``[C, D]`` and ``{w,a,v,g}2`` ``[D, C]`` are ``nn.Linear`` weights there, so
  transposed: ``attn.{t}_lora.lora.0.weight`` ``[D, C]`` and ``attn.{t}_lora.lora.2.weight`` ``[C, D]``; the
  biases ``w0``, ``a0``, ``v0`` ``[1, 1, C]`` become ``attn.{t}_lora.lora.2.bias`` ``[C]``
* ``att.k_k``, ``att.k_a`` and ``ffn.x_k`` ``[1, 1, C]`` are ``[C]`` there; ``att.x_*`` stay ``[1, 1, C]``;
  ``att.r_k`` ``[H, N]`` and ``ffn.key|value`` are unchanged
* fla's layer 0 has no value LoRA: layer 0's ``v0``/``v1``/``v2``, which no runtime reads (the first layer's
  values are the residual every later layer mixes in), are not carried. Loaded back, they get the values
  RWKV-LM's initialisation gives them, so that the official file still loads strictly everywhere.

Every other tensor maps one to one, values and dtype unchanged, so official -> HF -> official is
bit-identical but for those three.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from rwkvtune.config import RWKV7Config

ARCHITECTURE = "RWKV7ForCausalLM"
MODEL_TYPE = "rwkv7"
#: Official keys the layout does not carry (layer 0's unused value-residual MLP).
NOT_CARRIED = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")

_TOP = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight",
        "ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight"}
_PARTS = {"ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm", "att.receptance": "attn.r_proj",
          "att.key": "attn.k_proj", "att.value": "attn.v_proj", "att.output": "attn.o_proj", "att.ln_x": "attn.g_norm",
          "ffn.key": "ffn.key", "ffn.value": "ffn.value"}
#: ``[1, 1, C]`` official vectors that fla holds as ``[C]``.
_FLAT = ("att.k_k", "att.k_a", "ffn.x_k")
_MIX = ("att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a", "att.x_g")
_LORA_SLOT = {"0": "lora.2.bias", "1": "lora.0.weight", "2": "lora.2.weight"}

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LORA = re.compile(r"^att\.([wavg])([012])$")
_HF_LORA = re.compile(r"^attn\.([wavg])_lora\.(lora\.[02]\.(?:weight|bias))$")


def hf_key(key: str) -> str:
    """The fla key of official ``key`` (``ValueError`` for a key that is not RWKV-7's)."""
    if key in _TOP:
        return _TOP[key]
    match = _BLOCK.match(key)
    if match is None:
        raise ValueError(f"{key!r} is not an RWKV-7 checkpoint key")
    layer, rest = match.groups()
    lora = _LORA.match(rest)
    if lora is not None:
        kind, slot = lora.groups()
        if kind == "g" and slot == "0":
            raise ValueError(f"{key!r} is not an RWKV-7 checkpoint key (the gate MLP has no bias)")
        return f"model.layers.{layer}.attn.{kind}_lora.{_LORA_SLOT[slot]}"
    for prefix, theirs in _PARTS.items():
        if rest.startswith(prefix + "."):
            return f"model.layers.{layer}.{theirs}{rest[len(prefix):]}"
    if rest in _FLAT or rest in _MIX or rest == "att.r_k":
        return f"model.layers.{layer}.{rest.replace('att.', 'attn.', 1)}"
    raise ValueError(f"{key!r} is not an RWKV-7 checkpoint key")


def official_key(key: str) -> str:
    """The official key of fla ``key`` (``ValueError`` naming it for a key the layout does not have)."""
    for ours, theirs in _TOP.items():
        if key == theirs:
            return ours
    match = _LAYER.match(key)
    if match is None:
        raise ValueError(f"{key!r} is not a key of fla's RWKV-7 layout")
    layer, rest = match.groups()
    lora = _HF_LORA.match(rest)
    if lora is not None:
        kind, slot = lora.groups()
        number = {theirs: ours for ours, theirs in _LORA_SLOT.items()}[slot]
        if kind != "g" or number != "0":
            return f"blocks.{layer}.att.{kind}{number}"
    for ours, theirs in _PARTS.items():
        if rest.startswith(theirs + ".") and (ours != "ln0" or layer == "0"):
            return f"blocks.{layer}.{ours}{rest[len(theirs):]}"
    official = rest.replace("attn.", "att.", 1)
    if official in _FLAT or official in _MIX or official == "att.r_k":
        return f"blocks.{layer}.{official}"
    raise ValueError(f"{key!r} is not a key of fla's RWKV-7 layout")


def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official state dict in fla's layout (layer 0's ``v0``/``v1``/``v2`` left out); values and dtypes
    unchanged, transposed matrices made contiguous."""
    out = {}
    for key, value in state.items():
        if key in NOT_CARRIED:
            continue
        name, change = hf_key(key), _change(key)
        if change == "transpose":
            value = value.t().contiguous()
        elif change == "flatten":
            value = value.reshape(-1)
        out[name] = value
    return out


def from_hf(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """fla-layout tensors -> an official state dict (without layer 0's ``v0``/``v1``/``v2``).

    Raises ``ValueError`` naming ``source`` and every key that is not in the layout.
    """
    out, unknown = {}, []
    for key, value in state.items():
        try:
            ours = official_key(key)
        except ValueError:
            unknown.append(key)
            continue
        if ours in NOT_CARRIED:  # fla's layer 0 has no value LoRA
            unknown.append(key)
            continue
        change = _change(ours)
        if change == "transpose":
            value = value.t().contiguous()
        elif change == "flatten" and value.dim() == 1:  # another shape is left for the shape check to name
            value = value.view(1, 1, -1)
        out[ours] = value
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} tensor(s) that RWKV-7's fla layout does not have: "
                         f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    return out


def _change(key: str) -> str:
    """How official ``key``'s tensor differs in fla's layout: ``transpose`` (the low-rank matrices),
    ``flatten`` (``[1, 1, C]`` vectors held as ``[C]``) or ``keep``."""
    rest = key.split(".", 2)[2] if key.startswith("blocks.") else ""
    lora = _LORA.match(rest)
    if lora is not None:
        return "flatten" if lora.group(2) == "0" else "transpose"
    return "flatten" if rest in _FLAT else "keep"


def hf_config(config: RWKV7Config, *, dtype: torch.dtype, ctx_len: int, **extra: Any) -> dict[str, Any]:
    """The ``config.json`` of fla's ``RWKV7Config`` for ``config`` (plain RWKV-7: sqrelu channel mix,
    LayerNorms with bias, no attention layers mixed in, value width = model width, untied head)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "head_dim": config.head_size,
        "num_heads": config.n_head,
        "intermediate_size": config.dim_ffn,
        "hidden_ratio": config.dim_ffn / config.n_embd,
        "decay_low_rank_dim": config.dim_decay_lora,
        "a_low_rank_dim": config.dim_iclr_lora,
        "v_low_rank_dim": config.dim_value_lora,
        "gate_low_rank_dim": config.dim_gate_lora,
        "value_dim": [config.n_embd] * config.n_layer,
        "hidden_act": "sqrelu",
        "norm_first": True,
        "norm_bias": True,
        "norm_eps": 1e-5,
        "attn": None,
        "tie_word_embeddings": False,
        "max_position_embeddings": ctx_len,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        **extra,
    }


def is_hf_config(data: dict[str, Any]) -> bool:
    """Whether a ``config.json`` is a Hugging Face model's: it names a ``model_type`` and, unlike the
    ``config.json`` of rwkvtune hub directories (0.1.0's included), none of ``n_layer``/``n_embd``."""
    return "model_type" in data and "n_layer" not in data and "n_embd" not in data


def check_hf_config(data: dict[str, Any], source: str) -> None:
    """Raise ``ValueError`` naming ``source`` when a Hugging Face ``config.json`` is not plain RWKV-7."""
    architectures = data.get("architectures") or []
    if data.get("model_type") != MODEL_TYPE or (architectures and ARCHITECTURE not in architectures):
        raise ValueError(f"{source} describes model_type={data.get('model_type')!r}, architectures={architectures}: "
                         f"not RWKV-7 (expected model_type 'rwkv7' and {ARCHITECTURE!r})")
    problems = []
    if data.get("attn"):
        problems.append("attn: softmax-attention layers mixed in (fla's hybrid models) are not RWKV-7's")
    if data.get("hidden_act", "sqrelu") != "sqrelu":
        problems.append(f"hidden_act={data['hidden_act']!r}: RWKV-7's channel mix is sqrelu")
    if data.get("norm_first") is False or data.get("norm_bias") is False:
        problems.append("norm_first/norm_bias: RWKV-7 normalises before each mix, with biased LayerNorms")
    if data.get("tie_word_embeddings"):
        problems.append("tie_word_embeddings=true: RWKV-7's head is a matrix of its own")
    width = data.get("hidden_size")
    values = data.get("value_dim")
    if values is not None and any(v != width for v in (values if isinstance(values, list) else [values])):
        problems.append(f"value_dim={values}: RWKV-7's value width is the model width ({width})")
    if data.get("norm_eps", 1e-5) != 1e-5:
        problems.append(f"norm_eps={data['norm_eps']}: RWKV-7's LayerNorms use 1e-5")
    if problems:
        raise ValueError(f"{source} describes a model rwkvtune's RWKV-7 cannot represent:\n  - "
                         + "\n  - ".join(problems))


def declared_dims(data: dict[str, Any]) -> dict[str, Any]:
    """The architecture a Hugging Face ``config.json`` states, in ``RWKV7Config``'s names."""
    names = {"num_hidden_layers": "n_layer", "hidden_size": "n_embd", "vocab_size": "vocab_size",
             "head_dim": "head_size", "intermediate_size": "dim_ffn", "decay_low_rank_dim": "dim_decay_lora",
             "a_low_rank_dim": "dim_iclr_lora", "v_low_rank_dim": "dim_value_lora",
             "gate_low_rank_dim": "dim_gate_lora"}
    return {ours: data[theirs] for theirs, ours in names.items() if data.get(theirs) is not None}

"""``RWKVPeftModel``: HF peft's ``PeftModel`` made exact for RWKV-7.

What peft does not know about RWKV runs, this class adds:

- ``train_parts`` (LayerNorms, time-mix tensors, embedding, head trained full-rank beside LoRA) are saved
  with the adapter (``train_parts.safetensors``, official keys), loaded with it, merged, and put back to
  the base values while the adapter is disabled, so ``disable_adapter()`` is the base model exactly (the
  GRPO reference model without a second copy);
- ``merge_and_unload`` merges in float32 and casts once, so a bf16 base is not rounded per update;
- a fingerprint of the base (``rwkvtune_adapter.json``) lets loading refuse a base of another shape before
  anything changes, and warn about one with other weights;
- initialisations that rewrite the base (PiSSA, OLoRA, CorDA) are saved converted to a plain LoRA
  against the original base (peft's ``path_initial_model_for_weight_conversion``), so every saved
  adapter merges onto the unmodified base directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peft
import torch
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rwkvtune.hub.files import read_json, write_json
from rwkvtune.model import RWKV7
from rwkvtune.peft.fingerprint import architecture_problems, base_fingerprint, describe
from rwkvtune.peft.targets import train_part_parameters
from rwkvtune.version import __version__

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
TRAIN_PARTS_FILE = "train_parts.safetensors"
ADAPTER_INFO_FILE = "rwkvtune_adapter.json"
#: Initialisations that move part of the base weight into the adapter (the base is changed in memory).
MUTATING_INITS = ("pissa", "olora", "corda")
_PEFT_PREFIX = "base_model.model."


@dataclasses.dataclass
class AdapterInfo:
    """What an ``RWKVPeftModel`` knows beyond peft's config.

    Attributes:
        train_parts: the ``train_parts`` groups trained full-rank beside LoRA.
        base_fingerprint: architecture and weights hash of the base (see ``fingerprint``).
        base_dtype: the base's dtype when wrapped: ``merge_and_unload`` returns this dtype by default.
        base_values: base values of every tensor trained beside the adapter (train parts, peft's ``bias``
            option), by official key, restored while the adapter is disabled.
        initial_adapter: the adapter right after a base-rewriting initialisation (PiSSA, ...), for the
            conversion to a plain LoRA on save; ``None`` otherwise.
    """

    train_parts: tuple[str, ...]
    base_fingerprint: dict[str, Any]
    base_dtype: torch.dtype
    base_values: dict[str, torch.Tensor]
    initial_adapter: dict[str, torch.Tensor] | None = None


class RWKVPeftModel(peft.PeftModel):
    """A LoRA-wrapped ``RWKV7``; build it with ``rwkvtune.peft.get_peft_model`` or ``from_pretrained``."""

    rwkv_info: AdapterInfo

    def trained_base_tensors(self) -> dict[str, torch.nn.Parameter]:
        """Base parameters trained beside the adapter, by official key (train parts, peft's ``bias``)."""
        base = self.get_base_model()
        return {name: base.get_parameter(name) for name in self.rwkv_info.base_values}

    def train_part_tensors(self) -> dict[str, torch.Tensor]:
        """The ``train_parts`` tensors as they are now, by official key."""
        return {name: param.detach() for name, param in
                train_part_parameters(self.get_base_model(), self.rwkv_info.train_parts)}

    # ---- saving -------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        state_dict: dict[str, torch.Tensor] | None = None, **kwargs: Any) -> None:
        """peft's files (``adapter_config.json``, ``adapter_model.safetensors``) plus ``train_parts.safetensors``
        and ``rwkvtune_adapter.json`` (train parts, base fingerprint).

        ``state_dict`` (this model's keys) replaces the live tensors, e.g. weights gathered from a sharded
        run. An adapter from a base-rewriting initialisation is saved as the equivalent plain LoRA of twice
        the rank, valid on the original base.
        """
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        if state_dict is not None:
            kwargs["state_dict"] = state_dict
        initial = self.rwkv_info.initial_adapter
        if initial is None:
            super().save_pretrained(str(out), safe_serialization=safe_serialization, **kwargs)
        else:
            with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                initial_dir = Path(tmp) / "initial"
                initial_dir.mkdir()
                save_file({k: v.contiguous() for k, v in initial.items()}, str(initial_dir / ADAPTER_WEIGHTS_FILE))
                warnings.filterwarnings("ignore", message=".*changes the base weights.*")  # the conversion's own load
                super().save_pretrained(str(out), safe_serialization=True,
                                        path_initial_model_for_weight_conversion=str(initial_dir), **kwargs)
        if self.active_adapter != "default":  # peft puts a named adapter in a folder of that name
            out = out / self.active_adapter
        parts = self.train_part_tensors()
        if state_dict is not None:
            parts = {name: state_dict[_PEFT_PREFIX + name] for name in parts}
        if parts:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in parts.items()}, str(out / TRAIN_PARTS_FILE))
        write_json(out / ADAPTER_INFO_FILE, {"train_parts": list(self.rwkv_info.train_parts),
                                             "base": self.rwkv_info.base_fingerprint,
                                             "rwkvtune_version": __version__})

    # ---- loading ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model: torch.nn.Module, model_id: str | os.PathLike, adapter_name: str = "default",
                        is_trainable: bool = False, config: peft.PeftConfig | None = None,
                        **kwargs: Any) -> RWKVPeftModel:
        """Load the adapter in ``model_id`` (an adapter directory or any LoRA checkpoint directory of a
        run) onto the plain ``RWKV7`` ``model``.

        Raises:
            FileNotFoundError: no such directory, or it lacks the adapter files.
            ValueError: the adapter was trained on a base of another shape (checked before ``model``
                changes).
        """
        path = Path(model_id)
        base = _plain_rwkv7(model)
        info = check_adapter_dir(path, base)
        fingerprint = base_fingerprint(base)
        saved = info.get("base", {}).get("weights_sha256")
        if saved is not None and saved != fingerprint["weights_sha256"]:
            warnings.warn(f"the adapter in {path} was trained on base {_base_name(info['base'])} (weights sha256 "
                          f"{saved[:16]}...), but this base {_base_name(fingerprint)} has other weights (sha256 "
                          f"{fingerprint['weights_sha256'][:16]}...): it loads, but the result is not what was "
                          "trained", stacklevel=2)
        train_parts = tuple(info.get("train_parts", ()))
        beside = dict(train_part_parameters(base, train_parts))
        if read_json(path / ADAPTER_CONFIG_FILE).get("bias", "none") != "none":  # peft saved trained biases
            beside.update((name, param) for name, param in base.named_parameters() if "bias" in name)
        base_values = _snapshot(iter(beside.items()))  # before the adapter's values are loaded over them
        wrapped = super().from_pretrained(base, str(path), adapter_name=adapter_name, is_trainable=is_trainable,
                                          config=config, **kwargs)
        if train_parts:
            saved_parts = load_file(str(path / TRAIN_PARTS_FILE))
            with torch.no_grad():
                for name, param in train_part_parameters(base, train_parts):
                    param.copy_(saved_parts[name])
                    param.requires_grad_(is_trainable)
        wrapped.rwkv_info = AdapterInfo(train_parts, fingerprint, base.dtype, base_values)
        return wrapped

    def check_resume(self, checkpoint: str | os.PathLike) -> None:
        """Refuse to resume from a checkpoint of another adapter (rank, alpha, targets, variant, train parts)
        or of another base: its tensors could load, but the run would not continue the one saved."""
        path = Path(checkpoint)
        saved = read_json(path / ADAPTER_CONFIG_FILE) if (path / ADAPTER_CONFIG_FILE).is_file() else {}
        info = read_json(path / ADAPTER_INFO_FILE) if (path / ADAPTER_INFO_FILE).is_file() else {}
        current = self.active_peft_config
        fields = ("use_rslora", "use_dora", "bias")
        if self.rwkv_info.initial_adapter is None:  # a PiSSA-style adapter is saved converted (twice the rank)
            fields = ("r", "lora_alpha", "target_modules", *fields)
        problems = [f"{name}: {saved[name]!r} in the checkpoint vs {_comparable(getattr(current, name))!r} now"
                    for name in fields if name in saved and _comparable(saved[name]) != _comparable(getattr(current, name))]
        if "train_parts" in info and tuple(info["train_parts"]) != self.rwkv_info.train_parts:
            problems.append(f"train_parts: {info['train_parts']} in the checkpoint vs {list(self.rwkv_info.train_parts)} now")
        saved_hash = info.get("base", {}).get("weights_sha256")
        if saved_hash is not None and saved_hash != self.rwkv_info.base_fingerprint["weights_sha256"]:
            problems.append(f"base weights sha256: {saved_hash[:16]}... in the checkpoint vs "
                            f"{self.rwkv_info.base_fingerprint['weights_sha256'][:16]}... now")
        if problems:
            raise ValueError(f"cannot resume from {path}: it was trained with another adapter or base:\n  "
                             + "\n  ".join(problems) + "\nResume with the model and LoraConfig the run started with")

    # ---- using --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model: the adapter layers are bypassed and every tensor trained beside them holds
        its base value until the block ends.

        Raises:
            ValueError: the adapter was initialised with PiSSA, OLoRA or CorDA, which moved part of each
                base weight into it: bypassing it would not give the base model.
        """
        if self.rwkv_info.initial_adapter is not None:
            raise ValueError(f"init_lora_weights={self.active_peft_config.init_lora_weights!r} moved part of the "
                             "base weights into the adapter, so disabling it would not give the base model; save the "
                             "adapter and load it onto the base (it is saved as a plain LoRA) or train a plain LoRA")
        trained = self.trained_base_tensors()
        kept = {name: param.data for name, param in trained.items()}
        with super().disable_adapter():
            try:
                for name, param in trained.items():
                    param.data = self.rwkv_info.base_values[name].to(device=param.device, dtype=param.dtype)
                yield
            finally:
                for name, param in trained.items():
                    param.data = kept[name]

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None, dtype: torch.dtype | None = None) -> RWKV7:
        """Fold the adapter into the base weights (in float32) and return the plain ``RWKV7``, cast to
        ``dtype`` (default: the base's dtype when it was wrapped). Train parts are already in the base."""
        self.get_base_model().float()
        merged = self.base_model.merge_and_unload(progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)
        return merged.to(dtype or self.rwkv_info.base_dtype)


def wrap_lora(model: RWKV7, config: peft.LoraConfig, adapter_name: str = "default") -> RWKVPeftModel:
    """``model`` with the LoRA adapter of ``config`` (plus its ``train_parts``) ready to train."""
    base = _plain_rwkv7(model)
    train_parts = tuple(getattr(config, "train_parts", ()))
    peft_config = config.to_peft() if hasattr(config, "to_peft") else config
    fingerprint = base_fingerprint(base)  # before a PiSSA-style init rewrites the base
    dtype = base.dtype
    init = str(peft_config.init_lora_weights).lower()
    if init.startswith(MUTATING_INITS):
        # The residual W - B0 A0 must be exact for the adapter saved as a plain LoRA to reproduce the trained
        # model on the original base: held in bf16 it would be rounded. Such a base stays float32.
        base.float()
    wrapped = RWKVPeftModel(base, peft_config, adapter_name)
    for _, param in train_part_parameters(base, train_parts):
        param.requires_grad_(True)
    beside = ((name, param) for name, param in base.named_parameters() if param.requires_grad and "lora_" not in name)
    initial = None
    if init.startswith(MUTATING_INITS):
        initial = {k: v.detach().clone() for k, v in get_peft_model_state_dict(wrapped, adapter_name=adapter_name).items()}
    wrapped.rwkv_info = AdapterInfo(train_parts, fingerprint, dtype, _snapshot(beside), initial)
    return wrapped


def _comparable(value: Any) -> Any:
    return sorted(value) if isinstance(value, (list, set, tuple)) else value


def check_adapter_dir(path: Path, base: RWKV7) -> dict[str, Any]:
    """The directory's ``rwkvtune_adapter.json`` (``{}`` for a plain peft adapter), after checking that the
    adapter files exist and fit ``base``'s shapes."""
    if not path.is_dir():
        raise FileNotFoundError(f"LoRA adapter directory not found: {path} (pass an adapter directory or a LoRA "
                                "checkpoint directory such as output_sft/epoch3)")
    missing = [name for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        hint = ("; it holds full weights: a full fine-tune needs no merge, load it with AutoModel.from_pretrained"
                if (path / "model.pth").is_file() or (path / "model.safetensors").is_file() else "")
        raise FileNotFoundError(f"{path} is not a LoRA adapter: {', '.join(missing)} missing (a LoRA run writes "
                                f"them into every checkpoint and final/){hint}")
    info = read_json(path / ADAPTER_INFO_FILE) if (path / ADAPTER_INFO_FILE).is_file() else {}
    architecture = info.get("base", {}).get("architecture")
    if architecture:
        problems = architecture_problems(architecture, base.config)
        if problems:
            raise ValueError(f"the adapter in {path} was trained on a {describe(architecture)} base; this base is "
                             f"{describe(dataclasses.asdict(base.config))}:\n  " + "\n  ".join(problems)
                             + "\nLoad the base model the adapter was trained on")
    problems = _shape_problems(path / ADAPTER_WEIGHTS_FILE, base)
    if problems:
        raise ValueError(f"the adapter in {path} does not fit this base:\n  " + "\n  ".join(problems[:10])
                         + "\nLoad the base model the adapter was trained on")
    if info.get("train_parts"):
        if not (path / TRAIN_PARTS_FILE).is_file():
            raise FileNotFoundError(f"{path} trained {', '.join(info['train_parts'])} beside LoRA but "
                                    f"{TRAIN_PARTS_FILE} is missing; copy the whole checkpoint directory")
        expected = {name: tuple(param.shape) for name, param in train_part_parameters(base, info["train_parts"])}
        with safe_open(str(path / TRAIN_PARTS_FILE), framework="pt") as f:
            found = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        if found != expected:
            wrong = sorted(set(found) ^ set(expected)) + sorted(k for k in found if k in expected and found[k] != expected[k])
            raise ValueError(f"{path / TRAIN_PARTS_FILE} does not hold the train parts "
                             f"{', '.join(info['train_parts'])} of this base (mismatched: {', '.join(wrong[:5])})")
    return info


def _shape_problems(weights_file: Path, base: RWKV7) -> list[str]:
    """Adapter tensors whose module is missing in ``base`` or whose shape does not fit it."""
    problems = []
    with safe_open(str(weights_file), framework="pt") as f:
        for key in f.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module_name = key[len(_PEFT_PREFIX):].split(".lora_")[0] if key.startswith(_PEFT_PREFIX) else key
            shape = tuple(f.get_slice(key).get_shape())
            try:
                module = base.get_submodule(module_name)
            except AttributeError:
                problems.append(f"{key}: this base has no module {module_name}")
                continue
            expected_in, expected_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
            if ".lora_A." in key and shape[-1] != expected_in:
                problems.append(f"{key}: input width {shape[-1]} vs {expected_in} in {module_name}")
            if ".lora_B." in key and shape[0] != expected_out:
                problems.append(f"{key}: output width {shape[0]} vs {expected_out} in {module_name}")
    return problems


def _plain_rwkv7(model: torch.nn.Module) -> RWKV7:
    if isinstance(model, peft.PeftModel):
        raise ValueError("the model already has an adapter; pass the plain base model (or merge_and_unload() first)")
    if not isinstance(model, RWKV7):
        raise TypeError(f"expected an RWKV7 model, got {type(model).__name__}")
    return model


def _snapshot(named: Iterator[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in named}


def _base_name(fingerprint: dict[str, Any]) -> str:
    return describe(fingerprint.get("architecture", {}))

"""``rwkvtune-merge-lora``: fold a LoRA adapter (and its train parts) into its base model, as a hub directory
(or, with ``--save-format hf``, a Hugging Face directory in fla's layout).

The merge runs in float32 whatever the files' dtypes, and the result is cast once to ``--precision``.
Every check (paths, adapter files, the base's shape) runs before anything is written; the directory is
built under a temporary name and renamed into place, and an existing one is replaced only with
``--overwrite``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Sequence

import torch

from rwkvtune.cli.command import run_command
from rwkvtune.hub.auto import DIRECTORY_FORMATS, find_weights_file, load_model, resolve_dtype
from rwkvtune.hub.files import staged_directory, write_json
from rwkvtune.hub.hf_directory import is_hf_directory
from rwkvtune.hub.tokenizer_files import VOCAB_NAMES, load_tokenizer
from rwkvtune.peft.lora import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, RWKVPeftModel
from rwkvtune.peft.state_tuning import STATE_FILE
from rwkvtune.tokenizer import WorldTokenizer
from rwkvtune.version import __version__

MERGE_INFO_FILE = "merge_info.json"
PRECISIONS = ("fp32", "fp16", "bf16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rwkvtune-merge-lora",
        description="Merge a LoRA adapter (an adapter directory or any checkpoint directory of a LoRA run, e.g. "
                    "output_sft/epoch3) into its base model and write a hub directory (or a Hugging Face one) with "
                    "merge_info.json.",
    )
    parser.add_argument("--base-model", "-b", required=True,
                        help="base model: hub directory, Hugging Face (fla layout) directory, or .pth/.safetensors")
    parser.add_argument("--lora-model", "-l", required=True, help="adapter directory or LoRA checkpoint directory")
    parser.add_argument("--output", "-o", required=True, help="directory to create")
    parser.add_argument("--device", default="cpu", help="where to merge: cpu (default) or cuda")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16",
                        help="dtype of the saved weights (the merge itself runs in fp32; default: bf16)")
    parser.add_argument("--save-format", choices=DIRECTORY_FORMATS, default="pth",
                        help="pth or safetensors (a hub directory, official keys), or hf (a Hugging Face directory in "
                             "fla's layout, for transformers/fla and llama.cpp's converter); default: pth")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return parser


def merge_lora(base_model: str | Path, lora_model: str | Path, output: str | Path, *, device: str = "cpu",
               precision: str = "bf16", save_format: str = "pth", overwrite: bool = False) -> Path:
    """Merge and write the hub directory ``output``; returns its path."""
    base_path, lora_path, output = Path(base_model), Path(lora_model), Path(output)
    _check_inputs(base_path, lora_path, output, device=device, precision=precision, save_format=save_format,
                  overwrite=overwrite)
    base = load_model(base_path, dtype="fp32", device=device)
    adapted = RWKVPeftModel.from_pretrained(base, lora_path)  # refuses another base shape before any write
    info = adapted.rwkv_info
    lora = adapted.peft_config["default"]
    merged = adapted.merge_and_unload(dtype=resolve_dtype(precision))
    merge_info = {
        "base_model": str(base_path.resolve()),
        "base_weights_sha256": info.base_fingerprint["weights_sha256"],
        "lora_model": str(lora_path.resolve()),
        "r": lora.r, "lora_alpha": lora.lora_alpha, "use_rslora": lora.use_rslora, "use_dora": lora.use_dora,
        "target_modules": sorted(lora.target_modules), "train_parts": list(info.train_parts),
        "precision": precision, "save_format": save_format,
        "merged_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rwkvtune_version": __version__,
    }
    # the base's vocabulary file (copied byte for byte) and chat template; a bare weights file has neither
    tokenizer = load_tokenizer(base_path) if base_path.is_dir() and _has_vocab(base_path) else WorldTokenizer.default()
    with staged_directory(output, overwrite=overwrite) as staging:
        merged.hub_config["merged_lora"] = str(lora_path.resolve())
        merged.save_pretrained(staging, save_format=save_format, tokenizer=tokenizer)
        write_json(staging / MERGE_INFO_FILE, merge_info)
    return output


def _check_inputs(base_path: Path, lora_path: Path, output: Path, *, device: str, precision: str, save_format: str,
                  overwrite: bool) -> None:
    """Every check that needs no weights loaded."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if save_format not in DIRECTORY_FORMATS:
        raise ValueError(f"--save-format must be one of {', '.join(DIRECTORY_FORMATS)}, got {save_format!r}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but no CUDA device is available; use --device cpu")
    if output.exists() and not overwrite:
        raise FileExistsError(f"output directory {output} already exists; pass --overwrite to replace it, or choose "
                              "another directory")
    if not is_hf_directory(base_path):
        find_weights_file(base_path)
    resolved = output.resolve()
    for source in (base_path.resolve(), lora_path.resolve()):
        if resolved == source or resolved in source.parents:
            raise ValueError(f"--output {output} would replace {source}, which the merge reads (the base model, the "
                             "adapter or the run holding it); choose another directory")
    if (lora_path / STATE_FILE).is_file() or lora_path.name == STATE_FILE:
        raise ValueError(f"{lora_path} is a tuned state, not a LoRA adapter: a state cannot be merged into the "
                         "weights; load it beside the base with rwkvtune.peft.load_adapter(model, path)")
    if lora_path.is_file():
        raise ValueError(f"--lora-model must be a directory (an adapter or a LoRA checkpoint directory such as "
                         f"output_sft/epoch3), got the file {lora_path}; pass {lora_path.parent}")
    if not lora_path.is_dir():
        raise FileNotFoundError(f"LoRA directory not found: {lora_path}")
    missing = [name for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE) if not (lora_path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{lora_path} is not a LoRA adapter: {', '.join(missing)} missing (a LoRA run writes "
                                "them into every checkpoint directory and final/)")


def _has_vocab(directory: Path) -> bool:
    return any((directory / name).is_file() for name in VOCAB_NAMES)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def action() -> str:
        out = merge_lora(args.base_model, args.lora_model, args.output, device=args.device, precision=args.precision,
                         save_format=args.save_format, overwrite=args.overwrite)
        return f"merged {args.lora_model} into {args.base_model}: {out}"

    return run_command("rwkvtune-merge-lora", action)


if __name__ == "__main__":
    sys.exit(main())

"""``rwkvtune-create-hub``: turn an RWKV-7 weights file, or a Hugging Face directory in fla's layout, into a
hub directory (or, with ``--save-format hf``, into a Hugging Face directory).

The architecture is read from the weights and checked against ``--config-name``; the directory is built
under a temporary name and renamed into place, so a failure never leaves a partial directory and an
existing one is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from rwkvtune.cli.command import run_command
from rwkvtune.config import PRESETS, get_preset
from rwkvtune.config.model import PRESET_CTX_LEN
from rwkvtune.hub.config_json import DEFAULT_CTX_LEN, write_model_metadata
from rwkvtune.hub.files import WEIGHTS_FILES, staged_directory
from rwkvtune.hub.tokenizer_files import check_chat_template, write_tokenizer_files
from rwkvtune.hub.auto import DIRECTORY_FORMATS
from rwkvtune.hub.hf_directory import VOCAB_NAME as HF_VOCAB_NAME
from rwkvtune.hub.hf_directory import is_hf_directory, load_hf_directory, save_hf_directory
from rwkvtune.hub.weights import load_rwkv7_weights, save_weights, weights_format
from rwkvtune.tokenizer import DEFAULT_CHAT_TEMPLATE
from rwkvtune.tokenizer.vocab import DEFAULT_VOCAB_PATH


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rwkvtune-create-hub",
        description="Create a hub directory (config.json, weights, vocab.txt, tokenizer_config.json, "
                    "generation_config.json) from an RWKV-7 .pth or .safetensors file or a Hugging Face (fla layout) "
                    "directory; or, with --save-format hf, a Hugging Face directory.",
    )
    parser.add_argument("--output-dir", required=True, help="directory to create")
    parser.add_argument("--model-file", required=True,
                        help="RWKV-7 weights file (.pth or .safetensors, official keys), or a Hugging Face directory "
                             "in fla's layout (config.json, model.safetensors or its shards)")
    parser.add_argument("--config-name", required=True,
                        help=f"expected architecture: one of {', '.join(PRESETS)}, or 'auto' to take it from the weights")
    parser.add_argument("--ctx-len", type=int, default=None,
                        help="training context length recorded in config.json (default: the preset's, else 4096)")
    parser.add_argument("--chat-template", default=None,
                        help="jinja2 chat template file stored in tokenizer_config.json (default: the RWKV format)")
    parser.add_argument("--link-weights", action="store_true",
                        help="symlink the weights instead of copying them (needs the same format as --save-format)")
    parser.add_argument("--save-format", choices=DIRECTORY_FORMATS, default="pth",
                        help="pth or safetensors (official keys), or hf (a Hugging Face directory in fla's layout, for "
                             "transformers/fla and llama.cpp's converter); default: pth")
    parser.add_argument("--overwrite", action="store_true", help="replace --output-dir if it exists")
    return parser


def create_hub(
    output_dir: str | os.PathLike,
    model_file: str | os.PathLike,
    config_name: str,
    *,
    ctx_len: int | None = None,
    chat_template: str | os.PathLike | None = None,
    link_weights: bool = False,
    save_format: str = "pth",
    overwrite: bool = False,
) -> Path:
    """Create the hub directory; every check runs before anything is written. Returns its path."""
    model_file = Path(model_file)
    output_dir = Path(output_dir)
    expected = None if config_name == "auto" else get_preset(config_name)
    if ctx_len is not None and ctx_len < 1:
        raise ValueError(f"--ctx-len must be >= 1, got {ctx_len}")
    from_hf = is_hf_directory(model_file)
    if link_weights and (from_hf or save_format == "hf"):
        raise ValueError("--link-weights links one official weights file into a hub directory; a Hugging Face "
                         "directory is converted tensor by tensor: drop --link-weights")
    if link_weights and weights_format(model_file) != save_format:
        raise ValueError(f"--link-weights needs --save-format {weights_format(model_file)} to match {model_file.name}; "
                         "drop --link-weights to convert the file")
    if link_weights and output_dir.resolve() in model_file.resolve().parents:
        # --overwrite removes the old directory, and with it the file the link would point to.
        raise ValueError(f"--link-weights cannot point into {output_dir}, the directory being replaced; "
                         "drop --link-weights to copy the file")
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"output directory {output_dir} already exists; pass --overwrite to replace it")
    template = DEFAULT_CHAT_TEMPLATE
    if chat_template is not None:
        if not Path(chat_template).is_file():
            raise FileNotFoundError(f"chat template file not found: {chat_template}")
        template = Path(chat_template).read_text(encoding="utf-8")
        check_chat_template(template, str(chat_template))

    state, config = load_hf_directory(model_file)[:2] if from_hf else load_rwkv7_weights(model_file)
    if expected is not None and config != expected:
        raise ValueError(f"{model_file} is not {config_name}; the weights differ in:\n  "
                         + "\n  ".join(f"{line} (weights vs {config_name})" for line in config.differences(expected))
                         + "\nPass the matching --config-name, or --config-name auto")

    if ctx_len is None:
        ctx_len = PRESET_CTX_LEN.get(config_name, DEFAULT_CTX_LEN)
    extra = {"model_name": model_file.stem}
    if expected is not None:
        extra["config_name"] = config_name
    with staged_directory(output_dir, overwrite=overwrite) as staging:
        if save_format == "hf":
            save_hf_directory(state, config, staging, ctx_len=ctx_len, **extra)
            write_tokenizer_files(staging, DEFAULT_VOCAB_PATH, template, vocab_name=HF_VOCAB_NAME)
            return output_dir
        weights_out = staging / WEIGHTS_FILES[save_format]
        if link_weights:
            weights_out.symlink_to(model_file.resolve())
        elif not from_hf and weights_format(model_file) == save_format:
            shutil.copyfile(model_file, weights_out)  # already validated: keep the exact bytes
        else:
            save_weights(state, weights_out, save_format)
        write_model_metadata(staging, config, ctx_len=ctx_len, **extra)
        write_tokenizer_files(staging, DEFAULT_VOCAB_PATH, template)
    return output_dir


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def action() -> str:
        out = create_hub(args.output_dir, args.model_file, args.config_name, ctx_len=args.ctx_len,
                         chat_template=args.chat_template, link_weights=args.link_weights,
                         save_format=args.save_format, overwrite=args.overwrite)
        return f"created {out}"

    return run_command("rwkvtune-create-hub", action)


if __name__ == "__main__":
    sys.exit(main())

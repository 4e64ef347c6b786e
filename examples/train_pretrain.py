"""Continued pretraining on one device (or DEVICES processes), configured by environment variables.

    MODEL_PATH=models/rwkv7-0.1b DATA_PATH=corpus.jsonl python examples/train_pretrain.py
    MODEL_PATH=models/rwkv7-0.1b BINIDX_PATH=data/minipile python examples/train_pretrain.py

Variables (defaults in brackets): MODEL_PATH [a new tiny RWKV-7, L2-C128], DATA_PATH [synthetic text; a
.jsonl/.json file with a "text" column], BINIDX_PATH [RWKV-LM .bin/.idx prefix, read memory-mapped],
CTX_LEN [512], MICRO_BSZ [4], EPOCH_COUNT [1], EPOCH_STEPS [none], LR_INIT [3e-4], LR_FINAL [1e-5],
WARMUP_STEPS [10], GRAD_CP [1], PRECISION [bf16 on GPU, fp32 on CPU], DEVICES [1], OUTPUT_DIR [output_pretrain],
RESUME [none; latest, or a checkpoint directory].
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from datasets import load_dataset

sys.path.insert(0, str(Path(__file__).parent))
from example_setup import env, model_path_or_tiny  # noqa: E402
from synthetic_tasks import make_corpus  # noqa: E402

from rwkvtune.data import BinidxWindows  # noqa: E402
from rwkvtune.training import PretrainConfig, PretrainTrainer  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output_dir = env("OUTPUT_DIR", "output_pretrain")
    ctx_len = env("CTX_LEN", 512, int)
    model_path = model_path_or_tiny(output_dir, ctx_len)
    if env("BINIDX_PATH", None):
        dataset = BinidxWindows(env("BINIDX_PATH", None))
    elif env("DATA_PATH", None):
        dataset = load_dataset("json", data_files=env("DATA_PATH", None))["train"]
    else:
        dataset = make_corpus(500)

    config = PretrainConfig(
        ctx_len=ctx_len,
        micro_bsz=env("MICRO_BSZ", 4, int),
        epoch_count=env("EPOCH_COUNT", 1, int),
        epoch_steps=env("EPOCH_STEPS", None, int),
        lr_init=env("LR_INIT", 3e-4, float),
        lr_final=env("LR_FINAL", 1e-5, float),
        warmup_steps=env("WARMUP_STEPS", 10, int),
        grad_cp=env("GRAD_CP", 1, int),
        precision=env("PRECISION", "bf16" if torch.cuda.is_available() else "fp32"),
        devices=env("DEVICES", 1, int),
        output_dir=output_dir,
        resume_from_checkpoint=env("RESUME", None),
    )
    trainer = PretrainTrainer(model=model_path, args=config, train_dataset=dataset)
    print(trainer.train())
    print(f"final model: {Path(output_dir) / 'final'}")


if __name__ == "__main__":
    main()

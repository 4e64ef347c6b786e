"""Supervised fine-tuning on one device (GPU if present, else CPU) or several (DEVICES, NUM_NODES), configured by
environment variables.

    MODEL_PATH=models/rwkv7-0.1b DATA_PATH=data/sft.jsonl python examples/train_sft_single_gpu.py

Variables (defaults in brackets): MODEL_PATH [a new tiny RWKV-7, L2-C128], DATA_PATH [the synthetic task of
synthetic_tasks.py; a .jsonl/.json file with messages, prompt+completion, text or input_ids rows],
CTX_LEN [512], MICRO_BSZ [4], EPOCH_COUNT [1], EPOCH_STEPS [none], LR_INIT [1e-4], LR_FINAL [1e-5],
WARMUP_STEPS [10], ACCUMULATE_GRAD_BATCHES [1], GRAD_CP [1], PRECISION [bf16 on GPU, fp32 on CPU],
DEVICES [1; processes per machine], NUM_NODES [1; machines, see run_sft_multi_node.sh], STRATEGY [auto; ddp,
fsdp, deepspeed_stage_2, ...], SAVE_EVERY_N_BATCHES [0], OUTPUT_DIR [output_sft], REPORT_TO [none], RESUME [none;
latest, or a checkpoint directory],
LORA_R [0 = full fine-tuning; > 0 trains a LoRA adapter of this rank], LORA_ALPHA [2 x LORA_R],
TRAIN_PARTS [none; e.g. ln,time: tensors trained full-rank beside LoRA].

With LORA_R set, every checkpoint and final/ hold the adapter; merge it into the base with
    rwkvtune-merge-lora -b $MODEL_PATH -l output_sft/final -o models/sft-merged
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from datasets import load_dataset

sys.path.insert(0, str(Path(__file__).parent))
from example_setup import env, model_path_or_tiny  # noqa: E402
from synthetic_tasks import make_dataset  # noqa: E402

from rwkvtune import AutoModel, AutoTokenizer  # noqa: E402
from rwkvtune.peft import LoraConfig  # noqa: E402
from rwkvtune.training import SFTConfig, SFTTrainer  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output_dir = env("OUTPUT_DIR", "output_sft")
    model_path = model_path_or_tiny(output_dir, env("CTX_LEN", 512, int))
    data_path = env("DATA_PATH", None)
    dataset = make_dataset(2000) if data_path is None else load_dataset("json", data_files=data_path)["train"]

    config = SFTConfig(
        ctx_len=env("CTX_LEN", 512, int),
        micro_bsz=env("MICRO_BSZ", 4, int),
        epoch_count=env("EPOCH_COUNT", 1, int),
        epoch_steps=env("EPOCH_STEPS", None, int),
        lr_init=env("LR_INIT", 1e-4, float),
        lr_final=env("LR_FINAL", 1e-5, float),
        warmup_steps=env("WARMUP_STEPS", 10, int),
        accumulate_grad_batches=env("ACCUMULATE_GRAD_BATCHES", 1, int),
        grad_cp=env("GRAD_CP", 1, int),
        precision=env("PRECISION", "bf16" if torch.cuda.is_available() else "fp32"),
        devices=env("DEVICES", 1, int),
        num_nodes=env("NUM_NODES", 1, int),
        strategy=env("STRATEGY", "auto"),
        save_every_n_batches=env("SAVE_EVERY_N_BATCHES", 0, int),
        report_to=env("REPORT_TO", ""),
        output_dir=output_dir,
        resume_from_checkpoint=env("RESUME", None),
    )
    lora_r = env("LORA_R", 0, int)
    lora = LoraConfig(r=lora_r, lora_alpha=env("LORA_ALPHA", 2 * lora_r, int),
                      train_parts=env("TRAIN_PARTS", None)) if lora_r else None
    model = AutoModel.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    print(trainer.train())
    print(f"final {'adapter' if lora else 'model'}: {Path(output_dir) / 'final'}")


if __name__ == "__main__":
    main()

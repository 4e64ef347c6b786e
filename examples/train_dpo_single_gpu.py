"""DPO on one device (GPU if present, else CPU), configured by environment variables.

    MODEL_PATH=models/sft-merged python examples/train_dpo_single_gpu.py

Preference pairs come from the bundled synthetic task (add two digits, say a word twice, next letter): the right
answer is chosen, a plausible wrong one of the same kind rejected (an off-by-one sum, the word once or three
times, a neighbouring letter), so the script runs anywhere; DATA_PATH trains on your own pairs instead. Start
it from a model that already answers some of the task (``run_dpo_single_gpu.sh`` fine-tunes one first).

Variables (defaults in brackets): MODEL_PATH [a new tiny RWKV-7, L2-C128], DATA_PATH [the synthetic pairs of
synthetic_tasks.make_preferences; a .jsonl/.json file with prompt, chosen, rejected rows (strings or message
lists) or prompt_input_ids, chosen_input_ids, rejected_input_ids], OUTPUT_DIR [output_dpo], NUM_PAIRS [1280;
synthetic pairs], MICRO_BSZ [16; pairs per micro-step], ACCUMULATE_GRAD_BATCHES [1], BETA [0.1],
LOSS_TYPE [sigmoid; or ipo, hinge, apo_zero, ... (rwkvtune.config.dpo.LOSS_TYPES), comma-separated to sum
several], RPO_ALPHA [none; a weight on the chosen answers' NLL], LABEL_SMOOTHING [0.0], REFERENCE_FREE [0],
PRECOMPUTE_REF_LOG_PROBS [0], MAX_PROMPT_LENGTH [512], MAX_COMPLETION_LENGTH [none], LR_INIT [1e-5],
LR_FINAL [1e-6], WARMUP_STEPS [0], EPOCH_COUNT [1], EPOCH_STEPS [none = one pass over the pairs],
PRECISION [bf16 on GPU, fp32 on CPU], GRAD_CP [0], SAVE_EVERY_N_BATCHES [0], LOGGING_STEPS [5], REPORT_TO
[none], LORA_R [0 = full fine-tuning; > 0 trains a LoRA adapter of this rank], LORA_ALPHA [2 x LORA_R],
SEED [42], RESUME [none; latest, or a checkpoint directory].

The reference is the starting policy (with LoRA: the base with the adapter switched off). Metrics
(loss, rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected,
entropy) go to OUTPUT_DIR/metrics.jsonl. With LORA_R set, final/ holds the adapter; merge it into the base with
    rwkvtune-merge-lora -b $MODEL_PATH -l output_dpo/final -o models/dpo-merged
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from datasets import load_dataset

sys.path.insert(0, str(Path(__file__).parent))
from example_setup import env, model_path_or_tiny  # noqa: E402
from synthetic_tasks import make_preferences  # noqa: E402

from rwkvtune import AutoModel, AutoTokenizer  # noqa: E402
from rwkvtune.peft import LoraConfig  # noqa: E402
from rwkvtune.training import DPOConfig, DPOTrainer  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output_dir = env("OUTPUT_DIR", "output_dpo")
    model_path = model_path_or_tiny(output_dir, 128)
    data_path = env("DATA_PATH", None)
    dataset = (make_preferences(env("NUM_PAIRS", 1280, int)) if data_path is None
               else load_dataset("json", data_files=data_path)["train"])
    loss_types = env("LOSS_TYPE", "sigmoid").split(",")
    config = DPOConfig(
        micro_bsz=env("MICRO_BSZ", 16, int),
        accumulate_grad_batches=env("ACCUMULATE_GRAD_BATCHES", 1, int),
        beta=env("BETA", 0.1, float),
        loss_type=loss_types[0] if len(loss_types) == 1 else loss_types,
        rpo_alpha=env("RPO_ALPHA", None, float),
        label_smoothing=env("LABEL_SMOOTHING", 0.0, float),
        reference_free=bool(env("REFERENCE_FREE", 0, int)),
        precompute_ref_log_probs=bool(env("PRECOMPUTE_REF_LOG_PROBS", 0, int)),
        max_prompt_length=env("MAX_PROMPT_LENGTH", 512, int),
        max_completion_length=env("MAX_COMPLETION_LENGTH", None, int),
        lr_init=env("LR_INIT", 1e-5, float),
        lr_final=env("LR_FINAL", 1e-6, float),
        warmup_steps=env("WARMUP_STEPS", 0, int),
        epoch_count=env("EPOCH_COUNT", 1, int),
        epoch_steps=env("EPOCH_STEPS", None, int),
        precision=env("PRECISION", "bf16" if torch.cuda.is_available() else "fp32"),
        grad_cp=env("GRAD_CP", 0, int),
        save_every_n_batches=env("SAVE_EVERY_N_BATCHES", 0, int),
        logging_steps=env("LOGGING_STEPS", 5, int),
        report_to=env("REPORT_TO", ""),
        seed=env("SEED", 42, int),
        output_dir=output_dir,
        resume_from_checkpoint=env("RESUME", None),
    )
    lora_r = env("LORA_R", 0, int)
    lora = LoraConfig(r=lora_r, lora_alpha=env("LORA_ALPHA", 2 * lora_r, int)) if lora_r else None
    trainer = DPOTrainer(model=AutoModel.from_pretrained(model_path), args=config, train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(model_path), peft_config=lora)
    print(trainer.train())
    print(f"final {'adapter' if lora else 'model'}: {Path(output_dir) / 'final'}")


if __name__ == "__main__":
    main()

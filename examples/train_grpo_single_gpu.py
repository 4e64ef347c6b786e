"""GRPO on one device (GPU if present, else CPU), configured by environment variables.

    MODEL_PATH=models/sft-merged python examples/train_grpo_single_gpu.py

Prompts come from the bundled synthetic task (add two digits, say a word twice, next letter) with an
exact-answer reward, so the script runs anywhere; start it from a model that already answers some of them
(``run_sft_grpo_single_gpu.sh`` fine-tunes one first) to see the mean reward rise.

Variables (defaults in brackets): MODEL_PATH [a new tiny RWKV-7, L2-C128], OUTPUT_DIR [output_grpo],
NUM_PROMPTS [512], NUM_GENERATIONS [8], MICRO_BSZ [4], STEPS_PER_GENERATION [1], NUM_ITERATIONS [1],
ACCUMULATE_GRAD_BATCHES [1], MAX_COMPLETION_LENGTH [8], TEMPERATURE [1.0], TOP_P [1.0], TOP_K [0],
LOSS_TYPE [dapo], BETA [0.0], EPSILON [0.2], EPSILON_HIGH [none], SCALE_REWARDS [group], LR_INIT [1e-5],
LR_FINAL [1e-6], WARMUP_STEPS [0], EPOCH_COUNT [1], EPOCH_STEPS [none], PRECISION [bf16 on GPU, fp32 on
CPU], GRAD_CP [0], SAVE_EVERY_N_BATCHES [0], SAVE_ROLLOUT_STEPS [0], LOGGING_STEPS [5], REPORT_TO [none],
LORA_R [0 = full fine-tuning], LORA_ALPHA [2 x LORA_R], SEED [42], RESUME [none; latest, or a checkpoint
directory].
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from example_setup import env, model_path_or_tiny  # noqa: E402
from synthetic_tasks import exact_answer, make_prompts  # noqa: E402

from rwkvtune import AutoModel, AutoTokenizer  # noqa: E402
from rwkvtune.peft import LoraConfig  # noqa: E402
from rwkvtune.training import GRPOConfig, GRPOTrainer  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output_dir = env("OUTPUT_DIR", "output_grpo")
    model_path = model_path_or_tiny(output_dir, 128)
    config = GRPOConfig(
        num_generations=env("NUM_GENERATIONS", 8, int),
        micro_bsz=env("MICRO_BSZ", 4, int),
        steps_per_generation=env("STEPS_PER_GENERATION", 1, int),
        num_iterations=env("NUM_ITERATIONS", 1, int),
        accumulate_grad_batches=env("ACCUMULATE_GRAD_BATCHES", 1, int),
        max_completion_length=env("MAX_COMPLETION_LENGTH", 8, int),
        temperature=env("TEMPERATURE", 1.0, float),
        top_p=env("TOP_P", 1.0, float),
        top_k=env("TOP_K", 0, int),
        loss_type=env("LOSS_TYPE", "dapo"),
        beta=env("BETA", 0.0, float),
        epsilon=env("EPSILON", 0.2, float),
        epsilon_high=env("EPSILON_HIGH", None, float),
        scale_rewards=env("SCALE_REWARDS", "group"),
        lr_init=env("LR_INIT", 1e-5, float),
        lr_final=env("LR_FINAL", 1e-6, float),
        warmup_steps=env("WARMUP_STEPS", 0, int),
        epoch_count=env("EPOCH_COUNT", 1, int),
        epoch_steps=env("EPOCH_STEPS", None, int),
        precision=env("PRECISION", "bf16" if torch.cuda.is_available() else "fp32"),
        grad_cp=env("GRAD_CP", 0, int),
        save_every_n_batches=env("SAVE_EVERY_N_BATCHES", 0, int),
        save_rollout_steps=env("SAVE_ROLLOUT_STEPS", 0, int),
        logging_steps=env("LOGGING_STEPS", 5, int),
        report_to=env("REPORT_TO", ""),
        seed=env("SEED", 42, int),
        output_dir=output_dir,
        resume_from_checkpoint=env("RESUME", None),
    )
    lora_r = env("LORA_R", 0, int)
    lora = LoraConfig(r=lora_r, lora_alpha=env("LORA_ALPHA", 2 * lora_r, int)) if lora_r else None
    trainer = GRPOTrainer(model=AutoModel.from_pretrained(model_path), reward_funcs=exact_answer, args=config,
                          train_dataset=make_prompts(env("NUM_PROMPTS", 512, int)),
                          processing_class=AutoTokenizer.from_pretrained(model_path), peft_config=lora)
    print(trainer.train())
    print(f"final {'adapter' if lora else 'model'}: {Path(output_dir) / 'final'}")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The seed README's workflow: SFT with LoRA -> merge -> GRPO with LoRA -> merge -> test generation (with the
# bundled task's held-out score, eval_task.py, after each merge).
#   MODEL_PATH=models/rwkv7-0.1b ./run_sft_grpo_single_gpu.sh
# Without MODEL_PATH a new small RWKV-7 (L3-C192) is fine-tuned on the bundled synthetic task first (no
# downloads; ~7 min on 2 CPU cores). Settings: WORK_DIR [runs/sft_grpo], LORA_R [32], SFT_EPOCHS [3],
# SFT_LR [5e-3], GRPO_STEPS [120], GRPO_LR [3e-3], GRPO_PROMPTS [4000], GRPO_MICRO_BSZ [32]; the other
# variables of train_sft_single_gpu.py and train_grpo_single_gpu.py apply to their stage. GRPO takes 32
# prompts x 8 completions a step: with fewer, the policy gradient of this small model is mostly noise, and
# Adam turns noise into steps of full size (benchmarks/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")"
WORK_DIR=${WORK_DIR:-runs/sft_grpo}
export LORA_R=${LORA_R:-32}
mkdir -p "$WORK_DIR"
if [ -z "${MODEL_PATH:-}" ]; then
  python -c "import torch; torch.manual_seed(0); from rwkvtune import AutoModel; from rwkvtune.config import RWKV7Config; from rwkvtune.tokenizer import WorldTokenizer; AutoModel.from_config(RWKV7Config(n_layer=3, n_embd=192), ctx_len=128).save_pretrained('$WORK_DIR/base', tokenizer=WorldTokenizer.default())"
  MODEL_PATH=$WORK_DIR/base
  # a new model learns the task through LoRA only with the norms, time-mix tensors, embedding and head trained too
  export TRAIN_PARTS=${TRAIN_PARTS:-ln,time,emb,head}
fi
MODEL_PATH=$MODEL_PATH OUTPUT_DIR=$WORK_DIR/output_sft EPOCH_COUNT=${SFT_EPOCHS:-3} MICRO_BSZ=16 CTX_LEN=128 \
  LR_INIT=${SFT_LR:-5e-3} LR_FINAL=1e-4 GRAD_CP=0 python train_sft_single_gpu.py
rwkvtune-merge-lora -b "$MODEL_PATH" -l "$WORK_DIR/output_sft/final" -o "$WORK_DIR/sft-merged" --precision fp32 --overwrite
MODEL_PATH=$WORK_DIR/sft-merged python eval_task.py
MODEL_PATH=$WORK_DIR/sft-merged OUTPUT_DIR=$WORK_DIR/output_grpo NUM_PROMPTS=${GRPO_PROMPTS:-4000} \
  MICRO_BSZ=${GRPO_MICRO_BSZ:-32} EPOCH_STEPS=${GRPO_STEPS:-120} LR_INIT=${GRPO_LR:-3e-3} LR_FINAL=${GRPO_LR:-3e-3} \
  LOGGING_STEPS=12 \
  python train_grpo_single_gpu.py
rwkvtune-merge-lora -b "$WORK_DIR/sft-merged" -l "$WORK_DIR/output_grpo/final" -o "$WORK_DIR/final" --precision fp32 --overwrite
MODEL_PATH=$WORK_DIR/final python eval_task.py
MODEL_PATH=$WORK_DIR/final TEMPERATURE=0 NUM_SAMPLES=1 MAX_NEW_TOKENS=16 python test_generation.py

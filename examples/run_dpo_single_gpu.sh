#!/usr/bin/env bash
# SFT with LoRA -> merge -> DPO with LoRA -> merge, with the bundled task's held-out score (eval_task.py) after
# each merge, so the DPO stage is read against the model it started from.
#   MODEL_PATH=models/rwkv7-0.1b ./run_dpo_single_gpu.sh
# Without MODEL_PATH a new small RWKV-7 (L3-C192) is fine-tuned on the bundled synthetic task first (no
# downloads; the SFT stage of run_sft_grpo_single_gpu.sh); ~2 min on 2 idle CPU cores. SFT_MODEL=<hub directory>
# skips the SFT stage and starts DPO from that model, e.g. the quick start's:
#   python quickstart.py && SFT_MODEL=runs/quickstart/sft/final ./run_dpo_single_gpu.sh
# The DPO pairs are the task's right answer (chosen) against
# a plausible wrong one of the same kind (rejected: a sum off by one or two, the word once or three times or
# another word twice, a nearby letter).
# Settings: WORK_DIR [runs/sft_dpo], LORA_R [32], SFT_EPOCHS [3], SFT_LR [5e-3], DPO_PAIRS [5120],
# DPO_MICRO_BSZ [32] (so 160 DPO steps), DPO_LR [1e-3, constant], DPO_BETA [0.1], DPO_LOSS_TYPE [sigmoid],
# DPO_RPO_ALPHA [1.0; empty for plain DPO]; the other variables of train_sft_single_gpu.py and
# train_dpo_single_gpu.py apply to their stage. DPO_RPO_ALPHA adds the chosen answers' NLL to the DPO loss
# (RPO): on this small model plain DPO widens the margin between chosen and rejected but lowers the right
# answers' probability too, and the held-out score falls (benchmarks/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")"
WORK_DIR=${WORK_DIR:-runs/sft_dpo}
export LORA_R=${LORA_R:-32}
mkdir -p "$WORK_DIR"
if [ -z "${SFT_MODEL:-}" ]; then
  if [ -z "${MODEL_PATH:-}" ]; then
    python -c "import torch; torch.manual_seed(0); from rwkvtune import AutoModel; from rwkvtune.config import RWKV7Config; from rwkvtune.tokenizer import WorldTokenizer; AutoModel.from_config(RWKV7Config(n_layer=3, n_embd=192), ctx_len=128).save_pretrained('$WORK_DIR/base', tokenizer=WorldTokenizer.default())"
    MODEL_PATH=$WORK_DIR/base
    # a new model learns the task through LoRA only with the norms, time-mix tensors, embedding and head trained too
    export TRAIN_PARTS=${TRAIN_PARTS:-ln,time,emb,head}
  fi
  MODEL_PATH=$MODEL_PATH OUTPUT_DIR=$WORK_DIR/output_sft EPOCH_COUNT=${SFT_EPOCHS:-3} MICRO_BSZ=16 CTX_LEN=128 \
    LR_INIT=${SFT_LR:-5e-3} LR_FINAL=1e-4 GRAD_CP=0 python train_sft_single_gpu.py
  rwkvtune-merge-lora -b "$MODEL_PATH" -l "$WORK_DIR/output_sft/final" -o "$WORK_DIR/sft-merged" --precision fp32 \
    --overwrite
  SFT_MODEL=$WORK_DIR/sft-merged
fi
MODEL_PATH=$SFT_MODEL python eval_task.py
MODEL_PATH=$SFT_MODEL OUTPUT_DIR=$WORK_DIR/output_dpo NUM_PAIRS=${DPO_PAIRS:-5120} MICRO_BSZ=${DPO_MICRO_BSZ:-32} \
  LR_INIT=${DPO_LR:-1e-3} LR_FINAL=${DPO_LR:-1e-3} BETA=${DPO_BETA:-0.1} LOSS_TYPE=${DPO_LOSS_TYPE:-sigmoid} \
  RPO_ALPHA=${DPO_RPO_ALPHA-1.0} LOGGING_STEPS=10 \
  python train_dpo_single_gpu.py
rwkvtune-merge-lora -b "$SFT_MODEL" -l "$WORK_DIR/output_dpo/final" -o "$WORK_DIR/final" --precision fp32 --overwrite
MODEL_PATH=$WORK_DIR/final python eval_task.py

#!/usr/bin/env bash
# Single-device GRPO; every setting can be overridden by environment variables, e.g.
#   MODEL_PATH=models/sft-merged NUM_GENERATIONS=8 LORA_R=64 ./run_grpo_single_gpu.sh
# See train_grpo_single_gpu.py for the full list.
set -euo pipefail
cd "$(dirname "$0")"
exec python train_grpo_single_gpu.py "$@"

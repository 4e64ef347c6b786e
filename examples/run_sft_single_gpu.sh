#!/usr/bin/env bash
# Single-device SFT; every setting can be overridden by environment variables, e.g.
#   MODEL_PATH=models/rwkv7-0.4b CTX_LEN=4096 MICRO_BSZ=4 ./run_sft_single_gpu.sh
# See train_sft_single_gpu.py for the full list.
set -euo pipefail
cd "$(dirname "$0")"
exec python train_sft_single_gpu.py "$@"

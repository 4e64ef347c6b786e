#!/usr/bin/env bash
# Generate a few chat replies and report tokens/s. Override settings with environment variables, e.g.
#   MODEL_PATH=models/rwkv7-0.1b TEMPERATURE=0.7 MAX_NEW_TOKENS=128 ./run_test_generation.sh
# Without MODEL_PATH a tiny random model is used (no downloads). See test_generation.py for all variables.
set -euo pipefail
cd "$(dirname "$0")"
exec python test_generation.py "$@"

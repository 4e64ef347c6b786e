#!/usr/bin/env bash
# The prepared GPU check of issue 15, for a bare GPU machine with PyTorch and Triton but no internet:
# installs the wheels carried in .whl/ (made here by benchmarks/fetch_gpu_wheels.sh), then runs
# benchmarks/gpu_check.py (CUDA tests, fla numerics, SFT/LoRA/infctx speed, decode against the rwkv runtime,
# CPU-vs-GPU losses, host-device syncs) in about 7 minutes. Results: $OUT (else runs/gpu_check)/results.json,
# summary.md and gpu_check.log.
#
#   bash benchmarks/gpu_check.sh                           # on the GPU machine (the device call carries .whl)
#   bash benchmarks/gpu_check.sh --sections numerics       # arguments go to gpu_check.py
#   PYTHON=python3.12 SITE=$(mktemp -d) bash benchmarks/gpu_check.sh --setup-only   # the set-up part alone
#
# PYTHON: the interpreter (default python3, the one that holds PyTorch there); SITE: where the wheels are
# installed (default /tmp/site). The whole run is stopped after TOTAL_S seconds (default 540), inside the
# device's 10-minute limit on one command.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
SITE="${SITE:-/tmp/site}"
OUT_DIR="${OUT:-runs/gpu_check}"
TOTAL_S="${TOTAL_S:-540}"
mkdir -p "$OUT_DIR"

setup() {
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "no wheels in .whl/: run 'bash benchmarks/fetch_gpu_wheels.sh' where PyPI is reachable, and carry .whl" >&2
        return 1
    fi
    # pip stops the whole install on two versions of one package: name them instead.
    local twice
    twice=$(for f in .whl/*.whl; do basename "$f" | cut -d- -f1 | tr 'A-Z-.' 'a-z__'; done | sort | uniq -d)
    if [ -n "$twice" ]; then
        echo "two wheels of: $twice; keep one version of each in .whl/" >&2
        return 1
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || return 1
    # The working tree's rwkvtune first, then the carried packages, then the machine's own.
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed into $SITE with $("$PYTHON" --version 2>&1):"
    "$PYTHON" - "$SITE" <<'EOF'
import importlib, sys
from pathlib import Path
for info in sorted(Path(sys.argv[1]).glob("*.dist-info")):
    print("  " + info.name.removesuffix(".dist-info").replace("-", " "))
# Whether each carried package imports with this interpreter's packages (fla needs torch and triton, so on a
# machine without them the failure is expected and says which one is missing).
for module in ("fla.ops.rwkv7", "rwkv", "peft", "lightning_fabric", "datasets", "rwkvtune"):
    try:
        importlib.import_module(module)
        print(f"  import {module}: ok")
    except Exception as error:  # reported, not fatal: the check records what it cannot run
        print(f"  import {module}: {type(error).__name__}: {error}")
EOF
}

if [ "${1:-}" = "--setup-only" ]; then
    setup
    exit $?
fi

{
    echo "gpu_check.sh $(date -u '+%Y-%m-%d %H:%M:%S') UTC, $(git rev-parse --short HEAD 2>/dev/null) + working tree"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    start=$(date +%s)
    setup || echo "set-up failed: the sections that need the carried packages will record the error"
    echo "set-up took $(( $(date +%s) - start )) s"
    PYTHONUNBUFFERED=1 timeout --kill-after=10 "$TOTAL_S" "$PYTHON" benchmarks/gpu_check.py --out "$OUT_DIR" "$@"
    echo "gpu_check.py exit $?, $(( $(date +%s) - start )) s in all"
} 2>&1 | tee "$OUT_DIR/gpu_check.log"

#!/usr/bin/env bash
# Download, here (PyPI reachable), the wheels that benchmarks/gpu_check.sh installs on a GPU machine that has
# no internet: the packages rwkvtune and the check need that the machine's image lacks, or has in a version we
# do not trust. They land in .whl/ (git-ignored), which the device call carries.
#
#   bash benchmarks/fetch_gpu_wheels.sh          # for CPython 3.12 (the H200 image's python3)
#   bash benchmarks/fetch_gpu_wheels.sh 3.11
#
# What the image already holds (/work/.library/device/KINDS.md, read 2026-11): torch 2.11, triton 3.6,
# transformers 5.17, accelerate, tokenizers, einops, safetensors 0.8, numpy, pandas, pyarrow, xxhash, fsspec,
# huggingface-hub, jinja2, tqdm, pyyaml, psutil, lightning + lightning-utilities, pytest, pytest-timeout. So:
#   flash-linear-attention + fla-core   the fla WKV7 kernels (needs einops, transformers<6,>=5.6.2: there)
#   rwkv                                the reference runtime the decode check races (needs tokenizers: there)
#   peft                                LoRA (the image has one, of a version not read; ours needs >=0.18)
#   lightning-fabric                    rwkvtune imports lightning_fabric (the image has the `lightning` bundle)
#   datasets + dill + multiprocess      not on the image (dill < 0.4.2 and multiprocess < 0.70.20 for datasets)
# Pinned to the versions this project is tested with here, one version of each (two stop the whole install).
# Together 3.7 MiB (3,871,225 bytes for 3.12, measured 2026-12); the carry limit is 64 MiB with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION="${1:-3.12}"
PYTHON="${PYTHON:-python3}"
WHEELS=(
    flash-linear-attention==0.6.0
    fla-core==0.6.0
    rwkv==0.8.32
    peft==0.21.2
    lightning-fabric==2.6.6
    datasets==5.2.0
    dill==0.4.1
    multiprocess==0.70.19
)
#: The most the wheels may take: the rest of the 64 MiB carry limit is the working tree's.
MAX_BYTES=$((24 * 1024 * 1024))

rm -rf .whl
mkdir -p .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

count=$(ls .whl/*.whl | wc -l)
bytes=$(cat .whl/*.whl | wc -c)
ls -l .whl
echo "$count wheels, $bytes bytes ($((bytes / 1024)) KiB) in .whl/ for CPython $PY_VERSION"
if [ "$count" -ne "${#WHEELS[@]}" ]; then
    echo "expected ${#WHEELS[@]} wheels, got $count" >&2
    exit 1
fi
if [ "$bytes" -gt "$MAX_BYTES" ]; then
    echo "the wheels take more than $MAX_BYTES bytes: the working tree and they must stay under 64 MiB" >&2
    exit 1
fi

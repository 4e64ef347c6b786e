#!/usr/bin/env bash
# SFT over several machines with torchrun: run the same command on every machine, each with its NODE_RANK.
#   on node 0:  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS_PER_NODE=8 MODEL_PATH=models/rwkv7-1.5b \
#                 OUTPUT_DIR=/shared/runs/sft ./run_sft_multi_node.sh
#   on node 1:  the same with NODE_RANK=1
# MASTER_ADDR is node 0's address (reachable from every machine), MASTER_PORT a free port there [29500].
# MODEL_PATH, DATA_PATH and OUTPUT_DIR must name the same files on every machine (shared storage): checkpoints
# are written once, by global rank 0, and every machine reads them back on resume (RESUME=latest).
# Every other setting of train_sft_single_gpu.py applies (STRATEGY=fsdp for sharded full fine-tuning, LORA_R, ...);
# MICRO_BSZ is per process. Under SLURM, launch train_sft_single_gpu.py with srun instead (README: Several machines).
set -euo pipefail
cd "$(dirname "$0")"
: "${NNODES:?set NNODES, the number of machines}" "${NODE_RANK:?set NODE_RANK, 0 to NNODES-1}"
: "${MASTER_ADDR:?set MASTER_ADDR, the address of node 0}" "${MODEL_PATH:?set MODEL_PATH, a hub directory every machine reads}"
export NUM_NODES="$NNODES" DEVICES="${GPUS_PER_NODE:-1}"
exec python -m torch.distributed.run --nnodes "$NNODES" --nproc-per-node "$DEVICES" --node-rank "$NODE_RANK" \
    --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}" train_sft_single_gpu.py "$@"

#!/bin/bash
# The same run with torchrun, 2 nodes x 8 GPUs: run this on every node with NODE_RANK=0 / 1 and
# MASTER_ADDR set to node 0's address. One node, or CPUs only: --nnodes 1 --nproc_per_node N [--device cpu].
set -euo pipefail
# The trainer (webdataset's braceexpand) expands the braces; bash must not, so the default is quoted
# on its own line (inside ${SHARDS:-...} the brace's '}' would close the expansion).
DEFAULT_SHARDS='/data/cc3m/{00000..00331}.tar'
SHARDS=${SHARDS:-$DEFAULT_SHARDS}
torchrun --nnodes 2 --node_rank "${NODE_RANK:?set NODE_RANK}" --nproc_per_node 8 \
    --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --master_port 29500 \
    -m open_clip_train.main \
    --model LightCLIP-MNv3 --loss lightclip \
    --train-data "$SHARDS" --dataset-type webdataset --dataset-resampled --train-num-samples 2800000 \
    --batch-size 256 --epochs 32 --lr 1e-3 --wd 0.1 --warmup 2000 --precision amp_bf16 --workers 8 \
    --local-loss --gather-with-grad \
    --save-frequency 1 --save-most-recent --resume latest \
    --logs ./logs --name lightclip-mnv3-torchrun

#!/usr/bin/env bash
# The reinforced-data study's inputs, built on the CPU from the Debian clip art (nothing downloaded):
# 128 px shards, a teacher and a CoCa captioner trained on their train split, the teacher cache of
# un-augmented images, and the reinforced shards (K = 10 views, N = 2 synthetic captions, fp16).
# Usage: bash docs/ablation/reinforce/prepare.sh [STUDY_DIR]   (default study/dr). Resumable: a finished step is
# skipped, an interrupted training resumes from its latest epoch, cache-teacher and reinforce keep finished shards.
set -euo pipefail
S=${1:-study/dr}
PY=${PY:-.venv/bin/python}
CLI=${CLI:-.venv/bin/open-clip-lightclip}
TRAIN="$S/data/train-{00000..00003}.tar"
COMMON=(--dataset-type webdataset --dataset-resampled --train-num-samples 5120 --batch-size 64 --epochs 10
        --lr 1e-3 --warmup 40 --workers 1 --device cpu --precision fp32 --seed 100 --save-frequency 1)
TEACHER="LightCLIP-Tiny+mobilenetv3_small_100=$S/teacher/teacher/checkpoints/epoch_10.pt"
resume() { [ -d "$1" ] && echo --resume latest || true; }  # the trainer refuses an existing run folder otherwise

[ -f "$S/data/build_info.json" ] || $CLI build-shards openclipart --out "$S/data" --image-size 128 \
    --heldout-fraction 0.1 --samples-per-shard 1000 --no-progress
[ -f "$S/teacher/teacher/checkpoints/epoch_10.pt" ] || $PY -m open_clip_train.main \
    --model LightCLIP-Tiny+mobilenetv3_small_100 --loss clip --train-data "$TRAIN" --force-image-size 128 \
    "${COMMON[@]}" --logs "$S/teacher" --name teacher $(resume "$S/teacher/teacher")
[ -d "$S/coca" ] || $PY docs/ablation/reinforce/train_captioner.py "$S/coca" -- --train-data "$TRAIN" \
    "${COMMON[@]}" --train-num-samples 2560 --batch-size 32 --logs "$S/captioner" --name coca \
    $(resume "$S/captioner/coca")  # 800 steps of 32 (its 49408-way caption head is the cost on a CPU)
$CLI cache-teacher "$TRAIN" --out "$S/cache" --teacher "$TEACHER" --no-progress
$CLI reinforce "$TRAIN" --out "$S/dr" --teacher "$TEACHER" --views 10 --captioner "local-dir:$S/coca" \
    --synthetic 2 --aug-cfg 'scale=(0.5, 1.0)' --batch-size 64 --no-progress

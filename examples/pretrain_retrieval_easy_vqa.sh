#!/usr/bin/env bash
# A small image-text retrieval model for the corpus-scale ranking of `vilt batch rank` (docs/scale.md).
#
# The recipe of examples/pretrain_easy_vqa.sh, shortened: pretrain a new small ViLT with MLM + ITM + WPA
# on captions made from easy-VQA's training images ("a blue circle"), here with 16-pixel patches (16
# image tokens instead of 64, so one pair costs about a third) and 24 epochs. Then its ITM head becomes
# the rank_output of a ViltForImageAndTextRetrieval (the log-odds of "matches": exact, see
# vilt.scale.retrieval_model_from_itm), evaluated by ranking the easy-VQA test corpus (1,000 images x
# 5,000 texts) exhaustively with `vilt batch rank`.
#
# Usage: examples/pretrain_retrieval_easy_vqa.sh [work dir]   (results in results/retrieval-easy-vqa/)
# Re-running resumes: the training loop resumes from last.pt, the ranking from its committed parts.
set -euo pipefail

WORK=${1:-runs/retrieval-easy-vqa}
RESULTS=results/retrieval-easy-vqa
mkdir -p "$WORK/pretrain" "$RESULTS"
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

vilt train --task pretrain --dataset easy-vqa --output-dir "$WORK/pretrain" \
    --image-size 64 --patch-size 16 --shortest-edge 64 --hidden-size 96 --num-layers 3 --num-heads 4 \
    --intermediate-size 384 --initializer-range 0.08 --threads 1 --val-fraction 0.03 --seed 0 \
    --randaugment --randaugment-magnitude 4 --randaugment-ops Rotate,ShearX,ShearY,TranslateXabs,TranslateYabs \
    --epochs "${PRETRAIN_EPOCHS:-24}" --batch-size 32 --lr 1.2e-3 --warmup 0.05 --eval-every 400 --log-every 50 \
    2> >(tr '\r' '\n' | grep -v '^\s*$' >> "$WORK/pretrain/console.txt")
cp "$WORK/pretrain/log.csv" "$RESULTS/pretrain.log.csv"
cp "$WORK/pretrain/train.log" "$RESULTS/pretrain.train.log"

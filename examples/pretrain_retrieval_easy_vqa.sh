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

# the ITM head as a retrieval head (rank_output = the "matches" logit minus the other)
python -c "import sys; from vilt.scale.ranking import retrieval_model_from_itm as f; f(sys.argv[1], sys.argv[2])" \
    "$WORK/pretrain/best" "$WORK/model"
cp "$WORK/model/config.json" "$RESULTS/model-config.json"

# the corpus: the 1,000 easy-VQA test images, 5 texts each; then every text against every image
python examples/easy_vqa_corpus.py corpus "$WORK/images.jsonl" "$WORK/texts.jsonl" --images 1000 --texts-per-image 5 \
    | tee "$RESULTS/corpus.txt"
vilt batch rank --images "$WORK/images.jsonl" --texts "$WORK/texts.jsonl" --model "$WORK/model" \
    --output "$WORK/ranked" --batch-size 1024 --image-block 100 --text-block 1000 --top-k 10 \
    2> >(tr '\r' '\n' | grep -v '^\s*$' | tail -n 3 >> "$WORK/rank-console.txt") | tee "$RESULTS/rank-metrics.json"
python - "$WORK/ranked" "$RESULTS" <<'PY'
import json, sys
from pathlib import Path
import pyarrow.parquet as pq
ranked, results = Path(sys.argv[1]), Path(sys.argv[2])
texts = {json.loads(line)["id"]: json.loads(line)["text"] for line in open(ranked.parent / "texts.jsonl")}
lines = []
for row in pq.read_table(ranked / "text_to_images.parquet").slice(0, 10).to_pylist():
    lines.append(f"{texts[row['id']]!r}: " + ", ".join(f"{i} ({s:.2f})" for i, s in zip(row["top"][:3], row["scores"][:3])))
(results / "rank-examples.txt").write_text("the 3 best images of the first 10 texts:\n" + "\n".join(lines) + "\n")
PY

#!/usr/bin/env bash
# Does ViLT pretraining help? A small-scale replay of the paper's recipe on easy-VQA.
#
# 1. Pretrain a new small ViLT with MLM + ITM + WPA on captions made from easy-VQA's training
#    images ("a blue circle", read off their questions and answers; the validation images held out).
# 2. Fine-tune it on 5% of the training questions.
# 3. Fine-tune the same architecture from scratch on the same 5%, with the same settings.
# 4. Evaluate both on the full easy-VQA test split (9,673 questions).
#
# Usage: examples/pretrain_easy_vqa.sh [work dir]   (results land in results/pretrain-easy-vqa/)
set -euo pipefail

WORK=${1:-runs/pretrain-easy-vqa}
RESULTS=results/pretrain-easy-vqa
mkdir -p "$WORK" "$RESULTS"
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

MODEL=(--image-size 64 --patch-size 8 --shortest-edge 64 --hidden-size 96 --num-layers 3 --num-heads 4
       --intermediate-size 384 --threads 1 --val-fraction 0.03 --seed 0)
FINETUNE=(--task vqa --dataset easy-vqa --train-fraction 0.05 --epochs 8 --batch-size 32 --lr 1e-3
          --head-lr-mult 1 --warmup 0.05 --eval-every 100 --log-every 20)

run() {  # run NAME ARGS...: one training run, its console output kept next to its logs
    local name=$1; shift
    rm -rf "${WORK:?}/$name"
    mkdir -p "$WORK/$name"
    vilt train --output-dir "$WORK/$name" "$@" 2> >(tr '\r' '\n' | grep -v '^\s*$' > "$WORK/$name/console.txt")
    cp "$WORK/$name/log.csv" "$RESULTS/$name.log.csv"
    cp "$WORK/$name/train.log" "$RESULTS/$name.train.log"
}

run pretrain --task pretrain --dataset easy-vqa "${MODEL[@]}" --epochs 8 --batch-size 32 --lr 1e-3 \
    --warmup 0.05 --eval-every 100 --log-every 20
run finetune-pretrained "${FINETUNE[@]}" "${MODEL[@]}" --init "$WORK/pretrain/best"
run finetune-scratch "${FINETUNE[@]}" "${MODEL[@]}"

for name in finetune-pretrained finetune-scratch; do
    vilt evaluate --model "$WORK/$name/best" --task vqa --dataset easy-vqa --split test --threads 1 \
        --metrics-file "$RESULTS/$name.test.json"
done
python - "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path
results = Path(sys.argv[1])
pre = json.loads((results / "finetune-pretrained.test.json").read_text())["accuracy"]
scratch = json.loads((results / "finetune-scratch.test.json").read_text())["accuracy"]
summary = (f"easy-VQA test accuracy after fine-tuning on 5% of the training questions:\n"
           f"  pretrained (MLM + ITM + WPA on captions): {pre:.4f}\n"
           f"  from scratch:                             {scratch:.4f}\n"
           f"  pretraining {'helps' if pre > scratch else 'does not help'} ({pre - scratch:+.4f})\n")
(results / "summary.txt").write_text(summary)
print(summary)
EOF

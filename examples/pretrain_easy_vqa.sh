#!/usr/bin/env bash
# Does ViLT pretraining help? A small-scale replay of the paper's recipe on easy-VQA.
#
# 1. Pretrain a new small ViLT with MLM + ITM + WPA on captions made from easy-VQA's training
#    images ("a blue circle", read off their questions and answers; the validation images held out).
# 2. Fine-tune it on 5% of the training questions.
# 3. Fine-tune the same architecture from scratch on the same 5%, with the same settings.
# 4. Evaluate both on the full easy-VQA test split (9,673 questions).
# Pretraining: 40 epochs of the captions; fine-tuning: 30 epochs of the 5%.
# Steps 2-4 run with three learning-rate recipes: the paper's fine-tuning (1e-4, head x10), 3e-4 with
# head x10, and the learning rate that suits training from scratch (1e-3 everywhere).
#
# Usage: examples/pretrain_easy_vqa.sh [work dir]   (results land in results/pretrain-easy-vqa/)
# Re-running resumes: finished runs in the work dir are kept (the training loop resumes from last.pt).
set -euo pipefail

WORK=${1:-runs/pretrain-easy-vqa}
RESULTS=results/pretrain-easy-vqa
mkdir -p "$WORK" "$RESULTS"
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

MODEL=(--image-size 64 --patch-size 8 --shortest-edge 64 --hidden-size 96 --num-layers 3 --num-heads 4
       --intermediate-size 384 --initializer-range 0.08 --threads 1 --val-fraction 0.03 --seed 0)
AUGMENT=(--randaugment --randaugment-magnitude 4 --randaugment-ops Rotate,ShearX,ShearY,TranslateXabs,TranslateYabs)
FINETUNE=(--task vqa --dataset easy-vqa --train-fraction 0.05 --epochs 30 --batch-size 32 --warmup 0.05
          --eval-every 300 --log-every 50)

run() {  # run NAME ARGS...: one training run (resumed if its work dir holds a checkpoint)
    local name=$1; shift
    mkdir -p "$WORK/$name"
    vilt train --output-dir "$WORK/$name" "$@" 2> >(tr '\r' '\n' | grep -v '^\s*$' >> "$WORK/$name/console.txt")
    cp "$WORK/$name/log.csv" "$RESULTS/$name.log.csv"
    cp "$WORK/$name/train.log" "$RESULTS/$name.train.log"
}

run pretrain --task pretrain --dataset easy-vqa "${MODEL[@]}" "${AUGMENT[@]}" --epochs "${PRETRAIN_EPOCHS:-40}" \
    --batch-size 32 --lr 1.2e-3 --warmup 0.05 --eval-every 400 --log-every 50

declare -A RECIPES=([paper-lr]="--lr 1e-4 --head-lr-mult 10" [mid-lr]="--lr 3e-4 --head-lr-mult 10"
                    [scratch-lr]="--lr 1e-3 --head-lr-mult 1")
for recipe in paper-lr mid-lr scratch-lr; do
    read -ra LR <<< "${RECIPES[$recipe]}"
    # the two fine-tunes of a recipe run side by side, one core each
    run "finetune-pretrained-$recipe" "${FINETUNE[@]}" "${LR[@]}" "${MODEL[@]}" --init "$WORK/pretrain/best" &
    pretrained=$!
    run "finetune-scratch-$recipe" "${FINETUNE[@]}" "${LR[@]}" "${MODEL[@]}" &
    wait "$pretrained" && wait $!
    for start in pretrained scratch; do
        [ -f "$RESULTS/finetune-$start-$recipe.test.json" ] && continue  # already evaluated
        vilt evaluate --model "$WORK/finetune-$start-$recipe/best" --task vqa --dataset easy-vqa --split test \
            --threads 1 --metrics-file "$RESULTS/finetune-$start-$recipe.test.json"
    done
done

python - "$RESULTS" <<'EOF2'
import json, sys
from pathlib import Path
results = Path(sys.argv[1])
lines = ["easy-VQA test accuracy (9,673 questions) after fine-tuning on 5% of the training questions:"]
recipes = [("paper-lr", "lr 1e-4, head x10 (the paper's fine-tuning)"), ("mid-lr", "lr 3e-4, head x10"),
           ("scratch-lr", "lr 1e-3, head x1 (suits training from scratch)")]
for recipe, label in recipes:
    pre, scratch = (json.loads((results / f"finetune-{s}-{recipe}.test.json").read_text())["accuracy"] for s in ("pretrained", "scratch"))
    lines += [f"  {label}:", f"    pretrained (MLM + ITM + WPA on captions): {pre:.4f}", f"    from scratch:                             {scratch:.4f}",
              f"    pretraining {'helps' if pre > scratch else 'does not help'} ({pre - scratch:+.4f})"]
(results / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF2

#!/usr/bin/env bash
# Train the bundled easy-VQA model (src/vilt/data/easy-vqa) from scratch on a 2-core CPU, then
# evaluate it on the full easy-VQA test split (9,673 questions).
#
# The options are in examples/train_easy_vqa.yaml. Two processes (torchrun, gloo) each use one core;
# 3% of the training images are held out for validation and model selection; the test split is only
# used by the final `vilt evaluate`. The best validation model is saved in float16.
#
# Usage: examples/train_easy_vqa.sh [work dir]
#   logs and the evaluation output land in results/easy-vqa/; the model is copied to src/vilt/data/easy-vqa/.
set -euo pipefail

WORK=${1:-runs/easy-vqa}
RESULTS=results/easy-vqa
BUNDLED=src/vilt/data/easy-vqa
mkdir -p "$WORK" "$RESULTS"
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

start=$(date +%s)
python -m torch.distributed.run --standalone --nproc_per_node 2 -m vilt.cli train \
    --config examples/train_easy_vqa.yaml --output-dir "$WORK" \
    2> >(tr '\r' '\n' | grep -v '^\s*$' > "$RESULTS/train.console.txt")
echo "wall time of the training command: $(( $(date +%s) - start )) s" | tee "$RESULTS/wall_time.txt"
cp "$WORK/log.csv" "$RESULTS/train.log.csv"
cp "$WORK/train.log" "$RESULTS/train.log"

rm -rf "$BUNDLED"
mkdir -p "$BUNDLED"
cp "$WORK"/best/{config.json,model.safetensors,preprocessor_config.json,special_tokens_map.json,tokenizer.json,tokenizer_config.json,vocab.txt,training_data.json} "$BUNDLED"/
cp "$WORK/best/metrics.json" "$RESULTS/best_val_metrics.json"
du -b "$BUNDLED/model.safetensors" | tee "$RESULTS/model_size.txt"

vilt evaluate --model "$BUNDLED" --task vqa --dataset easy-vqa --split test --threads 1 \
    --metrics-file "$RESULTS/test_metrics.json" 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tee "$RESULTS/evaluate.txt"

#!/usr/bin/env bash
# The quick start, end to end on a fresh clone: set up .venv, then run the main job on the embedded
# all-MiniLM-L6-v2 with the committed demo sample (examples/data, see its PROVENANCE.md).
# Non-interactive (reads no stdin; fine under CI=true). Outputs go to quickstart-out/ (git-ignored).
#   OUT=dir          where outputs go (default quickstart-out)
#   SKIP_INSTALL=1   reuse an existing .venv instead of running scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-quickstart-out}
VENV=${VENV:-.venv}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

step() { printf '\n=== %s ===\n' "$*"; }

# ---------------------------------------------------------------------------------------------------
# [install] the package and its extras into $VENV
# ---------------------------------------------------------------------------------------------------
if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  step "install"
  bash scripts/install.sh </dev/null
fi
AD="$VENV/bin/adapterdeploy"
mkdir -p "$OUT"

# ---------------------------------------------------------------------------------------------------
# [train] two demo tasks on the embedded MiniLM (about 1-2 minutes on 2 CPU cores)
# The tutorial recipe's defaults (adapter after each layer, reduction factor 16, relu, lr 1e-3,
# batch 8, 1 epoch); the demo sample is small, so these checkpoints show the flow, not the accuracy
# (benchmarks/results/training.md has real results).
# ---------------------------------------------------------------------------------------------------
step "train sst2 (single sentences, 1500 rows)"
"$AD" train --task sst2 --out "$OUT/ckpt/sst2" --force \
  --train examples/data/sst2/train.tsv --eval examples/data/sst2/dev.tsv \
  --max-length 64 --pooling mean </dev/null
step "train mrpc (sentence pairs, 1000 of 1500 rows)"
"$AD" train --task mrpc --out "$OUT/ckpt/mrpc" --force \
  --train examples/data/mrpc/train.tsv --eval examples/data/mrpc/dev.tsv \
  --max-train-rows 1000 --max-length 96 --pooling mean </dev/null

# ---------------------------------------------------------------------------------------------------
# [export] (added by the exporter stage): $OUT/ckpt/{sst2,mrpc} -> one deployment directory
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# [predict] (added by the runtime stage)
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# [latency] (added by the benchmark stage): onnxruntime deployment vs eager PyTorch
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# [serve] (added by the serving stage)
# ---------------------------------------------------------------------------------------------------

step "done"
echo "task checkpoints: $OUT/ckpt/sst2 $OUT/ckpt/mrpc"

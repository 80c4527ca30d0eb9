#!/usr/bin/env bash
# Rebuild the bundled sample runs in sample_runs/ (deterministic: fixed seeds), then drop
# their trajectories (initial parameters are kept) so that they are small enough to commit.
#
#   digits_mlp_corrupt20        8x8 digits (images), tanh MLP, plain SGD, 20% injected label
#                               corruption, 30 epochs: the run the dashboard opens on
#   breast_cancer_mlp_momentum  breast cancer (30 tabular features), tanh MLP, SGD with
#                               momentum 0.9 and weight decay, 10% injected corruption, 25 epochs
#
# Each: influence at every epoch end (val_loss query), detection signals (signals.parquet).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIT=".venv/bin/dit"

finish() {
    "$DIT" compute "$1" --checkpoints epochs --quiet
    "$DIT" signals "$1" --top 5
    "$DIT" strip "$1"
    "$DIT" info "$1"
    du -sh "$1"
}

OUT="sample_runs/digits_mlp_corrupt20"
"$DIT" train digits --model mlp --hidden 32 --corruption 0.2 --corruption-seed 0 \
    --epochs 30 --batch-size 32 --lr 0.1 --seed 0 --out "$OUT" --overwrite --quiet
finish "$OUT"

OUT="sample_runs/breast_cancer_mlp_momentum"
"$DIT" train breast_cancer --model mlp --hidden 16 --corruption 0.1 --corruption-seed 0 \
    --epochs 25 --batch-size 32 --lr 0.01 --momentum 0.9 --weight-decay 1e-4 --seed 0 \
    --out "$OUT" --overwrite --quiet
finish "$OUT"

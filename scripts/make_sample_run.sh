#!/usr/bin/env bash
# Rebuild the bundled sample run in sample_runs/ (digits, MLP, 20% injected label
# corruption, 30 epochs, influence at every epoch end, detection signals), then drop
# its trajectory so that it is small enough to commit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIT=".venv/bin/dit"
OUT="sample_runs/digits_mlp_corrupt20"
"$DIT" train digits --model mlp --hidden 32 --corruption 0.2 --corruption-seed 0 \
    --epochs 30 --batch-size 32 --lr 0.1 --seed 0 --out "$OUT" --overwrite --quiet
"$DIT" compute "$OUT" --checkpoints epochs --quiet
if "$DIT" signals --help >/dev/null 2>&1; then "$DIT" signals "$OUT"; fi
"$DIT" strip "$OUT"
"$DIT" info "$OUT"
du -sh "$OUT"

#!/usr/bin/env bash
# Superseded by the benchmark workflow: benchmarks/studies/headline.yaml (make bench STUDY=headline), under the
# convergence protocol. Kept only because committed tables that the book's benchmark page reads come from it;
# remove it when they read the study's results instead.
# The commands behind benchmarks/results/foundation_sorted10.csv (issue 2): the scVI-style `vae`
# (k-means (k) on its latent space) and scVAE's `mixture` (K = 10) on all 10 sorted populations,
# 500 HVGs, scVI's baseline architecture (latent 10, one hidden layer of 128), batch 128,
# warm-up 5, patience 20, at most 100 epochs, seeds 0 1 2. One thread, niced: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for model in vae mixture; do  # all vae seeds first: the mixture's decoder runs once per component
  for seed in 0 1 2; do
    nice -n 5 $PY -m hiermix_pyro.bench --models $model --dataset pbmc_sorted --n-hvg 500 \
      --seeds $seed --threads 1 --out runs/bench_foundation/sorted10 \
      --set epochs=100 latent_dim=10 "hidden_dims=(128,)" batch_size=128 warmup_epochs=5 patience=20 \
      --csv benchmarks/results/foundation_sorted10.csv
  done
done

#!/usr/bin/env bash
# The exact commands behind benchmarks/results/eb_*.csv (issue 4: VampPrior, Bayesian GMM, VMM).
# Package defaults unless set: latent 10, MLP 1 x 128, NB, batch 128, KL warm-up 5 epochs, early
# stopping patience 20, at most 100 epochs (see SET); K = 100 for vampprior / gmm / vmm; EM: gradient
# M-step with em_lr 1e-3 (the default, chosen from the sweep below), starting after the warm-up. vae is scored with k-means (k = classes)
# on its latent, as the workflow does. The machine has 2 shared cores: one training process at
# a time, one torch thread, niced. Run sections by name: empirical_bayes.sh sorted tech sweep paper
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1  # one thread per run, no spinning OpenMP workers
PY=${PY:-.venv/bin/python}
bench() { nice -n 5 $PY -m hiermix_pyro.bench --threads 1 --n-hvg 500 --n-iwae-samples 20 "$@"; }
SET=(--set epochs=${EPOCHS:-100})
OUT=runs/bench_eb/e${EPOCHS:-100}
MODELS=(vmm gmm vampprior vae)
export HIERMIX_SCIB=0  # scIB is scored afterwards for all runs in one process (JIT compiles once): see tech()

sorted() {  # all 10 sorted populations, finest level L4
  for seed in ${SEEDS:-0 1 2}; do
    bench --dataset pbmc_sorted --out $OUT/sorted --csv benchmarks/results/eb_sorted.csv \
      --models "${MODELS[@]}" --seeds $seed "${SET[@]}"
  done
}

tech() {  # three 10x chemistries, batch one-hot in encoder and decoder; scIB scores (needs the scib extra)
  for seed in ${SEEDS:-0 1 2}; do
    bench --dataset pbmc_3tech --batch-key batch --out $OUT/3tech --csv benchmarks/results/eb_3tech.csv \
      --models "${MODELS[@]}" --seeds $seed "${SET[@]}"
  done
  # scIB for every finished run at once (plus the unintegrated PCA as a reference row)
  nice -n 5 $PY -m hiermix_pyro.metrics.integration $OUT/3tech/*-seed* --csv benchmarks/results/eb_3tech_scib.csv
}

sweep() {  # batch size x EM learning rate -> utilised clusters and NMI: vmm, seed 0, the paper's protocol
  # (patience 100, at most 10,000 epochs) on the 10 sorted populations and on pbmc_3tech; one row per
  # setting and level in eb_sweep_<dataset>.csv
  local variants=()
  for bs in ${BATCH_SIZES:-128 64 256}; do
    for lr in ${EM_LRS:-0.001 0.003 0.01 0.03 0.1}; do variants+=("vmm:em_lr=$lr,batch_size=$bs"); done
  done
  for data in ${DATASETS:-sorted 3tech}; do
    local args=(--dataset pbmc_sorted)
    [ "$data" = sorted ] || args=(--dataset pbmc_3tech --batch-key batch)
    bench "${args[@]}" --seeds 0 --set epochs=10000 patience=100 --out runs/bench_eb/sweep/$data \
      --csv benchmarks/results/eb_sweep_$data.csv --models "${variants[@]}"
  done
}

paper() {  # the VMM paper's protocol: early stopping on the validation ELBO with patience 100, at most
  # 10,000 epochs, the best epoch restored; 5 seeds; K = 100; package defaults otherwise
  local set=(--set epochs=10000 patience=100) out=runs/bench_eb/paper
  for seed in ${SEEDS:-0 1 2 3 4}; do
    for data in ${DATASETS:-sorted 3tech}; do
      if [ "$data" = sorted ]; then
        bench --dataset pbmc_sorted --out $out/sorted --csv benchmarks/results/eb_paper_sorted.csv \
          --models ${PAPER_MODELS:-vmm gmm vampprior} --seeds $seed "${set[@]}"
      else
        bench --dataset pbmc_3tech --batch-key batch --out $out/3tech --csv benchmarks/results/eb_paper_3tech.csv \
          --models ${PAPER_MODELS:-vmm gmm vampprior vae} --seeds $seed "${set[@]}"
      fi
    done
  done
  if [[ " ${DATASETS:-sorted 3tech} " == *" 3tech "* ]]; then  # scIB of every finished 3tech run, one Benchmarker
    nice -n 5 $PY -m hiermix_pyro.metrics.integration $out/3tech/*-seed* --csv benchmarks/results/eb_paper_3tech_scib.csv
  fi
}

sections=("$@"); [ ${#sections[@]} -gt 0 ] || sections=(sorted tech sweep)
for section in "${sections[@]}"; do $section; done

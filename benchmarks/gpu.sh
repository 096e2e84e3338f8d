#!/usr/bin/env bash
# One GPU, under 8 minutes (about 5 on an H100-class card): what a short GPU window should measure.
#
#   bash benchmarks/gpu.sh                     # on the GPU machine, from the repository root
#   bash benchmarks/gpu.sh --device cpu --tiny # the CPU check (tests/test_gpu_script.py runs it)
#
# 1. benchmarks/gpu.py: cells/s of vae, momix (collapsed, 360 paths) and vmm at batch 128 and
#    4,096 on 100k simulated cells x 2,000 genes held on the GPU, eager and JIT (falling back,
#    with a message, on the CUDA fuser error of Pyro issue #3338), and scvi-tools SCVI on the
#    same cells when `import scvi` works -> benchmarks/results/gpu_throughput.csv
# 2. the main job once on the GPU: papermill notebooks/train.ipynb -p model momix -p device cuda
#    -> $OUT/train-momix.ipynb and $OUT/train-momix/ (metrics.json, figures, ...)
# 3. nvidia-smi and the package versions -> $OUT/environment.txt
#
# Options: --device cpu|cuda (default cuda), --tiny (small data, smoke-mode notebook; writes
# the table into $OUT, never over the committed one), --out DIR (default runs/gpu; OUT= works
# too). Commit benchmarks/results/gpu_throughput.csv (it names the GPU) and, if wanted,
# $OUT/train-momix/metrics.json as benchmarks/results/gpu_train_momix.json.
#
# Python: .venv/bin/python if there is one, else python3 (PYTHON= chooses). A machine without
# this project's packages and without a registry (the project's GPU image): run
# `bash benchmarks/gpu_wheels.sh` here first and carry .whl/ there; this script then installs
# the wheels into /tmp/site and puts it and the repository on PYTHONPATH. For example, with the
# device tool: run(command="OUT=$OUT bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=540).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
TINY=0
OUT=${OUT:-runs/gpu}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "unknown option $1 (use --device cpu|cuda, --tiny, --out DIR)" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
START=$(date +%s)
export MPLBACKEND=Agg PYTHONUNBUFFERED=1 HIERMIX_SCIB=0
if [ -d .whl ] && ! "$PYTHON" -c "import pyro, scanpy, papermill" 2> /dev/null; then
    echo "== installing the carried wheels (.whl) into /tmp/site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
"$PYTHON" -c "import hiermix_pyro" 2> /dev/null || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

echo "== environment"
{
    date -u
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, pyro; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('pyro', pyro.__version__)"
    "$PYTHON" -c "import scvi; print('scvi-tools', scvi.__version__)" 2> /dev/null || echo "scvi-tools: not importable (its row is skipped)"
} | tee "$OUT/environment.txt"

echo "== throughput"
if [ "$TINY" = 1 ]; then
    "$PYTHON" benchmarks/gpu.py --device "$DEVICE" --tiny --csv "$OUT/gpu_throughput.csv"
else
    "$PYTHON" benchmarks/gpu.py --device "$DEVICE" --csv benchmarks/results/gpu_throughput.csv --budget-s 300
fi

echo "== the main job: momix on $DEVICE"
SMOKE=()
[ "$TINY" = 1 ] && SMOKE=(-p smoke_test True)
"$PYTHON" -m papermill notebooks/train.ipynb "$OUT/train-momix.ipynb" -p model momix -p device "$DEVICE" \
    -p output_dir "$OUT/train-momix" "${SMOKE[@]}" --progress-bar
"$PYTHON" -c "import json, sys; m = json.load(open(sys.argv[1])); print('device', m['device'], '| epochs', m['epochs'], '| s/epoch', round(m['seconds_per_epoch'], 3), '| finest ARI', round(m['levels'][-1]['ari'], 3))" "$OUT/train-momix/metrics.json"

echo "== done in $(( $(date +%s) - START )) s; outputs in $OUT"

#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach a package registry but has Python 3.12 with PyTorch,
# numpy, pandas, scipy, scikit-learn, matplotlib, seaborn, h5py, numba (the project's device image):
# what benchmarks/gpu.sh needs beyond that, pinned to the versions of this repository's .venv.
#
#   bash benchmarks/gpu_wheels.sh            # here, with internet: fills .whl/ (about 40 MB)
#
# Then carry .whl to the GPU machine, where gpu.sh installs them into /tmp/site and puts it and the
# repository on PYTHONPATH before anything else (no pip there, no internet). The list is the
# dependency closure of pyro-ppl, anndata, scanpy (+ scikit-misc, umap-learn, leidenalg) and
# papermill (+ ipykernel) minus what that image holds; regenerate it when the pins move.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(
    anndata==0.12.19 array-api-compat==1.16.0 asttokens==3.0.2 comm==0.2.3 debugpy==1.8.22
    donfig==0.8.1.post1 entrypoints==0.4.2 executing==2.3.0 fastjsonschema==2.22.3 google-crc32c==1.9.0
    igraph==1.0.0 ipykernel==7.4.0 ipython==9.18.1 ipython-pygments-lexers==1.1.1 jedi==0.20.1
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 jupyter-client==8.10.0 jupyter-core==5.9.1
    legacy-api-wrap==1.5 leidenalg==0.12.0 matplotlib-inline==0.2.2 natsort==8.4.0 nbclient==0.11.0
    nbformat==5.11.1 nest-asyncio2==1.7.4 numcodecs==0.16.6 papermill==2.7.0 parso==0.8.7
    pexpect==4.9.0 platformdirs==4.14.9 prompt-toolkit==3.0.53 ptyprocess==0.7.0 pure-eval==0.2.4
    pynndescent==0.7.0 pyro-api==0.1.2 pyro-ppl==1.9.2 pytz==2026.6 pyzmq==27.3.0 referencing==0.37.0
    rpds-py==2026.9.1 scanpy==1.11.5 scikit-misc==0.5.3 scverse-misc==0.0.3 session-info2==0.4.1
    stack-data==0.6.3 tenacity==9.2.1 texttable==1.7.2 tornado==6.6.1 traitlets==5.16.1
    tzdata==2026.6 umap-learn==0.5.12 wcwidth==0.9.4 zarr==3.1.6
)
PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2> /dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PYTHON:-python3}
for pkg in "${PACKAGES[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d .whl "$pkg"
done
du -sh .whl

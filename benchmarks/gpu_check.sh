#!/usr/bin/env bash
# The GPU checks of vaeconverge in one run, on a machine whose python3 has torch with CUDA:
#   setup  the GPU and torch, and the package installed in place without its dependencies (torch stays the machine's)
#   tests  the test suite, its CUDA tests enabled (and every run that does not name a device on the GPU)
#   bench  benchmarks 1 (8 seeds vs 8 naive runs), 2 (conv32 vs the naive loop), 7 (bf16) and 9 (layouts) on cuda,
#          the naive loop a plain PyTorch loop on the same GPU
#   paper  one epoch of the paper's CIFAR-100 IWAE study on synthetic CIFAR-shaped data (random uint8 images):
#          K = 1 with its 4 seeds through `train`
#   reproduce  `reproduce --paper` of that study for one epoch, which first prints its estimate of every run
# Usage: benchmarks/gpu_check.sh [setup] [tests] [bench] [paper] [reproduce]   (default: all, in that order)
# TEST_PATHS narrows the tests (default: all), BENCHMARKS the benchmark scripts.
# Each section's log goes to $OUT (default runs/gpu-check) as it is written; each is stopped after a time limit
# (TESTS_S, BENCH_S per benchmark, PAPER_S seconds), so that one slow part cannot take the others' time. On an H200
# with 16 cores (2026-12-04): setup 10 s; the whole suite about 170 s on 14 workers; benchmark 2 about 50 s;
# benchmark 1 over 110 s (its naive loop alone 56 s); reproduce's estimates about 30 s.
set -u
cd "$(dirname "$0")/.."
out=$(realpath -m "${OUT:-runs/gpu-check}")
mkdir -p "$out"
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
stamp() { echo "== $* ($(date +%T))"; }

setup() {
    stamp setup
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    "$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'cores', __import__('os').cpu_count())"
    "$py" -m pip install --quiet --no-deps --no-build-isolation -e . && "$py" -m vaeconverge --version
}

tests() {
    local limit=()
    "$py" -c "import pytest_timeout" 2>/dev/null && limit=(--timeout 150)  # one test's limit, where the plugin is
    stamp tests
    timeout -s INT "${TESTS_S:-240}" "$py" -m pytest -v -n "${WORKERS:-12}" -p no:cacheprovider "${limit[@]}" \
        --tb=short -rfE --durations=10 ${TEST_PATHS:-}
    stamp "tests done (exit $?)"
}

bench() {
    local script
    for script in ${BENCHMARKS:-seeds_vs_naive conv32_vs_naive precision layout}; do
        stamp "benchmark $script"
        (cd benchmarks && timeout "${BENCH_S:-200}" "$py" "$script.py" --device "$device" \
            --repeats "${REPEATS:-1}" --timeout "${VARIANT_S:-150}")
    done
}

synthetic_cifar() {
    stamp "writing ${CIFAR_N:-50000} synthetic CIFAR-100 images to $1"
    "$py" - "$1" "${CIFAR_N:-50000}" <<'EOF'
import pickle, sys
from pathlib import Path
import numpy as np
root, n = Path(sys.argv[1]) / "cifar-100-python", int(sys.argv[2])
root.mkdir()
rng = np.random.default_rng(0)
batch = {b"fine_labels": rng.integers(0, 100, n).tolist(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
(root / "train").write_bytes(pickle.dumps(batch, protocol=4))
EOF
}

paper() {
    local data steps
    data=$(mktemp -d)
    synthetic_cifar "$data"
    steps=$(( ${CIFAR_N:-50000} / 256 ))
    stamp "paper: train, one epoch ($steps steps) of the study's K = 1 run, 4 seeds"
    timeout "${PAPER_S:-150}" "$py" -m vaeconverge train --device "$device" --data cifar100 --data-dir "$data" \
        --model conv32 --latent-dim 100 --likelihood bernoulli --objective iwae --samples 1 --optimizer adam \
        --lr 1e-3 --schedule epoch-sqrt --batch-size 256 --no-constants --steps "$steps" --seeds 4 --quiet \
        --out "$data/train-k1"
    "$py" -c "import json, sys; s = json.load(open(sys.argv[1])); print({k: s.get(k) for k in
('device', 'vectorised', 'threads', 'steps', 'seconds', 'diagnostics_seconds', 'objective')})" "$data/train-k1/summary.json"
    rm -rf "$data"
}

reproduce() {
    local data
    data=$(mktemp -d)
    synthetic_cifar "$data"
    stamp "reproduce --paper --study paper-cifar-iwae --epochs 1"
    timeout -s INT "${PAPER_S:-150}" "$py" -m vaeconverge reproduce --paper --study paper-cifar-iwae --epochs 1 \
        --data-dir "$data" --device "$device" --out "$data/paper" --quiet
    stamp "reproduce done (exit $?)"
    rm -rf "$data"
}

for section in "${@:-setup tests bench paper reproduce}"; do
    for part in $section; do
        case $part in
            setup|tests|bench|paper|reproduce) "$part" 2>&1 | tee "$out/$part.log" ;;
            *) echo "gpu_check.sh: unknown section $part (choose from setup tests bench paper reproduce)" >&2; exit 2 ;;
        esac
    done
done

#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one command (docs/benchmarks.md, "Accelerator step"):
# the cuDNN part of tests/test_fused_attention.py, then bench_gpu.py at bert-base shape over the
# settings worth comparing. Each part has its own time limit, so one that hangs cannot take the rest
# down; logs and JSON lines go to $OUT (default gpu-checks/).
#
#     bash bench/gpu_checks.sh [PYTHON]        # PYTHON: an interpreter with jax[cuda], flax, optax (python3)
set -u
python=${1:-python3}
out=${OUT:-gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax-cache}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
timeout 240 "$python" -m pytest -q -s -p no:cacheprovider tests/test_fused_attention.py 2>&1 \
    | tee "$out/test_fused_attention.log"

bench() {  # XLA_FLAGS, then bench_gpu.py arguments
    local flags=$1; shift
    echo "== XLA_FLAGS='$flags' bench_gpu.py $*" | tee -a "$out/bench.log"
    XLA_FLAGS=$flags timeout 150 "$python" bench/bench_gpu.py "$@" 2>&1 | tee -a "$out/bench.log"
}
no_triton=--xla_gpu_enable_triton_gemm=false
bench "$no_triton" --batch-size 1024 --fused-attention --steps 12
bench "$no_triton" --batch-size 512 --fused-attention --steps 20
bench "$no_triton" --batch-size 256 --fused-attention --steps 30
bench "" --batch-size 256 --fused-attention --steps 30
bench "" --batch-size 32 --steps 30
grep -h '^JSON: ' "$out/bench.log" | cut -c7- > "$out/bench.jsonl"

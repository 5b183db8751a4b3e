#!/usr/bin/env bash
# What a session lent a CUDA GPU runs first, in one command: the device and versions, the CUDA tests
# (the Triton kernel's compiled code against lion_core's reference, float and state formats), then
# the CUDA benchmark (issues 5, 10 and 12). Run it from the repository root on the GPU machine:
#
#   bash benchmarks/cuda_session.sh [OUTDIR]        # OUTDIR defaults to $OUT, else ./cuda-results
#
# It uses that machine's own python3 (its torch and Triton), and installs lionkit from this checkout
# without dependencies, index or build isolation (the GPU machine reaches no package registry); that
# also compiles the CPU kernel. Peers that are not installed there (lion-pytorch, torch-optimi,
# bitsandbytes) are installed from wheels in ./.whl when that folder exists, else their rows are left
# out. Each step has its own time limit, so the benchmark still runs when the tests fail, and the
# whole script fits one 10-minute device call. Writes OUTDIR/device.txt, install.txt, tests.txt,
# bench_torch_cuda.md (the table for docs/benchmarks-cuda.md) and bench_torch_cuda.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-cuda-results}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the compiled kernels, on the GPU

if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/lionkit-peers .whl/*.whl > "$out/install.txt" 2>&1 || { cat "$out/install.txt"; exit 1; }
    export PYTHONPATH="/tmp/lionkit-peers${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! python3 -m pip install --no-deps --no-index --no-build-isolation -e . >> "$out/install.txt" 2>&1; then
    cat "$out/install.txt"
    exit 1
fi

python3 - << 'EOF' 2>&1 | tee "$out/device.txt"
import platform

import torch
import triton

print(f"device: {torch.cuda.get_device_name(0)} (torch.cuda.get_device_name)")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
      f"python {platform.python_version()}")
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv \
    2>&1 | tee -a "$out/device.txt"

timeout 300 python3 -m pytest -q -m cuda -p no:cacheprovider \
    tests/kernels/test_triton_lion.py tests/kernels/test_formats.py 2>&1 | tee "$out/tests.txt"
tests=${PIPESTATUS[0]}

timeout 360 python3 benchmarks/bench_torch_cuda.py --out "$out/bench_torch_cuda.md" 2>&1 \
    | tee "$out/bench_torch_cuda.log"
bench=${PIPESTATUS[0]}

echo "exit codes: tests $tests, benchmark $bench" | tee -a "$out/device.txt"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]

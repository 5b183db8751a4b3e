#!/usr/bin/env bash
# Installs lionkit with every extra into ./.venv and runs the whole test suite, the Keras tests once
# per backend. Usage: bash tests/run.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first and pinned, so that nothing later asks pip for a newer (CUDA) build.
python -m pip install --quiet -c tests/constraints.txt torch==2.13.0
python -m pip install --quiet -c tests/constraints.txt -e ".[all,test]"

export PYTHONHASHSEED=0
# 8 host devices for the Optax sharding tests; Triton kernels run on the CPU interpreter.
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export TRITON_INTERPRET=1

run() {
    echo "== $*"
    "$@"
}

# One pytest process per suite: JAX's device count, Triton's interpreter and Keras' backend are fixed
# when each is first imported. pytest exits 5 when it collects nothing, and set -e makes that fail.
run python -m pytest --doctest-modules lion_core tests/core "$@"
run python -m pytest --doctest-modules lion_torch tests/torch "$@"
run python -m pytest --doctest-modules kernels tests/kernels "$@"
run python -m pytest tests/distributed "$@"
run python -m pytest --doctest-modules lion_optax tests/optax "$@"
for backend in jax torch tensorflow; do
    run env KERAS_BACKEND="$backend" python -m pytest tests/keras "$@"
done
run python -m pytest tests/cli tests/docs "$@"

"""Times ``model.fit`` steps on the PyTorch backend: ``lion_keras.Lion`` against ``keras.optimizers.Lion``.

The model is 6 Dense layers of 1024x1024 (with biases, about 6.3M float32 parameters) trained on
batches of 4, so the optimizer step is a large share of each training step. Both optimizers train
the same model (same initial weights, same data, default hyperparameters) in one process; they take
turns, one epoch of ``--steps`` steps each per round, so load from other processes spreads over both.
Reported: the median and minimum per-step time over ``--rounds`` timed rounds (after one untimed
round each), and the ratio lion_keras / Keras (below 1: lion_keras is faster).

Usage:
  KERAS_BACKEND=torch python benchmarks/bench_keras_torch.py            # the figures in docs
  KERAS_BACKEND=torch python benchmarks/bench_keras_torch.py --quick    # a smoke run, < 1 min
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import lion_keras  # noqa: E402

WIDTH, LAYERS, BATCH = 1024, 6, 4


def _model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((WIDTH,))
    x = inputs
    for _ in range(LAYERS):
        x = keras.layers.Dense(WIDTH)(x)
    return keras.Model(inputs, x)


def _time_epoch(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / (len(x) // BATCH)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="fit steps per round (default 50)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--quick", action="store_true", help="10 steps, 3 rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "torch":
        parser.error(f"run with KERAS_BACKEND=torch (this is {keras.backend.backend()!r})")
    if args.quick:
        args.steps, args.rounds = 10, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.steps * BATCH, WIDTH)).astype("float32")
    y = rng.standard_normal((args.steps * BATCH, WIDTH)).astype("float32")
    optimizers = {"keras.optimizers.Lion": keras.optimizers.Lion, "lion_keras.Lion": lion_keras.Lion}
    models = {}
    for name, factory in optimizers.items():
        model = _model(seed=0)
        model.compile(optimizer=factory(learning_rate=1e-4), loss="mse")
        _time_epoch(model, x, y)  # builds the optimizer state, warms the caches
        models[name] = model
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name].append(_time_epoch(model, x, y))
    params = sum(int(np.prod(v.shape)) for v in models["lion_keras.Lion"].trainable_variables)
    print(f"# model.fit, {LAYERS} Dense {WIDTH}x{WIDTH}, batch {BATCH}: "
          f"{params / 1e6:.1f}M float32 parameters")
    print(f"# keras {keras.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"python {platform.python_version()}, load {os.getloadavg()[0]:.1f}; "
          f"{args.rounds} rounds of {args.steps} steps")
    print(f"{'optimizer':<24}{'median ms/step':>16}{'min ms/step':>14}")
    for name, values in times.items():
        print(f"{name:<24}{1e3 * statistics.median(values):>16.2f}{1e3 * min(values):>14.2f}")
    ratio = statistics.median(times["lion_keras.Lion"]) / statistics.median(times["keras.optimizers.Lion"])
    verdict = "at least as fast as" if ratio <= 1 else "slower than"
    print(f"lion_keras / keras (median): {ratio:.2f}x ({verdict} keras.optimizers.Lion)")


if __name__ == "__main__":
    main()

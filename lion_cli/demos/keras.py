"""``lion demo`` on Keras 3: an MLP on scikit-learn's digits with ``lion_keras.Lion`` or Keras' ``AdamW``.

The recipe (data split, initial weights, batch order, hyperparameters) is :mod:`lion_cli.recipe`'s, shared
with the PyTorch and JAX demos; training is ``model.compile`` then ``model.fit``, one call per epoch on
that epoch's batch order.

Keras picks its backend once, when it is first imported, from ``KERAS_BACKEND``. ``lion demo`` sets
that variable (to the first installed of jax, torch, tensorflow) before it imports this module; if
Keras was already imported with another backend than the one asked for, :func:`run_recipe` runs in a
subprocess with the right ``KERAS_BACKEND``.

Run it alone with ``KERAS_BACKEND=jax python -m lion_cli.demos.keras --optimizer lion --epochs 5``, or
through ``lion demo --backend keras``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np

import lion_keras
from lion_cli._common import significant
from lion_cli.recipe import (
    DEMO_BATCH,
    DEMO_EPOCHS,
    DEMO_HIDDEN,
    History,
    demo_batches,
    demo_data,
    demo_init,
    demo_settings,
)


def _optimizer(name: str) -> keras.optimizers.Optimizer:
    settings = demo_settings(name)
    beta_1, beta_2 = settings["betas"]
    if name == "lion":
        return lion_keras.Lion(learning_rate=settings["lr"], beta_1=beta_1, beta_2=beta_2,
                               weight_decay=settings["weight_decay"])
    return keras.optimizers.AdamW(learning_rate=settings["lr"], beta_1=beta_1, beta_2=beta_2,
                                  epsilon=settings["eps"], weight_decay=settings["weight_decay"])


def _model(seed: int) -> keras.Model:
    layers = [keras.layers.Dense(width, activation="relu") for width in DEMO_HIDDEN]
    layers.append(keras.layers.Dense(10))
    model = keras.Sequential([keras.Input((64,)), *layers])
    for layer, (kernel, bias) in zip(layers, demo_init(seed)):
        layer.set_weights([kernel, bias])
    return model


def run_recipe(
    optimizer: str,
    *,
    epochs: int = DEMO_EPOCHS,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
    backend: str | None = None,
) -> History:
    """Trains the demo MLP with ``"lion"`` or ``"adamw"``; returns the per-epoch losses, accuracy, seconds.

    Args:
      optimizer: ``"lion"`` (``lion_keras.Lion``) or ``"adamw"`` (``keras.optimizers.AdamW``).
      epochs: passes over the training split (default ``lion_cli.recipe.DEMO_EPOCHS``).
      seed: seeds the initial weights and the batch order (default 0).
      on_epoch: called as ``on_epoch(epoch, mean_loss)`` after each epoch (epochs count from 0).
      backend: the Keras backend to train on (``"jax"``, ``"torch"``, ``"tensorflow"``); ``None``
        (default) uses the one Keras was imported with. Another one runs in a subprocess.
    """
    if backend is not None and backend != keras.backend.backend():
        return _train_in_subprocess(optimizer, epochs=epochs, seed=seed, on_epoch=on_epoch, backend=backend)
    data = demo_data()
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    model = _model(seed)
    model.compile(optimizer=_optimizer(optimizer),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = []
    for epoch in range(epochs):
        order = np.concatenate(demo_batches(len(data.x_train), epoch, seed))
        # shuffle=False with the recipe's order: the same batches as the other backends.
        fitted = model.fit(data.x_train[order], data.y_train[order], batch_size=DEMO_BATCH, epochs=1,
                           shuffle=False, verbose=0)
        losses.append(float(fitted.history["loss"][-1]))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    logits = model.predict(data.x_test, batch_size=len(data.x_test), verbose=0)
    seconds = time.perf_counter() - start
    return History(losses, float(np.mean(np.argmax(logits, axis=-1) == data.y_test)), seconds)


def _train_in_subprocess(
    optimizer: str, *, epochs: int, seed: int, on_epoch: Callable[[int, float], None] | None, backend: str
) -> History:
    command = [sys.executable, "-m", "lion_cli.demos.keras", "--optimizer", optimizer,
               "--epochs", str(epochs), "--seed", str(seed), "--json"]
    environment = {**os.environ, "KERAS_BACKEND": backend}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment) as process:
        assert process.stdout is not None  # noqa: S101 (Popen was given stdout=PIPE)
        result = None
        for line in process.stdout:
            if not line.startswith("{"):  # a backend's own chatter on stdout
                continue
            record = json.loads(line)
            if "epoch" in record and on_epoch is not None:
                on_epoch(record["epoch"], record["loss"])
            if "accuracy" in record:
                result = History(record["losses"], record["accuracy"], record["seconds"])
    if process.returncode != 0 or result is None:
        raise RuntimeError(
            f"The Keras demo on the {backend} backend failed (exit status {process.returncode})"
        )
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Trains once and prints the loss of each epoch and the test accuracy (``--json``: JSON lines)."""
    parser = argparse.ArgumentParser(prog="python -m lion_cli.demos.keras",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=("lion", "adamw"), default="lion")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object per line (used by run_recipe)")
    args = parser.parse_args(argv)

    def report(epoch: int, loss: float) -> None:
        record = {"epoch": epoch, "loss": loss}
        text = json.dumps(record) if args.json else f"epoch {epoch + 1:3d}  loss {loss:.4f}"
        print(text, flush=True)

    history = run_recipe(args.optimizer, epochs=args.epochs, seed=args.seed, on_epoch=report)
    if args.json:
        print(json.dumps(history._asdict()), flush=True)
    else:
        print(f"test accuracy {history.accuracy:.3f}  "
              f"({significant(history.seconds)} s, Keras on {keras.backend.backend()})")


if __name__ == "__main__":
    main()

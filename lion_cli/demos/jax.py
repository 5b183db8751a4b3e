"""``lion demo`` on JAX: an MLP on scikit-learn's digits with ``lion_optax.lion`` or ``optax.adamw``.

The recipe (data split, initial weights, batch order, hyperparameters) is :mod:`lion_cli.recipe`'s, shared
with the PyTorch and Keras demos. One jitted step per minibatch; the step's compile time is part of
the reported seconds.

Run it alone with ``python -m lion_cli.demos.jax --optimizer lion --epochs 5``, or through ``lion demo
--backend jax``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lion_optax
from lion_cli._common import significant
from lion_cli.recipe import DEMO_EPOCHS, History, demo_batches, demo_data, demo_init, demo_settings


def _optimizer(name: str) -> optax.GradientTransformation:
    settings = demo_settings(name)
    b1, b2 = settings["betas"]
    if name == "lion":
        return lion_optax.lion(settings["lr"], b1=b1, b2=b2, weight_decay=settings["weight_decay"])
    return optax.adamw(settings["lr"], b1=b1, b2=b2, eps=settings["eps"],
                       weight_decay=settings["weight_decay"])


def _logits(params: list[tuple[jax.Array, jax.Array]], x: jax.Array) -> jax.Array:
    for kernel, bias in params[:-1]:
        x = jax.nn.relu(x @ kernel + bias)
    kernel, bias = params[-1]
    return x @ kernel + bias


def _loss(params: list[tuple[jax.Array, jax.Array]], x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y).mean()


def run_recipe(
    optimizer: str,
    *,
    epochs: int = DEMO_EPOCHS,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> History:
    """Trains the demo MLP with ``"lion"`` or ``"adamw"``; returns the per-epoch losses, accuracy, seconds.

    Args:
      optimizer: ``"lion"`` (``lion_optax.lion``) or ``"adamw"`` (``optax.adamw``).
      epochs: passes over the training split (default ``lion_cli.recipe.DEMO_EPOCHS``).
      seed: seeds the initial weights and the batch order (default 0).
      on_epoch: called as ``on_epoch(epoch, mean_loss)`` after each epoch (epochs count from 0).

    Example:
      >>> from lion_cli.demos.jax import run_recipe
      >>> history = run_recipe("lion", epochs=1)
      >>> len(history.losses), 0.0 <= history.accuracy <= 1.0
      (1, True)
    """
    data = demo_data()
    transform = _optimizer(optimizer)
    params = [(jnp.asarray(k), jnp.asarray(b)) for k, b in demo_init(seed)]

    @jax.jit
    def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    start = time.perf_counter()
    state = transform.init(params)
    losses = []
    for epoch in range(epochs):
        batch_losses = []
        batches = demo_batches(len(data.x_train), epoch, seed)
        for batch in batches:
            # Batches are cut on the host: one small transfer per step instead of device-side gathers.
            params, state, loss = step(params, state, data.x_train[batch], data.y_train[batch])
            batch_losses.append(loss)
        sizes = np.array([len(batch) for batch in batches])
        losses.append(float(np.dot(np.asarray(jax.device_get(batch_losses)), sizes)) / len(data.x_train))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    predicted = np.asarray(jnp.argmax(_logits(params, jnp.asarray(data.x_test)), axis=-1))
    seconds = time.perf_counter() - start
    return History(losses, float(np.mean(predicted == data.y_test)), seconds)


def main(argv: Sequence[str] | None = None) -> None:
    """Trains once and prints the loss of each epoch and the test accuracy."""
    parser = argparse.ArgumentParser(prog="python -m lion_cli.demos.jax", description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=("lion", "adamw"), default="lion")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    history = run_recipe(args.optimizer, epochs=args.epochs, seed=args.seed,
                    on_epoch=lambda epoch, loss: print(f"epoch {epoch + 1:3d}  loss {loss:.4f}"))
    print(f"test accuracy {history.accuracy:.3f}  ({significant(history.seconds)} s)")


if __name__ == "__main__":
    main()

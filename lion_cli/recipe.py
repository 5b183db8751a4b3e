"""The demo recipe, defined once: data split, initial weights, minibatch order and hyperparameters.

Every backend's recipe in :mod:`lion_cli.demos` (PyTorch, Keras 3, JAX/Optax) uses these, so the
curves of different backends are comparable: same initial weights, same batches, and Lion's
hyperparameters derived from AdamW's by :func:`lion_core.from_adamw`. This module imports NumPy and
``lion_core`` only; scikit-learn is imported when the data is first asked for.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from lion_core import LionSettings, from_adamw, invalid_value

#: Widths of the hidden layers of the demo's MLP (64 inputs, ReLU, 10 logits).
DEMO_HIDDEN: tuple[int, ...] = (128, 128)
#: Minibatch size; the last batch of an epoch is smaller.
DEMO_BATCH = 32
#: Default number of epochs of ``lion demo``.
DEMO_EPOCHS = 20
#: The demo's AdamW: PyTorch's defaults, which most users start from.
DEMO_ADAMW = {"lr": 1e-3, "weight_decay": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8}
#: The two optimizers the demo compares.
DEMO_OPTIMIZERS = ("lion", "adamw")


class History(NamedTuple):
    """What one demo run returns: the mean training loss of each epoch, test accuracy, seconds."""

    losses: list[float]
    accuracy: float
    seconds: float


class DemoData(NamedTuple):
    """The digits split: float32 images scaled to [0, 1] (N x 64) and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def demo_data() -> DemoData:
    """Returns scikit-learn's digits, split 80/20 (stratified, fixed), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y.astype(np.int64), test_size=0.2, stratify=y, random_state=0
    )
    return DemoData(x_train, y_train, x_test, y_test)


def demo_init(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Returns the MLP's initial ``(kernel, bias)`` per layer: Glorot-uniform kernels (in x out), zero biases.

    Every backend loads these same arrays (PyTorch transposes the kernels), so runs differ only by
    the optimizer and by floating-point reduction order.
    """
    rng = np.random.default_rng(seed)
    sizes = (64, *DEMO_HIDDEN, 10)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        kernel = rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)
        layers.append((kernel, np.zeros(fan_out, np.float32)))
    return layers


def demo_batches(n: int, epoch: int, seed: int) -> list[np.ndarray]:
    """Returns the minibatch indices of one epoch, the same on every backend."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i : i + DEMO_BATCH] for i in range(0, n, DEMO_BATCH)]


def demo_settings(optimizer: str) -> dict[str, Any]:
    """Returns the hyperparameters of ``"adamw"`` or ``"lion"`` (Lion's from :func:`lion_core.from_adamw`)."""
    if optimizer == "adamw":
        return dict(DEMO_ADAMW)
    if optimizer == "lion":
        lion: LionSettings = from_adamw(
            DEMO_ADAMW["lr"], DEMO_ADAMW["weight_decay"], DEMO_ADAMW["betas"]
        )
        return {"lr": lion.lr, "weight_decay": lion.weight_decay, "betas": (lion.beta1, lion.beta2)}
    raise invalid_value("optimizer", f"one of {DEMO_OPTIMIZERS}", optimizer)

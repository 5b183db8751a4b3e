"""Shared pieces of the Keras tests: running an optimizer on given gradients, and its tolerances.

The backend is whatever ``KERAS_BACKEND`` named when Keras was first imported; every test runs on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from lion_core.reference import reference_step
from tests.support import margin_gradient, to_numpy

BACKEND = keras.backend.backend()
EPS32 = 2.0**-24  # half a float32 ulp, relative: the largest error of one correctly rounded operation


def f32_atol(params: Sequence[np.ndarray], steps: int, lr: float) -> float:
    """Float32 tolerance for parameters after ``steps`` steps, against the float64 reference.

    Each step rounds at most three times where the parameter is involved (the decay product, the
    decay subtraction, ``p - lr * u``), each time by at most half an ulp of a value no larger than
    ``max|p0| + steps * lr``; four such errors per step bound it with room to spare. A sign that
    differs from the reference moves an element by ``2 * lr``, far outside this bound.
    """
    scale = max(float(np.max(np.abs(p))) for p in params) + steps * lr
    return 4 * steps * EPS32 * scale


def momentum_atol(grads: Sequence[Sequence[np.ndarray | None]], steps: int | None = None) -> float:
    """Float32 tolerance for momenta against the float64 reference.

    The momentum is a convex combination of the gradients, so no value along the way exceeds the
    largest gradient; each step rounds three times (two products and a sum), by at most half an ulp
    of such a value. The bound is absolute: where the gradients cancel, the momentum is small and
    its relative error large.
    """
    steps = len(grads) if steps is None else steps
    largest = max(float(np.max(np.abs(g))) for step in grads for g in step if g is not None and np.size(g))
    return 4 * steps * EPS32 * largest


def margin_grads(
    params: Sequence[np.ndarray],
    steps: int,
    *,
    beta1: float | Sequence[float] = 0.9,
    beta2: float | Sequence[float] = 0.99,
    seed: int = 0,
) -> list[list[np.ndarray]]:
    """Float32 gradients for which ``|beta1 * m + (1 - beta1) * g| >= 0.05`` at every step.

    The momentum is followed with ``lion_core.reference.reference_step``, so float32 and float64
    paths agree on every sign and can be compared elementwise.
    """
    rng = np.random.default_rng(seed)
    b1 = (lambda s: beta1) if np.isscalar(beta1) else (lambda s: beta1[s])
    b2 = (lambda s: beta2) if np.isscalar(beta2) else (lambda s: beta2[s])
    momentum = [np.zeros(np.shape(p)) for p in params]
    out = []
    for step in range(steps):
        grads = []
        for i, p in enumerate(params):
            g = margin_gradient(rng, momentum[i], beta1=b1(step)).astype(np.asarray(p).dtype)
            _, momentum[i] = reference_step(p, g, momentum[i], lr=0.0, beta1=b1(step), beta2=b2(step))
            grads.append(g)
        out.append(grads)
    return out


def random_params(
    shapes: Sequence[tuple[int, ...]], seed: int = 1, dtype: str = "float32"
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def run_apply(
    optimizer: keras.optimizers.Optimizer,
    params: Sequence[np.ndarray],
    grads: Sequence[Sequence[np.ndarray | None]],
    *,
    names: Sequence[str] | None = None,
    before_step: Callable[[int], Any] | None = None,
) -> list[keras.Variable]:
    """Applies each step's gradients with ``optimizer.apply`` to fresh variables; returns them."""
    variables = [
        keras.Variable(p, name=None if names is None else names[i]) for i, p in enumerate(params)
    ]
    for step, step_grads in enumerate(grads):
        if before_step is not None:
            before_step(step)
        optimizer.apply([None if g is None else ops.convert_to_tensor(g) for g in step_grads], variables)
    return variables


def values(variables: Sequence[Any]) -> list[np.ndarray]:
    return [to_numpy(ops.convert_to_numpy(v)) for v in variables]


def momenta(optimizer: keras.optimizers.Optimizer) -> list[np.ndarray]:
    return [to_numpy(ops.convert_to_numpy(m)) for m in optimizer._momentums]

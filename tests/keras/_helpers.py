"""The Keras translator of the case table (``tests.cases``), and running an optimizer on given gradients.

The backend is whatever ``KERAS_BACKEND`` named when Keras was first imported; every test runs on it.
Tolerances and comparisons are ``tests.cases``'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from lion_core.reference import reference_step
from tests import cases
from tests.cases import margin_gradient, momentum_atol, to_numpy  # noqa: F401 (momentum_atol: re-exported)

BACKEND = keras.backend.backend()


def f32_atol(params: Sequence[np.ndarray], steps: int, lr: float) -> float:
    """``cases.param_atol`` for Keras: three roundings per step (the decay product, the decay
    subtraction, ``p - lr * u``), bounded by four."""
    return cases.param_atol(params, steps, lr, roundings=4)


#: Features of the table that Keras cannot express: Keras optimizers minimize (negate the loss).
UNSUPPORTED = {"maximize": "Keras optimizers have no maximize flag: negate the loss"}


class TableSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A case's learning-rate schedule as a Keras schedule: the value at each iteration, looked up."""

    def __init__(self, values: Sequence[float]) -> None:
        self.values = [float(v) for v in values]

    def __call__(self, step: Any) -> Any:
        table = ops.convert_to_tensor(self.values, "float32")
        index = ops.minimum(ops.cast(step, "int32"), len(self.values) - 1)
        return ops.take(table, index)

    def get_config(self) -> dict[str, Any]:
        return {"values": self.values}


def options(case: cases.Case, steps: int = cases.STEPS) -> dict[str, Any]:
    """The case as ``lion_keras.Lion`` arguments (the momentum dtype always named)."""
    unsupported = case.features & set(UNSUPPORTED)
    if unsupported:
        raise ValueError(f"case {case.id} needs {sorted(unsupported)}: {UNSUPPORTED}")
    learning_rate = case.lr if case.schedule is None else TableSchedule([case.lr_at(t) for t in range(steps)])
    return dict(
        learning_rate=learning_rate,
        beta_1=case.beta1,
        beta_2=case.beta2,
        weight_decay=case.weight_decay or None,
        cautious=case.cautious,
        decouple_lr=case.decouple_lr,
        max_lr=case.max_lr,
        momentum_dtype=case.momentum_dtype,
    )


def host_arrays(case: cases.Case, problem: cases.Problem) -> tuple[list[np.ndarray], list[list[Any]]]:
    """The problem's parameters and gradients as NumPy arrays of the case's dtypes (float32 and up)."""
    params = [np.asarray(x, case.param_dtype) for x in problem.init]
    grads = [
        [None if g is None else np.asarray(g, case.gradient_dtype) for g in step] for step in problem.grads
    ]
    return params, grads


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

"""The Optax translator of the case table (``tests.cases``), and the pieces the Optax tests share.

The oracle is ``lion_core.reference``; these helpers only drive the transformation. Tolerances and
comparisons are ``tests.cases``'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lion_core.reference import reference_step
from tests import cases
from tests.cases import margin_gradient

SHAPES = cases.SHAPES

PerStep = Any  # a number, or a function of the step index (0 for the first step)


def at(value: PerStep, step: int) -> float:
    return float(value(step)) if callable(value) else float(value)


def random_params(shapes: Sequence[tuple[int, ...]] = SHAPES, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


def random_grads(params: Sequence[np.ndarray], steps: int, seed: int = 2) -> list[list[np.ndarray]]:
    """Unconstrained float32 gradients, with exact zeros, tiny and large values mixed in."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        step = []
        for p in params:
            g = np.asarray(rng.standard_normal(p.shape) * rng.choice([1e-6, 1.0, 1e3], size=p.shape))
            g = np.where(rng.random(p.shape) < 0.05, 0.0, g)
            step.append(g.astype(np.float32))
        out.append(step)
    return out


def reference_run(
    params: Sequence[np.ndarray],
    steps: int,
    *,
    lr: PerStep,
    beta1: PerStep = 0.9,
    beta2: PerStep = 0.99,
    weight_decay: PerStep = 0.0,
    decayed: Sequence[bool] | None = None,
    max_lr: float | None = None,
    cautious: bool = False,
    seed: int = 0,
) -> tuple[list[list[np.ndarray]], list[np.ndarray], list[np.ndarray]]:
    """Runs the float64 reference on float32 gradients drawn with a sign margin at every step.

    Each gradient is drawn from the reference's own momentum so that
    ``|beta1 * m + (1 - beta1) * g| >= 0.05``: float32 and float64 then agree on every sign, and the
    parameters can be compared elementwise. ``decayed[i]`` False leaves parameter ``i`` undecayed,
    as a weight-decay mask does.

    Returns:
      The gradients (one float32 list per step), the final parameters and the final momenta.
    """
    rng = np.random.default_rng(seed)
    decayed = [True] * len(params) if decayed is None else decayed
    p = [np.asarray(x, np.float64) for x in params]
    m = [np.zeros_like(x) for x in p]
    grads = []
    for step in range(steps):
        b1 = at(beta1, step)
        step_grads = [margin_gradient(rng, m_i, beta1=b1).astype(np.float32) for m_i in m]
        grads.append(step_grads)
        for i, g in enumerate(step_grads):
            p[i], m[i] = reference_step(
                p[i],
                g,
                m[i],
                lr=at(lr, step),
                beta1=b1,
                beta2=at(beta2, step),
                weight_decay=at(weight_decay, step) if decayed[i] else 0.0,
                max_lr=max_lr,
                cautious=cautious,
            )
    return grads, p, m


def f32_param_atol(params: Sequence[np.ndarray], steps: int, lr: float) -> float:
    """``cases.param_atol`` for Optax's chain: four roundings per step plus the float32 lr's own."""
    return cases.param_atol(params, steps, lr, roundings=6)


f32_momentum_atol = cases.momentum_atol

#: Features of the table that Optax cannot express: the update of a maximized objective is that of
#: the negated loss, which Optax users write themselves.
UNSUPPORTED = {"maximize": "optax has no maximize flag: negate the loss"}


def learning_rate(case: cases.Case, steps: int = cases.STEPS) -> Any:
    """The case's learning rate for Optax: a constant, or a schedule (a function of the step count)."""
    if case.schedule is None:
        return case.lr
    values = jnp.asarray([case.lr_at(t) for t in range(steps)], jnp.float32)
    return lambda count: values[jnp.minimum(count, steps - 1)]


def options(case: cases.Case, steps: int = cases.STEPS) -> dict[str, Any]:
    """The case as ``lion_optax.lion`` arguments (``mu_dtype`` always named)."""
    unsupported = case.features & set(UNSUPPORTED)
    if unsupported:
        raise ValueError(f"case {case.id} needs {sorted(unsupported)}: {UNSUPPORTED}")
    return dict(
        learning_rate=learning_rate(case, steps),
        b1=case.beta1,
        b2=case.beta2,
        mu_dtype=jnp.dtype(case.momentum_dtype),
        weight_decay=case.weight_decay,
        cautious=case.cautious,
        decouple_lr=case.decouple_lr,
        max_lr=case.max_lr,
    )


def host_arrays(case: cases.Case, problem: cases.Problem) -> tuple[list[Any], list[list[Any]]]:
    """The problem's parameters and gradients as JAX arrays of the case's dtypes."""
    params = [jnp.asarray(x, case.param_dtype) for x in problem.init]
    grads = [[jnp.asarray(g, case.gradient_dtype) for g in step] for step in problem.grads]
    return params, grads


def run_case(case: cases.Case, problem: cases.Problem, **overrides: Any) -> tuple[Any, Any]:
    """Runs ``lion_optax.lion`` on the case's problem, jitted; ``overrides`` are extra arguments."""
    import lion_optax

    params, grads = host_arrays(case, problem)
    return run(lion_optax.lion(**{**options(case, problem.steps), **overrides}), params, grads)


def step_fn(tx: optax.GradientTransformation) -> Callable[..., Any]:
    """The usual jitted training step: update, then ``optax.apply_updates``."""

    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step)


def run(
    tx: optax.GradientTransformation,
    params: Any,
    grads: Sequence[Any],
    *,
    state: Any = None,
) -> tuple[Any, Any]:
    """Runs ``tx`` from ``params`` (fresh state unless given) over each step's gradients, jitted."""
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params) if state is None else state
    step = step_fn(tx)
    for step_grads in grads:
        params, state = step(params, state, jax.tree.map(jnp.asarray, step_grads))
    return params, state


def lion_state(state: Any) -> Any:
    """The ``ScaleByLionState`` inside an optimizer state (a chain, inject_hyperparams, MultiSteps...)."""
    found = [
        s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByLionState))
        if isinstance(s, optax.ScaleByLionState)
    ]
    assert len(found) == 1, f"expected one ScaleByLionState, found {len(found)}"
    return found[0]

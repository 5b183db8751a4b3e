"""Optax's dtype contract: ``lion_optax`` returns the dtypes ``optax.lion`` returns, and keeps them.

Every comparison is against ``optax`` itself (for dtypes and, where the signs are far from zero, for
the updates) or against ``lion_core.reference`` (complex numbers). float64 runs under
``jax.enable_x64(True)``, scoped to the test.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lion_optax
from lion_core.reference import reference_step
from tests.support import assert_close, assert_exact

DTYPES = ("float16", "bfloat16", "float32", "float64")
SHAPES = {"w": (4, 3), "b": (5,), "s": ()}
STEPS = 3

# (ours, optax's) for the same arguments: the alias with a constant and with a scheduled learning
# rate (optax casts a schedule's value to each update's dtype), and the bare direction.
FACTORIES = {
    "lion": lambda lib, mu: lib.lion(1e-2, weight_decay=0.1, mu_dtype=mu),
    "lion_schedule": lambda lib, mu: lib.lion(optax.linear_schedule(1e-2, 1e-3, 10), mu_dtype=mu),
    "scale_by_lion": lambda lib, mu: lib.scale_by_lion(mu_dtype=mu),
}


def _precision(dtype: str) -> contextlib.AbstractContextManager:
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def _problem(dtype: str, seed: int = 0) -> tuple[dict, list[dict]]:
    """Parameters, and gradients whose interpolation keeps its sign away from 0 for STEPS steps.

    ``|g| >= 0.5`` makes ``|(1 - b1) g| >= 0.05``, while ``|b1 m|`` stays below ``0.9 * 0.03 * 1.5``
    over three steps: optax's low-precision arithmetic and ours agree on every sign.
    """
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in SHAPES.items()}
    grads = [
        {k: jnp.asarray(rng.uniform(0.5, 1.5, s) * rng.choice([-1.0, 1.0], s), dtype)
         for k, s in SHAPES.items()}
        for _ in range(STEPS)
    ]
    return params, grads


def _dtypes(tree):
    return jax.tree.map(lambda x: jnp.result_type(x).name, tree)


def _run(tx, params, grads):
    """Updates and states of each step, under jit; params move by the updates."""
    update = jax.jit(tx.update)
    state = tx.init(params)
    out = []
    for g in grads:
        updates, state = update(g, state, params)
        out.append((updates, state))
        params = optax.apply_updates(params, updates)
    return out


@pytest.mark.parametrize("mu_dtype", [None, "float32"], ids=["mu_default", "mu_float32"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_updates_and_state_have_optax_dtypes(name, dtype, mu_dtype):
    with _precision(dtype):
        params, grads = _problem(dtype)
        ours = _run(FACTORIES[name](lion_optax, mu_dtype), params, grads)
        theirs = _run(FACTORIES[name](optax, mu_dtype), params, grads)
        for step, ((u, s), (tu, ts)) in enumerate(zip(ours, theirs)):
            assert _dtypes(u) == _dtypes(tu), f"step {step}: updates"
            assert _dtypes(s) == _dtypes(ts), f"step {step}: state"
            # The signs are far from 0 and the rest of the chain is optax's: the same updates.
            for k in SHAPES:
                assert_exact(u[k], tu[k], what=f"step {step} update {k!r}")
        expected_mu = dtype if mu_dtype is None else mu_dtype
        mu = (ours[-1][1] if name == "scale_by_lion" else ours[-1][1][0]).mu
        assert set(_dtypes(mu).values()) == {expected_mu}
        # The default mu_dtype gives updates in the gradients' dtype, as optax does.
        if mu_dtype is None:
            assert set(_dtypes(ours[-1][0]).values()) == {dtype}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_lax_cond_between_an_update_and_the_params(name, dtype):
    """The pattern of optax.MultiSteps, apply_if_finite and many loops: both branches must have the
    same types, so the update has the params' dtype and the state keeps its dtypes."""
    with _precision(dtype):
        params, grads = _problem(dtype)
        tx = FACTORIES[name](lion_optax, None)

        @jax.jit
        def step(pred, g, s, p):
            return jax.lax.cond(pred, lambda: tx.update(g, s, p), lambda: (p, s))

        state = tx.init(params)
        before = _dtypes(state)
        for i, g in enumerate(grads):
            updates, state = step(jnp.asarray(i % 2 == 0), g, state, params)
            assert _dtypes(updates) == _dtypes(params)
            assert _dtypes(state) == before
        assert step._cache_size() == 1  # one trace for every step: the types never changed


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_float32_momentum_is_one_keyword_away_and_stable_under_cond(dtype):
    params, grads = _problem(dtype)
    tx = lion_optax.lion(1e-2, mu_dtype=jnp.float32)
    state = tx.init(params)
    assert set(_dtypes(state[0].mu).values()) == {"float32"}

    @jax.jit
    def step(pred, g, s, p):
        return jax.lax.cond(pred, lambda: tx.update(g, s, p)[1], lambda: s)

    for i, g in enumerate(grads):
        new_state = step(jnp.asarray(i % 2 == 0), g, state, params)
        assert _dtypes(new_state) == _dtypes(state)
        state = new_state


# --- complex parameters: pairs of reals ---------------------------------------------------------


def _complex_problem():
    p = np.array([1 + 2j, -0.5 + 0.25j, 3 - 1j, 0.75 - 2j], np.complex64)
    g = np.array([np.inf + 0j, 0.5 + complex(0, np.inf), complex(np.nan, 0.5), 0.5 - 0.25j], np.complex64)
    return p, g


def _as_pairs(x):
    x = np.asarray(x)
    return np.stack([x.real, x.imag], axis=-1)


@pytest.mark.parametrize("learning_rate", [0.1, optax.constant_schedule(0.1)], ids=["constant", "schedule"])
@pytest.mark.parametrize("mask", [None, lambda params: jax.tree.map(lambda p: p.ndim == 1, params)],
                         ids=["no_mask", "mask_fn"])
def test_complex_non_finite_gradient_spoils_only_its_component(learning_rate, mask):
    """inf + 0j gives nan + 0j (lion_core's policy, lion_torch's result), not optax's nan + nanj."""
    p, g = _complex_problem()
    tx = lion_optax.lion(learning_rate, weight_decay=0.01, mask=mask)
    state = tx.init(jnp.asarray(p))
    updates, state = jax.jit(tx.update)(jnp.asarray(g), state, jnp.asarray(p))
    assert updates.dtype == jnp.complex64
    new_p = optax.apply_updates(jnp.asarray(p), updates)
    expected, _ = reference_step(p, g, np.zeros_like(p), lr=0.1, weight_decay=0.01)
    got, want = _as_pairs(new_p), _as_pairs(expected)
    assert_exact(np.isnan(got), np.isnan(want), what="NaN components")
    assert np.isnan(want).sum() == 3  # one component per non-finite gradient entry, no more
    assert_close(got, want, rtol=2.0**-23, atol=0, what="param")


def test_complex_state_has_optax_structure():
    """The per-component view changes no state: optax.lion's state and ours have one structure."""
    p, _ = _complex_problem()
    mask = {"a": True, "b": False}
    params = {"a": jnp.asarray(p), "b": jnp.asarray(p)}
    ours = lion_optax.lion(optax.linear_schedule(0.1, 0.0, 10), weight_decay=0.1, mask=mask).init(params)
    theirs = optax.lion(optax.linear_schedule(0.1, 0.0, 10), weight_decay=0.1, mask=mask).init(params)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    assert _dtypes(ours) == _dtypes(theirs)


@pytest.mark.parametrize("wrapper", ["multi_steps", "apply_if_finite", "inject_hyperparams"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_optax_wrappers_that_branch_on_the_step(wrapper, dtype):
    """optax's own wrappers put the update in one branch of a lax.cond: they must trace and keep types."""
    params, grads = _problem(dtype)
    if wrapper == "multi_steps":
        tx = optax.MultiSteps(lion_optax.lion(1e-2), every_k_schedule=2)
    elif wrapper == "apply_if_finite":
        tx = optax.apply_if_finite(lion_optax.lion(1e-2), max_consecutive_errors=2)
    else:
        tx = optax.inject_hyperparams(lion_optax.lion)(learning_rate=1e-2)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads:
        updates, new_state = update(g, state, params)
        assert _dtypes(updates) == _dtypes(params)
        assert _dtypes(new_state) == _dtypes(state)
        params, state = optax.apply_updates(params, updates), new_state
    assert update._cache_size() == 1

"""``lion_optax`` against ``optax.lion`` (bit for bit) and against the float64 ``lion_core`` reference.

The reference tests run the table of ``tests.cases`` (in float32: JAX runs without float64) through
the translator in ``_helpers``; the rows Optax cannot express are left out with the reason given in
``_helpers.UNSUPPORTED``. Optax's own pieces (masks, schedule objects, array hyperparameters) are
tested on top of the table's rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lion_optax
from lion_core.reference import reference_lion, reference_step
from tests import cases
from tests.cases import EPS32, assert_close, assert_exact, margin_gradient
from tests.optax._helpers import (
    UNSUPPORTED,
    f32_momentum_atol,
    f32_param_atol,
    lion_state,
    options,
    random_grads,
    random_params,
    run,
    run_case,
)

#: Steps of the bit-for-bit comparisons with optax.lion (no tolerance grows with them).
PARITY_STEPS = 30
#: The table's rows in float32, with float32 momentum.
TABLE = [case.at_dtypes("float32") for case in cases.select(cases.CASES, UNSUPPORTED)]


def _mask(params):
    # Decay every other parameter: the mask is a function of the parameters, as users write them.
    return [i % 2 == 0 for i in range(len(params))]


#: Options only the Optax API has, on top of a row of the table: name -> (row, extra arguments);
#: row None gives both optimizers only the extra arguments (their defaults must agree).
OPTAX_OPTIONS = {
    "defaults": (None, dict(learning_rate=1e-3)),
    "mask_fn": ("weight_decay", dict(mask=_mask)),
    "mask_tree": ("weight_decay", dict(mask=[i % 3 != 1 for i in range(len(cases.SHAPES))])),
    "optax_schedules": (
        "plain",
        dict(
            learning_rate=optax.warmup_cosine_decay_schedule(0.0, 3e-2, 5, PARITY_STEPS),
            weight_decay=optax.linear_schedule(0.5, 0.0, PARITY_STEPS),
        ),
    ),
    "array_hyperparameters": (
        "betas",
        dict(learning_rate=jnp.float32(1e-2), b1=jnp.float32(0.95), b2=jnp.float32(0.98)),
    ),
}

#: Arguments optax.lion does not have: rows needing them are not compared with it.
OURS_ONLY = {"cautious": "ours only", "decouple_lr": "ours only"}


def _optax_lion_args(case: cases.Case | None, extra: dict) -> dict:
    if case is None:
        return dict(extra)
    args = {**options(case, PARITY_STEPS), **extra}
    for name in ("cautious", "decouple_lr", "max_lr"):
        args.pop(name)
    return args


PARITY = {cases.case_id(c): (c, {}) for c in TABLE if not c.features & set(OURS_ONLY)}
PARITY.update(
    {
        name: (None if row is None else cases.by_id(TABLE, row), extra)
        for name, (row, extra) in OPTAX_OPTIONS.items()
    }
)


@pytest.mark.parametrize("name", PARITY)
def test_matches_optax_lion_bit_for_bit(name):
    case, extra = PARITY[name]
    params = random_params()
    grads = random_grads(params, PARITY_STEPS)
    args = _optax_lion_args(case, extra)
    ours_p, ours_s = run(lion_optax.lion(**args), params, grads)
    theirs_p, theirs_s = run(optax.lion(**args), params, grads)
    for i, (a, b) in enumerate(zip(ours_p, theirs_p)):
        assert_exact(a, b, what=f"param {i}")
    ours, theirs = lion_state(ours_s), lion_state(theirs_s)
    for i, (a, b) in enumerate(zip(ours.mu, theirs.mu)):
        assert a.dtype == b.dtype
        assert_exact(a, b, what=f"momentum {i}")
    assert int(ours.count) == int(theirs.count) == PARITY_STEPS


def test_bfloat16_params_match_optax_with_float32_momentum():
    # Given the same momentum dtype (named on both sides) and float32 gradients, as mixed precision
    # produces, bfloat16 parameters get optax's numbers.
    params = [p.astype(jnp.bfloat16) for p in random_params()]
    grads = random_grads(params, 10)
    ours_p, ours_s = run(lion_optax.lion(1e-2, weight_decay=0.1, mu_dtype=jnp.float32), params, grads)
    theirs_p, theirs_s = run(optax.lion(1e-2, weight_decay=0.1, mu_dtype=jnp.float32), params, grads)
    for i, (a, b) in enumerate(zip(ours_p, theirs_p)):
        assert a.dtype == jnp.bfloat16
        assert_exact(a, b, what=f"param {i}")
    for i, (a, b) in enumerate(zip(lion_state(ours_s).mu, lion_state(theirs_s).mu)):
        assert a.dtype == jnp.float32
        assert_exact(a, b, what=f"momentum {i}")


def _compare(case, problem, ours_p, ours_s, expected, *, lr_max):
    atol = f32_param_atol(problem.init, problem.steps, lr_max)
    for i, (a, e) in enumerate(zip(ours_p, expected.params)):
        assert_close(a, e, rtol=0, atol=atol, what=f"{cases.case_id(case)}: param {i}")
    m_atol = f32_momentum_atol(problem.grads)
    for i, (a, e) in enumerate(zip(lion_state(ours_s).mu, expected.momentum)):
        assert a.dtype == jnp.dtype(case.momentum_dtype)
        assert_close(a, e, rtol=0, atol=m_atol, what=f"{cases.case_id(case)}: momentum {i}")


# NumPy warns when the reference's cautious mean runs over the zero-size parameter (lion_core).
@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
@pytest.mark.parametrize("case", TABLE, ids=cases.case_id)
def test_matches_float64_reference(case):
    """Every row Optax can express, on float32 gradients with a sign margin (no None gradient: a
    JAX gradient tree has every leaf), against the float64 reference."""
    problem = cases.problem(case, margin=True, missing=None)
    ours_p, ours_s = run_case(case, problem)
    _compare(case, problem, ours_p, ours_s, cases.reference_float64(case, problem), lr_max=case.peak_lr)


#: Optax's own masks and schedule objects against the reference: name -> (row, lion_optax.lion
#: arguments on top of the row's, reference arguments that replace the row's, which params decay).
REFERENCE_OPTIONS = {
    "masked_decay": ("weight_decay", dict(mask=_mask), {}, _mask(cases.SHAPES)),
    "optax_schedules": (
        "weight_decay",
        dict(
            learning_rate=optax.cosine_decay_schedule(2e-2, cases.STEPS),
            weight_decay=optax.linear_schedule(0.4, 0.1, cases.STEPS),
        ),
        dict(
            lr=optax.cosine_decay_schedule(2e-2, cases.STEPS),
            weight_decay=optax.linear_schedule(0.4, 0.1, cases.STEPS),
        ),
        None,
    ),
    "decoupled_optax_schedule": (
        "max_lr",
        dict(learning_rate=optax.warmup_cosine_decay_schedule(0.0, 2e-2, 5, cases.STEPS), max_lr=2e-2),
        dict(lr=optax.warmup_cosine_decay_schedule(0.0, 2e-2, 5, cases.STEPS), max_lr=2e-2),
        None,
    ),
}


@pytest.mark.parametrize("name", REFERENCE_OPTIONS)
def test_optax_options_match_float64_reference(name):
    row, extra, ref_args, decayed = REFERENCE_OPTIONS[name]
    case = cases.by_id(TABLE, row)
    problem = cases.problem(case, margin=True, missing=None)
    ours_p, ours_s = run_case(case, problem, **extra)
    hyper = dict(lr=case.lr, beta1=case.beta1, beta2=case.beta2, weight_decay=case.weight_decay,
                 max_lr=case.reference_max_lr, cautious=case.cautious)
    hyper.update(ref_args)
    steps = range(problem.steps)
    hyper = {k: ([float(v(t)) for t in steps] if callable(v) else v) for k, v in hyper.items()}
    decayed = [True] * len(problem.init) if decayed is None else decayed
    expected_p, expected_m = [], []
    for i, keep in enumerate(decayed):
        ref = reference_lion([problem.init[i]], [[g[i]] for g in problem.grads],
                             **{**hyper, **({} if keep else {"weight_decay": 0.0})})
        expected_p.append(ref.params[0])
        expected_m.append(ref.momentum[0])
    lr_max = max(np.max(hyper["lr"]), case.peak_lr)
    _compare(case, problem, ours_p, ours_s, cases.ReferenceResult(expected_p, expected_m), lr_max=lr_max)


def test_bfloat16_momentum_follows_reference_each_step():
    # With mu_dtype=bfloat16 the momentum is rounded to 8 bits each step, so the trajectory drifts
    # from a float64 run; instead, each step is checked against the reference started from our own
    # state: parameters to float32 accuracy, the momentum to one bfloat16 rounding.
    params = random_params((( 257,), (3, 11), ()))
    tx = lion_optax.lion(1e-2, weight_decay=0.2, mu_dtype=jnp.bfloat16)
    state = tx.init([jnp.asarray(p) for p in params])
    rng = np.random.default_rng(3)
    current = [jnp.asarray(p) for p in params]
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    for t in range(PARITY_STEPS):
        mu = [np.asarray(m.astype(jnp.float32)) for m in lion_state(state).mu]
        grads = [margin_gradient(rng, m, beta1=0.9).astype(np.float32) for m in mu]
        new, state = step(current, state, [jnp.asarray(g) for g in grads])
        for i, (p0, g, m0) in enumerate(zip(current, grads, mu)):
            ref_p, ref_m = reference_step(np.asarray(p0), g, m0, lr=1e-2, weight_decay=0.2)
            assert_close(new[i], ref_p, rtol=4 * EPS32, atol=4 * EPS32 * 1e-2, what=f"step {t} param {i}")
            got_m = lion_state(state).mu[i]
            assert got_m.dtype == jnp.bfloat16
            assert_close(got_m, ref_m, rtol=2.0**-8, atol=0, what=f"step {t} momentum {i}")
        current = new


def test_bfloat16_momentum_rounds_once_unlike_optax():
    # optax multiplies the bfloat16 momentum by b1 and b2 in bfloat16 and rounds again when storing;
    # we compute in float32 and round once, so our momentum stays closer to the float64 reference.
    params = random_params(((4096,),))
    grads = random_grads(params, PARITY_STEPS, seed=5)
    grads = [[g / np.float32(1e3)] for (g,) in grads]  # keep the momentum away from bfloat16's range limits
    ours = lion_state(run(lion_optax.lion(1e-3, mu_dtype=jnp.bfloat16), params, grads)[1]).mu[0]
    theirs = lion_state(run(optax.lion(1e-3, mu_dtype=jnp.bfloat16), params, grads)[1]).mu[0]
    ref_m = np.zeros(4096)
    for (g,) in grads:
        _, ref_m = reference_step(np.zeros(4096), g, ref_m, lr=0.0)
    err = lambda m: float(np.mean(np.abs(np.asarray(m.astype(jnp.float32)) - ref_m)))
    assert err(ours) < err(theirs)


def test_complex_parameters_take_the_sign_per_component():
    rng = np.random.default_rng(7)
    shape = (64,)
    p0 = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    m = np.zeros(shape, np.complex128)
    tx = lion_optax.lion(1e-2, weight_decay=0.1)
    params, state = jnp.asarray(p0), None
    state = tx.init(params)
    ref_p = p0.astype(np.complex128)
    for _ in range(5):
        real = margin_gradient(rng, m.real, beta1=0.9)
        imag = margin_gradient(rng, m.imag, beta1=0.9)
        g = (real + 1j * imag).astype(np.complex64)
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        ref_p, m = reference_step(ref_p, g, m, lr=1e-2, weight_decay=0.1)
    assert params.dtype == jnp.complex64 and lion_state(state).mu[...].dtype == jnp.complex64
    assert_close(params, ref_p, rtol=0, atol=f32_param_atol([np.abs(p0)], 5, 1e-2), what="complex param")


def test_zero_interpolation_does_not_move_but_decays():
    # sign(0) = 0: a zero gradient on a zero momentum leaves only the decay.
    p0 = np.array([1.0, -2.0, 0.0], np.float32)
    tx = lion_optax.lion(0.1, weight_decay=0.5)
    params = jnp.asarray(p0)
    updates, _ = tx.update(jnp.zeros(3), tx.init(params), params)
    ref_p, _ = reference_step(p0, np.zeros(3), np.zeros(3), lr=0.1, weight_decay=0.5)
    assert_close(optax.apply_updates(params, updates), ref_p, rtol=2 * EPS32, atol=0)


def test_non_finite_gradients_make_the_parameter_nan():
    # NaN gradients give NaN, as in optax. Infinite gradients also give NaN here (lion_core's policy),
    # where optax.lion moves the parameter by a finite -lr * sign(inf): the one deliberate difference.
    p0 = np.array([1.0, 1.0, 1.0, 1.0], np.float32)
    g = np.array([np.nan, np.inf, -np.inf, 0.5], np.float32)
    # Jitted, so that XLA's simplifier has its chance to fold lion_core's ``x - x`` NaN probe.
    ours, ours_s = run(lion_optax.lion(0.1), p0, [g])
    theirs, _ = run(optax.lion(0.1), p0, [g])
    ref_p, ref_m = reference_step(p0, g, np.zeros(4), lr=0.1, weight_decay=1e-3)
    assert_close(ours, ref_p, rtol=2 * EPS32, atol=0, what="params")
    assert np.isnan(ours[:3]).all() and np.isfinite(ours[3])
    assert np.isnan(theirs[0]) and np.isfinite(theirs[1:]).all()
    assert_exact(lion_state(ours_s).mu, ref_m.astype(np.float32), what="momentum")

"""``lion_keras.Lion`` against ``lion_core.reference``, ``keras.optimizers.Lion`` and ``lion_torch.Lion``.

Runs on the backend named by ``KERAS_BACKEND``; the suite is run once per backend.
"""

from __future__ import annotations

import sys
import warnings

import keras
import ml_dtypes
import numpy as np
import pytest
from keras import ops

import lion_keras
from lion_core.reference import reference_lion, reference_step
from tests.keras._helpers import (
    BACKEND,
    f32_atol,
    margin_grads,
    momenta,
    momentum_atol,
    random_params,
    run_apply,
    values,
)
from tests.keras._lion_torch_run import run as run_lion_torch
from tests.support import assert_close, assert_exact

SHAPES = [(7, 5), (5,), (1,), (3, 1, 4)]
STEPS = 6
LR = 0.01


def _schedule():
    return keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=2, decay_rate=0.5)


def _schedule_values(steps: int) -> list[float]:
    schedule = _schedule()
    return [float(ops.convert_to_numpy(schedule(step))) for step in range(steps)]


# --- against the float64 reference -------------------------------------------------------------

#: name -> (lion_keras.Lion arguments, reference_lion arguments)
REFERENCE_CASES = {
    "defaults_lr": (dict(learning_rate=LR), dict(lr=LR)),
    "weight_decay": (dict(learning_rate=LR, weight_decay=0.5), dict(lr=LR, weight_decay=0.5)),
    "betas": (dict(learning_rate=LR, beta_1=0.5, beta_2=0.9), dict(lr=LR, beta1=0.5, beta2=0.9)),
    "beta_1_zero": (dict(learning_rate=LR, beta_1=0.0, beta_2=0.0), dict(lr=LR, beta1=0.0, beta2=0.0)),
    "cautious": (
        dict(learning_rate=LR, weight_decay=0.5, cautious=True),
        dict(lr=LR, weight_decay=0.5, cautious=True),
    ),
    "schedule": (
        dict(learning_rate=_schedule, weight_decay=0.5),
        dict(lr=_schedule_values, weight_decay=0.5),
    ),
    "decoupled_default_max_lr": (
        dict(learning_rate=LR, weight_decay=0.5, decouple_lr=True),
        dict(lr=LR, weight_decay=0.5, max_lr=LR),
    ),
    "decoupled_schedule": (
        dict(learning_rate=_schedule, weight_decay=0.5, decouple_lr=True, max_lr=0.04),
        dict(lr=_schedule_values, weight_decay=0.5, max_lr=0.04),
    ),
    "decoupled_cautious": (
        dict(learning_rate=LR, weight_decay=2.0, decouple_lr=True, max_lr=0.05, cautious=True),
        dict(lr=LR, weight_decay=2.0, max_lr=0.05, cautious=True),
    ),
}


def _resolve(kwargs: dict, steps: int) -> dict:
    """Calls the factories in a case (a schedule is built fresh for each optimizer)."""
    out = dict(kwargs)
    if callable(out.get("learning_rate")):
        out["learning_rate"] = out["learning_rate"]()
    if callable(out.get("lr")):
        out["lr"] = out["lr"](steps)
    return out


@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_matches_reference(case):
    ours, ref = (_resolve(kw, STEPS) for kw in REFERENCE_CASES[case])
    params = random_params(SHAPES)
    beta1, beta2 = ref.get("beta1", 0.9), ref.get("beta2", 0.99)
    grads = margin_grads(params, STEPS, beta1=beta1, beta2=beta2)
    optimizer = lion_keras.Lion(**ours)
    variables = run_apply(optimizer, params, grads)
    expected = reference_lion(params, grads, **ref)
    lr = max(np.max(ref["lr"]), LR)
    atol = f32_atol(params, STEPS, lr)
    for i, (got, want) in enumerate(zip(values(variables), expected.params)):
        assert_close(got, want, rtol=0, atol=atol, what=f"{case}: param {i}")
    for i, (got, want) in enumerate(zip(momenta(optimizer), expected.momentum)):
        assert_close(got, want, rtol=0, atol=momentum_atol(grads), what=f"{case}: momentum {i}")


@pytest.mark.parametrize(
    "kwargs, ref",
    [
        (dict(learning_rate=1e-3, weight_decay=0.1), dict(lr=1e-3, weight_decay=0.1)),
        (dict(learning_rate=1e-2, weight_decay=0.5), dict(lr=1e-2, weight_decay=0.5)),
        (
            dict(learning_rate=1e-3, weight_decay=0.01, decouple_lr=True),
            dict(lr=1e-3, weight_decay=0.01, max_lr=1e-3),
        ),
    ],
    ids=["keras_decay_1e-4", "keras_decay_5e-3", "decoupled_1e-2"],
)
def test_weight_decay_rounds_within_one_ulp_of_the_reference(kwargs, ref):
    """With a zero gradient the step is the decay alone, so its rounding can be measured.

    Keras' base class computes ``p - p * wd * lr`` (``p * (1 - wd * lr)`` on PyTorch); the reference
    computes ``p * (1 - lr * wd)`` in float64. Measured over 10**6 float32 values of magnitudes
    1e-2 to 1e2: Keras' order is within 0.505 ulp of the reference, the reference's order evaluated
    in float32 within 0.78 ulp, and the two float32 results differ by one ulp on 6-20% of elements
    (lr * wd from 1e-4 to 5e-3). One ulp per decay is the bound used in ``f32_atol``.
    """
    rng = np.random.default_rng(7)
    p = (rng.standard_normal(4096) * np.exp(rng.uniform(-4.6, 4.6, 4096))).astype(np.float32)
    optimizer = lion_keras.Lion(**kwargs)
    (variable,) = run_apply(optimizer, [p], [[np.zeros_like(p)]])
    expected, _ = reference_step(p, np.zeros_like(p), np.zeros_like(p), **ref)
    got = values([variable])[0].astype(np.float64)
    ulps = np.abs(got - expected) / np.spacing(np.abs(p)).astype(np.float64)
    assert ulps.max() <= 1.0, f"decay rounding {ulps.max():.3f} ulp"
    assert not np.array_equal(got, p), "the decay did something"


def test_callable_hyperparameters_are_evaluated_every_step():
    """Keras documents callables for beta_1/beta_2; keras.optimizers.Lion crashes on them."""
    beta1 = [0.9, 0.5, 0.0, 0.95, 0.7, 0.8]
    beta2 = [0.99, 0.9, 0.5, 0.0, 0.999, 0.9]
    lrs = [0.01, 0.02, 0.005, 0.01, 0.03, 0.001]
    step = {"now": 0}

    def at(values_):
        return lambda: values_[step["now"]]

    params = random_params(SHAPES)
    grads = margin_grads(params, len(lrs), beta1=beta1, beta2=beta2)
    optimizer = lion_keras.Lion(learning_rate=at(lrs), beta_1=at(beta1), beta_2=at(beta2), weight_decay=0.5)
    variables = run_apply(optimizer, params, grads, before_step=lambda s: step.update(now=s))
    expected = reference_lion(params, grads, lr=lrs, beta1=beta1, beta2=beta2, weight_decay=0.5)
    for got, want in zip(values(variables), expected.params):
        assert_close(got, want, rtol=0, atol=f32_atol(params, len(lrs), max(lrs)))
    for got, want in zip(momenta(optimizer), expected.momentum):
        assert_close(got, want, rtol=0, atol=momentum_atol(grads))


def test_excluded_and_skipped_variables_match_reference():
    """``exclude_from_weight_decay`` leaves a variable undecayed; a ``None`` gradient leaves it alone."""
    params = random_params([(4, 3), (3,), (2, 2)])
    grads = margin_grads(params, STEPS)
    grads[2][1] = None  # variable 1 has no gradient at step 2
    optimizer = lion_keras.Lion(learning_rate=LR, weight_decay=0.5)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        variables = run_apply(optimizer, params, grads, names=["kernel", "bias", "other"])
    decayed = reference_lion([params[0], params[2]], [[g[0], g[2]] for g in grads], lr=LR, weight_decay=0.5)
    excluded = reference_lion([params[1]], [[g[1]] for g in grads], lr=LR, weight_decay=0.0)
    atol = f32_atol(params, STEPS, LR)
    got = values(variables)
    assert_close(got[0], decayed.params[0], rtol=0, atol=atol, what="kernel")
    assert_close(got[2], decayed.params[1], rtol=0, atol=atol, what="other")
    assert_close(got[1], excluded.params[0], rtol=0, atol=atol, what="bias (excluded)")
    # The excluded variable did move: the reference with decay would disagree with it.
    with pytest.raises(AssertionError):
        wrong = reference_lion([params[1]], [[g[1]] for g in grads], lr=LR, weight_decay=0.5)
        assert_close(got[1], wrong.params[0], rtol=0, atol=atol)


def test_gradient_accumulation_matches_reference_on_the_mean_gradient():
    params = random_params(SHAPES)
    grads = margin_grads(params, 2)
    micro = [g for step in grads for g in (step, step, step)]  # three equal micro-batches per step
    optimizer = lion_keras.Lion(learning_rate=LR, weight_decay=0.5, gradient_accumulation_steps=3)
    variables = run_apply(optimizer, params, micro)
    expected = reference_lion(params, grads, lr=LR, weight_decay=0.5)
    for got, want in zip(values(variables), expected.params):
        assert_close(got, want, rtol=0, atol=f32_atol(params, 2, LR))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradients_make_the_parameter_nan(bad):
    params = random_params([(4, 5), (3,)])
    grads = margin_grads(params, 3)
    grads[1][0] = grads[1][0].copy()
    grads[1][0][2, 3] = bad
    optimizer = lion_keras.Lion(learning_rate=LR, weight_decay=0.1)
    variables = run_apply(optimizer, params, grads)
    expected = reference_lion(params, grads, lr=LR, weight_decay=0.1)
    got = values(variables)
    assert np.isnan(got[0][2, 3]), "a non-finite gradient must surface as NaN, not as a finite step"
    for a, e in zip(got, expected.params):
        assert_close(a, e, rtol=0, atol=f32_atol(params, 3, LR))


def test_complex_variables_are_pairs_of_reals():
    real = random_params([(6, 2), (3, 4, 2)])
    real_grads = margin_grads(real, 4)

    def to_complex(x):
        return (x[..., 0] + 1j * x[..., 1]).astype(np.complex64)

    params = [to_complex(p) for p in real]
    grads = [[to_complex(g) for g in step] for step in real_grads]
    optimizer = lion_keras.Lion(learning_rate=LR, weight_decay=0.5, cautious=True)
    variables = run_apply(optimizer, params, grads)
    expected = reference_lion(params, grads, lr=LR, weight_decay=0.5, cautious=True)
    for got, want in zip(values(variables), expected.params):
        assert got.dtype == np.complex64
        assert_close(got, want, rtol=0, atol=f32_atol(real, 4, LR))
    for m in optimizer._momentums:
        assert keras.backend.standardize_dtype(m.dtype) == "complex64"


def _bf16(x):
    return np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float64)


def test_bfloat16_variables_keep_float32_momentum_and_round_once():
    """bf16 variables (next to a float32 one): float32 momentum, math in float32, one rounding."""
    params = [_bf16(p).astype(np.float32) for p in random_params([(8, 6), (5,)])]
    steps = 5
    grads = margin_grads(params, steps)
    optimizer = lion_keras.Lion(learning_rate=LR)
    variables = [keras.Variable(params[0], dtype="bfloat16"), keras.Variable(params[1], dtype="float32")]
    for step_grads in grads:
        bf16_grad = ops.convert_to_tensor(step_grads[0], "bfloat16")
        optimizer.apply([bf16_grad, ops.convert_to_tensor(step_grads[1])], variables)
    assert [keras.backend.standardize_dtype(m.dtype) for m in optimizer._momentums] == ["float32", "float32"]
    # The reference, with the bf16 variable rounded to bf16 after each step, as storing it does.
    p, m = _bf16(params[0]), np.zeros(params[0].shape)
    for step_grads in grads:
        p, m = reference_step(p, _bf16(step_grads[0]), m, lr=LR)
        p = _bf16(p)
    got = values(variables)
    # fp32 then bf16 rounding can differ from one fp64 -> bf16 rounding by one bf16 ulp (2**-8).
    assert_close(got[0], p, rtol=2.0**-8, atol=0, what="bf16 param")
    assert_close(momenta(optimizer)[0], m, rtol=0, atol=momentum_atol(grads), what="fp32 momentum")
    expected32 = reference_lion([params[1]], [[g[1]] for g in grads], lr=LR)
    assert_close(got[1], expected32.params[0], rtol=0, atol=f32_atol(params, steps, LR), what="fp32 param")


def test_bfloat16_momentum_for_float32_variables():
    params = random_params(SHAPES)
    grads = margin_grads(params, STEPS)
    optimizer = lion_keras.Lion(learning_rate=LR, momentum_dtype="bfloat16")
    variables = run_apply(optimizer, params, grads)
    assert {keras.backend.standardize_dtype(m.dtype) for m in optimizer._momentums} == {"bfloat16"}
    expected = reference_lion(params, grads, lr=LR)
    # With the interpolation at least 0.05 from zero, a bf16 momentum changes no sign: the
    # parameters stay at float32 tolerance. The momentum rounds to bf16 (half an ulp, 2**-9
    # relative) once per step, of a value no larger than the largest gradient (m is a convex
    # combination of the gradients).
    for got, want in zip(values(variables), expected.params):
        assert_close(got, want, rtol=0, atol=f32_atol(params, STEPS, LR))
    largest = max(float(np.max(np.abs(g))) for step in grads for g in step)
    for got, want in zip(momenta(optimizer), expected.momentum):
        assert_close(got, want, rtol=0, atol=STEPS * 2.0**-9 * largest)


# --- against keras.optimizers.Lion ------------------------------------------------------------

KERAS_CASES = {
    "defaults": {},
    "learning_rate": dict(learning_rate=LR),
    "weight_decay": dict(learning_rate=LR, weight_decay=0.5),
    "betas": dict(learning_rate=LR, beta_1=0.95, beta_2=0.98),
    "clipnorm": dict(learning_rate=LR, weight_decay=0.1, clipnorm=0.5),
    "global_clipnorm": dict(learning_rate=LR, global_clipnorm=0.5),
    "clipvalue": dict(learning_rate=LR, clipvalue=0.2),
    "ema": dict(learning_rate=LR, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3),
    "gradient_accumulation": dict(learning_rate=LR, weight_decay=0.1, gradient_accumulation_steps=3),
    "schedule": dict(learning_rate=_schedule, weight_decay=0.5),
    "loss_scale_factor": dict(learning_rate=LR, loss_scale_factor=64.0),
}


@pytest.mark.parametrize("case", sorted(KERAS_CASES))
def test_matches_keras_lion(case):
    """Same inputs, same numbers as the optimizer that lion_keras.Lion replaces."""
    kwargs = KERAS_CASES[case]
    params = random_params(SHAPES)
    rng = np.random.default_rng(5)
    steps = 6 if "gradient_accumulation_steps" in kwargs else 9  # two updates of three micro-batches
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(steps)]
    results = []
    for cls in (lion_keras.Lion, keras.optimizers.Lion):
        optimizer = cls(**_resolve(kwargs, steps))
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        variables = run_apply(optimizer, params, grads, names=["kernel", "bias", "scale", "other"])
        averages = (
            [ops.convert_to_numpy(a) for a in optimizer._model_variables_moving_average]
            if optimizer.use_ema
            else []
        )
        results.append((values(variables), momenta(optimizer), averages))
    (ours, our_m, our_avg), (theirs, their_m, their_avg) = results
    atol = f32_atol(params, steps, 0.02)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(a, b, rtol=0, atol=atol, what=f"{case}: param {i}")
    for i, (a, b) in enumerate(zip(our_m, their_m)):
        assert_close(a, b, rtol=0, atol=momentum_atol(grads), what=f"{case}: momentum {i}")
    for i, (a, b) in enumerate(zip(our_avg, their_avg)):
        assert_close(a, b, rtol=0, atol=atol, what=f"{case}: EMA {i}")
    # The case did something: the parameters moved.
    assert any(not np.array_equal(a, p) for a, p in zip(ours, params))


# --- against lion_torch.Lion ------------------------------------------------------------------


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_matches_lion_torch(weight_decay):
    params = random_params(SHAPES)
    grads = margin_grads(params, STEPS, beta1=0.95, beta2=0.98)
    # Once TensorFlow is loaded, lion_torch runs in a process of its own (see _lion_torch_run).
    theirs, their_momenta = run_lion_torch(
        params,
        grads,
        subprocess_="tensorflow" in sys.modules,
        lr=LR,
        betas=(0.95, 0.98),
        weight_decay=weight_decay,
    )
    optimizer = lion_keras.Lion(learning_rate=LR, beta_1=0.95, beta_2=0.98, weight_decay=weight_decay or None)
    variables = run_apply(optimizer, params, grads)
    for i, (ours, want) in enumerate(zip(values(variables), theirs)):
        assert_close(ours, want, rtol=0, atol=f32_atol(params, STEPS, LR), what=f"param {i}")
    for i, (ours, want) in enumerate(zip(momenta(optimizer), their_momenta)):
        assert_close(ours, want, rtol=0, atol=momentum_atol(grads), what=f"momentum {i}")
    expected = reference_lion(params, grads, lr=LR, beta1=0.95, beta2=0.98, weight_decay=weight_decay)
    for i, (want, ref) in enumerate(zip(theirs, expected.params)):
        assert_close(want, ref, rtol=0, atol=f32_atol(params, STEPS, LR), what=f"lion_torch param {i}")


# --- the backend's own paths ------------------------------------------------------------------


def test_update_path_per_backend(monkeypatch):
    """PyTorch updates all variables in one multi-tensor pass; other backends call update_step."""
    calls = []
    original = lion_keras.Lion.update_step

    def counting(self, gradient, variable, learning_rate):
        calls.append(variable)
        return original(self, gradient, variable, learning_rate)

    monkeypatch.setattr(lion_keras.Lion, "update_step", counting)
    params = random_params(SHAPES)
    grads = margin_grads(params, 2)
    optimizer = lion_keras.Lion(learning_rate=LR, weight_decay=0.5, cautious=True)
    variables = run_apply(optimizer, params, grads)
    assert len(calls) == (0 if BACKEND == "torch" else 2 * len(SHAPES))
    expected = reference_lion(params, grads, lr=LR, weight_decay=0.5, cautious=True)
    for got, want in zip(values(variables), expected.params):
        assert_close(got, want, rtol=0, atol=f32_atol(params, 2, LR))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=LR, weight_decay=0.5),
        dict(learning_rate=LR, cautious=True, decouple_lr=True, weight_decay=1.0),
    ],
    ids=["weight_decay", "cautious_decoupled"],
)
def test_stateless_apply(kwargs):
    """``stateless_apply`` (jitted on JAX) gives the numbers of ``apply``; TF's Keras refuses it."""
    params = random_params(SHAPES)
    grads = margin_grads(params, 3)
    stateful = lion_keras.Lion(**kwargs)
    expected = values(run_apply(stateful, params, grads))
    optimizer = lion_keras.Lion(**kwargs)
    variables = [keras.Variable(p) for p in params]
    optimizer.build(variables)
    if BACKEND == "tensorflow":
        with pytest.raises(ValueError, match="stateless_apply is not supported"):
            optimizer.stateless_apply(
                [v.value for v in optimizer.variables], grads[0], [v.value for v in variables]
            )
        return
    apply = optimizer.stateless_apply
    if BACKEND == "jax":
        import jax

        apply = jax.jit(apply)
    opt_values = [v.value for v in optimizer.variables]
    param_values = [v.value for v in variables]
    for step_grads in grads:
        tensors = [ops.convert_to_tensor(g) for g in step_grads]
        param_values, opt_values = apply(opt_values, tensors, param_values)
    for got, want in zip(param_values, expected):
        assert_close(ops.convert_to_numpy(got), want, rtol=0, atol=f32_atol(params, 3, LR))
    unchanged = all(np.array_equal(values([v])[0], p) for v, p in zip(variables, params))
    assert unchanged, "stateless_apply changed the variables it was given"
    if BACKEND == "torch":
        # The per-variable keras.ops path and the multi-tensor path agree bit for bit.
        for got, want in zip(param_values, expected):
            assert_exact(ops.convert_to_numpy(got), want)

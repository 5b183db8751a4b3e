"""``lion_keras.Lion`` against ``lion_core.reference``, ``keras.optimizers.Lion`` and ``lion_torch.Lion``.

Runs on the backend named by ``KERAS_BACKEND``; the suite is run once per backend. The reference
tests run the table of ``tests.cases`` (in float32) through the translator in ``_helpers``; the rows
Keras cannot express are left out with the reason given in ``_helpers.UNSUPPORTED``. Keras' own
options (clipping, EMA, accumulation, loss scaling, its schedules) are tested on top of the table's rows.
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
from tests import cases
from tests.cases import assert_close, assert_exact
from tests.keras._helpers import (
    BACKEND,
    UNSUPPORTED,
    f32_atol,
    host_arrays,
    margin_grads,
    momenta,
    momentum_atol,
    options,
    random_params,
    run_apply,
    values,
)
from tests.keras._lion_torch_run import run as run_lion_torch

SHAPES = cases.SHAPES
STEPS = cases.STEPS
LR = 0.01
#: The table's rows in float32, with float32 momentum.
TABLE = [case.at_dtypes("float32") for case in cases.select(cases.CASES, UNSUPPORTED)]
#: Names for the variables, so that ``exclude_from_weight_decay(var_names=["bias"])`` has one to match.
NAMES = ["kernel", "bias"] + [f"other_{i}" for i in range(2, len(SHAPES))]


def _schedule():
    return keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=2, decay_rate=0.5)


def _resolve(kwargs: dict) -> dict:
    """Calls the factories in a case (a schedule is built fresh for each optimizer)."""
    out = dict(kwargs)
    if callable(out.get("learning_rate")) and not isinstance(
        out["learning_rate"], keras.optimizers.schedules.LearningRateSchedule
    ):
        out["learning_rate"] = out["learning_rate"]()
    return out


# --- against the float64 reference -------------------------------------------------------------


# None gradients (one step of the table skips a variable) make Keras warn.
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("case", TABLE, ids=cases.case_id)
def test_matches_reference(case):
    """Every row Keras can express, on float32 gradients with a sign margin, against float64."""
    problem = cases.problem(case, margin=True)
    params, grads = host_arrays(case, problem)
    optimizer = lion_keras.Lion(**options(case))
    variables = run_apply(optimizer, params, grads)
    expected = cases.reference_float64(case, problem)
    atol = f32_atol(params, STEPS, max(case.peak_lr, LR))
    for i, (got, want) in enumerate(zip(values(variables), expected.params)):
        assert_close(got, want, rtol=0, atol=atol, what=f"{case.id}: param {i}")
    for m in optimizer._momentums:
        assert keras.backend.standardize_dtype(m.dtype) == case.momentum_dtype
    for i, (got, want) in enumerate(zip(momenta(optimizer), expected.momentum)):
        assert_close(got, want, rtol=0, atol=momentum_atol(grads), what=f"{case.id}: momentum {i}")


@pytest.mark.parametrize("row", ["schedule", "decoupled_schedule"])
def test_keras_schedule_matches_reference(row):
    """A Keras schedule object against the reference on the schedule's own values."""
    case = cases.by_id(TABLE, row)
    problem = cases.problem(case, margin=True, missing=None)
    params, grads = host_arrays(case, problem)
    schedule = _schedule()
    lrs = [float(ops.convert_to_numpy(schedule(step))) for step in range(STEPS)]
    optimizer = lion_keras.Lion(**{**options(case), "learning_rate": _schedule()})
    variables = run_apply(optimizer, params, grads)
    expected = reference_lion(problem.init, problem.grads, lr=lrs, beta1=case.beta1, beta2=case.beta2,
                              weight_decay=case.weight_decay, max_lr=case.reference_max_lr)
    atol = f32_atol(params, STEPS, max(lrs))
    for i, (got, want) in enumerate(zip(values(variables), expected.params)):
        assert_close(got, want, rtol=0, atol=atol, what=f"param {i}")
    for i, (got, want) in enumerate(zip(momenta(optimizer), expected.momentum)):
        assert_close(got, want, rtol=0, atol=momentum_atol(grads), what=f"momentum {i}")


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
    """bf16 variables (next to a float32 one) with float32 momentum, named: math in float32, one
    rounding."""
    params = [_bf16(p).astype(np.float32) for p in random_params([(8, 6), (5,)])]
    steps = 5
    grads = margin_grads(params, steps)
    optimizer = lion_keras.Lion(learning_rate=LR, momentum_dtype="float32")
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
    largest = max(float(np.max(np.abs(g))) for step in grads for g in step if g.size)
    for got, want in zip(momenta(optimizer), expected.momentum):
        assert_close(got, want, rtol=0, atol=STEPS * 2.0**-9 * largest)


# --- against keras.optimizers.Lion ------------------------------------------------------------

#: Rows of the table that keras.optimizers.Lion can express: no cautious, no decoupling, and not
#: beta_1 = 0, which it rejects (saying "[0, 1]").
KERAS_ROWS = [
    case for case in TABLE if not case.features & {"cautious", "decouple_lr"} and case.beta1 > 0
]
#: Keras' own options on top of a row: name -> (row or None for both optimizers' defaults, arguments).
KERAS_OPTIONS = {
    "defaults": (None, {}),
    "clipnorm": ("weight_decay", dict(clipnorm=0.5)),
    "global_clipnorm": ("plain", dict(global_clipnorm=0.5)),
    "clipvalue": ("plain", dict(clipvalue=0.2)),
    "ema": ("plain", dict(use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3)),
    "gradient_accumulation": ("weight_decay", dict(gradient_accumulation_steps=3)),
    "keras_schedule": ("weight_decay", dict(learning_rate=_schedule)),
    "loss_scale_factor": ("plain", dict(loss_scale_factor=64.0)),
}
KERAS_CASES = {cases.case_id(case): (case, {}) for case in KERAS_ROWS}
KERAS_CASES.update(
    {
        name: (None if row is None else cases.by_id(TABLE, row), extra)
        for name, (row, extra) in KERAS_OPTIONS.items()
    }
)


def _keras_lion_args(case, extra: dict, steps: int) -> dict:
    if case is None:
        return dict(extra)
    args = {**options(case, steps), **extra}
    for name in ("cautious", "decouple_lr", "max_lr", "momentum_dtype"):  # ours only
        args.pop(name)
    return args


@pytest.mark.parametrize("name", sorted(KERAS_CASES))
def test_matches_keras_lion(name):
    """Same inputs, same numbers as the optimizer that lion_keras.Lion replaces."""
    case, extra = KERAS_CASES[name]
    params = random_params(SHAPES)
    rng = np.random.default_rng(5)
    steps = 6 if "gradient_accumulation_steps" in extra else 9  # two updates of three micro-batches
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(steps)]
    results = []
    for cls in (lion_keras.Lion, keras.optimizers.Lion):
        kwargs = _resolve(_keras_lion_args(case, extra, steps))
        if cls is lion_keras.Lion and case is not None:
            kwargs["momentum_dtype"] = case.momentum_dtype  # named: our default is ours to change
        optimizer = cls(**kwargs)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        variables = run_apply(optimizer, params, grads, names=NAMES)
        averages = (
            [ops.convert_to_numpy(a) for a in optimizer._model_variables_moving_average]
            if optimizer.use_ema
            else []
        )
        results.append((values(variables), momenta(optimizer), averages))
    (ours, our_m, our_avg), (theirs, their_m, their_avg) = results
    atol = f32_atol(params, steps, 0.02)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(a, b, rtol=0, atol=atol, what=f"{name}: param {i}")
    for i, (a, b) in enumerate(zip(our_m, their_m)):
        assert a.dtype == b.dtype, f"{name}: momentum {i} is {a.dtype}, Keras' is {b.dtype}"
        assert_close(a, b, rtol=0, atol=momentum_atol(grads), what=f"{name}: momentum {i}")
    for i, (a, b) in enumerate(zip(our_avg, their_avg)):
        assert_close(a, b, rtol=0, atol=atol, what=f"{name}: EMA {i}")
    # The case did something: the parameters moved.
    assert any(not np.array_equal(a, p) for a, p in zip(ours, params))


# --- against lion_torch.Lion ------------------------------------------------------------------


def _lion_torch_args(case) -> dict:
    """The case as ``lion_torch.Lion`` arguments (JSON-able: they may cross to another process).

    The momentum dtype is not named: for float32 parameters lion_torch keeps float32, as it must.
    """
    return dict(lr=case.lr, betas=(case.beta1, case.beta2), weight_decay=case.weight_decay,
                cautious=case.cautious, decouple_lr=case.decouple_lr, max_lr=case.max_lr)


@pytest.mark.parametrize("row", ["plain", "betas", "weight_decay", "decoupled_cautious"])
def test_matches_lion_torch(row):
    case = cases.by_id(TABLE, row)
    problem = cases.problem(case, margin=True, missing=None)
    params, grads = host_arrays(case, problem)
    # Once TensorFlow is loaded, lion_torch runs in a process of its own (see _lion_torch_run).
    theirs, their_momenta = run_lion_torch(
        params, grads, subprocess_="tensorflow" in sys.modules, **_lion_torch_args(case)
    )
    optimizer = lion_keras.Lion(**options(case))
    variables = run_apply(optimizer, params, grads)
    atol = f32_atol(params, STEPS, case.peak_lr)
    for i, (ours, want) in enumerate(zip(values(variables), theirs)):
        assert_close(ours, want, rtol=0, atol=atol, what=f"param {i}")
    for i, (ours, want) in enumerate(zip(momenta(optimizer), their_momenta)):
        assert_close(ours, want, rtol=0, atol=momentum_atol(grads), what=f"momentum {i}")
    expected = cases.reference_float64(case, problem)
    for i, (want, ref) in enumerate(zip(theirs, expected.params)):
        assert_close(want, ref, rtol=0, atol=atol, what=f"lion_torch param {i}")


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

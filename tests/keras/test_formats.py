"""``momentum_dtype="int8"``, ``stochastic_rounding`` and ``seed`` against ``lion_core.reference``'s formats.

Runs on the backend named by ``KERAS_BACKEND``. The rows of ``cases.FORMAT_CASES`` (and a few
combinations built from them) run through ``lion_keras.Lion``; the 8-bit momentum's codes and scales
are compared bit for bit with ``reference_lion_stored`` (they follow from the gradients alone), and
parameters keep the budgets of their dtype (``tests.cases``). Keras' own options (accumulation, EMA,
loss scaling, clipping) are checked against the plain optimizer on the same gradients.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from keras import ops

import lion_core
import lion_keras
from tests import cases
from tests.cases import assert_close, assert_exact, assert_within_budget
from tests.keras._helpers import BACKEND, UNSUPPORTED, f32_atol, host_arrays, options, run_apply, values

#: Odd sizes, a zero-size and a 0-d variable, blocks cut short, a last axis of whole blocks.
SHAPES = ((5, 3), (0,), (), (1,), (255,), (257,), (4097,), (3, 512))
_INT8 = cases.by_id(cases.FORMAT_CASES, "int8_momentum")
_ROUNDED = cases.by_id(cases.FORMAT_CASES, "stochastic_rounding")
#: The table's format rows, then combinations with the rest of the table: a schedule, fully
#: decoupled decay (applied within the step of a stochastically rounded variable), an 8-bit
#: momentum for bfloat16 variables rounded to nearest.
ROWS = cases.select(cases.FORMAT_CASES, UNSUPPORTED) + [
    dataclasses.replace(_INT8, id="int8_schedule", lr=2e-3, schedule="warmup_decay"),
    dataclasses.replace(_ROUNDED, id="rounded_decoupled", weight_decay=0.5, max_lr=2e-3),
    dataclasses.replace(_ROUNDED, id="rounded_cautious_int8", momentum_dtype="int8", cautious=True, seed=5),
    # No weight decay: Keras' base class decays bfloat16 variables in bfloat16, before the step
    # (rounding twice to nearest where the reference rounds once; see test_dtypes).
    dataclasses.replace(_INT8.at_dtypes("bfloat16", "int8"), weight_decay=0.0),
]


def lion(case: cases.Case, steps: int = cases.STEPS, **extra) -> lion_keras.Lion:
    return lion_keras.Lion(
        **options(case, steps), stochastic_rounding=case.rounding == "stochastic", seed=case.seed, **extra
    )


def codes_and_scales(optimizer: lion_keras.Lion) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (ops.convert_to_numpy(c), ops.convert_to_numpy(s))
        for c, s in zip(optimizer._momentums, optimizer._momentum_scales)
    ]


def check(case: cases.Case, problem: cases.Problem, optimizer: lion_keras.Lion, variables) -> None:
    """The variables and the optimizer's state against the case's stored-format reference."""
    expected = cases.reference(case, problem)
    if case.momentum_dtype == "int8":
        for i, (stored, (codes, scales)) in enumerate(zip(expected.stored, codes_and_scales(optimizer))):
            assert_exact(codes, stored.codes, what=f"{case.id}: codes {i}")
            assert_exact(scales, stored.scales, what=f"{case.id}: scales {i}")
    else:
        for i, m in enumerate(optimizer._momentums):
            got = cases.to_numpy(ops.convert_to_numpy(m))
            atol = cases.momentum_atol(problem.grads)
            assert_close(got, expected.momentum[i], rtol=0, atol=atol, what=f"{case.id}: momentum {i}")
    got = values(variables)
    if case.rounding == "stochastic":
        for i, (p, e) in enumerate(zip(got, expected.params)):
            assert_within_budget(p, e, atol=0.0, what=f"{case.id}: param {i}", **cases.STOCHASTIC_BUDGET)
    elif case.param_dtype == "bfloat16":
        # Keras' base class decays a bfloat16 variable in bfloat16 before the step (nearest rounding
        # twice, where the reference rounds once): one bfloat16 ulp on a few elements.
        for i, (p, e) in enumerate(zip(got, expected.params)):
            assert_within_budget(p, e, atol=0.0, what=f"{case.id}: param {i}", **cases.STOCHASTIC_BUDGET)
    else:
        atol = f32_atol(problem.init, problem.steps, case.peak_lr)
        for i, (p, e) in enumerate(zip(got, expected.params)):
            assert_close(p, e, rtol=0, atol=atol, what=f"{case.id}: param {i}")


# None gradients (one step of the table skips a variable) make Keras warn.
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.filterwarnings("ignore::lion_core.FallbackWarning")
@pytest.mark.parametrize("case", ROWS, ids=cases.case_id)
def test_rows_match_the_stored_reference(case):
    """Standard normal gradients (exact zeros at the first step, a skipped variable at step 3)."""
    problem = cases.problem(case, shapes=SHAPES)
    params, grads = host_arrays(case, problem)
    optimizer = lion(case)
    variables = run_apply(optimizer, params, grads)
    check(case, problem, optimizer, variables)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::lion_core.FallbackWarning")
@pytest.mark.parametrize("case", cases.select(cases.FORMAT_CASES, UNSUPPORTED), ids=cases.case_id)
def test_trajectory_with_margin_gradients(case):
    problem = cases.problem(case, shapes=cases.TRAJECTORY_SHAPES, steps=40, margin=True, missing=None)
    params, grads = host_arrays(case, problem)
    optimizer = lion(case, steps=40)
    variables = run_apply(optimizer, params, grads)
    check(case, problem, optimizer, variables)


def _compiled_run(optimizer, params, grads):
    """The steps as the backend compiles them in ``fit``: ``stateless_apply`` under ``jax.jit``,
    ``apply`` in a ``tf.function`` with XLA; PyTorch runs eagerly (its ``fit`` does too by default)."""
    variables = [keras.Variable(p) for p in params]
    optimizer.build(variables)
    if BACKEND == "jax":
        import jax

        step = jax.jit(optimizer.stateless_apply)
        opt_values = [v.value for v in optimizer.variables]
        var_values = [v.value for v in variables]
        for row in grads:
            var_values, opt_values = step(opt_values, [ops.convert_to_tensor(g) for g in row], var_values)
        for v, x in zip(variables, var_values):
            v.assign(x)
        for v, x in zip(optimizer.variables, opt_values):
            v.assign(x)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda row: optimizer.apply(row, variables), jit_compile=True)
        for row in grads:
            step([ops.convert_to_tensor(g) for g in row])
    else:
        for row in grads:
            optimizer.apply([ops.convert_to_tensor(g) for g in row], variables)
    return variables


@pytest.mark.filterwarnings("ignore::lion_core.FallbackWarning")
@pytest.mark.parametrize("case", cases.select(cases.FORMAT_CASES, UNSUPPORTED), ids=cases.case_id)
def test_compiled_steps_match_the_stored_reference(case):
    """XLA would contract ``beta * m + (1 - beta) * g`` into a fused multiply-add; the codes stay exact."""
    problem = cases.problem(case, shapes=SHAPES, missing=None)
    params, grads = host_arrays(case, problem)
    optimizer = lion(case)
    variables = _compiled_run(optimizer, params, grads)
    check(case, problem, optimizer, variables)


def test_state_variables_are_int8_codes_and_float32_block_scales():
    shapes = [(40, 25), (257,), (), (0, 3), (3, 512)]
    variables = [keras.Variable(np.zeros(s, "float32")) for s in shapes]
    optimizer = lion_keras.Lion(momentum_dtype="int8", seed=3)
    optimizer.build(variables)
    for shape, codes, scales in zip(shapes, optimizer._momentums, optimizer._momentum_scales):
        size = int(np.prod(shape))
        assert keras.backend.standardize_dtype(codes.dtype) == "int8" and tuple(codes.shape) == shape
        assert keras.backend.standardize_dtype(scales.dtype) == "float32"
        assert tuple(scales.shape) == (lion_core.INT8.blocks(size),)
    big = 1000 * 256 + 7
    optimizer = lion_keras.Lion(momentum_dtype="int8", seed=3)
    optimizer.build([keras.Variable(np.zeros(big, "float32"))])
    state_bytes = sum(
        int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        for v in (optimizer._momentums[0], optimizer._momentum_scales[0])
    )
    assert state_bytes / big <= 1.03


def test_float_momentum_rows_keep_no_seed_and_no_scales():
    optimizer = lion_keras.Lion(momentum_dtype="float32")
    optimizer.build([keras.Variable(np.zeros(3, "float32"))])
    assert optimizer._seed is None and optimizer._momentum_scales == [None]
    assert optimizer.get_config()["seed"] is None


@pytest.mark.filterwarnings("ignore::lion_core.FallbackWarning")
def test_stochastic_rounding_moves_bfloat16_variables_that_nearest_rounding_leaves():
    """lr = 1e-4 is below half a bfloat16 ulp of values near 1: nearest rounding drops every step."""
    p = np.full(4096, 1.0, np.float32)
    g = [[np.ones(4096, np.float32)]] * 20
    nearest = lion_keras.Lion(learning_rate=1e-4)
    (stalled,) = run_apply(nearest, [p.astype("bfloat16")], [[x.astype("bfloat16") for x in r] for r in g])
    rounded = lion_keras.Lion(learning_rate=1e-4, stochastic_rounding=True, seed=11)
    (moved,) = run_apply(rounded, [p.astype("bfloat16")], [[x.astype("bfloat16") for x in r] for r in g])
    assert np.all(values([stalled])[0] == 1.0)
    # Unbiased: the mean follows the float32 trajectory, 1 - 20 * 1e-4, to within the sampling error.
    mean = float(values([moved])[0].astype(np.float64).mean())
    assert abs(mean - (1 - 20e-4)) < 2e-4, mean


# --- the seed -------------------------------------------------------------------------------------


def test_seed_is_drawn_from_keras_random_generator_reproducibly():
    keras.utils.set_random_seed(123)
    first = lion_keras.Lion(momentum_dtype="int8").get_config()["seed"]
    second = lion_keras.Lion(stochastic_rounding=True).get_config()["seed"]
    keras.utils.set_random_seed(123)
    again = lion_keras.Lion(momentum_dtype="int8").get_config()["seed"]
    assert first == again and first != second
    assert 0 <= first < 2**32


@pytest.mark.filterwarnings("ignore::lion_core.FallbackWarning")
def test_a_different_seed_gives_different_codes():
    problem = cases.problem(_INT8, shapes=((300,),), missing=None)
    params, grads = host_arrays(_INT8, problem)
    runs = []
    for seed in (7, 8):
        optimizer = lion_keras.Lion(**options(_INT8), seed=seed)
        run_apply(optimizer, params, grads)
        runs.append(codes_and_scales(optimizer)[0][0])
    assert not np.array_equal(*runs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(momentum_dtype="int8", seed=-1), ValueError,
         r"Invalid `seed`: expected 0 <= seed < 2\*\*32. Received: seed=-1"),
        (dict(momentum_dtype="int8", seed=2**32), ValueError,
         r"Invalid `seed`: expected 0 <= seed < 2\*\*32"),
        (dict(seed="0"), TypeError,
         r"Invalid `seed`: expected an integer 0 <= seed < 2\*\*32. Received: seed='0'"),
        (dict(seed=True), TypeError, r"Invalid `seed`"),
        (dict(stochastic_rounding=1), TypeError, r"Invalid `stochastic_rounding`"),
        (dict(momentum_dtype="int4"), ValueError,
         r"Invalid `momentum_dtype`: expected None or one of \(.*'int8'\)"),
    ],
    ids=["negative", "too_large", "string", "bool", "rounding_int", "int4"],
)
def test_invalid_options_raise_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        lion_keras.Lion(**kwargs)


def test_int8_momentum_for_complex_variables_raises_at_build():
    optimizer = lion_keras.Lion(momentum_dtype="int8", seed=0)
    with pytest.raises(RuntimeError, match="`momentum_dtype` cannot be set for complex parameters"):
        optimizer.build([keras.Variable(np.zeros(3, np.complex64), dtype="complex64")])


# --- saving and loading -----------------------------------------------------------------------------


def _state(optimizer) -> dict[str, np.ndarray]:
    store: dict[str, np.ndarray] = {}
    optimizer.save_own_variables(store)
    return {k: np.array(v) for k, v in store.items()}


@pytest.mark.filterwarnings("ignore::lion_core.FallbackWarning")
@pytest.mark.parametrize("row", ["int8_stochastic_rounding", "int8_momentum", "stochastic_rounding"])
def test_state_round_trips_mid_run_and_resumes_the_same_bits(row):
    case = cases.by_id(cases.FORMAT_CASES, row)
    problem = cases.problem(case, shapes=SHAPES, missing=None)
    params, grads = host_arrays(case, problem)
    straight = lion(case)
    expected = values(run_apply(straight, params, grads))
    first = lion(case)
    variables = run_apply(first, params, grads[:4])
    resumed = lion_keras.Lion(**{**first.get_config(), "seed": (case.seed + 1) % 2**32})  # restored below
    resumed.build(variables)
    resumed.load_own_variables(_state(first))
    assert resumed.get_config()["seed"] == case.seed
    for row_grads in grads[4:]:
        resumed.apply([ops.convert_to_tensor(g) for g in row_grads], variables)
    for i, (got, want) in enumerate(zip(values(variables), expected)):
        assert_exact(got, want, what=f"param {i}")
    if case.momentum_dtype == "int8":
        for i, ((c, s), (c2, s2)) in enumerate(zip(codes_and_scales(resumed), codes_and_scales(straight))):
            assert_exact(c, c2, what=f"codes {i}")
            assert_exact(s, s2, what=f"scales {i}")


def _built(momentum_dtype=None, stochastic_rounding=False):
    optimizer = lion_keras.Lion(
        momentum_dtype=momentum_dtype, stochastic_rounding=stochastic_rounding, seed=1
    )
    optimizer.build([keras.Variable(np.zeros((3, 4), "float32")), keras.Variable(np.zeros(5, "float32"))])
    return optimizer


@pytest.mark.parametrize(
    "saved, loaded, match",
    [
        (dict(momentum_dtype="int8"), dict(momentum_dtype="float32"),
         r"Invalid `momentum_dtype`: expected a state saved with momentum_dtype='float32'. Received: a state "
         r"with int8 momentum codes"),
        (dict(), dict(momentum_dtype="int8"),
         r"Invalid `momentum_dtype`: expected a state saved with momentum_dtype='int8'. Received: a state "
         r"with a floating-point momentum"),
        (dict(stochastic_rounding=True), dict(),
         r"Invalid `stochastic_rounding`: .* Received: a state with a seed"),
        (dict(), dict(stochastic_rounding=True),
         r"Invalid `stochastic_rounding`: .* Received: a state without a seed"),
    ],
    ids=["int8_into_float", "float_into_int8", "seed_into_none", "none_into_seed"],
)
def test_a_state_of_another_format_is_refused(saved, loaded, match):
    with pytest.raises(TypeError, match=match):
        _built(**loaded).load_own_variables(_state(_built(**saved)))


@pytest.mark.filterwarnings("ignore::lion_core.FallbackWarning")
def test_model_save_and_load_keeps_the_options_and_the_state(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(300), keras.layers.Dense(1)])
    model.compile(
        optimizer=lion_keras.Lion(
            learning_rate=1e-3, momentum_dtype="int8", stochastic_rounding=True, seed=77
        ),
        loss="mse",
    )
    x = np.random.default_rng(0).standard_normal((32, 8)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    config = loaded.optimizer.get_config()
    assert (config["momentum_dtype"], config["stochastic_rounding"], config["seed"]) == ("int8", True, 77)
    for a, b in zip(codes_and_scales(model.optimizer), codes_and_scales(loaded.optimizer)):
        assert_exact(a[0], b[0], what="codes")
        assert_exact(a[1], b[1], what="scales")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    for a, b in zip(codes_and_scales(model.optimizer), codes_and_scales(loaded.optimizer)):
        assert_exact(a[0], b[0], what="codes after resuming")


def test_config_round_trip_keeps_the_options():
    optimizer = lion_keras.Lion(momentum_dtype="int8", stochastic_rounding=True, seed=2**32 - 1)
    config = optimizer.get_config()
    clone = lion_keras.Lion.from_config(config)
    assert clone.get_config() == config
    assert (clone.momentum_dtype, clone.stochastic_rounding) == ("int8", True)
    assert clone.get_config()["seed"] == 2**32 - 1


# --- Keras' options on top ------------------------------------------------------------------------


def _codes_after(optimizer, params, grads):
    variables = run_apply(optimizer, params, grads)
    return values(variables), codes_and_scales(optimizer)


def _assert_same(got, want, what):
    (gp, gs), (wp, ws) = got, want
    for i, (a, b) in enumerate(zip(gp, wp)):
        assert_exact(a, b, what=f"{what}: param {i}")
    for i, ((c, s), (c2, s2)) in enumerate(zip(gs, ws)):
        assert_exact(c, c2, what=f"{what}: codes {i}")
        assert_exact(s, s2, what=f"{what}: scales {i}")


_COMPOSED = cases.by_id(cases.FORMAT_CASES, "int8_stochastic_rounding")
_COMPOSED_SHAPES = ((5, 3), (257,), (1,))


@pytest.mark.filterwarnings("ignore::lion_core.FallbackWarning")
def test_gradient_accumulation_steps_like_the_plain_optimizer_on_the_mean():
    """Two equal micro-batches: their mean is the gradient exactly, and the step count is the updates'."""
    problem = cases.problem(_COMPOSED, shapes=_COMPOSED_SHAPES, steps=4, missing=None)
    params, grads = host_arrays(_COMPOSED, problem)
    plain = _codes_after(lion(_COMPOSED), params, grads)
    micro = [row for row in grads for _ in range(2)]
    accumulated = lion(_COMPOSED, gradient_accumulation_steps=2)
    _assert_same(_codes_after(accumulated, params, micro), plain, "accumulated")


@pytest.mark.filterwarnings("ignore::lion_core.FallbackWarning")
def test_ema_tracks_the_variables_and_leaves_the_step_alone():
    problem = cases.problem(_COMPOSED, shapes=_COMPOSED_SHAPES, steps=4, missing=None)
    params, grads = host_arrays(_COMPOSED, problem)
    plain = _codes_after(lion(_COMPOSED), params, grads)
    ema = lion(_COMPOSED, use_ema=True, ema_momentum=0.5)
    got = _codes_after(ema, params, grads)
    _assert_same(got, plain, "with EMA")
    averages = values(ema._model_variables_moving_average)
    assert any(not np.array_equal(a, p) for a, p in zip(averages, got[0]))  # an average, not a copy


@pytest.mark.filterwarnings("ignore::lion_core.FallbackWarning")
def test_loss_scale_optimizer_unscales_before_the_step():
    """A power-of-two scale divides exactly: the same bits as the plain optimizer. (Compiled: on JAX,
    Keras' LossScaleOptimizer runs only statelessly.)"""
    case = _INT8
    problem = cases.problem(case, shapes=_COMPOSED_SHAPES, steps=4, missing=None)
    params, grads = host_arrays(case, problem)
    plain = _codes_after(lion(case), params, grads)
    scale = 2.0**10
    wrapped = keras.optimizers.LossScaleOptimizer(lion(case), initial_scale=scale, dynamic_growth_steps=1000)
    scaled = [[g * np.float32(scale) for g in row] for row in grads]
    variables = _compiled_run(wrapped, params, scaled)
    _assert_same((values(variables), codes_and_scales(wrapped.inner_optimizer)), plain, "loss scaled")


@pytest.mark.filterwarnings("ignore::lion_core.FallbackWarning")
def test_clipnorm_clips_the_gradient_the_step_sees():
    problem = cases.problem(_COMPOSED, shapes=_COMPOSED_SHAPES, steps=4, missing=None)
    params, grads = host_arrays(_COMPOSED, problem)
    clip = lion(_COMPOSED, clipnorm=0.5)._clip_gradients  # Keras' own clipping, as the step calls it
    clipped = [
        [ops.convert_to_numpy(g) for g in clip([ops.convert_to_tensor(g) for g in row])] for row in grads
    ]
    assert not np.allclose(clipped[0][1], grads[0][1])  # it does clip
    plain = _codes_after(lion(_COMPOSED), params, clipped)
    _assert_same(_codes_after(lion(_COMPOSED, clipnorm=0.5), params, grads), plain, "clipnorm")


# --- the PyTorch backend's kernel pass-through --------------------------------------------------------


@pytest.mark.skipif(BACKEND != "torch", reason="the kernels serve the PyTorch backend only")
@pytest.mark.filterwarnings("ignore::lion_core.FallbackWarning")
def test_torch_backend_hands_the_formats_to_the_kernel(monkeypatch):
    """Scales, the codes' and the variables' step keys reach ``lion_kernels``; whatever the kernel
    hands back is stepped by ``update_step``, and the result is the reference's either way."""
    from lion_kernels import cpu_lion

    reason = cpu_lion.unavailable_reason()
    if reason is not None:
        pytest.skip(f"the CPU kernel cannot run here: {reason}")
    calls = []
    depth = [0]
    real = cpu_lion.lion_

    def spy(params, grads, momenta, **kwargs):
        if depth[0] == 0:  # lion_ may call itself for part of the triples: count lion_keras' calls
            calls.append(kwargs)
        depth[0] += 1
        try:
            return real(params, grads, momenta, **kwargs)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(cpu_lion, "lion_", spy)
    case = cases.by_id(cases.FORMAT_CASES, "int8_stochastic_rounding")
    problem = cases.problem(case, shapes=((5, 3), (257,)), steps=3, missing=None)
    params, grads = host_arrays(case, problem)
    optimizer = lion(case, steps=3)
    variables = run_apply(optimizer, params, grads)
    assert len(calls) == 3
    for step, kwargs in enumerate(calls):
        assert kwargs["weight_decay"] == case.weight_decay  # decayed before the one rounding
        scales = kwargs["scales"]
        assert [s is optimizer._momentum_scales[i].value for i, s in enumerate(scales)] == [True, True]
        streams = (("momentum_keys", lion_core.MOMENTUM_STREAM), ("param_keys", lion_core.PARAM_STREAM))
        for name, stream in streams:
            seeds = [lion_core.derive_seed(case.seed, stream, t) for t in range(2)]
            expected = [lion_core.step_key(seed, step) for seed in seeds]
            assert kwargs[name] == expected, name
    check(case, problem, optimizer, variables)


def test_a_state_saved_before_the_first_step_loads_into_a_built_optimizer():
    """No momentum was saved: the built optimizer keeps its zero codes, and the saved seed."""
    unbuilt = lion_keras.Lion(momentum_dtype="int8", seed=9)
    built = _built(momentum_dtype="int8")
    built.load_own_variables(_state(unbuilt))
    assert built.get_config()["seed"] == 9
    assert all(not np.any(c) for c, _ in codes_and_scales(built))

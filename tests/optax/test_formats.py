"""``mu_dtype="int8"`` and ``apply_updates_stochastic`` against ``lion_core.reference``'s stored formats.

The 8-bit momentum's codes and scales are compared bit for bit with ``reference_lion_stored`` (they
follow from the gradients alone); parameters keep the budgets of their dtype (``tests.cases``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lion_core
import lion_optax
from lion_core.reference import reference_lion_stored, store_param
from tests import cases
from tests.cases import assert_close, assert_exact, assert_within_budget
from tests.optax._helpers import f32_param_atol, learning_rate

ROWS = cases.select(cases.FORMAT_CASES, unsupported={"maximize": "optax has no maximize flag"})
#: Odd sizes, a zero-size and a 0-d parameter, blocks cut short.
SHAPES = ((5, 3), (0,), (), (1,), (255,), (257,), (4097,), (3, 512))


def _lion_state(state, kind=(lion_optax.ScaleByLionInt8State, optax.ScaleByLionState)):
    found = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kind)) if isinstance(s, kind)]
    assert len(found) == 1, found
    return found[0]


def _int8_state(state):
    return _lion_state(state, lion_optax.ScaleByLionInt8State)


def _tx(case: cases.Case, steps: int, **extra):
    return lion_optax.lion(
        learning_rate(case, steps), case.beta1, case.beta2, mu_dtype=case.momentum_dtype,
        weight_decay=case.weight_decay, cautious=case.cautious, seed=case.seed, **extra,
    )


def _step_fn(tx, case: cases.Case):
    def step(params, state, grads):
        count = _lion_state(state).count  # the updates made before this one
        updates, state = tx.update(grads, state, params)
        if case.rounding == "stochastic":
            return lion_optax.apply_updates_stochastic(params, updates, seed=case.seed, step=count), state
        return optax.apply_updates(params, updates), state

    return step


def run_case(case: cases.Case, problem: cases.Problem):
    """The translator: the case's problem through ``lion_optax.lion``, jitted."""
    tx = _tx(case, problem.steps)
    params = [jnp.asarray(x, case.param_dtype) for x in problem.init]
    state = tx.init(params)
    step = jax.jit(_step_fn(tx, case))
    for row in problem.grads:
        params, state = step(params, state, [jnp.asarray(g, case.gradient_dtype) for g in row])
    return params, state


def _check(case, problem, params, state, expected):
    if case.momentum_dtype == "int8":
        lion = _int8_state(state)
        for i, stored in enumerate(expected.stored):
            assert_exact(lion.mu_codes[i], stored.codes, what=f"codes {i}")
            assert_exact(lion.mu_scales[i], stored.scales, what=f"scales {i}")
    else:
        mu = optax.tree_utils.tree_get(state, "mu")
        atol = cases.momentum_atol(problem.grads)
        cases.assert_all_close(mu, expected.momentum, rtol=0, atol=atol, what="momentum")
    if case.rounding == "stochastic":
        for i, (p, e) in enumerate(zip(params, expected.params)):
            assert_within_budget(p, e, atol=0.0, what=f"param {i}", **cases.STOCHASTIC_BUDGET)
    else:
        atol = f32_param_atol(problem.init, problem.steps, case.peak_lr)
        cases.assert_all_close(params, expected.params, rtol=0, atol=atol, what="param")


@pytest.mark.parametrize("case", ROWS, ids=cases.case_id)
def test_case_table_rows_match_the_stored_reference(case):
    problem = cases.problem(case, shapes=SHAPES, steps=cases.STEPS, missing=None)
    params, state = run_case(case, problem)
    _check(case, problem, params, state, cases.reference(case, problem))


@pytest.mark.parametrize("case", ROWS, ids=cases.case_id)
def test_trajectory_with_margin_gradients(case):
    steps = 60
    problem = cases.problem(case, shapes=cases.TRAJECTORY_SHAPES, steps=steps, margin=True, missing=None)
    params, state = run_case(case, problem)
    _check(case, problem, params, state, cases.reference(case, problem))


def test_int8_state_round_trips_mid_run():
    """Save the state (codes, scales, seed, count) as NumPy, reload it, continue: same bits."""
    case = cases.by_id(cases.FORMAT_CASES, "int8_stochastic_rounding")
    problem = cases.problem(case, shapes=SHAPES, steps=8, missing=None)
    straight_params, straight_state = run_case(case, problem)
    tx = _tx(case, problem.steps)
    step = jax.jit(_step_fn(tx, case))
    params = [jnp.asarray(x, case.param_dtype) for x in problem.init]
    state = tx.init(params)
    for t, row in enumerate(problem.grads):
        if t == 4:
            saved = jax.tree.map(np.asarray, (params, state))
            params, state = jax.tree.map(jnp.asarray, saved)
        params, state = step(params, state, [jnp.asarray(g, case.gradient_dtype) for g in row])
    for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((straight_params, straight_state))):
        assert_exact(a, b, what="resumed run")


def test_vmap_gives_each_problem_its_reference_codes():
    case = cases.by_id(cases.FORMAT_CASES, "int8_momentum")
    problems = [cases.problem(case, shapes=((300,), (2, 3)), steps=6, missing=None, seed=s) for s in range(3)]
    tx = _tx(case, 6)
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x, jnp.float32) for x in xs]), *trees)
    p = stack([pr.init for pr in problems])
    s = jax.vmap(tx.init)(p)
    step = jax.jit(jax.vmap(_step_fn(tx, case)))
    for t in range(6):
        p, s = step(p, s, stack([pr.grads[t] for pr in problems]))
    lion = _int8_state(s)
    for b, pr in enumerate(problems):
        expected = cases.reference(case, pr)
        for i in range(2):
            assert_exact(lion.mu_codes[i][b], expected.stored[i].codes, what=f"problem {b} codes {i}")
            assert_exact(lion.mu_scales[i][b], expected.stored[i].scales, what=f"problem {b} scales {i}")


def test_inject_hyperparams_matches_the_plain_optimizer_bit_for_bit():
    # b1 = 0.5, b2 = 0.875: 1 - b is exact whether computed in Python or in float32
    case = dataclasses.replace(cases.by_id(cases.FORMAT_CASES, "int8_momentum"), beta1=0.5, beta2=0.875)
    problem = cases.problem(case, shapes=SHAPES, steps=6, missing=None)
    plain_params, plain_state = run_case(case, problem)
    tx = optax.inject_hyperparams(lion_optax.lion)(
        learning_rate=case.lr, b1=case.beta1, b2=case.beta2, mu_dtype="int8", weight_decay=case.weight_decay,
        seed=case.seed,
    )
    params = [jnp.asarray(x) for x in problem.init]
    state = tx.init(params)
    step = jax.jit(_step_fn(tx, case))
    for row in problem.grads:
        params, state = step(params, state, [jnp.asarray(g) for g in row])
    assert_exact(_int8_state(state).seed, np.uint32(case.seed), what="seed")
    for i in range(len(SHAPES)):
        assert_exact(_int8_state(state).mu_codes[i], _int8_state(plain_state).mu_codes[i], what=f"codes {i}")
        assert_exact(_int8_state(state).mu_scales[i], _int8_state(plain_state).mu_scales[i], what=f"scales {i}")
        assert_exact(params[i], plain_params[i], what=f"param {i}")


def test_multisteps_accumulates_then_steps_like_the_plain_optimizer():
    case = cases.by_id(cases.FORMAT_CASES, "int8_momentum")
    problem = cases.problem(case, shapes=SHAPES, steps=4, missing=None)
    plain_params, plain_state = run_case(case, problem)
    k = 2
    tx = optax.MultiSteps(_tx(case, problem.steps), every_k_schedule=k)
    params = [jnp.asarray(x) for x in problem.init]
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    for row in problem.grads:
        for j in range(k):  # k identical micro-batches: their mean is the gradient, exactly
            before = params
            params, state = step(params, state, [jnp.asarray(g) for g in row])
            if j < k - 1:
                for a, b in zip(params, before):
                    assert_exact(a, b, what="params between accumulation steps")
    for i in range(len(SHAPES)):
        assert_exact(_int8_state(state).mu_codes[i], _int8_state(plain_state).mu_codes[i], what=f"codes {i}")
        assert_exact(params[i], plain_params[i], what=f"param {i}")


def test_int8_state_has_codes_shaped_like_params_and_one_scale_per_block():
    params = {"w": jnp.zeros((40, 25)), "b": jnp.zeros(257), "s": jnp.zeros(()), "e": jnp.zeros((0, 3))}
    state = lion_optax.scale_by_lion(mu_dtype="int8", seed=3).init(params)
    assert isinstance(state, lion_optax.ScaleByLionInt8State)
    for k, p in params.items():
        assert state.mu_codes[k].dtype == jnp.int8 and state.mu_codes[k].shape == p.shape
        assert state.mu_scales[k].dtype == jnp.float32
        assert state.mu_scales[k].shape == (lion_core.INT8.blocks(p.size),)
    assert state.seed.dtype == jnp.uint32 and int(state.seed) == 3
    assert lion_optax.scale_by_lion(mu_dtype=jnp.int8).init(params).mu_codes["w"].dtype == jnp.int8


def test_int8_errors():
    with pytest.raises(RuntimeError, match=r"`mu_dtype` cannot be set for complex parameters"):
        lion_optax.lion(1e-3, mu_dtype="int8").init({"z": jnp.zeros(3, jnp.complex64)})
    with pytest.raises(ValueError, match=r"Invalid `mu_dtype`: expected None or one of \(.*'int8'\)"):
        lion_optax.lion(1e-3, mu_dtype="int4")
    with pytest.raises(ValueError, match=r"Invalid `seed`: expected 0 <= seed < 2\*\*32. Received: seed=-1"):
        lion_optax.lion(1e-3, mu_dtype="int8", seed=-1)
    with pytest.raises(TypeError, match=r"Invalid `seed`"):
        lion_optax.apply_updates_stochastic({"w": jnp.zeros(2)}, {"w": jnp.zeros(2)}, seed="0", step=0)


# --- apply_updates_stochastic -------------------------------------------------------------------


def test_apply_updates_stochastic_is_the_reference_rounding_of_the_float32_sum():
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (0,), (), (257,), (4097,)]
    params = [jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in shapes]
    updates = [jnp.asarray(rng.standard_normal(s) * 1e-3, jnp.float32) for s in shapes]
    got = jax.jit(lion_optax.apply_updates_stochastic)(params, updates, seed=jnp.uint32(17), step=jnp.int32(5))
    eager = lion_optax.apply_updates_stochastic(params, updates, seed=17, step=5)
    for i, (p, u) in enumerate(zip(params, updates)):
        total = np.asarray(p, np.float32) + np.asarray(u)
        expected = store_param(total, "bfloat16", rounding="stochastic", seed=17, step=5, tensor=i)
        assert got[i].dtype == jnp.bfloat16
        assert_exact(got[i], expected, what=f"leaf {i}")
        assert_exact(eager[i], expected, what=f"eager leaf {i}")


def test_apply_updates_stochastic_leaves_other_dtypes_to_optax():
    params = {"f32": jnp.linspace(-1, 1, 7), "f16": jnp.linspace(-1, 1, 7).astype(jnp.float16)}
    updates = jax.tree.map(lambda p: jnp.full(p.shape, 1e-4, jnp.float32), params)
    got = lion_optax.apply_updates_stochastic(params, updates, seed=0, step=0)
    want = optax.apply_updates(params, updates)
    for k in params:
        assert got[k].dtype == want[k].dtype
        assert_exact(got[k], want[k], what=k)


def test_bfloat16_parameters_train_with_stochastic_rounding_where_nearest_stalls():
    """lr 1e-4 on weights near 1 (bfloat16 ulp 2**-7): nearest never moves; SR moves in expectation."""
    target = jnp.full(4096, 0.9, jnp.float32)
    loss = lambda p: jnp.mean((p.astype(jnp.float32) - target) ** 2)
    tx = lion_optax.lion(1e-4, weight_decay=0.0)
    results = {}
    for mode in ("nearest", "stochastic"):
        p = jnp.ones(4096, jnp.bfloat16)
        state = tx.init(p)

        @jax.jit
        def step(p, state, t):
            updates, state = tx.update(jax.grad(loss)(p), state, p)
            if mode == "stochastic":
                return lion_optax.apply_updates_stochastic(p, updates, seed=1, step=t), state
            return optax.apply_updates(p, updates), state

        for t in range(200):
            p, state = step(p, state, t)
        results[mode] = float(jnp.mean(p.astype(jnp.float32)))
    assert results["nearest"] == 1.0
    # 200 steps of -1e-4: the float32 answer is 0.98; the mean of 4096 elements is within 1e-3 of it
    assert abs(results["stochastic"] - (1.0 - 200 * 1e-4)) < 1e-3, results


def test_sharded_int8_codes_match_the_reference():
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.optax import _formats_sharding_check

    if jax.device_count() >= _formats_sharding_check.DEVICES:
        _formats_sharding_check.check()
        return
    # JAX's backend started before conftest could ask for 8 host devices: rerun in a fresh process.
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(root))
    result = subprocess.run([sys.executable, "-m", "tests.optax._formats_sharding_check"], cwd=root, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_state_memory_per_parameter_from_the_optimizers_own_state():
    """The goals of the memory benchmark, on its own model: float32 4, bfloat16 2, int8 <= 1.03 bytes."""
    from lion_cli.benchmarks import bench_memory_optax as bench

    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in bench.SHAPES.items()}
    n = sum(int(np.prod(s)) for s in bench.SHAPES.values())
    per_param = lambda tx, p: bench._bytes(jax.eval_shape(tx.init, p)) / n  # noqa: E731
    bf16 = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.bfloat16), params)
    assert abs(per_param(lion_optax.lion(1e-4), params) - 4) < 1e-6
    assert abs(per_param(lion_optax.lion(1e-4), bf16) - 2) < 1e-6
    assert per_param(lion_optax.lion(1e-4, mu_dtype="int8"), params) <= 1.03
    assert per_param(lion_optax.lion(1e-4, mu_dtype="int8"), bf16) <= 1.03


def test_format_benchmark_runs():
    from lion_cli.benchmarks import bench_formats

    bench_formats.main(["--steps", "2"])


def test_a_state_of_another_format_is_refused_with_a_clear_error():
    params = {"w": jnp.zeros((300,))}
    grads = {"w": jnp.ones((300,))}
    int8, f32 = lion_optax.scale_by_lion(mu_dtype="int8"), lion_optax.scale_by_lion(mu_dtype=jnp.float32)
    with pytest.raises(TypeError, match=r"Invalid `state`: expected a ScaleByLionInt8State \(mu_dtype='int8'\)\. "
                                        r"Received: a ScaleByLionState"):
        int8.update(grads, f32.init(params))
    with pytest.raises(TypeError, match=r"Invalid `state`: expected an optax.ScaleByLionState .* Received: a "
                                        r"ScaleByLionInt8State"):
        f32.update(grads, int8.init(params))
    # a state saved with another block size (one scale for all 300 elements)
    state = int8.init(params)._replace(mu_scales={"w": jnp.zeros((1,), jnp.float32)})
    with pytest.raises(TypeError, match=r"expected int8 codes and 2 float32 scales .* Received: int8 codes of "
                                        r"shape \(300,\) and float32 scales of shape \(1,\)"):
        int8.update(grads, state)


def _torch_namespace(torch):
    """The array-API names ``lion_core``'s formats use, for torch (uint32 held in int64)."""
    class T:
        float32, int8, uint32 = torch.float32, torch.int8, torch.int64
        reshape, abs, floor = staticmethod(torch.reshape), staticmethod(torch.abs), staticmethod(torch.floor)
        round, where, concatenate = staticmethod(torch.round), staticmethod(torch.where), staticmethod(torch.cat)
        asarray = staticmethod(torch.as_tensor)
        clip = staticmethod(lambda x, lo, hi: torch.clamp(x, lo, hi))
        zeros = staticmethod(lambda shape, dtype: torch.zeros(shape, dtype=dtype))
        max = staticmethod(lambda x, axis: torch.amax(x, dim=axis))
        astype = staticmethod(lambda x, dtype: x.to(dtype))

    return T


@pytest.mark.parametrize("size", [1, 255, 257, 4097])
def test_every_framework_draws_and_rounds_the_same_bits(size):
    """NumPy, jax.numpy (jitted) and torch (int64 masked to 32 bits) agree on the hash, the bfloat16
    stochastic rounding and the 8-bit encoding, bit for bit."""
    key = lion_core.derive_seed(5, lion_core.MOMENTUM_STREAM, 3)
    index = np.arange(size, dtype=np.uint32)
    bits = lion_core.counter_hash(key, 17, index)
    x = (np.random.default_rng(size).standard_normal(size) * 10).astype(np.float32)
    codes, scales = lion_core.INT8.encode(x, bits, xp=np)

    @jax.jit
    def on_jax(key, step, x):
        b = lion_core.counter_hash(key, step, jnp.arange(size, dtype=jnp.uint32))
        sr = lion_core.stochastic_round_bfloat16_bits(jax.lax.bitcast_convert_type(x, jnp.uint32), b, xp=jnp)
        return b, jax.lax.bitcast_convert_type(sr, jnp.float32), *lion_core.INT8.encode(x, b, xp=jnp)

    b, sr, c, s = on_jax(jnp.uint32(key), jnp.uint32(17), jnp.asarray(x))
    assert_exact(b, bits, what="jax hash")
    assert_exact(sr, lion_core.stochastic_round_bfloat16(x, bits), what="jax rounding")
    assert_exact(c, codes, what="jax codes")
    assert_exact(s, scales, what="jax scales")

    torch = pytest.importorskip("torch")
    tb = lion_core.counter_hash(key, 17, torch.arange(size, dtype=torch.int64))
    assert_exact(tb.numpy(), bits.astype(np.int64), what="torch hash")
    x_bits = torch.from_numpy(x).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    t_sr = (lion_core.stochastic_round_bfloat16_bits(x_bits, tb, xp=torch) >> 16).to(torch.int32).to(torch.int16)
    assert_exact(t_sr.view(torch.bfloat16).float(), lion_core.stochastic_round_bfloat16(x, bits), what="torch sr")
    tc, ts = lion_core.INT8.encode(torch.from_numpy(x), tb, xp=_torch_namespace(torch))
    assert_exact(tc, codes, what="torch codes")
    assert_exact(ts, scales, what="torch scales")


def test_eager_update_gives_the_same_codes_as_jit():
    case = cases.by_id(cases.FORMAT_CASES, "int8_cautious")
    problem = cases.problem(case, shapes=SHAPES, steps=3, missing=None)
    _, jitted_state = run_case(case, problem)
    tx = _tx(case, problem.steps)
    params = [jnp.asarray(x) for x in problem.init]
    state = tx.init(params)
    step = _step_fn(tx, case)  # not jitted: XLA compiles each operation alone
    for row in problem.grads:
        params, state = step(params, state, [jnp.asarray(g) for g in row])
    for i in range(len(SHAPES)):
        assert_exact(_int8_state(state).mu_codes[i], _int8_state(jitted_state).mu_codes[i], what=f"codes {i}")
        assert_exact(_int8_state(state).mu_scales[i], _int8_state(jitted_state).mu_scales[i], what=f"scales {i}")

"""``lion_optax`` inside the Optax and JAX machinery: chain, inject_hyperparams, MultiSteps, masked,
multi_transform, jit, vmap, lax.scan and Flax NNX, each checked against the float64 reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lion_optax
from lion_core.reference import reference_lion
from tests.optax._helpers import (
    f32_momentum_atol,
    f32_param_atol,
    lion_state,
    random_params,
    reference_run,
    run,
)
from tests.support import assert_close, assert_exact, assert_within_budget

SHAPES = ((), (7,), (129,), (4, 9))
STEPS = 12


def _compare(ours_p, ours_s, ref_p, ref_m, params, grads, lr_max):
    atol = f32_param_atol(params, len(grads), lr_max)
    for i, (a, e) in enumerate(zip(jax.tree.leaves(ours_p), ref_p)):
        assert_close(a, e, rtol=0, atol=atol, what=f"param {i}")
    m_atol = f32_momentum_atol(grads)
    for i, (a, e) in enumerate(zip(jax.tree.leaves(lion_state(ours_s).mu), ref_m)):
        assert_close(a, e, rtol=0, atol=m_atol, what=f"momentum {i}")


def test_chain_after_clip_by_global_norm():
    params = random_params(SHAPES)
    # Gradients with a sign margin, scaled up so that clipping is active at every step.
    grads, _, _ = reference_run(params, STEPS, lr=1e-2)
    grads = [[g * np.float32(10.0) for g in step] for step in grads]
    clip = optax.clip_by_global_norm(1.0)
    clipped = []
    clip_state = clip.init(None)
    for step in grads:
        c, clip_state = clip.update([jnp.asarray(g) for g in step], clip_state)
        clipped.append([np.asarray(x, np.float64) for x in c])
    assert all(optax.tree.norm(c) < optax.tree.norm(g) for c, g in zip(clipped, grads))
    ref = reference_lion(params, clipped, lr=1e-2, weight_decay=0.1)
    ours_p, ours_s = run(optax.chain(clip, lion_optax.lion(1e-2, weight_decay=0.1)), params, grads)
    # Clipped gradients are no longer drawn with a margin: allow the rare sign that lands the other
    # way in float32, which moves an element by 2 * lr.
    for i, (a, e) in enumerate(zip(ours_p, ref.params)):
        atol = f32_param_atol(params, STEPS, 1e-2)
        assert_within_budget(a, e, atol=atol, max_fraction=0.01, what=f"param {i}")
    theirs_p, _ = run(optax.chain(clip, optax.lion(1e-2, weight_decay=0.1)), params, grads)
    for i, (a, b) in enumerate(zip(ours_p, theirs_p)):
        assert_exact(a, b, what=f"param {i} vs optax")


def test_inject_hyperparams_changes_take_effect_at_run_time():
    params = random_params(SHAPES)
    lr = [1e-2] * 4 + [3e-3] * 4 + [2e-2] * 4
    b1 = [0.9] * 4 + [0.8] * 8
    b2 = [0.99] * 8 + [0.9] * 4
    wd = [0.1] * 6 + [0.4] * 6
    grads, ref_p, ref_m = reference_run(params, STEPS, lr=lr.__getitem__, beta1=b1.__getitem__,
                                        beta2=b2.__getitem__, weight_decay=wd.__getitem__)
    tx = optax.inject_hyperparams(lion_optax.lion)(
        learning_rate=lr[0], b1=b1[0], b2=b2[0], weight_decay=wd[0]
    )
    p = [jnp.asarray(x) for x in params]
    state = tx.init(p)

    @jax.jit
    def step(p, state, g):
        updates, state = tx.update(g, state, p)
        return optax.apply_updates(p, updates), state

    for t, g in enumerate(grads):
        # Hyperparameters are arrays in the state: changing them does not retrace.
        hyperparams = dict(learning_rate=lr[t], b1=b1[t], b2=b2[t], weight_decay=wd[t])
        state.hyperparams.update({k: jnp.float32(v) for k, v in hyperparams.items()})
        p, state = step(p, state, [jnp.asarray(x) for x in g])
    assert step._cache_size() == 1
    _compare(p, state, ref_p, ref_m, params, grads, max(lr))


def test_inject_hyperparams_with_schedules_and_decoupled_decay():
    params = random_params(SHAPES)
    lr = optax.linear_schedule(2e-2, 5e-3, STEPS)
    grads, ref_p, ref_m = reference_run(params, STEPS, lr=lr, weight_decay=1e-2, max_lr=2e-2)
    tx = optax.inject_hyperparams(lion_optax.lion)(
        learning_rate=lr, weight_decay=1e-2, decouple_lr=True, max_lr=2e-2
    )
    ours_p, ours_s = run(tx, params, grads)
    _compare(ours_p, ours_s, ref_p, ref_m, params, grads, 2e-2)


def test_multisteps_accumulates_then_steps():
    params = random_params(SHAPES)
    k = 3
    # The reference steps on the mean of each window of k micro-batches: draw those means with a
    # sign margin, then split each into k micro-batches with that mean.
    means, ref_p, ref_m = reference_run(params, STEPS // k, lr=1e-2, weight_decay=0.1)
    rng = np.random.default_rng(11)
    micro = []
    for step in means:
        noise = [rng.standard_normal((k - 1, *g.shape)).astype(np.float32) for g in step]
        micro += [[g + n[j] for g, n in zip(step, noise)] for j in range(k - 1)]
        micro.append([g - n.sum(axis=0) for g, n in zip(step, noise)])
    tx = optax.MultiSteps(lion_optax.lion(1e-2, weight_decay=0.1), every_k_schedule=k)
    p = [jnp.asarray(x) for x in params]
    state = tx.init(p)
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    for j, g in enumerate(micro):
        before = p
        p, state = step(p, state, [jnp.asarray(x) for x in g])
        if (j + 1) % k:
            for a, b in zip(p, before):
                assert_exact(a, b, what="params between accumulation steps")
    assert int(lion_state(state).count) == STEPS // k
    _compare(p, state, ref_p, ref_m, params, micro, 1e-2)


def test_masked_and_multi_transform():
    params = {"lion": random_params(SHAPES, seed=3), "frozen": random_params(((5,),), seed=4)}
    grads, ref_p, ref_m = reference_run(params["lion"], STEPS, lr=1e-2, weight_decay=0.1)
    step_grads = [{"lion": g, "frozen": [np.ones(5, np.float32)]} for g in grads]
    labels = {"lion": ["lion"] * len(SHAPES), "frozen": ["frozen"]}
    transforms = {"lion": lion_optax.lion(1e-2, weight_decay=0.1), "frozen": optax.set_to_zero()}
    tx = optax.multi_transform(transforms, labels)
    ours_p, ours_s = run(tx, params, step_grads)
    assert_exact(ours_p["frozen"][0], params["frozen"][0], what="frozen param")
    _compare(ours_p["lion"], ours_s, ref_p, ref_m, params["lion"], grads, 1e-2)

    masked = optax.masked(lion_optax.lion(1e-2, weight_decay=0.1), {"lion": True, "frozen": False})
    frozen = optax.masked(optax.set_to_zero(), {"lion": False, "frozen": True})
    ours_p, ours_s = run(optax.chain(masked, frozen), params, step_grads)
    assert_exact(ours_p["frozen"][0], params["frozen"][0], what="frozen param")
    _compare(ours_p["lion"], ours_s, ref_p, ref_m, params["lion"], grads, 1e-2)


def test_jit_does_not_retrace_and_momentum_dtype_is_fixed():
    # bfloat16 parameters with float32 gradients: optax.lion's momentum turns from bfloat16 into
    # float32 after the first update, which retraces a jitted step and breaks a lax.scan carry.
    params = {"w": jnp.ones((8, 4), jnp.bfloat16), "b": jnp.zeros(4, jnp.float32)}
    for mu_dtype, expected in ((None, {"w": jnp.bfloat16, "b": jnp.float32}),
                               ("float32", {"w": jnp.float32, "b": jnp.float32}),
                               ("bfloat16", {"w": jnp.bfloat16, "b": jnp.bfloat16})):
        tx = lion_optax.lion(1e-2, mu_dtype=mu_dtype)
        traces = []

        def step(p, s, g, tx=tx, traces=traces):
            traces.append(1)
            updates, s = tx.update(g, s, p)
            return optax.apply_updates(p, updates), s

        jitted = jax.jit(step)
        p, s = params, tx.init(params)
        assert {k: v.dtype for k, v in lion_state(s).mu.items()} == expected
        for t in range(3):
            g = {"w": jnp.full((8, 4), 0.5 - t, jnp.float32), "b": jnp.full(4, t - 0.5, jnp.bfloat16)}
            p, s = jitted(p, s, g)
            assert {k: v.dtype for k, v in lion_state(s).mu.items()} == expected
            assert p["w"].dtype == jnp.bfloat16 and p["b"].dtype == jnp.float32
        assert len(traces) == 1, f"the step was traced {len(traces)} times"
        ref = reference_lion([np.asarray(params["w"], np.float32)],
                             [[np.full((8, 4), 0.5 - t)] for t in range(3)], lr=1e-2, weight_decay=1e-3)
        # Three steps, each rounding the bfloat16 parameter once (half an ulp: 2**-9 relative).
        assert_close(p["w"], ref.params[0], rtol=3 * 2.0**-9, atol=0, what="bfloat16 param")


def test_lax_scan_over_steps():
    params = random_params(SHAPES)
    grads, ref_p, ref_m = reference_run(params, STEPS, lr=1e-2, weight_decay=0.1)
    tx = lion_optax.lion(1e-2, weight_decay=0.1)
    stacked = [jnp.asarray(np.stack([g[i] for g in grads])) for i in range(len(params))]

    @jax.jit
    def train(p, s, gs):
        def body(carry, g):
            p, s = carry
            updates, s = tx.update(g, s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(body, (p, s), gs)[0]

    p0 = [jnp.asarray(x) for x in params]
    scan_p, scan_s = train(p0, tx.init(p0), stacked)
    # Not bit-identical to a Python loop of jitted steps: inside the loop body XLA may contract a
    # different multiply-add (seen on 0-d arrays). Both are within float32 accuracy of the reference.
    assert int(lion_state(scan_s).count) == STEPS
    _compare(scan_p, scan_s, ref_p, ref_m, params, grads, 1e-2)


def test_vmap_over_independent_problems():
    batch = 3
    runs = [reference_run(random_params(((6,), (2, 3)), seed=s), STEPS, lr=1e-2, weight_decay=0.1, seed=s)
            for s in range(batch)]
    params = [random_params(((6,), (2, 3)), seed=s) for s in range(batch)]
    tx = lion_optax.lion(1e-2, weight_decay=0.1, cautious=True)
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)
    p = stack(params)
    s = jax.vmap(tx.init)(p)
    def one(p, s, g):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    step = jax.jit(jax.vmap(one))
    for t in range(STEPS):
        p, s = step(p, s, stack([r[0][t] for r in runs]))
    for b in range(batch):
        grads_b = runs[b][0]
        # Cautious masking normalises per array: under vmap, per problem, as if each ran alone.
        ref = reference_lion(params[b], grads_b, lr=1e-2, weight_decay=0.1, cautious=True)
        atol = f32_param_atol(params[b], STEPS, 1e-2)
        for i in range(2):
            assert_close(p[i][b], ref.params[i], rtol=0, atol=atol, what=f"problem {b} param {i}")


def test_flax_nnx_optimizer_trains_a_small_model():
    nnx = pytest.importorskip("flax.nnx")

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(3, 16, rngs=rngs)
            self.out = nnx.Linear(16, 1, rngs=rngs)

        def __call__(self, x):
            return self.out(jax.nn.tanh(self.hidden(x)))

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 3)), jnp.float32)
    y = jnp.sin(x.sum(axis=1, keepdims=True))
    model = MLP(nnx.Rngs(0))
    params0 = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))]
    optimizer = nnx.Optimizer(model, lion_optax.lion(3e-3, weight_decay=0.1), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss, grads

    losses, grads_seen = [], []
    for _ in range(150):
        loss, grads = train_step(model, optimizer)
        losses.append(float(loss))
        grads_seen.append([np.asarray(g) for g in jax.tree.leaves(grads)])
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
    # The parameters are the reference's, run on the gradients the model produced.
    ref = reference_lion(params0, grads_seen, lr=3e-3, weight_decay=0.1)
    final = jax.tree.leaves(nnx.state(model, nnx.Param))
    for i, (a, e) in enumerate(zip(final, ref.params)):
        atol = f32_param_atol(params0, 150, 3e-3)
        assert_within_budget(a, e, atol=atol, max_fraction=0.02, what=f"param {i}")

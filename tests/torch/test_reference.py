"""Every implementation path of lion_torch against lion_core's float64 reference.

1. float64: parameters bit-identical over 8 steps (with a zero-size and a 0-d parameter and a step
   where one gradient is None), momentum within each path's budget (``helpers.assert_momentum``);
2. margin: gradients keep |c| far from 0, so float32 and bfloat16 agree elementwise per step;
3. a 200-step trajectory in float32 and bfloat16 with a mismatch budget, saved and reloaded midway;
4. edge cases: NaN and inf gradients, sizes 1/1023/4097, non-contiguous, mixed dtypes, complex.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import lion_torch._functional as functional
from lion_core.reference import reference_lion, reference_step
from lion_torch import Lion
from tests.support import assert_close, assert_exact, assert_within_budget, margin_gradient

from .helpers import FLAGS, PATHS, assert_momentum, momenta, reference_stored, run, tensor

SHAPES = [(5, 3), (0,), (), (7,), (2, 0, 3), (33,)]

# lion_core.reference takes the cautious mean of a zero-size array with NumPy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
SKIPPED = (3, 3)  # (step, parameter): that parameter has no gradient at that step

CONFIGS = {
    "plain": {"lr": 0.01},
    "weight_decay": {"lr": 0.01, "weight_decay": 0.3},
    "cautious": {"lr": 0.01, "weight_decay": 0.1, "cautious": True},
    "decouple_lr": {"lr": 0.01, "weight_decay": 0.5, "decouple_lr": True},
    "max_lr": {"lr": 0.01, "weight_decay": 0.5, "decouple_lr": True, "max_lr": 0.04},
    "maximize": {"lr": 0.01, "weight_decay": 0.1, "maximize": True},
    "betas": {"lr": 0.02, "betas": (0.5, 0.9), "weight_decay": 0.2, "cautious": True, "maximize": True},
}


def _problem(seed: int, shapes=SHAPES, steps: int = 8):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in shapes]
    grads = [
        [None if (t, i) == SKIPPED else rng.standard_normal(s) for i, s in enumerate(shapes)]
        for t in range(steps)
    ]
    return init, grads


def _reference_options(options: dict) -> dict:
    """Our constructor options as reference_lion arguments (max_lr defaults to the group's lr)."""
    ref = {k: v for k, v in options.items() if k not in ("betas", "decouple_lr")}
    if "betas" in options:
        ref["beta1"], ref["beta2"] = options["betas"]
    if options.get("decouple_lr"):
        ref["max_lr"] = options.get("max_lr", options["lr"])
    return ref


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("path", PATHS)
def test_float64_exact(path, config):
    options = CONFIGS[config]
    init, grads = _problem(seed=len(config))
    params, opt = run(path, init, grads, **options)
    ref = reference_lion(init, grads, **_reference_options(options))
    beta2 = options.get("betas", (0.9, 0.99))[1]
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_momentum(path, m, ref.momentum[i], grads=grads, index=i, beta2=beta2, what=f"momentum {i}")


@pytest.mark.parametrize("path", PATHS)
def test_float64_groups_and_changing_lr(path):
    """Per-group hyperparameters, and an lr changed between steps as a scheduler would."""
    init, grads = _problem(seed=7)
    params = [tensor(x, torch.float64, True) for x in init]
    groups = [
        {"params": params[:2], "lr": 0.03, "weight_decay": 0.2},
        {"params": params[2:4], "betas": (0.8, 0.95), "cautious": True},
        {"params": params[4:], "lr": 0.05, "weight_decay": 0.5, "decouple_lr": True, "maximize": True},
    ]
    opt = Lion(groups, lr=0.01, **FLAGS[path])
    lrs = [0.03, 0.01, 0.05]
    for t, step_grads in enumerate(grads):
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else tensor(g, torch.float64)
        for group, base in zip(opt.param_groups, lrs):
            group["lr"] = base * (1 + t) / 8
        opt.step()
    refs = [
        reference_lion(init[:2], [g[:2] for g in grads], lr=lambda t: 0.03 * (1 + t) / 8, weight_decay=0.2),
        reference_lion(init[2:4], [g[2:4] for g in grads], lr=lambda t: 0.01 * (1 + t) / 8, beta1=0.8,
                       beta2=0.95, cautious=True),
        reference_lion(init[4:], [g[4:] for g in grads], lr=lambda t: 0.05 * (1 + t) / 8, weight_decay=0.5,
                       max_lr=0.05, maximize=True)  # max_lr: the group's lr when added,
    ]
    expected_params = [x for r in refs for x in r.params]
    expected_momenta = [x for r in refs for x in r.momentum]
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert_exact(p, expected_params[i], what=f"param {i}")
        beta2 = 0.95 if i in (2, 3) else 0.99
        assert_momentum(path, m, expected_momenta[i], grads=grads, index=i, beta2=beta2, what=f"momentum {i}")


# Per-step elementwise tolerances: one rounding of the stored result, and float32 arithmetic.
MARGIN_TOLERANCE = {
    torch.float32: {"rtol": 2**-22, "atol": 2**-30},
    torch.bfloat16: {"rtol": 2**-8, "atol": 2**-30},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_margin_low_precision(path, dtype):
    """With |c| >= 0.05 every path must agree on every sign: each step is checked elementwise
    against the float64 reference step taken from our own state."""
    rng = np.random.default_rng(3)
    shapes = [(64, 33), (1,), (), (1023,)]
    params = [tensor(rng.standard_normal(s), dtype, True) for s in shapes]
    opt = Lion(params, lr=0.01, weight_decay=0.1, **FLAGS[path])
    for step in range(6):
        before = [(p.detach().double().numpy().copy(), None if p not in opt.state else
                   opt.state[p]["exp_avg"].double().numpy().copy()) for p in params]
        for p, (_, m) in zip(params, before):
            m = np.zeros(p.shape) if m is None else m
            p.grad = tensor(margin_gradient(rng, m, beta1=0.9), dtype)
        opt.step()
        for i, (p, (p0, m0)) in enumerate(zip(params, before)):
            m0 = np.zeros(p.shape) if m0 is None else m0
            g = p.grad.double().numpy()
            expected_p, expected_m = reference_step(p0, g, m0, lr=0.01, weight_decay=0.1)
            assert opt.state[p]["exp_avg"].dtype == torch.float32  # the policy for bf16 and fp32
            assert_close(p, expected_p, **MARGIN_TOLERANCE[dtype], what=f"step {step} param {i}")
            # float32 rounds beta2 * m, (1 - beta2) * g and their sum: the error scales with the
            # terms, not with the (possibly cancelled) result.
            terms = np.abs(0.99 * m0).max() + np.abs(0.01 * g).max()
            assert_close(opt.state[p]["exp_avg"], expected_m, rtol=2**-22, atol=2**-22 * terms,
                         what=f"step {step} momentum {i}")


# Trajectory budget: a sign that flips where c is within rounding of 0 (the foreach path rounds c
# and the momentum differently) moves an element by 2 lr, and it rounds differently afterwards. At
# most 0.5% of the elements may differ from the oracle of the same precision; measured: none, on
# every path, for both dtypes.
MAX_FLIPPED = 0.005
# float32 against float64: each step rounds p * d and p - lr * u, so after 200 steps an element may
# drift by 200 * 2 * 2**-24 * max|p| (about 5e-5 here) without any sign disagreeing.
FLOAT32_DRIFT = 5e-5
EPS32 = 2.0**-23


def _trajectory_run(path, dtype, init, grads, *, reload_at=None):
    params = [tensor(x, dtype, True) for x in init]
    opt = Lion(params, lr=1e-3, weight_decay=0.1, **FLAGS[path])
    for t, step_grads in enumerate(grads):
        if t == reload_at:
            buffer = io.BytesIO()
            torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
            params = [p.clone().requires_grad_(True) for p in saved["params"]]
            opt = Lion(params, lr=1e-3, weight_decay=0.1, **FLAGS[path])
            opt.load_state_dict(saved["opt"])
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, dtype)
        opt.step()
    return params, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_trajectory_200_steps_with_reload(path, dtype):
    rng = np.random.default_rng(11)
    shapes = [(40, 25), (301,)]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(200)]
    stored_init = [tensor(x, dtype).double().numpy() for x in init]
    stored_grads = [[tensor(g, dtype).double().numpy() for g in step] for step in grads]
    params, opt = _trajectory_run(path, dtype, init, grads, reload_at=100)
    straight, straight_opt = _trajectory_run(path, dtype, init, grads)
    # The save and reload changes nothing, bit for bit.
    for p, q in zip(params, straight):
        assert_exact(p, q, what="reloaded run vs uninterrupted run")
    for m, n in zip(momenta(opt, params), momenta(straight_opt, straight)):
        assert m.dtype == torch.float32
        assert_exact(m, n, what="reloaded momentum vs uninterrupted")

    # The oracle in the same precision: float32 arithmetic, and bfloat16 storage after each step.
    same_precision = reference_stored(init, stored_grads, param_dtypes=[dtype] * 2,
                                      momentum_dtypes=[torch.float32] * 2, lr=1e-3, weight_decay=0.1)
    gmax = max(np.abs(g).max() for step in stored_grads for g in step)
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert_within_budget(p, same_precision[0][i], atol=0.0, max_fraction=MAX_FLIPPED, what=f"param {i}")
        expected_m = same_precision[1][i]
        if path == "foreach":  # one fused multiply-add per step; measured 1.4 eps * max|m|
            atol = 4 * EPS32 * (np.abs(expected_m).max() + 0.01 * gmax)
            assert_close(m, expected_m, rtol=0.0, atol=atol, what=f"momentum {i}")
        else:
            assert_exact(m, expected_m, what=f"momentum {i}")
    if dtype == torch.float32:
        exact = reference_lion(stored_init, stored_grads, lr=1e-3, weight_decay=0.1)
        for i, p in enumerate(params):
            assert_within_budget(p, exact.params[i], atol=FLOAT32_DRIFT, max_fraction=MAX_FLIPPED,
                                 what=f"param {i} vs float64")


NONFINITE = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


@pytest.mark.parametrize("cautious", [False, True])
@pytest.mark.parametrize("kind", sorted(NONFINITE))
@pytest.mark.parametrize("path", PATHS)
def test_nonfinite_gradient_makes_parameter_nan(path, kind, cautious):
    rng = np.random.default_rng(5)
    init = [rng.standard_normal((4, 5)), rng.standard_normal(9)]
    first = [rng.standard_normal((4, 5)), rng.standard_normal(9)]
    first[0][1, 2] = NONFINITE[kind]
    second = [rng.standard_normal((4, 5)), rng.standard_normal(9)]
    params, opt = run(path, init, [first], lr=0.01, weight_decay=0.1, cautious=cautious)
    ref = reference_lion(init, [first], lr=0.01, weight_decay=0.1, cautious=cautious)
    assert torch.isnan(params[0][1, 2])
    for i, p in enumerate(params):
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_exact(opt.state[p]["exp_avg"], ref.momentum[i], what=f"momentum {i}")
    # It stays NaN: the momentum carries the non-finite value into the next interpolation.
    for p, g in zip(params, second):
        p.grad = tensor(g, torch.float64)
    opt.step()
    assert torch.isnan(params[0][1, 2])


@pytest.mark.parametrize("path", PATHS)
def test_odd_sizes_and_zero_dim(path):
    init, grads = _problem(seed=9, shapes=[(), (1,), (1023,), (4097,), (3, 1, 5)], steps=7)
    params, opt = run(path, init, grads, lr=0.02, weight_decay=0.2, cautious=True)
    ref = reference_lion(init, grads, lr=0.02, weight_decay=0.2, cautious=True)
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert p.shape == np.shape(init[i])
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_momentum(path, m, ref.momentum[i], grads=grads, index=i, what=f"momentum {i}")


def test_foreach_cpu_batches_cover_every_element(monkeypatch):
    """The CPU foreach path slices large tensors into cache-sized batches; with tiny batches, slices
    cross tensor boundaries everywhere, and the result must not change."""
    monkeypatch.setattr(functional, "CPU_BATCH_ELEMENTS", 100)
    init, grads = _problem(seed=4, shapes=[(1023,), (), (0,), (37,), (4097,), (10, 10), (1,)], steps=7)
    params, opt = run("foreach", init, grads, lr=0.02, weight_decay=0.2, maximize=True)
    ref = reference_lion(init, grads, lr=0.02, weight_decay=0.2, maximize=True)
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_momentum("foreach", m, ref.momentum[i], grads=grads, index=i, what=f"momentum {i}")


@pytest.mark.parametrize("path", PATHS)
def test_non_contiguous_parameters(path):
    rng = np.random.default_rng(2)
    bases = [tensor(rng.standard_normal((6, 8)), torch.float64) for _ in range(3)]
    # A transpose, a strided slice and an expanded-then-sliced column: none contiguous.
    views = [bases[0].t(), bases[1][:, ::3], bases[2][1:, 2:5]]
    params = [v.requires_grad_(True) for v in views]
    assert not any(p.is_contiguous() for p in params)
    init = [p.detach().numpy().copy() for p in params]
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(7)]
    opt = Lion(params, lr=0.01, weight_decay=0.1, **FLAGS[path])
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, torch.float64)
        opt.step()
    ref = reference_lion(init, grads, lr=0.01, weight_decay=0.1)
    # A kernel may refuse strided tensors; the fused path then updates them with foreach ops.
    budget = "foreach" if path == "fused" else path
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_momentum(budget, m, ref.momentum[i], grads=grads, index=i, what=f"momentum {i}")


@pytest.mark.parametrize("path", PATHS)
def test_mixed_dtypes_in_one_group(path):
    rng = np.random.default_rng(8)
    dtypes = [torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.float64]
    shapes = [(17,), (4, 9), (300,), (5,), ()]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(7)]
    params = [tensor(x, d, True) for x, d in zip(init, dtypes)]
    opt = Lion(params, lr=0.01, weight_decay=0.1, **FLAGS[path])
    stored = [[tensor(g, d).double().numpy() for g, d in zip(step, dtypes)] for step in grads]
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, p.dtype)
        opt.step()
    momentum_dtypes = [torch.float64, torch.float32, torch.float32, torch.float32, torch.float64]
    assert [opt.state[p]["exp_avg"].dtype for p in params] == momentum_dtypes
    for i in (0, 4):  # float64 parameters: exact, as everywhere
        ref = reference_lion([init[i]], [[g[i]] for g in stored], lr=0.01, weight_decay=0.1)
        assert_exact(params[i], ref.params[0], what=f"param {i}")
    # float32 and below: float32 arithmetic, rounded to the storage dtype after each step.
    expected, _ = reference_stored([init[i] for i in (1, 2, 3)], [[g[i] for i in (1, 2, 3)] for g in stored],
                                   param_dtypes=dtypes[1:4], momentum_dtypes=momentum_dtypes[1:4],
                                   lr=0.01, weight_decay=0.1)
    for i, e in zip((1, 2, 3), expected):
        assert_close(params[i], e, rtol=2**-20, atol=0, what=f"param {i} ({dtypes[i]})")


@pytest.mark.parametrize("path", PATHS)
def test_complex_parameters_are_pairs_of_reals(path):
    rng = np.random.default_rng(6)
    shapes = [(4, 3), (5,)]
    init = [rng.standard_normal(s) + 1j * rng.standard_normal(s) for s in shapes]
    init.append(rng.standard_normal(6))  # a real parameter beside them
    grads = [[rng.standard_normal(x.shape) + 1j * rng.standard_normal(x.shape) if np.iscomplexobj(x)
              else rng.standard_normal(x.shape) for x in init] for _ in range(7)]
    params, opt = run(path, init, grads, lr=0.01, weight_decay=0.1, cautious=True)
    ref = reference_lion(init, grads, lr=0.01, weight_decay=0.1, cautious=True)
    assert params[0].dtype == torch.complex128 and opt.state[params[0]]["exp_avg"].dtype == torch.complex128
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert_exact(p, ref.params[i], what=f"param {i}")
        real_grads = [[None if g[j] is None else np.stack([np.real(g[j]), np.imag(g[j])], -1)
                       for j in range(len(g))] for g in grads]
        actual = torch.view_as_real(m) if m.is_complex() else m
        expected = np.stack([ref.momentum[i].real, ref.momentum[i].imag], -1) if np.iscomplexobj(
            ref.momentum[i]) else ref.momentum[i]
        assert_momentum(path, actual, expected, grads=real_grads, index=i, what=f"momentum {i}")

"""Every implementation path of lion_torch against lion_core's float64 reference, over ``tests.cases``.

1. float64: every row of ``cases.CASES``, parameters bit-identical over ``cases.STEPS`` steps (with
   zero-size, 0-d and odd-sized parameters and a step where one gradient is None), momentum within
   each path's budget (``helpers.assert_momentum``);
2. margin: gradients keep |c| far from 0, so float32 and bfloat16 agree elementwise per step;
3. a 200-step trajectory in float32 and bfloat16 with a mismatch budget, saved and reloaded midway;
4. edge cases: NaN and inf gradients, non-contiguous, mixed dtypes, complex.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import lion_torch._functional as functional
from lion_core.reference import reference_lion, reference_step
from lion_torch import Lion
from tests import cases
from tests.cases import assert_close, assert_exact, assert_within_budget

from .helpers import DTYPES, FLAGS, PATHS, assert_momentum, momenta, options, reference_stored, run, run_case, tensor

# lion_core.reference takes the cautious mean of a zero-size array with NumPy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")


@pytest.mark.parametrize("case", cases.CASES, ids=cases.case_id)
@pytest.mark.parametrize("path", PATHS)
def test_float64_exact(path, case):
    problem = cases.problem(case)
    params, opt = run_case(path, case, problem)
    ref = cases.reference(case, problem)
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert p.shape == np.shape(problem.init[i])
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_momentum(path, m, ref.momentum[i], grads=problem.grads, index=i, beta2=case.beta2,
                        what=f"momentum {i}")


@pytest.mark.parametrize("path", PATHS)
def test_float64_groups_and_changing_lr(path):
    """Per-group hyperparameters, and an lr changed between steps as a scheduler would."""
    problem = cases.problem(cases.by_id(cases.CASES, "plain"), seed=7)
    init, grads = problem.init, problem.grads
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


@pytest.mark.parametrize("case", cases.LOW_PRECISION_CASES, ids=cases.case_id)
@pytest.mark.parametrize("path", PATHS)
def test_margin_low_precision(path, case):
    """With |c| >= 0.05 every path must agree on every sign: each step is checked elementwise
    against the float64 reference step taken from our own state (``cases.BUDGETS[...].margin``)."""
    rng = np.random.default_rng(cases.seed_of(case.id))
    dtype = DTYPES[case.param_dtype]
    params = [tensor(rng.standard_normal(s), dtype, True) for s in cases.SHAPES]
    opt = Lion(params, **options(case, path))
    hyper = dict(lr=case.lr, beta1=case.beta1, beta2=case.beta2, weight_decay=case.weight_decay)
    for step in range(cases.STEPS):
        before = [(p.detach().double().numpy().copy(), None if p not in opt.state else
                   opt.state[p]["exp_avg"].double().numpy().copy()) for p in params]
        for p, (_, m) in zip(params, before):
            m = np.zeros(p.shape) if m is None else m
            p.grad = tensor(cases.margin_gradient(rng, m, beta1=case.beta1), DTYPES[case.gradient_dtype])
        opt.step()
        for i, (p, (p0, m0)) in enumerate(zip(params, before)):
            m0 = np.zeros(p.shape) if m0 is None else m0
            g = p.grad.double().numpy()
            expected_p, expected_m = reference_step(p0, g, m0, **hyper)
            assert opt.state[p]["exp_avg"].dtype == DTYPES[case.momentum_dtype]
            assert_close(p, expected_p, **cases.BUDGETS[case.param_dtype].margin, what=f"step {step} param {i}")
            # float32 rounds beta2 * m, (1 - beta2) * g and their sum: the error scales with the
            # terms, not with the (possibly cancelled) result.
            terms = (np.abs(case.beta2 * m0).max() + np.abs((1 - case.beta2) * g).max()) if g.size else 0.0
            assert_close(opt.state[p]["exp_avg"], expected_m, rtol=2**-22, atol=2**-22 * terms,
                         what=f"step {step} momentum {i}")


EPS32 = 2.0**-23


def _trajectory_run(path, case, problem, *, reload_at=None):
    params = [tensor(x, DTYPES[case.param_dtype], True) for x in problem.init]
    opt = Lion(params, **options(case, path))
    for t, step_grads in enumerate(problem.grads):
        if t == reload_at:
            buffer = io.BytesIO()
            torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
            params = [p.clone().requires_grad_(True) for p in saved["params"]]
            opt = Lion(params, **options(case, path))
            opt.load_state_dict(saved["opt"])
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, DTYPES[case.gradient_dtype])
        opt.step()
    return params, opt


@pytest.mark.parametrize("case", cases.LOW_PRECISION_CASES, ids=cases.case_id)
@pytest.mark.parametrize("path", PATHS)
def test_trajectory_200_steps_with_reload(path, case):
    problem = cases.problem(case, shapes=cases.TRAJECTORY_SHAPES, steps=cases.TRAJECTORY_STEPS, missing=None,
                            seed=11)
    budget = cases.BUDGETS[case.param_dtype]
    params, opt = _trajectory_run(path, case, problem, reload_at=cases.RELOAD_AT)
    straight, straight_opt = _trajectory_run(path, case, problem)
    # The save and reload changes nothing, bit for bit.
    for p, q in zip(params, straight):
        assert_exact(p, q, what="reloaded run vs uninterrupted run")
    for m, n in zip(momenta(opt, params), momenta(straight_opt, straight)):
        assert m.dtype == DTYPES[case.momentum_dtype]
        assert_exact(m, n, what="reloaded momentum vs uninterrupted")

    # The oracle in the same precision: float32 arithmetic, and storage rounding after each step.
    same_precision = cases.reference(case, problem)
    gmax = max(np.abs(g).max() for step in problem.grads for g in step)
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert_within_budget(p, same_precision.params[i], atol=0.0, max_fraction=budget.max_flipped,
                             what=f"param {i}")
        expected_m = same_precision.momentum[i]
        if path == "foreach":  # one fused multiply-add per step; measured 1.4 eps * max|m|
            atol = 4 * EPS32 * (np.abs(expected_m).max() + (1 - case.beta2) * gmax)
            assert_close(m, expected_m, rtol=0.0, atol=atol, what=f"momentum {i}")
        else:
            assert_exact(m, expected_m, what=f"momentum {i}")
    if budget.drift is not None:
        exact = cases.reference_float64(case, problem)
        for i, p in enumerate(params):
            assert_within_budget(p, exact.params[i], atol=budget.drift, max_fraction=budget.max_flipped,
                                 what=f"param {i} vs float64")


@pytest.mark.parametrize("case", [cases.by_id(cases.CASES, name) for name in ("weight_decay", "cautious")],
                         ids=cases.case_id)
@pytest.mark.parametrize("kind", sorted(cases.NONFINITE))
@pytest.mark.parametrize("path", PATHS)
def test_nonfinite_gradient_makes_parameter_nan(path, kind, case):
    problem = cases.problem(case, shapes=cases.NONFINITE_SHAPES, steps=2, missing=None, seed=5)
    first, second = problem.grads
    first[0][cases.NONFINITE_AT] = cases.NONFINITE[kind]
    one_step = cases.Problem(problem.init, [first])
    params, opt = run_case(path, case, one_step)
    ref = cases.reference(case, one_step)
    assert torch.isnan(params[0][cases.NONFINITE_AT])
    for i, p in enumerate(params):
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_exact(opt.state[p]["exp_avg"], ref.momentum[i], what=f"momentum {i}")
    # It stays NaN: the momentum carries the non-finite value into the next interpolation.
    for p, g in zip(params, second):
        p.grad = tensor(g, torch.float64)
    opt.step()
    assert torch.isnan(params[0][cases.NONFINITE_AT])


def test_foreach_cpu_batches_cover_every_element(monkeypatch):
    """The CPU foreach path slices large tensors into cache-sized batches; with tiny batches, slices
    cross tensor boundaries everywhere, and the result must not change."""
    monkeypatch.setattr(functional, "CPU_BATCH_ELEMENTS", 100)
    case = cases.by_id(cases.CASES, "everything")
    problem = cases.problem(case, shapes=[(1023,), (), (0,), (37,), (4097,), (10, 10), (1,)], seed=4)
    params, opt = run_case("foreach", case, problem)
    ref = cases.reference(case, problem)
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_momentum("foreach", m, ref.momentum[i], grads=problem.grads, index=i, beta2=case.beta2,
                        what=f"momentum {i}")


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

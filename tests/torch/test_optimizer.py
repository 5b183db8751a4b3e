"""lion_torch.Lion as a torch.optim.Optimizer: groups, closures, schedulers, compile, AMP, policies."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import lion_core
import lion_pytorch
from lion_core.reference import reference_lion
from lion_torch import Lion
from tests.support import assert_close, assert_exact

from .helpers import FLAGS, PATHS, assert_momentum, momenta, reference_stored, tensor


def _params(rng, shapes, dtype=torch.float64):
    init = [rng.standard_normal(s) for s in shapes]
    return init, [tensor(x, dtype, True) for x in init]


def test_defaults_are_lion_cores_and_lion_pytorchs():
    ours = inspect.signature(Lion).parameters
    theirs = inspect.signature(lion_pytorch.Lion).parameters
    torch_defaults = lion_core.defaults.TORCH
    assert ours["lr"].default == torch_defaults.lr == theirs["lr"].default
    assert ours["betas"].default == (torch_defaults.beta1, torch_defaults.beta2) == theirs["betas"].default
    assert ours["weight_decay"].default == torch_defaults.weight_decay == theirs["weight_decay"].default
    opt = Lion([torch.zeros(2, requires_grad=True)])
    group = opt.param_groups[0]
    variants = (group["cautious"], group["decouple_lr"], group["max_lr"], group["maximize"])
    assert variants == (False, False, None, False)
    assert (group["momentum_dtype"], group["foreach"], group["fused"]) == (None, None, None)


@pytest.mark.parametrize("path", PATHS)
def test_closure_gradients_are_used_and_loss_returned(path):
    rng = np.random.default_rng(0)
    init, params = _params(rng, [(3, 4)])
    x = tensor(rng.standard_normal((5, 3)), torch.float64)
    opt = Lion(params, lr=0.1, **FLAGS[path])
    seen = []

    def closure():
        opt.zero_grad()
        loss = (x @ params[0]).pow(2).sum()
        loss.backward()
        seen.append(params[0].grad.detach().numpy().copy())
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    ref = reference_lion(init, [[seen[0]]], lr=0.1)
    assert_exact(params[0], ref.params[0])


@pytest.mark.parametrize("path", PATHS)
def test_zero_grad_then_step_changes_nothing(path):
    rng = np.random.default_rng(1)
    _, params = _params(rng, [(4,), (2, 2)])
    opt = Lion(params, lr=0.1, weight_decay=0.5, **FLAGS[path])
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    after_one = [p.detach().clone() for p in params]
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    opt.step()
    for p, q in zip(params, after_one):
        assert_exact(p, q)


@pytest.mark.parametrize("path", PATHS)
def test_parameter_without_gradient_is_skipped_and_gets_no_state(path):
    rng = np.random.default_rng(2)
    _, params = _params(rng, [(4,), (3,)])
    before = params[1].detach().clone()
    opt = Lion(params, lr=0.1, weight_decay=0.5, **FLAGS[path])
    params[0].grad = torch.ones(4, dtype=torch.float64)
    opt.step()
    assert params[1] not in opt.state
    assert_exact(params[1], before)
    assert sorted(opt.state[params[0]]) == ["exp_avg"]


@pytest.mark.parametrize("options", [{}, {"maximize": True, "weight_decay": 0.1}, {"cautious": True}],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_step_never_writes_to_grad(path, dtype, options):
    rng = np.random.default_rng(3)
    _, params = _params(rng, [(6, 5), (), (700,)], dtype)
    opt = Lion(params, lr=0.1, **options, **FLAGS[path])
    for _ in range(2):
        for p in params:
            p.grad = tensor(rng.standard_normal(p.shape), dtype)
        grads = [p.grad.clone() for p in params]
        opt.step()
        for p, g in zip(params, grads):
            assert_exact(p.grad, g, what="p.grad after step()")


def _schedule_cases():
    return {
        "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=1e-3),
        "lambda": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t)),
        "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=8),
    }


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("schedule", sorted(_schedule_cases()))
@pytest.mark.parametrize("path", PATHS)
def test_lr_schedulers(path, schedule, tensor_lr):
    """The lr each step used is the scheduler's; decay uses it too (weight_decay * lr)."""
    rng = np.random.default_rng(4)
    init, params = _params(rng, [(4, 3), (9,)])
    lr = torch.tensor(0.02, dtype=torch.float64) if tensor_lr else 0.02
    opt = Lion(params, lr=lr, weight_decay=0.3, **FLAGS[path])
    scheduler = _schedule_cases()[schedule](opt)
    grads, lrs, beta1s = [], [], []
    for _ in range(7):
        step_grads = [rng.standard_normal(p.shape) for p in params]
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, torch.float64)
        grads.append(step_grads)
        lrs.append(float(opt.param_groups[0]["lr"]))
        beta1s.append(opt.param_groups[0]["betas"][0])  # OneCycleLR cycles betas[0] as a momentum
        opt.step()
        scheduler.step()
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) == tensor_lr
    assert len(set(lrs)) > 3  # the schedule really moved
    ref = reference_lion(init, grads, lr=lrs, beta1=beta1s, weight_decay=0.3)
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_momentum(path, m, ref.momentum[i], grads=grads, index=i)


@pytest.mark.parametrize("path", PATHS)
def test_max_lr_defaults_to_each_groups_own_lr(path):
    """Fully decoupled decay divides by the group's peak lr, never by the constructor's lr (the
    lion-pytorch bug): with two groups of lrs 0.01 and 0.1, each decays by wd * lr_t / its own lr."""
    rng = np.random.default_rng(5)
    init, params = _params(rng, [(5,), (6,)])
    opt = Lion([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.1}], lr=0.01, weight_decay=0.5,
               decouple_lr=True, **FLAGS[path])
    assert [g["max_lr"] for g in opt.param_groups] == [0.01, 0.1]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)
    grads, lrs = [], []
    for _ in range(6):
        step_grads = [rng.standard_normal(p.shape) for p in params]
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, torch.float64)
        grads.append(step_grads)
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    assert [g["max_lr"] for g in opt.param_groups] == [0.01, 0.1]  # the scheduler left it alone
    for i, max_lr in enumerate([0.01, 0.1]):
        ref = reference_lion([init[i]], [[g[i]] for g in grads], lr=[lr[i] for lr in lrs], weight_decay=0.5,
                             max_lr=max_lr)
        assert_exact(params[i], ref.params[0], what=f"group {i}")


def test_onecycle_sets_the_peak_as_max_lr():
    """OneCycleLR writes its peak into each group's ``max_lr``: the meaning decouple_lr gives it."""
    params = [torch.zeros(3, requires_grad=True)]
    opt = Lion(params, lr=0.01, weight_decay=0.1, decouple_lr=True)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10)
    assert opt.param_groups[0]["max_lr"] == 0.5


@pytest.mark.parametrize("path", ["single", "foreach"])
def test_compile_step_fullgraph_without_recompiling(path):
    """``torch.compile(opt.step, fullgraph=True)`` traces the whole step in one graph (it raises on
    any graph break), and a tensor lr updated in place (as schedulers update one) does not recompile.

    (An LR scheduler wraps ``opt.step`` in a function Dynamo refuses to trace; torch's recipe is to
    compile a function that calls ``opt.step()`` without ``fullgraph``.)"""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    rng = np.random.default_rng(6)
    init, params = _params(rng, [(4, 3), (5,), ()])
    opt = Lion(params, lr=torch.tensor(0.02, dtype=torch.float64), weight_decay=0.1, cautious=True,
               **FLAGS[path])
    counter = CompileCounter()
    step = torch.compile(opt.step, backend=counter, fullgraph=True)
    grads, lrs = [], []
    for _ in range(4):
        step_grads = [rng.standard_normal(p.shape) for p in params]
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, torch.float64)
        grads.append(step_grads)
        lrs.append(float(opt.param_groups[0]["lr"]))
        step()
        opt.param_groups[0]["lr"].mul_(0.9)
    assert counter.frame_count == 1
    ref = reference_lion(init, grads, lr=lrs, weight_decay=0.1, cautious=True)
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_momentum(path, m, ref.momentum[i], grads=grads, index=i)
    torch._dynamo.reset()


def test_compile_inductor_surfaces_nan():
    """Inductor generates its own loops: it must keep the NaN rule and the reference's numbers."""
    torch._dynamo.reset()
    rng = np.random.default_rng(7)
    init, params = _params(rng, [(3, 5)])
    opt = Lion(params, lr=0.01, weight_decay=0.1)
    step = torch.compile(opt.step, fullgraph=True)
    grads = [[rng.standard_normal((3, 5))] for _ in range(3)]
    grads[1][0][2, 2] = np.nan
    for g in grads:
        params[0].grad = tensor(g[0], torch.float64)
        step()
    ref = reference_lion(init, grads, lr=0.01, weight_decay=0.1)
    assert torch.isnan(params[0][2, 2])
    assert_exact(params[0], ref.params[0])
    torch._dynamo.reset()


@pytest.mark.parametrize("path", PATHS)
def test_grad_scaler_unscales_without_touching_grads_and_skips_inf_steps(path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    params = list(model.parameters())
    init = [p.detach().double().numpy().copy() for p in params]
    opt = Lion(params, lr=0.01, weight_decay=0.1, **FLAGS[path])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    x, y = torch.randn(16, 6), torch.randn(16, 3)

    def backward():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()

    backward()
    scaled = [p.grad.clone() for p in params]
    scaler.step(opt)
    scaler.update()
    for p, g in zip(params, scaled):
        assert_exact(p.grad, g, what="the scaled gradient, untouched")
    unscaled = [[g.double().numpy() / 2.0**12 for g in scaled]]  # a power of two: exact
    ref = reference_lion(init, unscaled, lr=0.01, weight_decay=0.1, dtype=np.float32)
    for i, p in enumerate(params):
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_exact(opt.state[p]["exp_avg"], ref.momentum[i], what=f"momentum {i}")

    backward()
    params[0].grad[0, 0] = float("inf")
    before = [(p.detach().clone(), opt.state[p]["exp_avg"].clone()) for p in params]
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**11
    for p, (p0, m0) in zip(params, before):
        assert_exact(p, p0, what="param after a skipped step")
        assert_exact(opt.state[p]["exp_avg"], m0, what="momentum after a skipped step")


@pytest.mark.parametrize("path", PATHS)
def test_sparse_gradient_is_refused_naming_the_parameter(path):
    dense = torch.zeros(3, requires_grad=True)
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    opt = Lion([{"params": [dense]}, {"params": [torch.zeros(2, requires_grad=True), embedding.weight]}],
               **FLAGS[path])
    embedding(torch.tensor([1, 2])).sum().backward()
    dense.grad = torch.ones(3)
    before = embedding.weight.detach().clone()
    expected = (
        "Invalid `param_groups[1]['params'][1].grad.layout`: expected torch.strided (Lion does not support "
        "sparse gradients). Received: param_groups[1]['params'][1].grad.layout=torch.sparse_coo"
    )
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace(".", r"\.")):
        opt.step()
    assert_exact(embedding.weight, before)


def test_momentum_dtype_policy():
    params = {
        "fp32": torch.zeros(3, requires_grad=True),
        "bf16": torch.zeros(3, dtype=torch.bfloat16, requires_grad=True),
        "fp16": torch.zeros(3, dtype=torch.float16, requires_grad=True),
        "fp64": torch.zeros(3, dtype=torch.float64, requires_grad=True),
        "c64": torch.zeros(3, dtype=torch.complex64, requires_grad=True),
    }
    opt = Lion(list(params.values()))
    low = Lion([torch.zeros(3, requires_grad=True)], momentum_dtype=torch.bfloat16)
    wide = Lion([torch.zeros(3, dtype=dtype, requires_grad=True) for dtype in (torch.bfloat16, torch.float16)],
                momentum_dtype=torch.float32)
    for p in [*params.values(), *low.param_groups[0]["params"], *wide.param_groups[0]["params"]]:
        p.grad = torch.ones_like(p)
    opt.step()
    low.step()
    wide.step()
    got = {name: opt.state[p]["exp_avg"].dtype for name, p in params.items()}
    # The default is the parameter's dtype, as torch.optim's (torch.zeros_like) ...
    assert got == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                   "fp64": torch.float64, "c64": torch.complex64}
    assert low.state[low.param_groups[0]["params"][0]]["exp_avg"].dtype == torch.bfloat16
    # ... and a float32 momentum for low-precision parameters is one keyword away.
    assert [wide.state[p]["exp_avg"].dtype for p in wide.param_groups[0]["params"]] == [torch.float32] * 2


def test_momentum_dtype_for_complex_parameters_is_refused_at_construction():
    with pytest.raises(RuntimeError, match="`momentum_dtype` cannot be set for complex parameters"):
        Lion([torch.zeros(2, dtype=torch.complex64, requires_grad=True)], momentum_dtype=torch.float32)


@pytest.mark.parametrize("path", PATHS)
def test_tensor_betas(path):
    rng = np.random.default_rng(8)
    init, params = _params(rng, [(4, 3), (6,)])
    betas = (torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.95, dtype=torch.float64))
    opt = Lion(params, lr=0.01, betas=betas, weight_decay=0.1, **FLAGS[path])
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(4)]
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, torch.float64)
        opt.step()
    ref = reference_lion(init, grads, lr=0.01, beta1=0.8, beta2=0.95, weight_decay=0.1)
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_momentum(path, m, ref.momentum[i], grads=grads, index=i, beta2=0.95)


def test_compiled_foreach_with_mixed_dtypes_keeps_grads_and_numbers():
    """While compiling, foreach sees one group of mixed dtypes (no grouping by dtype): it must still
    widen each tensor to its own compute dtype and never write to a gradient."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    rng = np.random.default_rng(9)
    dtypes = [torch.float64, torch.bfloat16, torch.float32]
    init = [rng.standard_normal(5) for _ in dtypes]
    params = [tensor(x, d, True) for x, d in zip(init, dtypes)]
    opt = Lion(params, lr=0.01, weight_decay=0.1, maximize=True, foreach=True)
    counter = CompileCounter()
    step = torch.compile(opt.step, backend=counter, fullgraph=True)
    grads = [[rng.standard_normal(5) for _ in dtypes] for _ in range(3)]
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, p.dtype)
        kept = [p.grad.clone() for p in params]
        step()
        for p, g in zip(params, kept):
            assert_exact(p.grad, g, what="p.grad after a compiled step")
    assert counter.frame_count == 1
    stored = [[tensor(g, d).double().numpy() for g, d in zip(step_grads, dtypes)] for step_grads in grads]
    ref = reference_lion([init[0]], [[g[0]] for g in stored], lr=0.01, weight_decay=0.1, maximize=True)
    assert_exact(params[0], ref.params[0], what="float64 param")
    # Each momentum in its parameter's dtype (the default): bfloat16 next to float32 and float64.
    low, _ = reference_stored(init[1:], [g[1:] for g in stored], param_dtypes=dtypes[1:],
                              momentum_dtypes=dtypes[1:], lr=0.01, weight_decay=0.1, maximize=True)
    for p, expected in zip(params[1:], low):
        assert_close(p, expected, rtol=2**-20, atol=0, what=f"{p.dtype} param")
    assert [opt.state[p]["exp_avg"].dtype for p in params] == dtypes
    torch._dynamo.reset()

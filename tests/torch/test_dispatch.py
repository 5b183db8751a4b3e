"""Which implementation runs: the tri-state flags, the default predicate, and the fused routing.

The fused path is tested here against a fake kernel module that honours the kernel contract
(``lion_kernels._contract``: ``unavailable_reason``, ``supports``, ``lion_`` that hands back what it
did not update), so the routing is checked whatever the real kernels can do on this machine; the real
kernels join the path tables of the other test files.
"""

from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest
import torch
from torch.utils._pytree import tree_map

import lion_core
import lion_core._fallback
import lion_torch._functional as functional
from lion_core.reference import reference_lion
from lion_torch import Lion, lion
from tests.support import assert_exact

from .helpers import assert_momentum, momenta, tensor

REASON = "the fake kernel is switched off (switch it on or pass fused=False)"


class FakeKernel(types.ModuleType):
    """A kernel module that updates through lion_core, hands back non-contiguous triples and
    records its calls; it refuses to receive any tensor subclass, as the contract demands."""

    name = "cpu_lion"
    device_type = "cpu"

    def __init__(self, name: str, *, reason: str | None = None) -> None:
        super().__init__(name)
        self.reason = reason
        self.reason_calls = 0
        self.calls: list[list[tuple[int, ...]]] = []
        self.kwargs: list[dict] = []

    def unavailable_reason(self) -> str | None:
        self.reason_calls += 1
        return self.reason

    def supports(self, param, grad, exp_avg) -> bool:
        assert not any(t.is_complex() for t in (param, grad, exp_avg)), "the caller passes real views"
        return all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.is_contiguous()
                   for t in (param, grad, exp_avg))

    def lion_(self, params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay, max_lr, cautious, maximize,
              grad_scale=None, found_inf=None, cautious_reduce=None):
        assert self.reason is None, "lion_ was called although unavailable_reason() is not None"
        received = {type(t) for t in (*params, *grads, *exp_avgs)}
        assert received <= {torch.Tensor, torch.nn.Parameter}, f"a kernel received {received}"
        storages = [p.untyped_storage().data_ptr() for p in params]
        untouched = [i for i, triple in enumerate(zip(params, grads, exp_avgs))
                     if not self.supports(*triple) or storages.count(storages[i]) > 1]  # aliasing
        self.calls.append([tuple(p.shape) for i, p in enumerate(params) if i not in untouched])
        hyper = dict(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, max_lr=max_lr,
                     cautious=cautious, maximize=maximize)
        self.kwargs.append(dict(hyper, grad_scale=grad_scale, found_inf=found_inf,
                                cautious_reduce=cautious_reduce))
        if found_inf is not None and found_inf.item():
            return []
        for i, (p, g, m) in enumerate(zip(params, grads, exp_avgs)):
            if i in untouched:
                continue
            g = g if grad_scale is None else g / grad_scale
            new_p, new_m = lion_core.lion_step(p, g, m, **hyper, xp=torch)
            p.copy_(new_p)
            m.copy_(new_m)
        return untouched


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test starts with no fallback announced yet in this process."""
    monkeypatch.setattr(lion_core._fallback, "_warned", set())


@pytest.fixture
def fake_cpu(monkeypatch):
    kernel = FakeKernel("lion_kernels.cpu_lion")
    monkeypatch.setitem(sys.modules, "lion_kernels.cpu_lion", kernel)
    return kernel


@pytest.fixture
def spies(monkeypatch):
    """Records which private path each ``lion`` call took."""
    taken = []
    for name in ("_single_tensor_lion", "_foreach_lion", "_fused_lion"):
        real = getattr(functional, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            taken.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(functional, name, spy)
    return taken


def _step(**flags):
    p = torch.zeros(3, requires_grad=True)
    opt = Lion([p], lr=0.1, **flags)
    p.grad = torch.ones(3)
    opt.step()
    return p


@pytest.mark.parametrize(
    ("flags", "path"),
    [
        ({}, "_fused_lion"),  # the CPU default when the kernel is available
        ({"foreach": None, "fused": None}, "_fused_lion"),
        ({"foreach": True}, "_foreach_lion"),
        ({"fused": False}, "_foreach_lion"),
        ({"foreach": False}, "_single_tensor_lion"),
        ({"foreach": False, "fused": False}, "_single_tensor_lion"),
        ({"fused": True}, "_fused_lion"),
        ({"fused": True, "foreach": False}, "_fused_lion"),
    ],
    ids=str,
)
def test_flags_pick_the_path(spies, fake_cpu, flags, path):
    _step(**flags)
    assert spies == [path]


def test_fused_and_foreach_together_are_refused_by_the_functional_too():
    p = torch.zeros(2)
    with pytest.raises(RuntimeError, match="`foreach=True` and `fused=True` cannot be combined"):
        lion([p], [p.clone()], [p.clone()], foreach=True, fused=True, lr=0.1, beta1=0.9, beta2=0.99,
             weight_decay=0.0, max_lr=None, cautious=False, maximize=False)


def test_default_predicate():
    available = {"cuda": True, "cpu": True}.get
    assert functional.fused_is_default({"cuda"}, available)
    assert functional.fused_is_default({"cpu"}, available)
    assert functional.fused_is_default({"cuda", "cpu"}, available)
    assert not functional.fused_is_default({"cuda", "cpu"}, {"cuda": True, "cpu": False}.get)
    assert not functional.fused_is_default({"meta"}, lambda device: True)
    assert not functional.fused_is_default({"cuda"}, lambda device: False)
    assert not functional.fused_is_default(set(), available)


def test_cpu_default_falls_back_to_foreach_with_one_warning_naming_the_cause(spies, fake_cpu):
    _step()
    assert spies == ["_fused_lion"]
    fake_cpu.reason = REASON
    with pytest.warns(lion_core.FallbackWarning) as caught:
        _step()
        _step()
    assert spies == ["_fused_lion", "_foreach_lion", "_foreach_lion"]
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "The fused cpu kernel (the default path) cannot run" in message
    assert REASON in message and "Using the foreach path instead" in message


def test_choosing_a_path_only_asks_the_pure_predicate(fake_cpu, monkeypatch):
    """``_choose`` reads ``unavailable_reason`` and nothing else: no build, no load, no kernel call."""
    for attribute in ("lion_", "supports"):
        monkeypatch.setattr(fake_cpu, attribute, None)  # calling either would fail
    params = [torch.zeros(2)]
    assert functional._choose(params, None, None) == (False, True)
    assert fake_cpu.reason_calls == 1
    fake_cpu.reason = REASON
    with pytest.warns(lion_core.FallbackWarning):
        assert functional._choose(params, None, None) == (True, False)


def test_explicit_flags_never_warn(fake_cpu):
    fake_cpu.reason = REASON
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _step(foreach=True)
        _step(foreach=False)
        _step(fused=False)


def test_fused_without_a_runnable_kernel_fails_at_construction_with_the_cause(fake_cpu):
    fake_cpu.reason = REASON
    expected = ("The fused cpu kernel (lion_kernels.cpu_lion) cannot run: " + REASON
                + ". Pass fused=False, or leave fused=None")
    with pytest.raises(ImportError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Lion([torch.zeros(2, requires_grad=True)], fused=True)


def test_functional_fused_without_a_runnable_kernel_raises_too(fake_cpu):
    fake_cpu.reason = REASON
    p = torch.zeros(2)
    with pytest.raises(ImportError, match="cannot run: " + REASON.replace("(", r"\(").replace(")", r"\)")):
        lion([p], [p.clone()], [p.clone()], fused=True, lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0,
             max_lr=None, cautious=False, maximize=False)


def test_fused_on_a_device_without_a_kernel_is_refused():
    expected = ("Invalid `fused`: expected False or None for parameters on 'meta' "
                "(fused kernels exist for cpu, cuda)")
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Lion([torch.zeros(2, device="meta", requires_grad=True)], fused=True)


def test_kernel_available_never_raises(monkeypatch):
    monkeypatch.setitem(functional.KERNEL_MODULES, "cpu", "lion_kernels.no_such_kernel")
    assert functional.kernel_available("cpu") is False
    assert "lion_kernels.no_such_kernel cannot be imported" in functional.unavailable_reason("cpu")
    assert functional.kernel_available("meta") is False


def test_what_the_kernel_hands_back_takes_the_single_tensor_path(fake_cpu, spies):
    """Contiguous real tensors go to the kernel in one call; the kernel hands back the strided one,
    which takes the single-tensor path (with one warning naming it); complex ones reach the kernel
    as real views. The result is the reference's, bit for bit."""
    rng = np.random.default_rng(0)
    base = tensor(rng.standard_normal((4, 6)), torch.float64)
    complex_param = tensor(rng.standard_normal(5) + 1j * rng.standard_normal(5), torch.complex128, True)
    params = [tensor(rng.standard_normal((3, 2)), torch.float64, True), base.t().requires_grad_(True),
              tensor(rng.standard_normal(7), torch.float64, True), complex_param]
    init = [p.detach().numpy().copy() for p in params]
    grads = [[rng.standard_normal(p.shape) + (1j * rng.standard_normal(p.shape) if p.is_complex() else 0)
              for p in params] for _ in range(3)]
    opt = Lion(params, lr=0.01, weight_decay=0.1, fused=True)
    with pytest.warns(lion_core.FallbackWarning) as caught:
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = tensor(g, p.dtype)
            opt.step()
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "1 of 4 tensors (the first: parameter 1 (Tensor, torch.float64, shape (6, 4))" in message
    assert "Using the single-tensor path for them instead" in message
    assert fake_cpu.calls == [[(3, 2), (7,), (5, 2)]] * 3
    assert spies.count("_single_tensor_lion") == 3 and spies.count("_fused_lion") == 3
    ref = reference_lion(init, grads, lr=0.01, weight_decay=0.1)
    for i, p in enumerate(params):
        assert_exact(p, ref.params[i], what=f"param {i}")
        assert_exact(momenta(opt, params)[i], ref.momentum[i], what=f"momentum {i}")


def test_overlapping_parameters_are_deterministic_through_the_single_tensor_path(fake_cpu):
    """One parameter listed twice: the kernel hands both back (the contract's aliasing rule), and the
    single-tensor path updates them one after the other, as the reference does."""
    p = torch.arange(4.0, dtype=torch.float64)
    g = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64)
    m1, m2 = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    with pytest.warns(lion_core.FallbackWarning, match="2 of 2 tensors"):
        lion([p, p], [g, g], [m1, m2], lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0, max_lr=None,
             cautious=False, maximize=False)
    once = reference_lion([np.arange(4.0)], [[g.numpy()]], lr=0.1).params[0]
    twice = reference_lion([once], [[g.numpy()]], lr=0.1).params[0]
    assert_exact(p, twice)
    assert fake_cpu.calls == [[]]


class Wrapper(torch.Tensor):
    """A ``__torch_dispatch__`` wrapper (as quantized or float8 tensors of other libraries are):
    its own storage is empty, so a kernel given its pointer would read garbage or crash."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, device=inner.device,
                                                   requires_grad=inner.requires_grad)

    def __init__(self, inner: torch.Tensor) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"Wrapper({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        unwrap = lambda t: t.inner if isinstance(t, Wrapper) else t  # noqa: E731
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.copy_, torch.ops.aten.mul_, torch.ops.aten.add_,
                                   torch.ops.aten.sub_, torch.ops.aten.lerp_, torch.ops.aten.neg_):
            return args[0]
        return tree_map(lambda t: Wrapper(t) if isinstance(t, torch.Tensor) else t, out)


def test_a_dispatch_wrapper_parameter_takes_foreach_with_a_warning_never_the_kernel(fake_cpu, spies):
    rng = np.random.default_rng(3)
    plain = tensor(rng.standard_normal(5), torch.float64, True)
    wrapped = torch.nn.Parameter(Wrapper(tensor(rng.standard_normal((2, 3)), torch.float64)))
    init = [plain.detach().numpy().copy(), wrapped.inner.numpy().copy()]
    grads = [[rng.standard_normal(5), rng.standard_normal((2, 3))] for _ in range(3)]
    opt = Lion([plain, wrapped], lr=0.01, weight_decay=0.1)
    with pytest.warns(lion_core.FallbackWarning) as caught:
        for g_plain, g_wrapped in grads:
            plain.grad = tensor(g_plain, torch.float64)
            wrapped.grad = Wrapper(tensor(g_wrapped, torch.float64))
            opt.step()
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "The fused kernel for parameters of type Wrapper cannot run" in message
    assert "parameter 1 (Wrapper, torch.float64, shape (2, 3)) is a tensor subclass" in message
    assert "Using the foreach path for them instead" in message
    assert fake_cpu.calls == [[(5,)]] * 3  # the fake asserts it never receives a subclass
    assert spies.count("_foreach_lion") == 3
    ref = reference_lion(init, grads, lr=0.01, weight_decay=0.1)
    assert_exact(plain, ref.params[0], what="plain param")
    assert_exact(wrapped.inner, ref.params[1], what="wrapped param")


def test_fused_passes_the_hyperparameters_and_amp_tensors(fake_cpu):
    p = torch.zeros(4, requires_grad=True)
    opt = Lion([p], lr=0.05, betas=(0.8, 0.9), weight_decay=0.2, cautious=True, decouple_lr=True,
               maximize=True, fused=True)
    opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(0.0)  # as GradScaler sets them
    p.grad = torch.full((4,), 8.0)
    opt.step()
    kwargs = fake_cpu.kwargs[0]
    hyper = {k: v for k, v in kwargs.items() if k not in ("grad_scale", "found_inf")}
    assert hyper == {"lr": 0.05, "beta1": 0.8, "beta2": 0.9, "weight_decay": 0.2, "max_lr": 0.05,
                     "cautious": True, "maximize": True, "cautious_reduce": None}
    assert kwargs["grad_scale"].item() == 4.0 and kwargs["found_inf"].item() == 0.0
    assert_exact(p.grad, torch.full((4,), 8.0))


def test_a_kernel_error_at_step_takes_foreach_for_the_batch_with_one_warning(fake_cpu, spies):
    """A kernel that fails at its call (a binary that does not load, say) has written nothing, by the
    contract: the step completes on the foreach path, with one warning naming the kernel's error."""
    from lion_kernels import KernelError

    def failing_lion_(*args, **kwargs):
        raise KernelError("the binary /x/_cpu_lion.so does not load (truncated); reinstall lionkit")

    fake_cpu.lion_ = failing_lion_
    rng = np.random.default_rng(3)
    params = [tensor(rng.standard_normal(s), torch.float64, True) for s in ((4, 3), (5,))]
    init = [p.detach().numpy().copy() for p in params]
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(2)]
    opt = Lion(params, lr=0.01, weight_decay=0.1)
    with pytest.warns(lion_core.FallbackWarning) as caught:
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = tensor(g, p.dtype)
            opt.step()
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "does not load (truncated); reinstall lionkit" in message
    assert "Using the foreach path instead" in message
    assert spies == ["_fused_lion", "_foreach_lion"] * 2
    ref = reference_lion(init, grads, lr=0.01, weight_decay=0.1)
    for i, p in enumerate(params):
        assert_exact(p, ref.params[i], what=f"param {i}")

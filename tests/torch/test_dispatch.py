"""Which implementation runs: the tri-state flags, the default predicate, and the fused routing.

The fused path is tested here against a fake kernel module that honours the kernels' contract
(``available``, ``require``, ``supports``, ``supports_all``, ``lion_``), so the routing is checked whatever the real
kernels can do on this machine; the real kernels join the path tables of the other test files.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

import lion_core
import lion_torch._functional as functional
from lion_core.reference import reference_lion
from lion_torch import Lion, lion
from tests.support import assert_exact

from .helpers import assert_momentum, momenta, tensor

REMEDY = "install the fake kernel or pass fused=False"


class FakeKernel(types.ModuleType):
    """A kernel module that updates through lion_core, refuses non-contiguous tensors and records calls."""

    def __init__(self, name: str, *, runs: bool = True) -> None:
        super().__init__(name)
        self.runs = runs
        self.calls: list[list[tuple[int, ...]]] = []
        self.kwargs: list[dict] = []

    def available(self) -> bool:
        return self.runs

    def require(self) -> None:
        if not self.runs:
            raise ImportError(f"{self.__name__} cannot run here: {REMEDY}")

    def supports(self, param, grad, exp_avg) -> bool:
        assert not any(t.is_complex() for t in (param, grad, exp_avg)), "the caller passes real views"
        return all(t.is_contiguous() for t in (param, grad, exp_avg))

    def supports_all(self, params, grads, exp_avgs) -> bool:
        return all(map(self.supports, params, grads, exp_avgs))

    def lion_(self, params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay, max_lr, cautious, maximize,
              grad_scale=None, found_inf=None):
        self.calls.append([tuple(p.shape) for p in params])
        hyper = dict(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, max_lr=max_lr,
                     cautious=cautious, maximize=maximize)
        self.kwargs.append(dict(hyper, grad_scale=grad_scale, found_inf=found_inf))
        if found_inf is not None and found_inf.item():
            return
        for p, g, m in zip(params, grads, exp_avgs):
            g = g if grad_scale is None else g / grad_scale
            new_p, new_m = lion_core.lion_step(p, g, m, **hyper, xp=torch)
            p.copy_(new_p)
            m.copy_(new_m)


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


def test_cpu_default_falls_back_to_foreach_without_a_kernel(spies, fake_cpu):
    _step()
    assert spies == ["_fused_lion"]
    fake_cpu.runs = False
    _step()
    assert spies == ["_fused_lion", "_foreach_lion"]


def test_fused_without_a_runnable_kernel_fails_at_construction_with_the_remedy(monkeypatch):
    monkeypatch.setitem(sys.modules, "lion_kernels.cpu_lion", FakeKernel("lion_kernels.cpu_lion", runs=False))
    with pytest.raises(ImportError, match=REMEDY):
        Lion([torch.zeros(2, requires_grad=True)], fused=True)


def test_fused_on_a_device_without_a_kernel_is_refused():
    expected = ("Invalid `fused`: expected False or None for parameters on 'meta' "
                "(fused kernels exist for cpu, cuda)")
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Lion([torch.zeros(2, device="meta", requires_grad=True)], fused=True)


def test_kernel_available_never_raises(monkeypatch):
    monkeypatch.setitem(functional.KERNEL_MODULES, "cpu", "lion_kernels.no_such_kernel")
    assert functional.kernel_available("cpu") is False
    assert functional.kernel_available("meta") is False


def test_fused_routes_what_the_kernel_refuses_to_foreach(fake_cpu, spies):
    """Contiguous real tensors go to the kernel in one call; strided ones go to foreach; complex
    ones reach the kernel as real views. The result is the reference's either way."""
    rng = np.random.default_rng(0)
    base = tensor(rng.standard_normal((4, 6)), torch.float64)
    complex_param = tensor(rng.standard_normal(5) + 1j * rng.standard_normal(5), torch.complex128, True)
    params = [tensor(rng.standard_normal((3, 2)), torch.float64, True), base.t().requires_grad_(True),
              tensor(rng.standard_normal(7), torch.float64, True), complex_param]
    init = [p.detach().numpy().copy() for p in params]
    grads = [[rng.standard_normal(p.shape) + (1j * rng.standard_normal(p.shape) if p.is_complex() else 0)
              for p in params] for _ in range(3)]
    opt = Lion(params, lr=0.01, weight_decay=0.1, fused=True)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, p.dtype)
        opt.step()
    # One kernel call per step with every contiguous tensor (the complex one as a real view); the
    # transposed one went to foreach.
    assert fake_cpu.calls == [[(3, 2), (7,), (5, 2)]] * 3
    assert spies.count("_foreach_lion") == 3 and spies.count("_fused_lion") == 3
    ref = reference_lion(init, grads, lr=0.01, weight_decay=0.1)
    for i, p in enumerate(params):
        assert_exact(p, ref.params[i], what=f"param {i}")
    assert_momentum("foreach", momenta(opt, params)[1], ref.momentum[1], grads=grads, index=1)


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
                     "cautious": True, "maximize": True}
    assert kwargs["grad_scale"].item() == 4.0 and kwargs["found_inf"].item() == 0.0
    assert_exact(p.grad, torch.full((4,), 8.0))

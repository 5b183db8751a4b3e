"""torch.optim's contracts: momentum in the parameter's dtype by default (and the dtype a saved group
asked for after loading), a zero peak learning rate refused at construction, hyperparameter tensors
that have a real value, complex parameters as pairs of reals. The oracle is ``lion_core.reference``."""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pytest
import torch

import lion_core
import lion_core._fallback
from lion_core.reference import reference_step
from lion_torch import Lion
from tests.support import assert_close, assert_exact
from tests.torch.helpers import FLAGS, PATHS, momenta, reference_stored, tensor

LOW = [torch.bfloat16, torch.float16]


def _message(text: str) -> str:
    return "^" + re.escape(text) + "$"


# --- momentum dtype ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_default_momentum_has_the_parameters_dtype_on_every_path(path, dtype, monkeypatch):
    """The default is torch.optim's: ``exp_avg`` in the parameter's dtype. Each path computes in float32
    and rounds the parameter and the momentum once per step, as the reference in float32 does."""
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(s) for s in [(33, 7), (1,), ()]]
    grads = [[rng.standard_normal(x.shape) for x in init] for _ in range(4)]
    params = [tensor(x, dtype, True) for x in init]
    opt = Lion(params, lr=0.01, weight_decay=0.1, **FLAGS[path])
    # The CPU kernel has no float16 routine: it hands those tensors back, and the fused path says so.
    handed_back = path == "fused" and dtype == torch.float16
    monkeypatch.setattr(lion_core._fallback, "_warned", set())  # each fallback warns once per process
    with pytest.warns(lion_core.FallbackWarning) if handed_back else contextlib.nullcontext():
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = tensor(g, dtype)
            opt.step()
    assert [m.dtype for m in momenta(opt, params)] == [dtype] * 3
    stored = [[tensor(g, dtype).double().numpy() for g in step] for step in grads]
    expected_p, expected_m = reference_stored(init, stored, param_dtypes=[dtype] * 3,
                                              momentum_dtypes=[dtype] * 3, lr=0.01, weight_decay=0.1)
    for i, (p, m) in enumerate(zip(params, momenta(opt, params))):
        # float32 arithmetic in another order can round differently by one ulp of the storage dtype.
        ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
        assert_close(p, expected_p[i], rtol=ulp, atol=0, what=f"param {i}")
        assert_close(m, expected_m[i], rtol=ulp, atol=ulp * 1e-3, what=f"momentum {i}")


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_float32_momentum_is_one_keyword_away(dtype):
    p = torch.zeros(4, dtype=dtype, requires_grad=True)
    opt = Lion([p], momentum_dtype=torch.float32)
    p.grad = torch.full((4,), 1e-3, dtype=dtype)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32


def _save_and_load(opt: Lion, params: list[torch.Tensor], **options) -> tuple[Lion, list[torch.Tensor]]:
    """A checkpoint through torch.save and torch.load(weights_only=True), into a new optimizer."""
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = [p.clone().requires_grad_(True) for p in saved["params"]]
    loaded = Lion(fresh, lr=0.01, **options)
    loaded.load_state_dict(saved["opt"])
    return loaded, fresh


@pytest.mark.parametrize(
    "saved_with, loaded_with, expected",
    [
        # torch.optim's loader would round this float32 momentum to bfloat16.
        ({"momentum_dtype": torch.float32}, {}, torch.float32),
        # The saved group's default wins over the loading optimizer's option, as every saved option does.
        ({}, {"momentum_dtype": torch.float32}, torch.bfloat16),
    ],
    ids=["float32_momentum", "default_momentum"],
)
@pytest.mark.parametrize("path", PATHS)
def test_momentum_keeps_the_dtype_its_saved_group_asked_for(path, saved_with, loaded_with, expected):
    rng = np.random.default_rng(7)
    init = [rng.standard_normal(s) for s in [(17, 3), (5,)]]
    grads = [[rng.standard_normal(x.shape) * 1e-3 for x in init] for _ in range(4)]
    params = [tensor(x, torch.bfloat16, True) for x in init]
    opt = Lion(params, lr=0.01, **saved_with, **FLAGS[path])
    for step_grads in grads[:2]:
        for p, g in zip(params, step_grads):
            p.grad = tensor(g, torch.bfloat16)
        opt.step()
    before = [m.clone() for m in momenta(opt, params)]
    if expected == torch.float32:  # the case that matters: not representable in bfloat16
        assert any(m.to(torch.bfloat16).float().ne(m).any() for m in before)
    loaded, fresh = _save_and_load(opt, params, **loaded_with, **FLAGS[path])
    for m, n in zip(momenta(loaded, fresh), before):
        assert m.dtype == expected
        assert_exact(m, n, what="reloaded momentum")
    # Both continue identically: the reload lost nothing.
    for step_grads in grads[2:]:
        for ps, o in ((params, opt), (fresh, loaded)):
            for p, g in zip(ps, step_grads):
                p.grad = tensor(g, torch.bfloat16)
            o.step()
    for p, q in zip(fresh, params):
        assert_exact(p, q, what="param after the reload")
    for m, n in zip(momenta(loaded, fresh), momenta(opt, params)):
        assert m.dtype == n.dtype == expected
        assert_exact(m, n, what="momentum after the reload")


# --- max_lr: one policy, lion_core.resolve_max_lr -------------------------------------------------

ZERO_LR = (
    "Invalid `lr`: expected 0 < lr < inf with `decouple_lr=True` and no `max_lr` (the decay is divided by "
    "the peak learning rate, which then defaults to lr); to start from lr=0.0, pass max_lr=<the peak "
    "learning rate>. Received: lr=0.0"
)


@pytest.mark.parametrize("lr", [0.0, torch.tensor(0.0)], ids=["float", "tensor"])
def test_zero_lr_with_decouple_lr_and_no_max_lr_is_refused_at_construction(lr):
    with pytest.raises(ValueError, match=_message(ZERO_LR)):
        Lion([torch.zeros(2, requires_grad=True)], lr=lr, decouple_lr=True)


def test_zero_lr_with_decouple_lr_is_refused_in_add_param_group():
    p = torch.zeros(2, requires_grad=True)
    opt = Lion([p], lr=0.1, decouple_lr=True)
    q = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=_message(ZERO_LR)):
        opt.add_param_group({"params": [q], "lr": 0.0})
    zero_max_lr = "Invalid `max_lr`: expected 0 < max_lr < inf. Received: max_lr=0.0"
    with pytest.raises(ValueError, match=_message(zero_max_lr)):
        opt.add_param_group({"params": [q], "max_lr": 0.0})
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["max_lr"] == 0.1


def test_zero_lr_with_a_max_lr_steps_as_the_reference():
    """What the error suggests works: lr=0 with max_lr moves nothing (the decay is wd * 0 / max_lr)."""
    p = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = Lion([p], lr=0.0, weight_decay=0.5, decouple_lr=True, max_lr=1e-3)
    p.grad = torch.tensor([0.5, 0.5], dtype=torch.float64)
    opt.step()
    expected, _ = reference_step([1.0, -2.0], [0.5, 0.5], [0.0, 0.0], lr=0.0, weight_decay=0.5, max_lr=1e-3)
    assert_exact(p, expected, what="param")


def test_a_zero_default_lr_that_no_group_uses_is_accepted():
    p = torch.zeros(2, requires_grad=True)
    opt = Lion([{"params": [p], "lr": 0.1}], lr=0.0, decouple_lr=True)
    assert opt.param_groups[0]["max_lr"] == 0.1


# --- hyperparameter tensors with a real value -----------------------------------------------------


def test_complex_lr_is_refused_at_construction():
    lr = torch.tensor(0.1 + 0.0j)
    expected = (
        "Invalid `lr`: expected a real number, a schedule (callable) or a scalar tensor (real-valued). "
        f"Received: lr={lr!r} of type Tensor"
    )
    with pytest.raises(TypeError, match=_message(expected)):
        Lion([torch.zeros(2, requires_grad=True)], lr=lr)
    opt = Lion([torch.zeros(2, requires_grad=True)])
    with pytest.raises(TypeError, match=_message(expected)):
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], "lr": lr})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", ["lr", "max_lr"])
def test_meta_tensor_hyperparameter_is_refused_at_construction(name):
    value = torch.tensor(0.1, device="meta")
    expected = (
        f"Invalid `{name}`: expected a real number or a one-element tensor with a value (not on the meta "
        f"device). Received: {name}={value!r}"
    )
    with pytest.raises(ValueError, match=_message(expected)):
        Lion([torch.zeros(2, requires_grad=True)], decouple_lr=True, **{name: value})


# --- complex parameters: pairs of reals -----------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_complex_non_finite_gradient_spoils_only_its_component(path):
    """inf + 0j gives nan + 0j in the update (per component), as the reference and lion_optax give."""
    p0 = np.array([1 + 2j, -0.5 + 0.25j, 3 - 1j, 0.75 - 2j], np.complex128)
    g = np.array([np.inf + 0j, 0.5 + complex(0, np.inf), complex(np.nan, 0.5), 0.5 - 0.25j], np.complex128)
    p = torch.tensor(p0, requires_grad=True)
    opt = Lion([p], lr=0.1, weight_decay=0.01, **FLAGS[path])
    p.grad = torch.tensor(g)
    opt.step()
    expected, _ = reference_step(p0, g, np.zeros_like(p0), lr=0.1, weight_decay=0.01)
    got = torch.view_as_real(p.detach()).numpy()
    want = np.stack([expected.real, expected.imag], axis=-1)
    assert np.isnan(want).sum() == 3
    assert_exact(got, want, what="param (real, imag)")

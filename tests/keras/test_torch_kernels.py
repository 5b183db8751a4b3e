"""``lion_keras.Lion`` on the PyTorch backend goes through ``lion_kernels`` where a kernel can run.

Which path ran is checked with a spy on the kernel; the numbers are checked against the float64
reference (float32 budget from ``_helpers``), and every detour warns once with ``FallbackWarning``.
"""

from __future__ import annotations

import numpy as np
import pytest

import lion_core
import lion_core._fallback
import lion_keras
from lion_core.reference import reference_lion
from tests.support import assert_close

from ._helpers import BACKEND, f32_atol, margin_grads

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="the kernels serve the PyTorch backend only")

LR = 0.01
SHAPES = [(3, 4), (5,), (2, 3)]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(lion_core._fallback, "_warned", set())


@pytest.fixture
def cpu_lion():
    from lion_kernels import cpu_lion

    reason = cpu_lion.unavailable_reason()
    if reason is not None:
        pytest.skip(f"the CPU kernel cannot run here: {reason}")
    return cpu_lion


def _train(params, grads, dtypes=None, **kwargs):
    import keras

    dtypes = dtypes or ["float32"] * len(params)
    variables = [keras.Variable(p.astype(d), dtype=d) for p, d in zip(params, dtypes)]
    optimizer = lion_keras.Lion(learning_rate=LR, **kwargs)
    for step in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g.astype(d)) for g, d in zip(step, dtypes)], variables)
    return [keras.ops.convert_to_numpy(v).astype(np.float64) for v in variables]


def _spy(monkeypatch, cpu_lion):
    calls = []
    real = cpu_lion.lion_

    def spy(params, grads, momenta, **kwargs):
        calls.append((len(params), kwargs["weight_decay"], kwargs["cautious"]))
        return real(params, grads, momenta, **kwargs)

    monkeypatch.setattr(cpu_lion, "lion_", spy)
    return calls


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.5}, {"cautious": True}], ids=str)
def test_the_kernel_updates_every_variable_in_one_call(monkeypatch, cpu_lion, kwargs):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s) for s in SHAPES]
    grads = margin_grads(params, 3)
    calls = _spy(monkeypatch, cpu_lion)
    got = _train(params, grads, **kwargs)
    # Weight decay stays in Keras' base class (the kernel gets 0), as for keras.optimizers.Lion.
    assert calls == [(len(SHAPES), 0.0, kwargs.get("cautious", False))] * 3
    expected = reference_lion(params, grads, lr=LR, **kwargs)
    for i, (g, w) in enumerate(zip(got, expected.params)):
        assert_close(g, w, rtol=0, atol=f32_atol(params, 3, LR), what=f"variable {i}")


def test_an_unavailable_kernel_warns_once_and_foreach_runs(monkeypatch, cpu_lion):
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s) for s in SHAPES]
    grads = margin_grads(params, 2)
    calls = _spy(monkeypatch, cpu_lion)
    monkeypatch.setattr(cpu_lion, "unavailable_reason", lambda: "switched off by the test")
    with pytest.warns(lion_core.FallbackWarning) as caught:
        got = _train(params, grads)
    fallbacks = [w for w in caught if issubclass(w.category, lion_core.FallbackWarning)]
    assert len(fallbacks) == 1
    assert str(fallbacks[0].message) == (
        "lionkit's fused cpu kernel for lion_keras.Lion cannot run: switched off by the test. "
        "Using the foreach update instead."
    )
    assert calls == []
    expected = reference_lion(params, grads, lr=LR)
    for g, w in zip(got, expected.params):
        assert_close(g, w, rtol=0, atol=f32_atol(params, 2, LR))


def test_a_variable_the_kernel_hands_back_takes_foreach_with_a_warning(monkeypatch, cpu_lion):
    """float16 variables (float32 momentum): not a dtype triple the CPU kernel takes."""
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(s) for s in SHAPES]
    grads = margin_grads(params, 2)
    import torch

    half = torch.zeros(2, dtype=torch.float16)
    if cpu_lion.supports(half, half, torch.zeros(2)):
        pytest.skip("this CPU kernel takes float16 variables")
    expected_warning = "1 of 3 variables .*float16.*Using the foreach update"
    with pytest.warns(lion_core.FallbackWarning, match=expected_warning):
        got = _train(params, grads, dtypes=["float32", "float16", "float32"])
    assert np.all(np.isfinite(got[1]))
    expected = reference_lion(params, grads, lr=LR)
    for i in (0, 2):
        assert_close(got[i], expected.params[i], rtol=0, atol=f32_atol(params, 2, LR), what=f"variable {i}")

"""The rule in lion_core against an independent scalar transcription of the paper's Algorithm 2.

The scalar oracle below works on one Python float at a time with the ``math`` module: it shares no code
with ``lion_core`` and no array library, so it checks the rule itself. Everything else in the project
is then checked against ``lion_core.reference``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import lion_core
from lion_core.reference import reference_lion, reference_step
from tests.support import assert_close, assert_exact


def paper_step(p: float, g: float, m: float, lr: float, beta1: float, beta2: float, wd: float):
    """Chen et al. 2023, Algorithm 2, for one coordinate, in Python floats."""
    c = beta1 * m + (1 - beta1) * g
    u = 0.0 if c == 0 else math.copysign(1.0, c)
    return p * (1 - lr * wd) - lr * u, beta2 * m + (1 - beta2) * g


HYPER = [
    dict(lr=1e-3, beta1=0.9, beta2=0.99, wd=0.0),
    dict(lr=3e-4, beta1=0.95, beta2=0.98, wd=0.1),
    dict(lr=0.5, beta1=0.0, beta2=0.0, wd=1.0),
]


@pytest.mark.parametrize("hp", HYPER)
def test_reference_matches_the_paper_coordinate_by_coordinate(hp):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=37)
    grads = [rng.normal(size=37) for _ in range(9)]
    grads[3][:5] = 0.0  # with beta1 = 0 these give c = 0: sign(0) = 0
    out = reference_lion(
        [p0], [[g] for g in grads], lr=hp["lr"], beta1=hp["beta1"], beta2=hp["beta2"], weight_decay=hp["wd"]
    )
    for i in range(37):
        p, m = float(p0[i]), 0.0
        for g in grads:
            p, m = paper_step(p, float(g[i]), m, hp["lr"], hp["beta1"], hp["beta2"], hp["wd"])
        assert out.params[0][i] == p, (i, out.params[0][i], p)
        assert out.momentum[0][i] == m, (i, out.momentum[0][i], m)


def test_zero_interpolation_does_not_move_but_still_decays():
    p, m = reference_step(np.array([2.0]), np.array([0.0]), np.array([0.0]), lr=0.1, weight_decay=0.5)
    assert p.tolist() == [2.0 * (1 - 0.1 * 0.5)]
    assert m.tolist() == [0.0]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_gradient_makes_the_parameter_nan(bad):
    g = np.array([0.3, bad, -0.2])
    p, m = reference_step(np.ones(3), g, np.zeros(3), lr=0.1)
    assert np.isnan(p[1]) and np.isfinite(p[[0, 2]]).all()
    assert not np.isfinite(m[1])
    # and it stays NaN whatever comes next
    p, m = reference_step(p, np.array([0.1, 0.1, 0.1]), m, lr=0.1)
    assert np.isnan(p[1]) and np.isfinite(p[[0, 2]]).all()


@pytest.mark.parametrize("cautious", [False, True])
def test_maximize_equals_descending_on_the_negated_gradient(cautious):
    rng = np.random.default_rng(1)
    p, g, m = rng.normal(size=(3, 50))
    up = reference_step(p, g, m, lr=0.01, weight_decay=0.1, maximize=True, cautious=cautious)
    down = reference_step(p, -g, m, lr=0.01, weight_decay=0.1, cautious=cautious)
    assert_exact(up[0], down[0], what="param")
    assert_exact(up[1], down[1], what="momentum")


def test_cautious_keeps_agreeing_entries_and_preserves_the_l1_norm():
    rng = np.random.default_rng(2)
    p = np.zeros(1000)
    g, m = rng.normal(size=(2, 1000))
    plain = reference_step(p, g, m, lr=1.0, beta1=0.5)[0]  # = -sign(c)
    masked = reference_step(p, g, m, lr=1.0, beta1=0.5, cautious=True)[0]
    agree = np.sign(-plain) == np.sign(g)
    assert 0 < agree.sum() < 1000
    assert (masked[~agree] == 0).all()
    scale = 1000 / agree.sum()
    assert_close(masked[agree], plain[agree] * scale, rtol=1e-15, atol=0, what="kept entries")
    assert math.isclose(np.abs(masked).sum(), 1000, rel_tol=1e-12)


def test_cautious_with_nothing_kept_leaves_the_array_alone():
    g = np.array([1.0, -2.0])
    m = np.array([-10.0, 10.0])  # the momentum wins the interpolation: every sign disagrees with g
    p, _ = reference_step(np.array([5.0, 6.0]), g, m, lr=0.1, cautious=True)
    assert p.tolist() == [5.0, 6.0]


def test_cautious_keeps_nan_elementwise():
    g = np.array([1.0, math.nan, 1.0, -1.0])
    p, _ = reference_step(np.zeros(4), g, np.zeros(4), lr=1.0, cautious=True)
    assert np.isnan(p[1]) and np.isfinite(p[[0, 2, 3]]).all()
    # three entries kept out of four: each moves by 4/3
    assert_close(p[[0, 2, 3]], np.array([-4 / 3, -4 / 3, 4 / 3]), rtol=1e-15, atol=0)


def test_fully_decoupled_weight_decay_follows_the_schedule_not_the_lr():
    lr_max, wd = 1e-3, 0.1
    schedule = [lr_max, lr_max / 2, lr_max / 10]
    p0 = np.array([1.0])
    g = [[np.zeros(1)] for _ in schedule]  # zero gradients: only the decay moves p
    out = reference_lion([p0], g, lr=schedule, weight_decay=wd, max_lr=lr_max)
    expected = 1.0
    for lr in schedule:
        expected *= 1 - wd * (lr / lr_max)
    assert out.params[0].tolist() == [expected]


def test_complex_parameters_are_pairs_of_reals():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(3, 4, 2))
    p, g, m = (x[..., 0] + 1j * x[..., 1] for x in z)
    kwargs = dict(lr=0.1, weight_decay=0.2, cautious=True)
    cp, cm = reference_step(p, g, m, **kwargs)
    rp, rm = reference_step(z[0], z[1], z[2], **kwargs)
    assert cp.dtype == np.complex128 and cp.shape == (4,)
    assert_exact(np.stack([cp.real, cp.imag], -1), rp, what="param")
    assert_exact(np.stack([cm.real, cm.imag], -1), rm, what="momentum")


def test_skipped_gradient_leaves_parameter_and_momentum_alone():
    p0 = [np.array([1.0, 2.0]), np.array([3.0])]
    out = reference_lion(p0, [[np.array([1.0, -1.0]), None]], lr=0.1, weight_decay=0.5)
    assert out.params[1].tolist() == [3.0] and out.momentum[1].tolist() == [0.0]


def test_zero_size_and_zero_dim_arrays():
    out = reference_lion([np.zeros((0, 3)), np.array(2.0)], [[np.zeros((0, 3)), np.array(-1.0)]], lr=0.5)
    assert out.params[0].shape == (0, 3)
    assert out.params[1].shape == () and out.params[1] == 2.5


def test_float32_reference_computes_in_float32():
    out = reference_lion([np.ones(3)], [[np.full(3, 0.1)]], lr=0.1, dtype=np.float32)
    assert out.params[0].dtype == np.float32 and out.momentum[0].dtype == np.float32


# --- every array library runs the one rule, with the same NaN policy -------------------------------


def _namespaces():
    names = ["numpy", "torch", "jax.numpy", "keras.ops"]
    return [pytest.param(name, id=name) for name in names]


def _load(name):
    if name == "numpy":
        return np, np.asarray
    if name == "torch":
        torch = pytest.importorskip("torch")
        return torch, lambda x: torch.tensor(x)
    if name == "jax.numpy":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        return jax.numpy, jax.numpy.asarray
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    return keras.ops, lambda x: keras.ops.convert_to_tensor(x, dtype="float64")


@pytest.mark.parametrize("name", _namespaces())
@pytest.mark.parametrize("cautious", [False, True])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf, on purpose
def test_every_array_library_runs_the_rule_like_the_reference(name, cautious):
    xp, array = _load(name)
    rng = np.random.default_rng(4)
    p, g, m = rng.normal(size=(3, 64))
    g[[3, 7, 11]] = [math.nan, math.inf, -math.inf]
    g[20] = 0.0
    m[20] = 0.0  # c = 0
    hyper = dict(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1, cautious=cautious)
    got_p, got_m = lion_core.lion_step(array(p), array(g), array(m), xp=xp, **hyper)
    want_p, want_m = reference_step(p, g, m, **hyper)
    assert_exact(got_p, want_p, what=f"{name} param")
    assert_exact(got_m, want_m, what=f"{name} momentum")


def test_importing_lion_core_imports_no_framework():
    # No framework, and no front door either: the CLI (lion_cli) and the adapters sit on top of the core.
    code = (
        "import sys, lion_core, lion_core.reference\n"
        "loaded = sorted(m for m in ('torch', 'jax', 'keras', 'triton', 'tensorflow', 'optax', 'flax',"
        " 'lion_cli', 'lion_torch', 'lion_keras', 'lion_optax', 'kernels', 'lion_kernels', 'sklearn',"
        " 'matplotlib') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_term_order_does_not_change_separately_rounded_results():
    rng = np.random.default_rng(5)
    m, g = rng.normal(size=(2, 1000)).astype(np.float32)
    for beta in (0.9, 0.99, 0.95):
        a = lion_core.interpolate(m, g, beta)
        b = lion_core.interpolate(m, g, beta, grad_first=True)
        assert_exact(a, b, what=f"beta={beta}")


@pytest.mark.filterwarnings("error")
def test_cautious_on_an_empty_array_is_quiet():
    p, m = reference_step(np.zeros(0), np.zeros(0), np.zeros(0), lr=0.1, cautious=True)
    assert p.shape == m.shape == (0,)

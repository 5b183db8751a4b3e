"""The multi-tensor CPU kernel (lion_kernels.cpu_lion) against lion_core.reference.

float64 and float32 must match the reference bit for bit (the kernel keeps the reference's operation
order and never fuses a multiply-add); bfloat16 parameters with float32 momentum must match the
float32 reference followed by the storage rounding of lion_core's dtype policy bit for bit, the
float64 reference elementwise when the interpolation is far from zero, and the float64 reference
within a stated budget over 200 steps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lion_kernels import cpu_lion
from lion_core.reference import reference_lion, reference_step
from tests.support import assert_close, assert_exact, assert_within_budget, margin_gradient


def _has_compiler() -> bool:
    configured = os.environ.get("CC")
    if configured:
        return shutil.which(configured.split()[0]) is not None
    return any(shutil.which(name) for name in ("cc", "gcc", "clang"))


# Only a missing compiler skips: a compiler that fails to build the kernel is a failure (require()
# raises with the compiler's output).
pytestmark = [
    pytest.mark.skipif(
        not _has_compiler(), reason="no C compiler (cc, gcc or clang) to build the CPU kernel"
    ),
    # The float64 reference takes the mean of an empty cautious mask for zero-size arrays.
    pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

CHUNK = cpu_lion._CHUNK
# Zero-size, one element, odd sizes, a 0-d tensor, and one that spans several chunks of the kernel's
# index space and straddles chunk boundaries with its neighbours.
SHAPES = [(0,), (1,), (1023,), (4097,), (), (3 * CHUNK + 17,), (31, 33)]
STEPS = 7

CONFIGS = {
    "plain": dict(weight_decay=0.0),
    "weight_decay": dict(weight_decay=0.1),
    "decouple_lr": dict(weight_decay=0.1, max_lr=3e-2),
    "cautious": dict(weight_decay=0.1, cautious=True),
    "maximize": dict(weight_decay=0.1, maximize=True),
    "everything": dict(weight_decay=0.05, max_lr=2e-2, cautious=True, maximize=True),
}
LRS = [1e-2, 2e-2, 5e-3, 1e-2, 0.0, 7e-3, 1e-2]  # a schedule, with a step at lr = 0
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    cpu_lion.require()


def _problem(rng: np.random.Generator, shapes=SHAPES, steps=STEPS):
    params = [rng.normal(size=shape) for shape in shapes]
    grads = []
    for step in range(steps):
        step_grads = []
        for index, shape in enumerate(shapes):
            g = rng.normal(size=shape)
            if g.size > 8:
                g.reshape(-1)[:4] = 0.0  # c = 0 at the first step: sign(0) = 0
            step_grads.append(g)
        if step == 3:
            step_grads[2] = None  # no gradient: the optimizer leaves that parameter alone
        grads.append(step_grads)
    return params, grads


def _run_kernel(params, grads, dtype, *, momentum_dtype=None, lr=LRS, **config):
    tdtype = TORCH_DTYPE.get(dtype, dtype)
    p = [torch.tensor(np.asarray(x, dtype=np.float64)).to(tdtype) for x in params]
    m = [torch.zeros(x.shape, dtype=momentum_dtype or tdtype) for x in p]
    max_lr = config.pop("max_lr", None)
    for step, step_grads in enumerate(grads):
        live = [i for i, g in enumerate(step_grads) if g is not None]
        g = [torch.tensor(np.asarray(step_grads[i], dtype=np.float64)).to(tdtype) for i in live]
        cpu_lion.lion_(
            [p[i] for i in live],
            g,
            [m[i] for i in live],
            lr=lr[step] if isinstance(lr, list) else lr,
            beta1=config.get("beta1", 0.9),
            beta2=config.get("beta2", 0.99),
            weight_decay=config.get("weight_decay", 0.0),
            max_lr=max_lr,
            cautious=config.get("cautious", False),
            maximize=config.get("maximize", False),
        )
    return p, m


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_matches_reference_bit_for_bit(name, dtype):
    """float64 against the float64 reference, float32 against the reference run in float32."""
    rng = np.random.default_rng(list(CONFIGS).index(name))
    params, grads = _problem(rng)
    # The reference starts from the same rounded values the kernel starts from.
    params = [np.asarray(x, dtype=dtype) for x in params]
    grads = [[None if g is None else np.asarray(g, dtype=dtype) for g in step] for step in grads]
    config = CONFIGS[name]
    p, m = _run_kernel(params, grads, dtype, **config)
    expected = reference_lion(params, grads, lr=LRS, dtype=dtype, **config)
    for i in range(len(SHAPES)):
        assert p[i].dtype == TORCH_DTYPE[dtype] and p[i].shape == SHAPES[i]
        assert_exact(p[i], expected.params[i], what=f"param {i} {SHAPES[i]}")
        assert_exact(m[i], expected.momentum[i], what=f"momentum {i} {SHAPES[i]}")


def test_tensor_learning_rate_equals_float():
    rng = np.random.default_rng(7)
    params, grads = _problem(rng, steps=2)
    grads = [[g for g in step] for step in grads]
    by_float = _run_kernel(params, grads, np.float32, lr=3e-3, weight_decay=0.1)
    lr = torch.tensor(3e-3, dtype=torch.float64)
    by_tensor = _run_kernel(params, grads, np.float32, lr=lr, weight_decay=0.1)
    for a, b in zip(by_float[0] + by_float[1], by_tensor[0] + by_tensor[1]):
        assert_exact(b, a)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_count_does_not_change_the_result(threads):
    rng = np.random.default_rng(8)
    params, grads = _problem(rng, steps=2)
    params = [x.astype(np.float32) for x in params]
    grads = [[None if g is None else g.astype(np.float32) for g in step] for step in grads]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        p, m = _run_kernel(params, grads, np.float32, cautious=True, weight_decay=0.1)
    finally:
        torch.set_num_threads(before)
    expected = reference_lion(params, grads, lr=LRS, cautious=True, weight_decay=0.1, dtype=np.float32)
    for i in range(len(SHAPES)):
        assert_exact(p[i], expected.params[i], what=f"param {i}")
        assert_exact(m[i], expected.momentum[i], what=f"momentum {i}")


def _bf16(x: np.ndarray) -> np.ndarray:
    """Rounds float64 values to bfloat16 (to nearest even, via float32) and returns them as float64."""
    return torch.tensor(np.asarray(x, dtype=np.float32)).to(torch.bfloat16).double().numpy()


def test_bfloat16_is_float32_reference_then_storage_rounding():
    """lion_core's policy: compute in float32, round the parameter once to bfloat16 when stored."""
    rng = np.random.default_rng(11)
    shapes = [(4097,), (1,), (), (2 * CHUNK + 5,)]
    p = [torch.tensor(rng.normal(size=s)).to(torch.bfloat16) for s in shapes]
    m = [torch.tensor(rng.normal(size=s) * 0.1, dtype=torch.float32) for s in shapes]
    for step in range(5):
        g = [torch.tensor(rng.normal(size=s)).to(torch.bfloat16) for s in shapes]
        if step == 2:
            g[0][:7] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0, 0, 0, 0])
        expected = [
            reference_step(
                pi.float().numpy(), gi.float().numpy(), mi.numpy(),
                lr=0.03, weight_decay=0.2, cautious=step % 2 == 1, dtype=np.float32,
            )
            for pi, gi, mi in zip(p, g, m)
        ]
        cpu_lion.lion_(p, g, m, lr=0.03, beta1=0.9, beta2=0.99, weight_decay=0.2, max_lr=None,
                       cautious=step % 2 == 1, maximize=False)
        for i, (new_p, new_m) in enumerate(expected):
            assert p[i].dtype == torch.bfloat16 and m[i].dtype == torch.float32
            stored = torch.from_numpy(np.asarray(new_p)).to(torch.bfloat16)
            assert_exact(p[i], stored, what=f"param {i} step {step}")
            assert_exact(m[i], new_m, what=f"momentum {i} step {step}")


def test_bfloat16_margin_elementwise():
    """With |c| >= 0.05 every path agrees on the sign: one bf16 rounding of the parameter apart."""
    rng = np.random.default_rng(12)
    n = 2 * CHUNK + 3
    p = torch.tensor(rng.normal(size=n)).to(torch.bfloat16)
    m = torch.tensor(rng.normal(size=n) * 0.5, dtype=torch.float32)
    for _ in range(5):
        g = torch.tensor(margin_gradient(rng, m.double().numpy(), beta1=0.9)).to(torch.bfloat16)
        # bf16 rounding of g moves c by at most (1 - beta1) * |g| * 2**-9, far below the margin.
        ref_p, ref_m = reference_step(
            p.double().numpy(), g.double().numpy(), m.double().numpy(), lr=1e-2, weight_decay=0.1
        )
        cpu_lion.lion_([p], [g], [m], lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1, max_lr=None,
                       cautious=False, maximize=False)
        # bf16 keeps 8 significant bits: one rounding is within 2**-9 relative.
        assert_close(p, ref_p, rtol=2**-8, atol=1e-30, what="bf16 param")
        assert_close(m, ref_m, rtol=1e-6, atol=1e-7, what="fp32 momentum")


def test_bfloat16_trajectory_within_budget():
    """200 steps against the float64 reference with the same storage rounding each step.

    Budget: the float32 arithmetic differs from float64 in the last bits of the momentum, which
    can flip sign(c) where c is near zero (a 2*lr move) and, after bf16 rounding, shift a parameter
    by one bf16 ulp. At most 2% of parameters may differ by more than one ulp (2**-7 relative)
    plus 2*lr, and the momentum must stay within 1e-4 relative on 99% of entries.
    """
    rng = np.random.default_rng(13)
    n, lr = 20_000, 1e-2
    p = torch.tensor(rng.normal(size=n)).to(torch.bfloat16)
    m = torch.zeros(n, dtype=torch.float32)
    ref_p, ref_m = p.double().numpy(), np.zeros(n)
    for _ in range(200):
        g = torch.tensor(rng.normal(size=n)).to(torch.bfloat16)
        cpu_lion.lion_([p], [g], [m], lr=lr, beta1=0.9, beta2=0.99, weight_decay=0.1, max_lr=None,
                       cautious=False, maximize=False)
        ref_p, ref_m = reference_step(ref_p, g.double().numpy(), ref_m, lr=lr, weight_decay=0.1)
        ref_p, ref_m = _bf16(ref_p), ref_m.astype(np.float32).astype(np.float64)
    assert_within_budget(p, ref_p, atol=2 * lr, rtol=2**-7, max_fraction=0.02, what="bf16 param")
    assert_within_budget(m, ref_m, atol=1e-6, rtol=1e-4, max_fraction=0.01, what="fp32 momentum")


@pytest.mark.parametrize("kind", ["float64", "float32", "bfloat16"])
def test_non_finite_gradients_make_the_parameter_nan(kind):
    dtype = getattr(torch, kind)
    m_dtype = torch.float32 if kind == "bfloat16" else dtype
    g = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -1.0, 0.0]).to(dtype)
    p = torch.ones(6, dtype=dtype)
    m = torch.zeros(6, dtype=m_dtype)
    cpu_lion.lion_([p], [g], [m], lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0, max_lr=None,
                   cautious=False, maximize=False)
    ref_p, ref_m = reference_step(np.ones(6), g.double().numpy(), np.zeros(6), lr=0.1)
    assert np.isnan(p[:3].float().numpy()).all()
    assert_close(p, ref_p, rtol=2**-8, atol=0.0, what="param")
    assert_exact(m, ref_m.astype(np.float32) if kind != "float64" else ref_m, what="momentum")


def test_found_inf_skips_the_step_and_grad_scale_unscales():
    rng = np.random.default_rng(14)
    shapes = [(5000,), (3,), ()]
    p0 = [rng.normal(size=s).astype(np.float32) for s in shapes]
    m0 = [rng.normal(size=s).astype(np.float32) for s in shapes]
    g = [torch.tensor(rng.normal(size=s).astype(np.float32)) for s in shapes]
    g_before = [x.clone() for x in g]
    p = [torch.tensor(x) for x in p0]
    m = [torch.tensor(x) for x in m0]
    hyper = dict(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1, max_lr=None, cautious=True, maximize=True)

    cpu_lion.lion_(p, g, m, **hyper, grad_scale=torch.tensor(3.0), found_inf=torch.tensor(1.0))
    for i in range(len(shapes)):
        assert_exact(p[i], p0[i], what="param after a skipped step")
        assert_exact(m[i], m0[i], what="momentum after a skipped step")

    for scale in (1024.0, 3.0):
        p = [torch.tensor(x) for x in p0]
        m = [torch.tensor(x) for x in m0]
        cpu_lion.lion_(p, g, m, **hyper, grad_scale=torch.tensor(scale), found_inf=torch.tensor(0.0))
        for i in range(len(shapes)):
            # GradScaler's fused contract: the kernel divides the scaled gradient, in float32.
            unscaled = g[i].numpy() / np.float32(scale)
            ref_p, ref_m = reference_step(
                p0[i], unscaled, m0[i], lr=0.01, weight_decay=0.1, cautious=True, maximize=True,
                dtype=np.float32,
            )
            assert_exact(p[i], ref_p, what=f"param {i}, grad_scale={scale}")
            assert_exact(m[i], ref_m, what=f"momentum {i}, grad_scale={scale}")
    for before, after in zip(g_before, g):
        assert_exact(after, before, what="gradient (must never be written)")


def test_many_tensors_of_every_kind_in_one_call():
    """400 tensors, three dtypes interleaved: each kind goes to its own loop, all in one lion_ call."""
    rng = np.random.default_rng(15)
    kinds = [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.float32)]
    sizes = rng.integers(0, 3000, size=400)
    p, g, m, expected = [], [], [], []
    for i, size in enumerate(sizes):
        p_dtype, m_dtype = kinds[i % 3]
        pi = torch.tensor(rng.normal(size=size)).to(p_dtype)
        gi = torch.tensor(rng.normal(size=size)).to(p_dtype)
        mi = torch.tensor(rng.normal(size=size)).to(m_dtype)
        compute = np.float64 if p_dtype == torch.float64 else np.float32
        new_p, new_m = reference_step(
            pi.to(m_dtype).numpy(), gi.to(m_dtype).numpy(), mi.numpy(), lr=0.01, weight_decay=0.1,
            dtype=compute,
        )
        expected.append((torch.from_numpy(np.asarray(new_p)).to(p_dtype), new_m))
        p.append(pi), g.append(gi), m.append(mi)
    versions = [t._version for t in p + m]
    g_before = [x.clone() for x in g]
    cpu_lion.lion_(p, g, m, lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1, max_lr=None,
                   cautious=False, maximize=False)
    for i, (new_p, new_m) in enumerate(expected):
        assert_exact(p[i], new_p, what=f"param {i} ({p[i].dtype})")
        assert_exact(m[i], new_m, what=f"momentum {i}")
        assert_exact(g[i], g_before[i], what=f"gradient {i}")
    # The kernel writes through raw pointers; autograd must still see an in-place change.
    assert all(t._version > v for t, v in zip(p + m, versions))


def test_supports():
    f32 = torch.zeros(4, 3)
    assert cpu_lion.supports(f32, f32.clone(), f32.clone())
    assert cpu_lion.supports(torch.zeros(()), torch.zeros(()), torch.zeros(()))
    assert cpu_lion.supports(torch.zeros(0), torch.zeros(0), torch.zeros(0))
    assert cpu_lion.supports(f32.double(), f32.double(), f32.double())
    assert cpu_lion.supports(f32.bfloat16(), f32.bfloat16(), f32)
    assert not cpu_lion.supports(f32.t(), f32.t(), f32.t())  # non-contiguous
    assert not cpu_lion.supports(f32, f32.t().contiguous().t(), f32)  # gradient non-contiguous
    assert not cpu_lion.supports(f32.half(), f32.half(), f32)  # float16: foreach
    assert not cpu_lion.supports(f32.bfloat16(), f32.bfloat16(), f32.bfloat16())  # bf16 momentum
    assert not cpu_lion.supports(f32, f32.double(), f32)  # mixed
    assert not cpu_lion.supports(f32, torch.zeros(3, 4), f32)  # shape
    assert not cpu_lion.supports(f32, f32.to_sparse(), f32)  # sparse gradient
    assert not cpu_lion.supports(torch.zeros(4, dtype=torch.complex64), torch.zeros(4, dtype=torch.complex64),
                                 torch.zeros(4, dtype=torch.complex64))  # callers pass real views
    negated = torch.zeros(4, dtype=torch.complex64).conj().imag  # a lazily negated view
    assert negated.is_neg() and not cpu_lion.supports(torch.zeros(4), negated, torch.zeros(4))


def test_unsupported_tensors_and_mismatched_lists_raise():
    p = torch.zeros(4, 3)
    hyper = dict(lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0, max_lr=None, cautious=False, maximize=False)
    first = torch.ones(5)
    with pytest.raises(RuntimeError, match=r"cannot update `params\[1\]`.*route it to the foreach path"):
        cpu_lion.lion_([first, p.t()], [torch.ones(5), p.t()], [torch.zeros(5), p.t()], **hyper)
    assert_exact(first, np.ones(5), what="a supported parameter of a call that raised")  # checked first
    with pytest.raises(RuntimeError, match=r"cannot update `params\[0\]`.*torch.float16"):
        cpu_lion.lion_([p.half()], [p.half()], [p], **hyper)
    with pytest.raises(RuntimeError, match=r"cannot update `params\[0\]`"):
        cpu_lion.lion_([p], [p.to_sparse()], [p.clone()], **hyper)
    mismatch = r"one entry per parameter. Received: 1 params, 2 grads, 1 exp_avgs$"
    with pytest.raises(RuntimeError, match=mismatch):
        cpu_lion.lion_([p], [p, p], [p], **hyper)


def _fresh_state(monkeypatch, tmp_path, cc: str | None) -> None:
    monkeypatch.setattr(cpu_lion, "_state", cpu_lion._Build())
    monkeypatch.setenv("LIONKIT_CACHE_DIR", str(tmp_path / "cache"))
    if cc is None:
        monkeypatch.delenv("CC", raising=False)
    else:
        monkeypatch.setenv("CC", cc)


def test_missing_compiler_is_reported_with_the_remedy(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path, "/nonexistent/cc")
    assert cpu_lion.available() is False
    assert cpu_lion.available() is False  # cached, still no exception
    remedy = r"install a C compiler \(gcc\) or pass fused=False"
    with pytest.raises(ImportError, match=remedy + r".*CC='/nonexistent/cc' was not found"):
        cpu_lion.require()
    with pytest.raises(ImportError, match=remedy):
        cpu_lion.lion_([torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], lr=0.1, beta1=0.9, beta2=0.99,
                       weight_decay=0.0, max_lr=None, cautious=False, maximize=False)


def test_failed_build_shows_the_compiler_output(monkeypatch, tmp_path):
    fake = tmp_path / "fake-cc"
    fake.write_text("#!/bin/sh\necho 'fake-cc: error: this compiler only fails' >&2\nexit 1\n")
    fake.chmod(0o755)
    _fresh_state(monkeypatch, tmp_path, str(fake))
    assert cpu_lion.available() is False
    with pytest.raises(ImportError, match=r"(?s)pass fused=False.*did not compile.*this compiler only fails"):
        cpu_lion.require()
    assert not list((tmp_path / "cache").glob("*.tmp")), "temporary files left behind"


def test_unwritable_cache_directory_names_the_setting(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    _fresh_state(monkeypatch, tmp_path, None)
    monkeypatch.setenv("LIONKIT_CACHE_DIR", str(blocker / "cache"))
    assert cpu_lion.available() is False
    with pytest.raises(ImportError, match=r"set LIONKIT_CACHE_DIR to a writable directory"):
        cpu_lion.require()


def test_concurrent_first_builds_share_one_cached_library(tmp_path):
    """Two processes building into an empty cache at once both load a complete library."""
    script = textwrap.dedent(
        """
        import torch
        from lion_kernels import cpu_lion
        cpu_lion.require()
        p, g, m = torch.ones(3), torch.full((3,), -1.0), torch.zeros(3)
        cpu_lion.lion_([p], [g], [m], lr=0.5, beta1=0.9, beta2=0.99, weight_decay=0.0, max_lr=None,
                       cautious=False, maximize=False)
        assert p.tolist() == [1.5, 1.5, 1.5], p
        """
    )
    env = {**os.environ, "LIONKIT_CACHE_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parents[2]
    runs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=root, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    libraries = [path for path in tmp_path.iterdir() if path.suffix in (".so", ".dll")]
    assert len(libraries) == 1, libraries
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"


def test_supports_all_agrees_with_supports_one_by_one():
    good = [torch.zeros(3), torch.zeros(2, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.bfloat16)]
    grads = [torch.zeros_like(t) for t in good]
    moms = [torch.zeros(t.shape, dtype=torch.float32 if t.dtype == torch.bfloat16 else t.dtype) for t in good]
    assert cpu_lion.supports_all(good, grads, moms)
    assert all(map(cpu_lion.supports, good, grads, moms))
    bad_cases = [
        (torch.zeros(4, 2).t(), torch.zeros(2, 4), torch.zeros(2, 4)),  # non-contiguous param
        (torch.zeros(3, dtype=torch.float16),) * 3,  # float16
        (torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.float64)),  # mixed kinds
        (torch.zeros(2, 3), torch.zeros(6), torch.zeros(2, 3)),  # shapes differ
        (torch.zeros(3), torch.zeros(3).to_sparse(), torch.zeros(3)),  # sparse gradient
    ]
    for case in bad_cases:
        assert not cpu_lion.supports(*case)
        assert not cpu_lion.supports_all([good[0], case[0]], [grads[0], case[1]], [moms[0], case[2]])

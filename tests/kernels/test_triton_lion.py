"""The multi-tensor Triton Lion kernel (``lion_kernels.triton_lion``) against ``lion_core.reference``.

Without a GPU the kernel runs on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``),
from the same source the GPU compiles; the generated GPU code is checked separately by compiling it
for an H100 (sm_90) without running it. Tests marked ``cuda`` repeat the parity checks on a GPU and
are skipped, and reported as skipped, without one.

    TRITON_INTERPRET=1 python -m pytest tests/kernels/test_triton_lion.py
"""

from __future__ import annotations

import os

# Must precede the first launch: it lets CPU tensors through the interpreter (the runner sets it too).
os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lion_core.reference import reference_lion, reference_step
from tests.support import assert_exact, assert_within_budget, margin_gradient, to_numpy

pytest.importorskip("triton")

from lion_kernels import KernelError, triton_lion  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

#: Odd sizes around the block (1024) and chunk (16384) boundaries, a 0-d and an empty parameter.
SHAPES = [(), (1,), (1023,), (4097,), (2, 3, 5), (0,)]
#: One multi-chunk tensor: chunks are the unit of work of a program.
MULTI_CHUNK = (triton_lion.CHUNK + 3,)

HYPER = dict(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.0, max_lr=None, cautious=False, maximize=False)

VARIANTS = {
    "plain": {},
    "betas": dict(beta1=0.95, beta2=0.98),
    "weight_decay": dict(weight_decay=0.1),
    "decoupled": dict(weight_decay=0.1, max_lr=0.03),
    "maximize": dict(maximize=True),
    "cautious": dict(cautious=True),
    "cautious_decay_maximize": dict(cautious=True, weight_decay=0.05, maximize=True),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _hyper(**overrides: Any) -> dict[str, Any]:
    return {**HYPER, **overrides}


def _draw(rng: np.random.Generator, shapes, steps: int, *, zeros: bool = True):
    """Parameters and per-step gradients (float32), with exact zeros so that sign(0) is exercised."""
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = []
    for step in range(steps):
        row = []
        for s in shapes:
            g = rng.standard_normal(s).astype(np.float32)
            if zeros and step == 0 and g.ndim:
                g.reshape(-1)[::7] = 0.0  # with zero momentum, c is exactly 0 there
            row.append(g)
        grads.append(row)
    return params, grads


def _run(params, grads, *, device="cpu", p_dtypes=None, m_dtypes=None, lr_values=None, **hyper):
    """Runs the kernel for every step; returns the final parameters and momenta as tensors."""
    n = len(params)
    p_dtypes = p_dtypes or [torch.float32] * n
    m_dtypes = m_dtypes or [torch.float32] * n
    ps = [torch.tensor(p, device=device).to(dt) for p, dt in zip(params, p_dtypes)]
    ms = [torch.zeros(p.shape, dtype=dt, device=device) for p, dt in zip(params, m_dtypes)]
    for step, row in enumerate(grads):
        gs = [torch.tensor(g, device=device).to(dt) for g, dt in zip(row, p_dtypes)]
        options = dict(hyper)
        if lr_values is not None:
            options["lr"].fill_(lr_values[step])
        assert triton_lion.lion_(ps, gs, ms, **options) == []
    return ps, ms


def _round(x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Rounds float32 values to ``dtype`` (to nearest even, as torch does) and back to float32."""
    return torch.tensor(np.asarray(x, dtype=np.float32)).to(dtype).float().numpy()


def _stored_reference(params, grads, p_dtypes, m_dtypes, **hyper):
    """``reference_step`` in float32 on the stored values, each result rounded to its storage dtype.

    This is what a kernel that computes in float32 and rounds once per store must produce, step
    after step, for any storage dtype.
    """
    ps = [_round(p, dt) for p, dt in zip(params, p_dtypes)]
    ms = [np.zeros_like(p) for p in ps]
    for row in grads:
        for i, g in enumerate(row):
            new_p, new_m = reference_step(ps[i], _round(g, p_dtypes[i]), ms[i], dtype=np.float32, **hyper)
            ps[i], ms[i] = _round(new_p, p_dtypes[i]), _round(new_m, m_dtypes[i])
    return ps, ms


class _Launches:
    """Records every kernel launch the launcher makes, and still runs it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict[str, Any]] = []
        original = triton_lion._launch

        def record(kernel, grid, arguments):
            self.calls.append({"grid": grid, **arguments})
            original(kernel, grid, arguments)

        monkeypatch.setattr(triton_lion, "_launch", record)


# --- the contract -----------------------------------------------------------------------------


def test_available_in_interpreter_mode():
    assert triton_lion.unavailable_reason() is None


def test_without_cuda_the_reason_names_the_remedy(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(triton_lion, "_cuda_available", lambda: False)
    assert triton_lion.unavailable_reason() == (
        "no CUDA device is available for the Triton kernel (pass fused=False, or set "
        "TRITON_INTERPRET=1 to run it on CPU tensors, for tests)"
    )
    with pytest.raises(KernelError, match=r"cannot run: no CUDA device is available"):
        triton_lion.lion_([torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], **HYPER)


def test_missing_or_broken_triton_never_kills_the_program(monkeypatch):
    monkeypatch.setattr(triton_lion, "_triton_found", False)
    expected = "Triton is not installed (pip install triton, or pass fused=False)"
    assert triton_lion.unavailable_reason() == expected
    monkeypatch.setattr(triton_lion, "_triton_error", "Triton does not import (ImportError: broken)")
    with pytest.raises(KernelError, match=r"Triton does not import \(ImportError: broken\)"):
        triton_lion.lion_([torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], **HYPER)


def test_unavailable_reason_never_imports_triton():
    code = (
        "import sys, lion_kernels.triton_lion as t; r = t.unavailable_reason(); "
        "print('triton' in sys.modules, r is None or r.startswith('no CUDA'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False True"


def test_import_does_not_import_triton():
    code = "import sys, lion_kernels.triton_lion; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- float32: bit-for-bit equal to the float32 reference ----------------------------------------


# The reference's cautious mean over an empty array warns; its result is unused (nothing to update).
def test_cautious_rescales_by_the_kept_fraction_per_tensor():
    # Momentum that outweighs small gradients of the opposite sign, so the mask keeps about 70% of
    # one tensor and 20% of the other: a count shared between tensors, or taken from the wrong one,
    # would scale the update wrongly.
    rng = np.random.default_rng(7)
    m0 = [np.full(1023, 0.5, np.float32), np.full(4097, -0.5, np.float32)]
    params = [rng.standard_normal(m.shape).astype(np.float32) for m in m0]
    grads = [[np.where(rng.random(1023) < 0.7, 1.0, -1.0).astype(np.float32),
              np.where(rng.random(4097) < 0.2, -1.0, 1.0).astype(np.float32)]]
    hyper = _hyper(cautious=True)
    ps = [torch.tensor(p) for p in params]
    ms = [torch.tensor(m) for m in m0]
    triton_lion.lion_(ps, [torch.tensor(g) for g in grads[0]], ms, **hyper)
    ref = reference_lion(params, grads, momentum=m0, dtype=np.float32, **hyper)
    for p, rp in zip(ps, ref.params):
        assert_exact(p, rp, what="param")
    # The case is not trivial: the fractions of entries that move differ as intended.
    moved = [float(np.mean(rp != p)) for rp, p in zip(ref.params, params)]
    assert 0.6 < moved[0] < 0.8 and 0.1 < moved[1] < 0.3


# NumPy (in the interpreter and the reference) warns where c - c is inf - inf: the NaN is the point.
@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_lr", [None, 0.05])
def test_lr_tensor_changes_without_new_specialization(monkeypatch, lr_dtype, max_lr):
    rng = np.random.default_rng(11)
    params, grads = _draw(rng, [(1,), (1023,), (4097,)], steps=5)
    schedule = [0.05, 0.03, 0.011, 0.007, 0.0]
    lr = torch.tensor(schedule[0], dtype=lr_dtype)
    # The reference receives the values the tensor actually holds.
    lr_values = [float(torch.tensor(v, dtype=lr_dtype)) for v in schedule]
    launches = _Launches(monkeypatch)
    hyper = _hyper(lr=lr, weight_decay=0.2, max_lr=max_lr, cautious=True)
    ps, ms = _run(params, grads, lr_values=schedule, **hyper)
    ref = reference_lion(params, grads, dtype=np.float32, **{**hyper, "lr": lr_values})
    for p, m, rp, rm in zip(ps, ms, ref.params, ref.momentum):
        assert_exact(p, rp, what="param")
        assert_exact(m, rm, what="momentum")

    # Every launch passed the same non-tensor arguments: the learning rate travels only as the
    # tensor the kernel reads, so a compiled kernel is specialized once and never re-specialized.
    def scalars(call):
        return {k: v for k, v in call.items() if not isinstance(v, torch.Tensor)}

    assert len(launches.calls) == 2 * len(schedule)  # the cautious count, then the update
    assert all(scalars(c) == scalars(launches.calls[i % 2]) for i, c in enumerate(launches.calls))
    assert all(c["lr_ptr"] is lr and c["LR_ON_DEVICE"] for c in launches.calls)


# --- bfloat16 / float16 and mixed dtypes ----------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")  # the empty parameter
@pytest.mark.parametrize("variant", ["plain", "decoupled", "cautious_decay_maximize"])
def test_mixed_dtypes_in_one_call_equal_the_stored_reference(monkeypatch, variant):
    # Every (param, momentum) dtype pair in one call: each result equals the float32 reference step
    # on the stored values, rounded once to the storage dtype, at every step.
    pairs = [(p, m) for p in DTYPES.values() for m in DTYPES.values()]
    shapes = [(1023,), (4097,), (1,), (), (7, 3), (65,), (0,), (130,), (1,)][: len(pairs)]
    rng = np.random.default_rng(5)
    params, grads = _draw(rng, shapes, steps=5)
    p_dtypes, m_dtypes = [p for p, _ in pairs], [m for _, m in pairs]
    hyper = _hyper(**VARIANTS[variant])
    launches = _Launches(monkeypatch)
    ps, ms = _run(params, grads, p_dtypes=p_dtypes, m_dtypes=m_dtypes, **hyper)
    ref_p, ref_m = _stored_reference(params, grads, p_dtypes, m_dtypes, **hyper)
    for i in range(len(pairs)):
        assert ps[i].dtype == p_dtypes[i] and ms[i].dtype == m_dtypes[i]
        assert_exact(ps[i], ref_p[i], what=f"{variant}: param {pairs[i]}")
        assert_exact(ms[i], ref_m[i], what=f"{variant}: momentum {pairs[i]}")
    # One launch (two with the cautious count) per non-empty dtype combination and step.
    combos = {pairs[i] for i in range(len(pairs)) if int(np.prod(shapes[i]))}
    per_step = 2 if hyper["cautious"] else 1
    assert len(launches.calls) == 5 * per_step * len(combos)


@pytest.mark.parametrize("p_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_margin_step_is_close_to_float64(p_dtype):
    # Gradients with |c| >= 0.05: every path agrees on the sign, so one step is within the storage
    # dtype's rounding of the float64 reference, elementwise.
    rng = np.random.default_rng(13)
    m0 = rng.standard_normal(4097) * 0.1
    params = [rng.uniform(-1, 1, 4097)]
    g = margin_gradient(rng, m0, beta1=0.9)
    p = torch.tensor(params[0]).to(p_dtype)
    m = torch.tensor(m0, dtype=torch.float32)
    triton_lion.lion_([p], [torch.tensor(g).to(p_dtype)], [m], **_hyper(weight_decay=0.1))
    stored = [to_numpy(torch.tensor(params[0]).to(p_dtype)).astype(np.float64)]
    ref = reference_lion(stored, [[to_numpy(torch.tensor(g).to(p_dtype))]],
                         momentum=[to_numpy(torch.tensor(m0, dtype=torch.float32))], lr=0.01,
                         weight_decay=0.1)
    eps = torch.finfo(p_dtype).eps
    assert_within_budget(p, ref.params[0], atol=1e-7, rtol=eps, max_fraction=0.0, what="param")
    assert_within_budget(m, ref.momentum[0], atol=1e-7, rtol=1e-6, max_fraction=0.0, what="momentum")


@pytest.mark.parametrize(
    ("p_dtype", "m_dtype", "max_fraction"),
    [
        (torch.bfloat16, torch.float32, 0.01),
        (torch.bfloat16, torch.bfloat16, 0.05),  # the momentum's own rounding adds sign flips
        (torch.float16, torch.float32, 0.01),
    ],
)
def test_low_precision_trajectory_within_budget(p_dtype, m_dtype, max_fraction):
    # 200 steps against the float64 reference. With |p| ~ 0.1 a bfloat16 ulp is half the step, so
    # rounding moves most elements by a few ulps and flips a sign now and then (a 2 * lr move); a
    # wrong rule (beta1 = 0.99, say) puts 96% of the elements outside the same budget.
    rng = np.random.default_rng(17)
    shapes = [(300,), (1,), (37,)]
    params = [rng.uniform(-0.1, 0.1, s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(200)]
    hyper = _hyper(lr=1e-3, weight_decay=0.1)
    ps, ms = _run(params, grads, p_dtypes=[p_dtype] * 3, m_dtypes=[m_dtype] * 3, **hyper)
    ref = reference_lion([_round(p, p_dtype) for p in params], grads, **hyper)
    got = np.concatenate([to_numpy(p).reshape(-1) for p in ps])
    want = np.concatenate([p.reshape(-1) for p in ref.params])
    assert_within_budget(got, want, atol=4 * hyper["lr"], rtol=2**-7, max_fraction=max_fraction, what="param")
    assert np.abs(got - want).mean() < 2 * hyper["lr"]


# --- GradScaler -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cautious", [False, True])
def test_grad_scale_unscales_inside_the_kernel(cautious):
    rng = np.random.default_rng(19)
    params, grads = _draw(rng, [(1023,), (5,)], steps=3)
    hyper = _hyper(cautious=cautious, weight_decay=0.1)
    scale = 2.0**12  # GradScaler's scales are powers of two, so unscaling is exact
    ps = [torch.tensor(p) for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    for row in grads:
        scaled = [torch.tensor(g) * scale for g in row]
        before = [g.clone() for g in scaled]
        triton_lion.lion_(ps, scaled, ms, grad_scale=torch.tensor([scale]), **hyper)
        for g, b in zip(scaled, before):
            assert_exact(g, b, what="gradient (must not be written)")
    ref = reference_lion(params, grads, dtype=np.float32, **hyper)
    for p, m, rp, rm in zip(ps, ms, ref.params, ref.momentum):
        assert_exact(p, rp, what="param")
        assert_exact(m, rm, what="momentum")


# --- routing and layouts ---------------------------------------------------------------------------


def _triple(t: torch.Tensor):
    return t, torch.randn_like(t), torch.zeros_like(t)


@pytest.mark.parametrize(
    "case",
    [
        "transposed", "strided_slice", "float64", "complex64", "int32", "size_mismatch",
        "grad_channels_last_only", "sparse", "momentum_on_meta",
    ],
)
def test_supports_refuses_what_it_cannot_take(case):
    base = torch.randn(6, 8)
    if case == "transposed":
        p, g, m = base.t(), torch.randn(8, 6).t(), torch.zeros(8, 6).t()
    elif case == "strided_slice":
        p, g, m = base[:, ::2], base[:, ::2].clone(), torch.zeros(6, 4)
    elif case == "float64":
        p, g, m = _triple(base.double())
    elif case == "complex64":
        p, g, m = _triple(torch.randn(4, dtype=torch.complex64))
    elif case == "int32":
        p, g, m = torch.ones(4, dtype=torch.int32), torch.ones(4, dtype=torch.int32), torch.zeros(4)
    elif case == "size_mismatch":
        p, g, m = base, torch.randn(47), torch.zeros(6, 8)
    elif case == "grad_channels_last_only":
        p = torch.randn(2, 3, 4, 5)
        g = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
        m = torch.zeros(2, 3, 4, 5)
    elif case == "sparse":
        p, g, m = base, base.to_sparse(), torch.zeros(6, 8)
    else:
        p, g, m = base, torch.randn(6, 8), torch.zeros(6, 8, device="meta")
    assert not triton_lion.supports(p, g, m)
    assert triton_lion.lion_([torch.zeros(3), p], [torch.zeros(3), g], [torch.zeros(3), m], **HYPER) == [1]


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    p, g, m = _triple(torch.randn(5))
    assert triton_lion.supports(p, g, m)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_lion.supports(p, g, m)


def test_channels_last_tensors_are_updated_in_place_exactly():
    rng = np.random.default_rng(29)
    shape = (2, 3, 5, 7)
    params, grads = _draw(rng, [shape], steps=3)
    fmt = torch.channels_last
    p = torch.tensor(params[0]).contiguous(memory_format=fmt)
    m = torch.zeros(shape).contiguous(memory_format=fmt)
    hyper = _hyper(cautious=True, weight_decay=0.1)
    for row in grads:
        g = torch.tensor(row[0]).contiguous(memory_format=fmt)
        assert triton_lion.supports(p, g, m)
        triton_lion.lion_([p], [g], [m], **hyper)
    assert p.is_contiguous(memory_format=fmt)
    ref = reference_lion(params, grads, dtype=np.float32, **hyper)
    assert_exact(p, ref.params[0], what="param")
    assert_exact(m, ref.momentum[0], what="momentum")


def test_empty_inputs_launch_nothing(monkeypatch):
    launches = _Launches(monkeypatch)
    triton_lion.lion_([], [], [], **HYPER)
    params, grads, momenta = ([torch.zeros(0), torch.zeros(0, 3)] for _ in range(3))
    triton_lion.lion_(params, grads, momenta, **HYPER)
    assert launches.calls == []


# --- the table cache -------------------------------------------------------------------------------


def test_tables_are_cached_and_a_replaced_tensor_misses():
    for cache in (triton_lion._layouts, triton_lion._addresses):
        cache.clear()  # earlier tests' tensors may have left entries at reused addresses
    rng = np.random.default_rng(31)
    params, grads = _draw(rng, [(1023,), (77,), (4097,)], steps=4)
    hyper = _hyper(weight_decay=0.1)
    ps = [torch.tensor(p) for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    gs = [torch.empty_like(p) for p in ps]  # reused buffers, as autograd reuses .grad

    def step(k):
        for g, v in zip(gs, grads[k]):
            g.copy_(torch.from_numpy(v))
        triton_lion.lion_(ps, gs, ms, **hyper)

    step(0)
    step(1)
    assert (triton_lion._layouts.misses, triton_lion._addresses.misses) == (1, 1)
    assert (triton_lion._layouts.hits, triton_lion._addresses.hits) == (1, 1)

    # Replace the second parameter (new storage, same values): its old tensor must not change.
    old = ps[1]
    frozen = old.clone()
    ps[1] = old.clone()
    step(2)
    assert triton_lion._addresses.misses == 2 and triton_lion._layouts.hits == 2
    assert_exact(old, frozen, what="replaced tensor")
    gs[1] = torch.empty_like(ps[1])  # a new gradient buffer misses too
    step(3)
    assert triton_lion._addresses.misses == 3 and triton_lion._layouts.misses == 1
    assert_exact(old, frozen, what="replaced tensor")
    ref = reference_lion(params, grads, dtype=np.float32, **hyper)
    for p, rp in zip(ps, ref.params):
        assert_exact(p, rp, what="param")


def test_a_call_of_the_same_tensors_reuses_its_plan():
    """The launch plan (overlaps, launch groups, table keys) is made once per set of addresses, shapes
    and dtypes; a call with a replaced tensor is planned again, and every step equals the reference."""
    triton_lion._plans.clear()
    rng = np.random.default_rng(37)
    params, grads = _draw(rng, [(1023,), (77,), (0,), (4097,)], steps=3)
    hyper = _hyper(weight_decay=0.1)
    ps = [torch.tensor(p) for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    gs = [torch.empty_like(p) for p in ps]
    for k in range(2):
        for g, v in zip(gs, grads[k]):
            g.copy_(torch.from_numpy(v))
        assert triton_lion.lion_(ps, gs, ms, **hyper) == []
    assert (triton_lion._plans.misses, triton_lion._plans.hits) == (1, 1)
    gs[3] = torch.from_numpy(grads[2][3]).clone()  # a new gradient buffer: another call
    for i in range(3):
        gs[i].copy_(torch.from_numpy(grads[2][i]))
    assert triton_lion.lion_(ps, gs, ms, **hyper) == []
    assert (triton_lion._plans.misses, triton_lion._plans.hits) == (2, 1) and len(triton_lion._plans) == 2
    ref = reference_lion(params, grads, dtype=np.float32, **hyper)
    for p, m, rp, rm in zip(ps, ms, ref.params, ref.momentum):
        assert_exact(p, rp, what="param")
        assert_exact(m, rm, what="momentum")


def test_layout_table_chunks_every_tensor():
    layout = triton_lion._build_layout([0, 1, triton_lion.CHUNK, triton_lion.CHUNK + 1], torch.device("cpu"))
    numels, owner, index = layout.table.split([4, layout.n_chunks, layout.n_chunks])
    assert numels.tolist() == [0, 1, triton_lion.CHUNK, triton_lion.CHUNK + 1]
    assert owner.tolist() == [1, 2, 3, 3] and index.tolist() == [0, 0, 0, 1]


# --- int64 offsets -----------------------------------------------------------------------------------


def _beyond_int32_check() -> None:
    """Updates the last chunk of two fake tensors of more than 2**31 and 2**32 elements.

    Only the last chunk is launched, and each fake tensor's address is chosen so that chunk lands in
    a small real buffer: the kernel's int64 offset arithmetic is tested without 8 GiB of memory.
    Offsets computed in 32 bits would wrap and address memory far outside the buffers (a crash),
    which is why this runs in a subprocess.
    """
    chunk, tail = triton_lion.CHUNK, 1500  # a full block and a masked tail
    numels = [2**31 + tail, 2**32 + chunk + tail]
    rng = np.random.default_rng(37)
    hyper = _hyper(weight_decay=0.1, cautious=False)
    bufs = [[torch.tensor(rng.standard_normal(tail).astype(np.float32)) for _ in range(3)] for _ in numels]
    before = [[b.clone() for b in triple] for triple in bufs]
    last = [(n - 1) // chunk for n in numels]
    addresses = torch.tensor(
        [bufs[t][k].data_ptr() - last[t] * chunk * 4 for k in range(3) for t in range(2)], dtype=torch.int64
    )
    layout = torch.tensor([*numels, 0, 1, *last], dtype=torch.int64)
    kernel = triton_lion._kernel_module(interpret=True).lion_kernel
    unused = layout
    arguments = dict(
        addresses_ptr=addresses, layout_ptr=layout, n_tensors=2, n_chunks=2, counts_ptr=unused,
        lr_ptr=unused, lr=hyper["lr"], decay=1 - hyper["lr"] * hyper["weight_decay"], weight_decay=0.0,
        max_lr=1.0, beta1=0.9, one_minus_beta1=1 - 0.9, beta2=0.99, one_minus_beta2=1 - 0.99,
        grad_scale_ptr=unused, found_inf_ptr=unused, P_KIND=0, G_KIND=0, M_KIND=0, LR_ON_DEVICE=False,
        DECOUPLED=False, MAXIMIZE=False, CAUTIOUS=False, HAS_GRAD_SCALE=False, HAS_FOUND_INF=False,
        COUNT_ONLY=False, ALIGNED=False, BLOCK=triton_lion.BLOCK, CHUNK=chunk,
    )
    triton_lion._launch(kernel, (2,), arguments)
    for t in range(2):
        p, g, m = (x.numpy() for x in before[t])
        step_hyper = {k: hyper[k] for k in ("lr", "beta1", "beta2", "weight_decay")}
        want_p, want_m = reference_step(p, g, m, dtype=np.float32, **step_hyper)
        assert_exact(bufs[t][0], want_p, what=f"param of the fake {numels[t]}-element tensor")
        assert_exact(bufs[t][2], want_m, what=f"momentum of the fake {numels[t]}-element tensor")
        assert_exact(bufs[t][1], before[t][1], what="gradient")


def test_offsets_beyond_int32_are_computed_in_int64():
    code = "import tests.kernels.test_triton_lion as t; t._beyond_int32_check(); print('ok')"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (
        f"exit status {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )


# --- the code the GPU would run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_triton_cache(tmp_path_factory):
    """Compiles from scratch: a cached kernel would hide a build that fails in this process."""
    import triton

    with triton.knobs.cache.scope():
        triton.knobs.cache.dir = str(tmp_path_factory.mktemp("triton_cache"))
        yield


def _ptx(**constexprs) -> str:
    try:
        return triton_lion._compile_for_inspection(90, **constexprs)["ptx"]
    except Exception as error:  # no NVIDIA backend in this Triton build
        if "cuda" in str(error).lower() and "backend" in str(error).lower():
            pytest.skip(f"Triton cannot compile for NVIDIA here: {error}")
        raise


def _instructions(ptx: str) -> list[str]:
    import re

    return re.findall(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*)", ptx, re.M)


def test_gpu_code_rounds_like_the_reference(fresh_triton_cache):
    # sm_90 PTX of the widest variant: no fused multiply-add (it would round once where the
    # reference rounds twice), only correctly rounded division, and c - c kept (the NaN rule).
    ops = _instructions(
        _ptx(CAUTIOUS=True, LR_ON_DEVICE=True, DECOUPLED=True, HAS_GRAD_SCALE=True, HAS_FOUND_INF=True)
    )
    assert not [op for op in ops if op.startswith("fma") or ".approx" in op or ".full" in op or ".ftz" in op]
    assert "div.rn.f32" in ops and "div.rn.f64" in ops
    # Per element two subtractions (c - c and p * d - lr * u), in the full-block and tail paths.
    per_thread = triton_lion.BLOCK // (32 * triton_lion.NUM_WARPS)
    assert ops.count("sub.rn.f32") == 2 * 2 * per_thread


@pytest.mark.parametrize("kinds", [(0, 0, 0), (1, 1, 0), (2, 2, 1)])
def test_gpu_code_uses_16_byte_accesses_for_full_blocks(kinds, fresh_triton_cache):
    p, g, m = kinds
    ops = _instructions(_ptx(P_KIND=p, G_KIND=g, M_KIND=m))
    assert "ld.global.v4.b32" in ops and "st.global.v4.b32" in ops
    assert not [op for op in ops if op.startswith("fma")]


# --- on a GPU -------------------------------------------------------------------------------------------


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cuda_float32_equals_reference_exactly(variant):
    rng = np.random.default_rng(41)
    shapes = [*SHAPES, MULTI_CHUNK, (3 * triton_lion.CHUNK + 5,)]
    params, grads = _draw(rng, shapes, steps=5)
    hyper = _hyper(**VARIANTS[variant])
    ps, ms = _run(params, grads, device="cuda", **hyper)
    ref = reference_lion(params, grads, dtype=np.float32, **hyper)
    for i, (p, m, rp, rm) in enumerate(zip(ps, ms, ref.params, ref.momentum)):
        assert_exact(p, rp, what=f"{variant}: param {shapes[i]}")
        assert_exact(m, rm, what=f"{variant}: momentum {shapes[i]}")


@pytest.mark.cuda
@cuda
def test_cuda_mixed_dtypes_equal_the_stored_reference():
    pairs = [(p, m) for p in DTYPES.values() for m in DTYPES.values()]
    shapes = [(4097,), (1023,), (1,), (), (70000,), (65,), (0,), (130,), (17,)]
    rng = np.random.default_rng(43)
    params, grads = _draw(rng, shapes, steps=5)
    p_dtypes, m_dtypes = [p for p, _ in pairs], [m for _, m in pairs]
    hyper = _hyper(**VARIANTS["cautious_decay_maximize"])
    ps, ms = _run(params, grads, device="cuda", p_dtypes=p_dtypes, m_dtypes=m_dtypes, **hyper)
    ref_p, ref_m = _stored_reference(params, grads, p_dtypes, m_dtypes, **hyper)
    for i in range(len(pairs)):
        assert_exact(ps[i], ref_p[i], what=f"param {pairs[i]}")
        assert_exact(ms[i], ref_m[i], what=f"momentum {pairs[i]}")


@pytest.mark.cuda
@cuda
def test_cuda_lr_tensor_change_does_not_recompile():
    rng = np.random.default_rng(47)
    params, grads = _draw(rng, [(1023,), (4097,)], steps=4)
    schedule = [0.02, 0.01, 0.005, 0.001]
    lr = torch.tensor(schedule[0], device="cuda")
    hyper = _hyper(lr=lr, weight_decay=0.1)
    ps, ms = _run(params, grads[:1], device="cuda", lr_values=schedule[:1], **hyper)
    compiled = triton_lion._compiled_variants()
    assert compiled >= 1
    for step in range(1, 4):
        lr.fill_(schedule[step])
        triton_lion.lion_(ps, [torch.tensor(g, device="cuda") for g in grads[step]], ms, **hyper)
    assert triton_lion._compiled_variants() == compiled
    lr_values = [float(torch.tensor(v)) for v in schedule]
    ref = reference_lion(params, grads, dtype=np.float32, **{**hyper, "lr": lr_values})
    for p, rp in zip(ps, ref.params):
        assert_exact(p, rp, what="param")


@pytest.mark.cuda
@cuda
def test_cuda_graph_replays_with_a_scheduled_lr():
    rng = np.random.default_rng(53)
    params, grads = _draw(rng, [(1023,), (70000,), (5,)], steps=6)
    schedule = [0.03 * 0.7**k for k in range(6)]
    lr = torch.tensor(schedule[0], device="cuda")
    hyper = _hyper(lr=lr, weight_decay=0.1, cautious=True)
    ps = [torch.tensor(p, device="cuda") for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    gs = [torch.tensor(g, device="cuda") for g in grads[0]]
    found = torch.zeros(1, device="cuda")
    scale = torch.ones(1, device="cuda")

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up: compiles and caches the tables
        triton_lion.lion_(ps, gs, ms, grad_scale=scale, found_inf=found, **hyper)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        triton_lion.lion_(ps, gs, ms, grad_scale=scale, found_inf=found, **hyper)
    for step in range(1, 6):  # the scheduler writes the tensor; the graph reads it
        for g, v in zip(gs, grads[step]):
            g.copy_(torch.from_numpy(v))
        lr.fill_(schedule[step])
        graph.replay()
    torch.cuda.synchronize()
    lr_values = [float(torch.tensor(v)) for v in schedule]
    ref = reference_lion(params, grads, dtype=np.float32, **{**hyper, "lr": lr_values})
    for p, m, rp, rm in zip(ps, ms, ref.params, ref.momentum):
        assert_exact(p, rp, what="param")
        assert_exact(m, rm, what="momentum")


@pytest.mark.cuda
@cuda
def test_cuda_found_inf_skips_on_the_device():
    rng = np.random.default_rng(59)
    params, grads = _draw(rng, [(4097,)], steps=1)
    p = torch.tensor(params[0], device="cuda")
    m = torch.zeros_like(p)
    g = torch.tensor(grads[0][0], device="cuda")
    triton_lion.lion_([p], [g], [m], found_inf=torch.ones(1, device="cuda"),
                      grad_scale=torch.full((1,), 2.0, device="cuda"), **HYPER)
    assert_exact(p, params[0], what="param")
    assert_exact(m, np.zeros_like(params[0]), what="momentum")

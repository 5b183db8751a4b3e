"""The kernels' state-format routines (int8 momentum, stochastically rounded bfloat16 parameters),
tested once for both kernels against ``lion_core.reference.reference_lion_stored``.

Every test runs on ``cpu_lion`` and on ``triton_lion`` (CPU tensors under the Triton interpreter:
``TRITON_INTERPRET=1 python -m pytest tests/kernels``). The rows are ``cases.FORMAT_CASES``; the
oracle computes each step in float32 and stores the parameter with the row's rounding and the
momentum in ``lion_core.INT8`` (``cases.reference``). The kernels compute the reference's operation
order, one correctly rounded float32 operation at a time, so codes and scales must match bit for
bit, and so must the parameters (stricter than ``cases.STOCHASTIC_BUDGET``, which allows for paths
that round one product differently).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from lion_kernels import KernelError, cpu_lion, triton_lion

import lion_core
from lion_core import (
    INT8,
    MOMENTUM_STREAM,
    PARAM_STREAM,
    derive_seed,
    keyed_hash,
    step_key,
    stochastic_round_bfloat16,
)
from lion_core.reference import Int8State, reference_step
from tests import cases
from tests.kernels.test_contract import HYPER, KERNELS, TORCH

pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

#: Odd sizes around the 256-element block (one, a short block, a block and one, 16 blocks and
#: one), zero-size tensors, a 0-d one, and a multi-dimensional one flattened across its rows.
SHAPES: tuple[tuple[int, ...], ...] = ((1,), (255,), (257,), (4097,), (0,), (), (3, 1, 100), (2, 0, 3))
STEPS = 5
#: (step, parameter) without a gradient: the 257-element tensor skips step 2 (its own step then
#: lags the others': its random bits count its own updates).
MISSING = (2, 2)


def _keys(case: cases.Case, steps: list[int], stream: int) -> list[int]:
    """Each tensor's step key: its position ``t`` and its own step (the updates it has had)."""
    return [step_key(derive_seed(case.seed, stream, t), step) for t, step in enumerate(steps)]


class State:
    """A row's tensors as a fused caller keeps them: parameters, momenta (codes), scales."""

    def __init__(self, case: cases.Case, init: list[np.ndarray], device: str = "cpu") -> None:
        self.case = case
        self.device = device
        dtype = TORCH[case.param_dtype]
        self.params = [torch.tensor(np.asarray(x, np.float64)).to(device, dtype) for x in init]
        self.int8 = case.momentum_dtype == "int8"
        dtype = torch.int8 if self.int8 else TORCH[case.momentum_dtype]
        self.momenta = [torch.zeros(p.shape, dtype=dtype, device=device) for p in self.params]
        self.scales = [torch.zeros(INT8.blocks(p.numel()), device=device) if self.int8 else None
                       for p in self.params]
        #: Each tensor's own step: the updates it has had (a step without its gradient does not count).
        self.updates = [0] * len(self.params)

    def step(self, kernel: Any, step: int, row: list[np.ndarray | None], **overrides: Any) -> list[int]:
        """One ``lion_`` call over the tensors with a gradient (tensor index = position in ``init``)."""
        case = self.case
        chosen = [i for i, g in enumerate(row) if g is not None]
        mkeys = _keys(case, self.updates, MOMENTUM_STREAM)
        pkeys = _keys(case, self.updates, PARAM_STREAM)
        grad_scale = overrides.pop("grad_scale", None)
        grads = [torch.tensor(np.asarray(row[i], np.float64)).to(self.device, TORCH[case.gradient_dtype])
                 for i in chosen]
        if grad_scale is not None:
            grads = [g * grad_scale for g in grads]
        arguments = dict(
            lr=case.lr_at(step), beta1=case.beta1, beta2=case.beta2, weight_decay=case.weight_decay,
            max_lr=case.reference_max_lr, cautious=case.cautious, maximize=case.maximize,
            scales=[self.scales[i] for i in chosen] if self.int8 else None,
            momentum_keys=[mkeys[i] for i in chosen] if self.int8 else None,
            param_keys=[pkeys[i] for i in chosen] if case.rounding == "stochastic" else None,
            grad_scale=None if grad_scale is None else torch.tensor(float(grad_scale)),
        )
        arguments.update(overrides)
        left = kernel.lion_([self.params[i] for i in chosen], grads, [self.momenta[i] for i in chosen],
                            **arguments)
        found_inf = arguments.get("found_inf")
        if found_inf is None or float(found_inf) == 0:  # a skipped step is not an update
            for i in chosen:
                self.updates[i] += 1
        return left

    def assert_equal(self, expected: Any, what: str = "") -> None:
        for i, p in enumerate(self.params):
            cases.assert_exact(p, expected.params[i], what=f"{what}param {i}")
            if self.int8:
                stored = expected.stored[i]
                assert isinstance(stored, Int8State)
                cases.assert_exact(self.momenta[i], stored.codes, what=f"{what}codes {i}")
                cases.assert_exact(self.scales[i], stored.scales, what=f"{what}scales {i}")
                assert self.momenta[i].dtype == torch.int8 and self.scales[i].dtype == torch.float32
            else:
                cases.assert_exact(self.momenta[i], expected.momentum[i], what=f"{what}momentum {i}")


def _run(kernel: Any, case: cases.Case, problem: cases.Problem, device: str = "cpu",
         **overrides: Any) -> State:
    state = State(case, problem.init, device)
    for step, row in enumerate(problem.grads):
        left = state.step(kernel, step, row, **dict(overrides))
        assert left == [], f"step {step}: handed back {left}"
    return state


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", cases.FORMAT_CASES, ids=cases.case_id)
def test_format_cases_bit_for_bit(kernel, case):
    """Every format row, odd and zero sizes, a step without a gradient: codes, scales and parameters
    equal to the oracle's last bit."""
    problem = cases.problem(case, shapes=SHAPES, steps=STEPS, missing=MISSING)
    state = _run(kernel, case, problem)
    expected = cases.reference(case, problem)
    state.assert_equal(expected)
    if state.int8:  # the test can fail: the codes moved and use their range
        assert any(int(m.abs().max()) >= 100 for m in state.momenta if m.numel())


VARIANTS = {
    "maximize_cautious": dict(maximize=True, cautious=True, weight_decay=0.3),
    "decoupled": dict(weight_decay=0.5, max_lr=2e-3, decouple_lr=True),
    "betas": dict(beta1=0.5, beta2=0.875, weight_decay=0.0),
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("row", ["int8_momentum", "int8_stochastic_rounding", "stochastic_rounding"])
def test_format_variants(kernel, variant, row):
    case = dataclasses.replace(cases.by_id(cases.FORMAT_CASES, row), **VARIANTS[variant])
    problem = cases.problem(case, shapes=((257,), (1,), (0,), (3, 100)), steps=3, missing=None)
    state = _run(kernel, case, problem)
    state.assert_equal(cases.reference(case, problem))


@pytest.mark.parametrize("kernel", KERNELS)
def test_grad_scale_unscales_and_found_inf_writes_nothing(kernel):
    case = cases.by_id(cases.FORMAT_CASES, "int8_stochastic_rounding")
    problem = cases.problem(case, shapes=((300,), (5,)), steps=2, missing=None)
    state = State(case, problem.init)
    before = [(p.clone(), m.clone()) for p, m in zip(state.params, state.momenta)]
    scales_before = [s.clone() for s in state.scales]
    assert state.step(kernel, 0, problem.grads[0], found_inf=torch.tensor(1.0)) == []
    for i, (p, m) in enumerate(before):
        assert torch.equal(state.params[i], p) and torch.equal(state.momenta[i], m), f"triple {i} written"
        assert torch.equal(state.scales[i], scales_before[i]), f"scales {i} written"
    for step, row in enumerate(problem.grads):  # GradScaler's powers of two: unscaling is exact
        assert state.step(kernel, step, row, grad_scale=2.0**12, found_inf=torch.tensor(0.0)) == []
    state.assert_equal(cases.reference(case, problem))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("value", list(cases.NONFINITE), ids=list(cases.NONFINITE))
def test_non_finite_gradients(kernel, value):
    """A NaN or infinite gradient: its block's scale is not finite and its codes 0 (it decodes to
    NaN, so the divergence surfaces), the stochastically rounded parameter is NaN where the
    oracle's is; other blocks are untouched by it."""
    case = cases.by_id(cases.FORMAT_CASES, "int8_stochastic_rounding")
    problem = cases.problem(case, shapes=((600,), (9,)), steps=3, missing=None)
    problem.grads[1][0] = problem.grads[1][0].copy()
    problem.grads[1][0][300] = cases.NONFINITE[value]  # block 1 of parameter 0, at step 1
    state = _run(kernel, case, problem)
    expected = cases.reference(case, problem)
    state.assert_equal(expected)
    assert not np.isfinite(state.scales[0][1].item()) and not state.momenta[0][256:512].any()
    assert np.isfinite(state.scales[0][[0, 2]].numpy()).all()


def _bits(key: int, size: int) -> np.ndarray:
    """``counter_hash`` bits of flat indices 0 .. size - 1 for a step key (``lion_core.keyed_hash``)."""
    return keyed_hash(key, np.arange(size, dtype=np.uint32))


def test_bits_from_a_step_key_are_counter_hash():
    """What the kernels receive (the step key) gives lion_core.counter_hash's bits."""
    seed = derive_seed(5, MOMENTUM_STREAM, 3)
    index = np.arange(1000, dtype=np.uint32)
    expected = lion_core.counter_hash(np.uint32(seed), np.uint32(9), index)
    assert np.array_equal(_bits(step_key(seed, 9), 1000), expected)


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_call_mixes_formats_and_reduces_cautious_counts_once(kernel):
    """Float, int8 and stochastically rounded triples in one cautious call: one ``cautious_reduce``
    call, a row per updated triple in index order; the float triple gets the bits of a call without
    formats; an unsupported triple is handed back untouched."""
    gen = torch.Generator().manual_seed(11)
    sizes = [300, 7, 513, 40, 9]
    dtypes = [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16, torch.float64]
    params = [torch.randn(s, generator=gen).to(d) for s, d in zip(sizes, dtypes)]
    grads = [torch.randn(s, generator=gen).to(d) for s, d in zip(sizes, dtypes)]
    momenta = [torch.zeros(300, dtype=torch.int8), torch.randn(7, generator=gen),
               torch.zeros(513, dtype=torch.int8), torch.randn(40, generator=gen),
               torch.randn(9, generator=gen, dtype=torch.float64)]
    scales = [torch.zeros(2), None, torch.zeros(3), None, None]
    mkeys = [123, None, 4_000_000_000, None, None]
    pkeys = [None, None, 789, 1011, None]
    before = [(p.clone(), m.clone()) for p, m in zip(params, momenta)]
    calls = []

    def reduce(local: torch.Tensor) -> torch.Tensor:
        calls.append(local.clone())
        return local

    hyper = dict(HYPER, cautious=True)
    left = kernel.lion_(params, grads, momenta, **hyper, cautious_reduce=reduce, scales=scales,
                        momentum_keys=mkeys, param_keys=pkeys)
    # float64 with a float momentum (Triton: no float64 at all) is handed back in such a call.
    assert left == [4]
    assert torch.equal(params[4], before[4][0]) and torch.equal(momenta[4], before[4][1])
    updated = [0, 1, 2, 3]
    assert len(calls) == 1 and calls[0][:, 1].tolist() == [sizes[i] for i in updated]
    # The float triples, alone and without formats: the same bits.
    p, m = before[1][0].clone(), before[1][1].clone()
    assert kernel.lion_([p], [grads[1]], [m], **hyper) == []
    assert torch.equal(params[1], p) and torch.equal(momenta[1], m)
    # The formatted ones: lion_core's float32 step, encode and stochastic rounding with their keys.
    for row, i in enumerate(updated):
        p0, g = before[i][0].float().numpy(), grads[i].float().numpy()
        m0 = np.zeros(sizes[i], np.float32) if scales[i] is not None else before[i][1].float().numpy()
        c = np.float32(0.9) * m0 + np.float32(0.1) * g
        assert calls[0][row].tolist() == [int((np.sign(c) * g > 0).sum()), sizes[i]], f"row of triple {i}"
        if i == 1:
            continue
        new_p, new_m = reference_step(p0, g, m0, dtype=np.float32, **hyper)
        if pkeys[i] is not None:
            new_p = stochastic_round_bfloat16(new_p, _bits(pkeys[i], sizes[i]))
        cases.assert_exact(params[i], new_p, what=f"param {i}")
        if scales[i] is not None:
            codes, block_scales = INT8.encode(new_m, _bits(mkeys[i], sizes[i]), xp=np)
            cases.assert_exact(momenta[i].numpy(), codes, what=f"codes {i}")
            cases.assert_exact(scales[i], block_scales, what=f"scales {i}")
        else:
            cases.assert_exact(momenta[i], new_m, what=f"momentum {i}")


@pytest.mark.parametrize("kernel", KERNELS)
def test_overlapping_format_triples_are_handed_back(kernel):
    """Parameters viewing one storage, or two int8 momenta sharing their scales: handed back, unwritten."""
    storage = torch.randn(600, generator=torch.Generator().manual_seed(12))
    shared = torch.zeros(2)
    params = [storage[:300], storage[200:500], torch.ones(300), torch.ones(300), torch.ones(300)]
    grads = [torch.ones(300) for _ in params]
    momenta = [torch.zeros(300, dtype=torch.int8) for _ in params]
    scales = [torch.zeros(2), torch.zeros(2), shared, shared, torch.zeros(2)]
    before = storage.clone()
    left = kernel.lion_(params, grads, momenta, **HYPER, scales=scales, momentum_keys=[1, 2, 3, 4, 5])
    assert left == [0, 1, 2, 3]
    assert torch.equal(storage, before) and not shared.any()
    assert not any(m.any() for m in momenta[:4])
    assert momenta[4].any() and scales[4].all() and not torch.equal(params[4], torch.ones(300))
    # Cached with the plan: the same answer again.
    assert kernel.lion_(params, grads, momenta, **HYPER, scales=scales, momentum_keys=[1, 2, 3, 4, 5]) == left


def _misuse() -> dict[str, tuple[dict[str, Any], str]]:
    two = [torch.zeros(2)]
    scales = r"`scales\[0\]` must be a contiguous float32 tensor of shape \(2,\)"
    return {
        "scales_length": (dict(scales=[torch.zeros(2), None]),
                          r"`scales` must have one entry per parameter. Received: 2 entries for 1 params"),
        "keys_length": (dict(scales=two, momentum_keys=[]), r"`momentum_keys` must have one entry"),
        "scales_dtype": (dict(scales=[torch.zeros(2, dtype=torch.float64)]),
                         scales + r".*Received: torch.float64"),
        "scales_shape": (dict(scales=[torch.zeros(3)]), scales + r".*Received: torch.float32 \(3,\)"),
        "scales_2d": (dict(scales=[torch.zeros(1, 2)]), scales + r".*Received: torch.float32 \(1, 2\)"),
        "scales_strided": (dict(scales=[torch.zeros(4)[::2]]), scales),
        "no_key": (dict(scales=two, momentum_keys=[None]), r"`momentum_keys\[0\]` is None"),
        "key_range": (dict(scales=two, momentum_keys=[2**32]), r"`momentum_keys\[0\]` must be a step key"),
        "key_bool": (dict(scales=two, momentum_keys=[True]), r"`momentum_keys\[0\]` must be a step key"),
        "param_key_float32": (dict(scales=two, param_keys=[5]),
                              r"`param_keys\[0\]` is given for a parameter of torch.float32"),
    }


MISUSE = _misuse()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("misuse", list(MISUSE))
def test_format_misuse_raises_kernel_error_and_writes_nothing(kernel, misuse):
    formats, message = MISUSE[misuse]
    formats = {"momentum_keys": [7], **formats}
    p, g, m = torch.ones(300), torch.ones(300), torch.zeros(300, dtype=torch.int8)
    with pytest.raises(KernelError, match=message):
        kernel.lion_([p], [g], [m], **HYPER, **formats)
    assert torch.equal(p, torch.ones(300)) and not m.any()


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_codes_without_scales_raise_in_a_call_with_formats(kernel):
    """(In a call without any state format, int8 momenta are an unsupported dtype: handed back.)"""
    p, m = torch.ones(300), torch.zeros(300, dtype=torch.int8)
    q = torch.ones(4, dtype=torch.bfloat16)
    with pytest.raises(KernelError, match=r"`scales\[0\]` is None, but `momenta\[0\]` holds int8 codes"):
        kernel.lion_([p, q], [torch.ones(300), q.clone()], [m, torch.zeros(4)], **HYPER, param_keys=[None, 3])
    assert torch.equal(p, torch.ones(300)) and torch.equal(q, torch.ones(4, dtype=torch.bfloat16))
    assert kernel.lion_([p], [torch.ones(300)], [m], **HYPER) == [0]
    assert torch.equal(p, torch.ones(300)) and not m.any()


@pytest.mark.parametrize("kernel", KERNELS)
def test_scales_given_for_a_float_momentum_raise(kernel):
    p, m = torch.ones(4), torch.zeros(4)
    with pytest.raises(KernelError, match=r"`scales\[0\]` is given, but `momenta\[0\]` is not int8 codes"):
        kernel.lion_([p], [torch.ones(4)], [m], **HYPER, scales=[torch.zeros(1)], momentum_keys=[1])
    with pytest.raises(KernelError, match=r"`momentum_keys\[0\]` is given without `scales\[0\]`"):
        kernel.lion_([p], [torch.ones(4)], [m], **HYPER, momentum_keys=[1])
    assert torch.equal(p, torch.ones(4)) and not m.any()


@pytest.mark.parametrize(
    "variant",
    [
        dict(),
        dict(P_KIND=1, G_KIND=1, STOCHASTIC=True, CAUTIOUS=True, LR_ON_DEVICE=True, DECOUPLED=True,
             HAS_GRAD_SCALE=True, HAS_FOUND_INF=True),
    ],
    ids=["int8", "bf16_stochastic_int8_everything"],
)
def test_gpu_code_of_the_formats_rounds_like_the_reference(variant):
    """sm_90 PTX of ``lion_stored_kernel`` (no GPU needed): it compiles; no fused multiply-add, no
    approximate division; the one flush-to-zero instruction is the floor of the codes, whose
    result does not change a code (see the kernel's comment; subnormal y is tested on the CPU)."""
    import re

    try:
        ptx = triton_lion._compile_for_inspection(90, stored=True, **variant)["ptx"]
    except Exception as error:  # no NVIDIA backend in this Triton build
        if "cuda" in str(error).lower() and "backend" in str(error).lower():
            pytest.skip(f"Triton cannot compile for NVIDIA here: {error}")
        raise
    ops = re.findall(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*)", ptx, re.MULTILINE)
    assert not [op for op in ops if op.startswith("fma") or ".approx" in op or ".full" in op]
    assert {op for op in ops if ".ftz" in op} == {"cvt.rmi.ftz.f32.f32"}
    assert "div.rn.f32" in ops and "max.u32" in ops and "st.global.b8" in ops


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("kernel", KERNELS)
def test_subnormal_and_degenerate_blocks(kernel):
    """Blocks whose scale is 0 or subnormal, and tiny entries beside large ones (subnormal y):
    codes and scales as lion_core encodes them."""
    g = np.zeros(1024, np.float32)
    g[:256] = np.float32(2.0**-149) * (np.arange(256) % 81 - 40).astype(np.float32)  # scale rounds to 0
    g[256:512] = np.float32(2.0**-120) * np.sign(np.arange(256) - 127.5)  # a subnormal scale
    g[512:768] = np.float32(1.0)
    g[512:768:2] = -np.float32(2.0**-137)  # subnormal y beside a large entry
    g[768:] = np.float32(-1e30)
    p, m, s = torch.zeros(1024), torch.zeros(1024, dtype=torch.int8), torch.zeros(4)
    grads = torch.from_numpy(g / np.float32(0.01))  # the new momentum (1 - beta2) g is about g
    hyper = dict(HYPER, weight_decay=0.0)
    assert kernel.lion_([p], [grads], [m], **hyper, scales=[s], momentum_keys=[77]) == []
    _, new_m = reference_step(np.zeros(1024), grads.numpy(), np.zeros(1024), dtype=np.float32, **hyper)
    codes, scales = INT8.encode(new_m, _bits(77, 1024), xp=np)
    assert scales[0] == 0 and 0 < scales[1] < np.finfo(np.float32).tiny and np.isfinite(scales).all()
    assert (new_m[512:768:2] < 0).all() and (new_m[512:768:2] * 127 > -np.finfo(np.float32).tiny).all()
    cases.assert_exact(m.numpy(), codes, what="codes")
    cases.assert_exact(s, scales, what="scales")


@pytest.mark.parametrize("kernel", KERNELS)
def test_tensors_across_work_items(kernel):
    """Tensors longer than a work item (CPU: 65536 elements, Triton: 16384), after a short one whose
    padding shifts the CPU kernel's block-aligned offsets: every block once, with its own index."""
    case = cases.by_id(cases.FORMAT_CASES, "int8_stochastic_rounding")
    problem = cases.problem(case, shapes=((300,), (70_001,), (5,)), steps=2, missing=None)
    state = _run(kernel, case, problem)
    state.assert_equal(cases.reference(case, problem))


@pytest.mark.parametrize("cautious", [False, True])
def test_float64_parameters_with_int8_momentum_on_the_cpu(cautious):
    """float64 parameters (CPU kernel only; Triton hands them back): the step in float64, the codes
    encoded from the float64 momentum, as ``reference_lion_stored`` computes them."""
    case = dataclasses.replace(cases.by_id(cases.FORMAT_CASES, "int8_momentum"), id="int8_float64",
                               param_dtype="float64", lr=0.01, cautious=cautious)
    problem = cases.problem(case, shapes=SHAPES, steps=STEPS, missing=MISSING)
    state = _run(cpu_lion, case, problem)
    state.assert_equal(cases.reference(case, problem))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", cases.FORMAT_CASES, ids=cases.case_id)
def test_cuda_format_cases_bit_for_bit(case):
    """The format rows on CUDA tensors: the Triton kernel's compiled code (not the interpreter) must
    give the oracle's codes, scales and parameters bit for bit, as it does in the interpreter."""
    problem = cases.problem(case, shapes=(*SHAPES, (70_001,)), steps=STEPS, missing=MISSING)
    state = _run(triton_lion, case, problem, device="cuda")
    state.assert_equal(cases.reference(case, problem))

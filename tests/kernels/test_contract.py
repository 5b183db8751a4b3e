"""The kernel contract (``lion_kernels._contract``), tested once for both kernels against the oracle.

Every test runs on ``cpu_lion`` and on ``triton_lion`` (on CPU tensors under the Triton interpreter:
``TRITON_INTERPRET=1 python -m pytest tests/kernels``). The rows come from ``tests/cases.py``; the
oracle is ``lion_core.reference`` through ``cases.reference``: float64 bit for bit (CPU kernel), the
float32 and bfloat16 rows bit for bit against the float32 reference of the same operation order,
rounded when stored (both kernels; Triton runs the float64 rows in float32).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import pytest
import torch

from lion_core.reference import reference_step
from lion_kernels import KernelError, LionKernel, cpu_lion, triton_lion
from tests import cases

pytestmark = [
    # The float64 reference takes the mean of an empty cautious mask for zero-size arrays.
    pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

TORCH = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


def _kernel_param(module: Any) -> Any:
    reason = module.unavailable_reason()
    if module is triton_lion and os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        reason = "the Triton kernel runs on CPU tensors only with TRITON_INTERPRET=1 (see tests/run.sh)"
    marks = [] if reason is None else [pytest.mark.skip(reason=reason)]
    return pytest.param(module, id=module.name, marks=marks)


KERNELS = [_kernel_param(cpu_lion), _kernel_param(triton_lion)]
#: Triton has no float64 kernel: it runs the float64 rows in float32, against the float32 oracle.
WORKING_DTYPE = {"cpu_lion": "float64", "triton_lion": "float32"}
HYPER = dict(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1, max_lr=None, cautious=False, maximize=False)


def _dtype_case(kernel: Any, case: cases.Case) -> cases.Case:
    if case.param_dtype == "float64":
        return case.at_dtypes(WORKING_DTYPE[kernel.name])
    return case


def _tensor(x: np.ndarray, dtype: str) -> torch.Tensor:
    return torch.tensor(np.asarray(x, dtype=np.float64)).to(TORCH[dtype])


def _run(kernel: Any, case: cases.Case, problem: cases.Problem) -> tuple[list, list]:
    """The translator: one ``lion_`` call per step over the parameters that have a gradient."""
    params = [_tensor(x, case.param_dtype) for x in problem.init]
    momenta = [torch.zeros(p.shape, dtype=TORCH[case.momentum_dtype]) for p in params]
    for step, row in enumerate(problem.grads):
        chosen = [i for i, g in enumerate(row) if g is not None]
        left = kernel.lion_(
            [params[i] for i in chosen],
            [_tensor(row[i], case.gradient_dtype) for i in chosen],
            [momenta[i] for i in chosen],
            lr=case.lr_at(step), beta1=case.beta1, beta2=case.beta2, weight_decay=case.weight_decay,
            max_lr=case.reference_max_lr, cautious=case.cautious, maximize=case.maximize,
        )
        assert left == [], f"step {step}: handed back {left}"
    return params, momenta


def _assert_result(params, momenta, expected, what: str = "") -> None:
    for i, (p, m) in enumerate(zip(params, momenta)):
        cases.assert_exact(p, expected.params[i], what=f"{what}param {i}")
        cases.assert_exact(m, expected.momentum[i], what=f"{what}momentum {i}")


def test_both_modules_implement_the_protocol():
    for module, device in ((cpu_lion, "cpu"), (triton_lion, "cuda")):
        assert isinstance(module, LionKernel)
        assert module.device_type == device and module.name == module.__name__.rpartition(".")[2]
        assert not hasattr(module, "supports_all") and not hasattr(module, "require")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", [*cases.CASES, *cases.LOW_PRECISION_CASES], ids=cases.case_id)
def test_cases_bit_for_bit(kernel, case):
    """Every row, odd and zero sizes, a step with a None gradient: equal to the oracle's last bit."""
    case = _dtype_case(kernel, case)
    problem = cases.problem(case)
    params, momenta = _run(kernel, case, problem)
    _assert_result(params, momenta, cases.reference(case, problem))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("value", list(cases.NONFINITE), ids=list(cases.NONFINITE))
def test_non_finite_gradients(kernel, value):
    case = _dtype_case(kernel, cases.by_id(cases.CASES, "weight_decay"))
    problem = cases.problem(case, shapes=cases.NONFINITE_SHAPES, steps=3, missing=None)
    problem.grads[1][0] = problem.grads[1][0].copy()
    problem.grads[1][0][cases.NONFINITE_AT] = cases.NONFINITE[value]  # at step 1, in parameter 0
    params, momenta = _run(kernel, case, problem)
    _assert_result(params, momenta, cases.reference(case, problem))


@pytest.mark.parametrize("kernel", KERNELS)
def test_found_inf_writes_nothing_and_grad_scale_unscales(kernel):
    p, g, m = torch.randn(50, generator=torch.Generator().manual_seed(1)), torch.ones(50), torch.zeros(50)
    before = p.clone()
    assert kernel.lion_([p], [g], [m], **HYPER, found_inf=torch.tensor(1.0)) == []
    assert torch.equal(p, before) and not m.any()
    scaled = kernel.lion_([p], [g * 1024], [m], **HYPER, grad_scale=torch.tensor(1024.0),
                          found_inf=torch.tensor(0.0))
    q, n = before.clone(), torch.zeros(50)
    kernel.lion_([q], [g], [n], **HYPER)
    assert scaled == [] and torch.equal(p, q) and torch.equal(m, n)


def _mixed_lists(kernel: Any) -> tuple[list, list, list, list[int]]:
    """Supported triples mixed with ones the kernel must hand back untouched; and their indices."""
    gen = torch.Generator().manual_seed(2)

    def r(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen).to(dtype)

    class Wrapped(torch.Tensor):  # any subclass: its pointer may not be its data
        pass

    other = torch.float16 if kernel is cpu_lion else torch.float64  # a dtype the kernel lacks
    triples = [
        (r(7), r(7), r(7)),  # 0 supported
        (r(4, 6).t(), r(4, 6).t(), r(4, 6).t()),  # 1 non-contiguous
        (r(5, dtype=other), r(5, dtype=other), r(5, dtype=other)),  # 2 unsupported dtype
        (r(3), r(3), r(3, dtype=torch.float64)),  # 3 mixed float32/float64
        (r(6), r(2, 3), r(6)),  # 4 shapes differ
        (r(9), None, r(9)),  # 5 no gradient
        (torch.Tensor._make_subclass(Wrapped, r(8)), r(8), r(8)),  # 6 a subclass
        (r(4), torch.view_as_real(torch.randn(2, dtype=torch.complex64)).reshape(4), r(4)),  # 7 supported
        (r(0), r(0), r(0)),  # 8 zero-size, supported
        (torch.randn(3, dtype=torch.complex64, generator=gen).conj().imag, r(3), r(3)),  # 9 negated view
    ]
    refused = [1, 2, 3, 4, 5, 6, 9]
    params, grads, momenta = (list(column) for column in zip(*triples))
    return params, grads, momenta, refused


@pytest.mark.parametrize("kernel", KERNELS)
def test_unsupported_triples_are_handed_back_untouched(kernel):
    params, grads, momenta, refused = _mixed_lists(kernel)
    assert [i for i in range(len(params)) if not kernel.supports(params[i], grads[i], momenta[i])] == refused
    before = [(p.clone(), m.clone()) for p, m in zip(params, momenta)]
    assert kernel.lion_(params, grads, momenta, **HYPER) == refused
    for i, (p, m) in enumerate(zip(params, momenta)):
        if i in refused:
            assert torch.equal(p, before[i][0]) and torch.equal(m, before[i][1]), f"triple {i} was written"
        else:
            expected = reference_step(before[i][0].numpy(), grads[i].numpy(), before[i][1].numpy(),
                                      dtype=np.float32, **HYPER)
            cases.assert_exact(p, expected[0], what=f"param {i}")
            cases.assert_exact(m, expected[1], what=f"momentum {i}")


@pytest.mark.parametrize("kernel", KERNELS)
def test_overlapping_triples_are_handed_back_and_the_rest_updated(kernel):
    gen = torch.Generator().manual_seed(3)
    storage, twice = torch.randn(20, generator=gen), torch.randn(6, generator=gen)
    # storage[:12] and storage[8:] overlap; `twice` is listed twice; an empty view overlaps nothing.
    params = [storage[:12], torch.randn(5, generator=gen), twice, storage[8:], twice, storage[10:10]]
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    momenta = [torch.zeros(p.shape) for p in params]
    before = [p.clone() for p in params]
    assert kernel.lion_(params, grads, momenta, **HYPER) == [0, 2, 3, 4]
    for i in (0, 2, 3, 4):
        assert torch.equal(params[i], before[i]) and not momenta[i].any(), f"triple {i} was written"
    assert not torch.equal(params[1], before[1])
    # The answer is cached with the address tables; a second call gives it again.
    assert kernel.lion_(params, grads, momenta, **HYPER) == [0, 2, 3, 4]


def _other_layouts() -> list[Any]:
    layouts = [
        pytest.param(lambda t: t.to_sparse(), id="sparse_coo"),
        pytest.param(lambda t: t.view(2, 4).to_sparse_csr(), id="sparse_csr"),
    ]
    if torch.backends.mkldnn.is_available():
        layouts.append(pytest.param(lambda t: t.to_mkldnn(), id="mkldnn"))
    return layouts


@pytest.mark.filterwarnings("ignore:Sparse:UserWarning")
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("convert", _other_layouts())
def test_tensors_of_another_layout_are_handed_back(kernel, convert):
    """The bulk check reads every data pointer, which a non-strided tensor does not have."""
    gen = torch.Generator().manual_seed(6)
    dense = [torch.randn(8, generator=gen) for _ in range(6)]
    other = [convert(t.clone()) for t in dense[3:]]
    before = [t.clone() for t in dense[:3]]
    assert kernel.lion_([dense[0], other[0]], [dense[1], other[1]], [dense[2], other[2]], **HYPER) == [1]
    assert kernel.lion_([other[0]], [other[1]], [other[2]], **HYPER) == [0]
    for t, converted in zip(dense[3:], other):
        assert torch.equal(converted.to_dense().reshape(8), t), "a tensor of another layout was written"
    assert not torch.equal(dense[0], before[0])


#: Changes that keep a tensor's address (and its Python object) but not what a plan was built from.
SAME_ADDRESS_CHANGES = {
    "shorter": lambda t: t[:4],  # fewer elements
    "bfloat16": lambda t: t.view(torch.bfloat16),  # another dtype, twice the elements
    "transposed": lambda t: t.view(2, 4).t(),  # another memory order
    "negated": lambda t: t._neg_view(),  # the lazy negation bit
}


#: Changes made in place to the parameter alone (its gradient and momentum keep their shape).
IN_PLACE_CHANGES = {
    "unsqueezed": lambda t: t.unsqueeze_(0),
    "resized": lambda t: t.resize_(4),  # fewer elements, same storage
    "restrided": lambda t: t.as_strided_((2, 4), (1, 2)),
    "set": lambda t: t.set_(t.untyped_storage(), 0, (2, 2), (2, 1)),
}


@pytest.fixture(params=["guarded", "unguarded"])
def scan_guard(request, monkeypatch):
    """``bulk_plain`` with its C++ guard (torch's ``TensorGuards``), and as it runs on a torch
    without one: every call scanned in full. Either way the recorded scans start empty."""
    from lion_kernels import _contract

    if request.param == "unguarded":
        monkeypatch.setattr(_contract, "_TensorGuards", None)
    _contract._recorded.clear()
    yield request.param
    _contract._recorded.clear()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("change", [*SAME_ADDRESS_CHANGES, *(f"one_{name}" for name in IN_PLACE_CHANGES)])
def test_a_tensor_changed_at_the_same_address_is_planned_again(kernel, change, scan_guard):
    """Plans and scans are cached on addresses: a tensor whose dtype, size, strides or negation bit
    changed in place (``p.data = ...``, ``p.unsqueeze_(0)``, ``resize_``, ``as_strided_``, ``set_``)
    must be checked and planned again, exactly as fresh tensors with the same values and layout are
    (same hand-back, bit-identical writes)."""
    gen = torch.Generator().manual_seed(5)
    bases = [torch.randn(8, generator=gen) for _ in range(3)]  # param, grad, momentum
    tensors = [b.view(8) for b in bases]
    assert kernel.lion_(*([t] for t in tensors), **HYPER) == []  # plans these addresses
    assert kernel.lion_(*([t] for t in tensors), **HYPER) == []  # and finds them again
    copies = [b.clone() for b in bases]  # the same values at other addresses
    addresses = [t.data_ptr() for t in tensors]
    if change.startswith("one_"):
        change_in_place = IN_PLACE_CHANGES[change[len("one_"):]]
        change_in_place(tensors[0])  # the parameter's shape no longer equals the gradient's
        fresh = [change_in_place(copies[0].view(8)), copies[1], copies[2]]
    else:
        for t in tensors:
            t.data = SAME_ADDRESS_CHANGES[change](t.data)
        fresh = [SAME_ADDRESS_CHANGES[change](c) for c in copies]
    assert [t.data_ptr() for t in tensors] == addresses
    left = kernel.lion_(*([t] for t in tensors), **HYPER)
    assert left == kernel.lion_(*([f] for f in fresh), **HYPER)
    if change == "negated" or change.startswith("one_") or (change == "transposed" and kernel is cpu_lion):
        assert left == [0]
    for k, (b, c) in enumerate(zip(bases, copies)):  # the whole buffers, bit for bit
        assert torch.equal(b.view(torch.int32), c.view(torch.int32)), f"tensor {k} differs"


def test_a_call_of_the_same_tensors_reuses_its_scan_and_keeps_no_tensor_alive():
    """``bulk_plain`` records a scan by its tensors' addresses: the next call at those addresses (new
    tensor objects viewing the same memory, as fresh gradients may) gets it back, key object
    included, once the guard has found their metadata unchanged; the record holds no tensor."""
    import gc
    import weakref

    from lion_kernels import _contract

    if _contract._TensorGuards is None:
        pytest.skip("this torch has no torch._C._dynamo.guards.TensorGuards: every call is scanned")
    codes = frozenset({_contract.triple_code(torch.float32, torch.float32, torch.float32)})
    params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(2, 3))]
    grads = [torch.randn(5), torch.randn(2, 3)]
    momenta = [torch.zeros(5), torch.zeros(2, 3)]
    first = _contract.bulk_plain(params, grads, momenta, codes)
    views = [g.view(g.shape) for g in grads]  # other objects, same addresses and metadata
    second = _contract.bulk_plain(params, views, momenta, codes)
    assert first is not None and second is not None
    assert second.key is first.key and second.pointers == first.pointers and second.codes == first.codes
    assert second.tensors == (*params, *views, *momenta) and second.device_types == {"cpu"}
    gone = weakref.ref(views[0])
    del first, second, views
    gc.collect()
    assert gone() is None, "a recorded scan keeps a gradient alive"
    # A float64 gradient at another address is another call: scanned, and refused.
    assert _contract.bulk_plain(params, [grads[0].double(), grads[1]], momenta, codes) is None


def test_a_scan_one_kernel_accepted_does_not_pass_for_another():
    """The recorded scans are per kernel: float64 triples that the CPU kernel updates must still be
    handed back by the Triton kernel, which has no float64 routine, at the same addresses."""
    if triton_lion.unavailable_reason() is not None or (
        os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available()
    ):
        pytest.skip("the Triton kernel runs on CPU tensors only with TRITON_INTERPRET=1")
    p, g, m = (torch.full((8,), 1.0, dtype=torch.float64) for _ in range(3))
    assert triton_lion.lion_([p], [g], [m], **HYPER) == [0]
    assert cpu_lion.lion_([p], [g], [m], **HYPER) == []
    before = [t.clone() for t in (p, g, m)]
    assert triton_lion.lion_([p], [g], [m], **HYPER) == [0]
    assert all(torch.equal(t, b) for t, b in zip((p, g, m), before)), "Triton wrote float64 tensors"


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_guard_torch_refuses_to_build_leaves_every_call_scanned(kernel, monkeypatch):
    """``TensorGuards`` is private: a torch whose constructor refuses the arguments must cost speed
    only (no guard from then on), never a step."""
    from lion_kernels import _contract

    def refusing(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("TensorGuards(): incompatible constructor arguments")

    monkeypatch.setattr(_contract, "_TensorGuards", refusing)
    _contract._recorded.clear()
    p, g, m = torch.ones(4), torch.full((4,), -1.0), torch.zeros(4)
    for _ in range(2):
        assert kernel.lion_([p], [g], [m], **HYPER) == []
    assert _contract._TensorGuards is None and len(_contract._recorded) == 0
    expected = torch.ones(4)
    for _ in range(2):  # decay, then the step of sign(+g) = +1 (descent on -1 gradients)
        expected = (expected * np.float32(1 - 0.01 * 0.1)) + np.float32(0.01)
    assert torch.equal(p, expected)


def test_the_plan_cache_returns_only_an_equal_keys_entry_and_evicts_the_least_recent():
    """``TableCache`` skips re-ordering on a hit of the entry it returned last: that entry must still
    be the most recent one (evicted last), and a hit must never be the last entry for another key."""
    from lion_kernels._contract import TableCache

    cache = TableCache(2)
    built: list[str] = []

    def get(key: tuple[int, ...]) -> str:
        return cache.get(key, lambda: built.append(f"{key}") or f"{key}")

    assert get((1, 2)) == "(1, 2)" and get((1, 2)) == "(1, 2)"  # a hit on the last entry
    assert get((3,)) == "(3,)" and get((1, 2)) == "(1, 2)"  # (1, 2) moved after (3,)
    assert get((4,)) == "(4,)"  # evicts (3,), the least recent
    assert (1, 2) in cache and (3,) not in cache and (4,) in cache
    assert get((1, 2)) == "(1, 2)" and get((5,)) == "(5,)"  # evicts (4,)
    assert (4,) not in cache and (1, 2) in cache
    assert get((4,)) == "(4,)"  # built again: (1, 2) is now the least recent and goes
    assert built == ["(1, 2)", "(3,)", "(4,)", "(5,)", "(4,)"] and (1, 2) not in cache
    cache.clear()
    assert get((5,)) == "(5,)" and built[-1] == "(5,)" and (cache.hits, cache.misses) == (0, 1)
    cache.put((5,), "five")  # replaces the entry
    assert cache.find((5,)) == "five" and cache.find((6,)) is None
    cache.put((6,), "six")
    assert cache.find((5,)) == "five"  # moves (5,) after (6,)
    cache.put((7,), "seven")  # evicts (6,), the least recent
    assert (6,) not in cache and cache.find((5,)) == "five" and cache.find((7,)) == "seven"


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_gradient_that_is_another_triples_parameter_is_an_overlap(kernel):
    a, b = torch.ones(4), torch.ones(4)
    assert kernel.lion_([a, b], [torch.ones(4), a], [torch.zeros(4), torch.zeros(4)], **HYPER) == [0, 1]
    # read-only sharing is fine: one gradient for two parameters
    g = torch.ones(4)
    assert kernel.lion_([a, b], [g, g], [torch.zeros(4), torch.zeros(4)], **HYPER) == []


@pytest.mark.parametrize("kernel", KERNELS)
def test_cautious_reduce_is_called_once_with_the_local_counts(kernel):
    gen = torch.Generator().manual_seed(4)
    shapes = [(33,), (0,), (4, 5), (1,)]
    params = [torch.randn(s, generator=gen, dtype=torch.float32) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    momenta = [torch.randn(s, generator=gen) for s in shapes]
    params.append(torch.ones(3, 2).t())  # non-contiguous, handed back: no row
    grads.append(torch.ones(2, 3))
    momenta.append(torch.ones(2, 3))
    before = [(p.clone(), m.clone()) for p, m in zip(params, momenta)]
    calls = []

    def whole_tensor_counts(local: torch.Tensor) -> torch.Tensor:
        calls.append(local.clone())
        return local * torch.tensor([1, 3])  # as if two more shards held no kept entry

    hyper = dict(HYPER, cautious=True)
    assert kernel.lion_(params, grads, momenta, **hyper, cautious_reduce=whole_tensor_counts) == [4]
    assert len(calls) == 1
    local = calls[0]
    assert local.dtype == torch.int64 and local.device.type == "cpu" and local.shape == (4, 2)
    for i, (p0, m0) in enumerate(before[:4]):
        c = np.float32(0.9) * m0.numpy() + np.float32(0.1) * grads[i].numpy()
        kept = int((np.sign(c) * grads[i].numpy() > 0).sum())
        assert local[i].tolist() == [kept, p0.numel()], f"row {i}"
    # The update rescales by the global count: the reference with its kept fraction replaced.
    for i, (p0, m0) in enumerate(before[:4]):
        g, m = grads[i].numpy(), m0.numpy()
        c = np.float32(0.9) * m + np.float32(0.1) * g
        u = np.sign(c)
        mask = np.where(u * g > 0, u * u, np.float32(0))
        fraction = np.float32(local[i, 0].item() / (3 * max(p0.numel(), 1)))
        scaled = u * mask / (fraction if fraction > 0 else np.float32(1))
        decay = np.float32(1 - 0.01 * 0.1)
        cases.assert_exact(params[i], p0.numpy() * decay - np.float32(0.01) * scaled, what=f"param {i}")


@pytest.mark.parametrize("kernel", KERNELS)
def test_misuse_raises_kernel_error_and_writes_nothing(kernel):
    p, m = torch.ones(4), torch.zeros(4)
    with pytest.raises(KernelError, match=r"one entry per parameter. Received: 1 params, 2 grads, 1 momenta"):
        kernel.lion_([p], [p, p], [m], **HYPER)
    with pytest.raises(KernelError, match="cautious_reduce"):
        kernel.lion_([p], [torch.ones(4)], [m], **dict(HYPER, cautious=True),
                     cautious_reduce=lambda t: t.to(torch.int32))
    assert torch.equal(p, torch.ones(4)) and not m.any()
    assert kernel.lion_([], [], [], **HYPER) == []


@pytest.mark.parametrize("kernel", KERNELS)
def test_two_threads_step_at_once(kernel):
    """Two threads, each with its own tensors, call lion_ together; each gets the one-thread result."""
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(2)

    def work(k: int) -> None:
        p = torch.arange(1000, dtype=torch.float32) / 1000 - 0.5
        barrier.wait()
        for _ in range(3):
            kernel.lion_([p], [torch.ones(1000)], [torch.zeros(1000)], **HYPER)
        results[k] = p

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(results[0], results[1])

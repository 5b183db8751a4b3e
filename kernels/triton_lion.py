r"""Lion for CUDA tensors in one pass over memory: a multi-tensor Triton kernel.

``lion_torch.Lion(fused=True)`` calls :func:`lion_` once per parameter group. It launches one kernel
per (device, parameter dtype, gradient dtype, momentum dtype) combination in the group, whatever the
number of tensors: each program updates one chunk of ``CHUNK`` elements of one tensor, found through
tables of tensor addresses and sizes that are cached across steps. A float32 step reads
:math:`p, g, m` and writes :math:`p, m` once: 20 bytes per parameter, the least any Lion step moves.

The update is ``lion_core``'s rule, computed in float32 in the same operation order:

.. math::

    c &= \beta_1 m + (1 - \beta_1) g \\
    u &= \operatorname{sign}(c) \quad (\text{NaN where } c \text{ is NaN or } \pm\infty) \\
    p &\leftarrow p \, d - \eta \, u, \quad d = \texttt{decay\_factor}(\eta, \lambda, \eta_\text{max}) \\
    m &\leftarrow \beta_2 m + (1 - \beta_2) g

so float32 results equal ``lion_core.reference.reference_lion(..., dtype=numpy.float32)`` bit for
bit, on the GPU (compiled without FMA contraction, with correctly rounded division) as in the
Triton interpreter. bfloat16 and float16 parameters, gradients and momenta are widened to float32,
updated and rounded once to nearest even. ``cautious=True`` adds a first launch that counts, per
tensor, the entries the mask keeps (it reads :math:`g, m` once more: 28 bytes per float32 parameter).

Launch configuration, fixed (no autotuning, which would run the in-place update more than once):
``BLOCK = 1024`` elements per loop iteration (8 per thread, two 16-byte accesses for float32),
``CHUNK = 16384`` elements per program, ``NUM_WARPS = 4``.

Capturable: a learning rate given as a tensor on the parameters' device is read by the kernel (no
host synchronisation, and no recompilation when a scheduler changes it), so a step can be captured
in a CUDA graph; the weight decay factor is then computed on the device. ``grad_scale`` and
``found_inf`` come from ``torch.amp.GradScaler`` as for torch's fused Adam: the gradient is divided by
the scale inside the kernel (and never written), and the whole step is skipped on the device when
``found_inf`` is nonzero.

CPU tensors run through the same kernel source under the Triton interpreter when
``TRITON_INTERPRET=1`` is set (for tests: slow). CUDA tensors always run the compiled kernel, even
when that variable is set.

The module implements the kernel contract (``lion_kernels._contract``) that the CPU kernel
(``lion_kernels.cpu_lion``) implements too: ``unavailable_reason``, ``supports`` and ``lion_``, which
hands back the indices of the triples it did not update (unsupported, or overlapping in memory).
Importing it never imports Triton; :func:`unavailable_reason` only looks for it.

Example:
  >>> import torch
  >>> from lion_kernels import triton_lion
  >>> device = "cuda" if torch.cuda.is_available() else "cpu"
  >>> p = torch.tensor([1.0, -2.0], device=device)
  >>> g, m = torch.tensor([0.5, -0.5], device=device), torch.zeros(2, device=device)
  >>> if triton_lion.unavailable_reason() is None and triton_lion.supports(p, g, m):
  ...     _ = triton_lion.lion_([p], [g], [m], lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0,
  ...                           max_lr=None, cautious=False, maximize=False)
  ... else:
  ...     p = torch.tensor([0.9, -1.9])
  >>> p.tolist()
  [0.8999999761581421, -1.899999976158142]

References:
  Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
  Liang et al. 2024, "Cautious Optimizers: Improving Training with One Line of Code", arXiv:2411.16085.
"""

from __future__ import annotations

import importlib.util
import itertools
import operator
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch

import lion_core

from ._contract import (
    DTYPE_CODE,
    CautiousReduce,
    Formats,
    HashedKey,
    KernelError,
    Scan,
    TableCache,
    bulk_plain,
    check_formats,
    check_lengths,
    global_counts,
    is_plain,
    overlapping,
    overlapping_spans,
    plain_triple,
    triple_code,
)

__all__ = ["BLOCK", "CHUNK", "NUM_WARPS", "device_type", "lion_", "name", "supports", "unavailable_reason"]

name = "triton_lion"
device_type = "cuda"

#: Elements per loop iteration of a program: 4 warps of 32 threads, 8 elements each.
BLOCK = 1024
#: Elements per program. Large enough that the per-program table lookups cost nothing, small enough
#: that a group of 64K-element tensors still fills the GPU (four programs per tensor).
CHUNK = 16 * BLOCK
NUM_WARPS = 4
#: Table sets kept per cache (layouts and addresses): enough for every group of a typical model.
_CACHE_SIZE = 64
#: 16-byte alignment lets the compiler vectorize the unmasked accesses.
_ALIGNMENT = 16

#: Storage dtypes the kernel reads and writes, in any (param, grad, momentum) combination; their
#: codes (``_contract.DTYPE_CODE``) are the kernel's F32 / BF16 / F16 constants.
_STORAGE = (torch.float32, torch.bfloat16, torch.float16)
_CODES = frozenset(
    code for triple in itertools.product(_STORAGE, repeat=3) if (code := triple_code(*triple)) is not None
)
_KERNELS_SOURCE = Path(__file__).resolve().parent / "_triton_lion_kernels.py"
_TRUE = frozenset({"1", "true", "yes", "on", "y"})


def _interpreting() -> bool:
    """Whether CPU tensors may run through the Triton interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


_triton_found: bool | None = None
_triton_error: str | None = None
_import_lock = threading.Lock()


def _cuda_available() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken driver means "no CUDA" here
        return False


def unavailable_reason() -> str | None:
    """``None`` when the kernel can run here; otherwise why not, and the remedy.

    Pure and cheap: looks for Triton without importing it (``importlib.util.find_spec``), and for a
    CUDA device (or ``TRITON_INTERPRET=1``, which runs the kernel on CPU tensors, slowly, for tests).
    After an import of Triton that failed in :func:`lion_`, returns that failure.
    """
    global _triton_found
    if _triton_error is not None:
        return _triton_error
    if _triton_found is None:
        _triton_found = importlib.util.find_spec("triton") is not None
    if not _triton_found:
        return "Triton is not installed (pip install triton, or pass fused=False)"
    if not (_interpreting() or _cuda_available()):
        return (
            "no CUDA device is available for the Triton kernel (pass fused=False, or set "
            "TRITON_INTERPRET=1 to run it on CPU tensors, for tests)"
        )
    return None


def _import_triton() -> ModuleType:
    """Imports Triton once; raises KernelError (and remembers why) when it is broken."""
    global _triton_error
    if _triton_error is None:
        with _import_lock:
            try:
                import triton
            except Exception as error:  # noqa: BLE001 - a broken install must not kill the program
                _triton_error = (
                    f"Triton does not import ({type(error).__name__}: {error}); "
                    "reinstall it or pass fused=False"
                )
            else:
                return triton
    raise KernelError(_triton_error)


def _same_order(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the tensors are dense and lay their elements out in memory in the same order.

    Lion is elementwise and cautious masking counts over a whole tensor, so any dense layout works
    as long as parameter, gradient and momentum share it (channels-last weights included).
    """
    if all(t.is_contiguous() for t in tensors):
        return True
    ndim = tensors[0].dim()
    if ndim in (4, 5):
        fmt = torch.channels_last if ndim == 4 else torch.channels_last_3d
        return all(t.is_contiguous(memory_format=fmt) for t in tensors)
    return False


def _device_ok(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and _interpreting())


def supports(param: torch.Tensor, grad: torch.Tensor, momentum: torch.Tensor) -> bool:
    """Whether :func:`lion_` updates this triple (it hands the others back).

    True for plain (not subclassed) float32, bfloat16 and float16 tensors (any mix) of one shape on
    one CUDA device (or on the CPU with ``TRITON_INTERPRET=1``) that are all contiguous, or all
    channels-last. False for anything else: strided views, complex tensors (pass
    ``torch.view_as_real`` views), float64, sparse tensors, tensors on different devices, subclasses
    (DTensor: pass its local shard). Does not check :func:`unavailable_reason`. (An int8 momentum
    is updated only with its ``scales`` and keys, in a call with state formats; see :func:`lion_`.)
    """
    try:
        return (
            plain_triple(param, grad, momentum, _CODES)
            and grad.device == param.device
            and momentum.device == param.device
            and _device_ok(param.device)
            and _same_order((param, grad, momentum))
        )
    except (AttributeError, RuntimeError):
        return False


class _Layout(NamedTuple):
    """The int64 table ``[numel (T), chunk -> tensor (C), chunk -> index in tensor (C)]``."""

    table: torch.Tensor
    n_tensors: int
    n_chunks: int


class _Addresses(NamedTuple):
    """The int64 table ``[param (T), grad (T), momentum (T)]`` of data pointers."""

    table: torch.Tensor
    aligned: bool


_layouts = TableCache(_CACHE_SIZE)
_addresses = TableCache(_CACHE_SIZE)
#: Per set of addresses, sizes and dtypes: the indices of the triples that overlap in memory.
_overlaps = TableCache(_CACHE_SIZE)


def _cached(cache: TableCache, key: Any, build: Any, *, capturing: bool) -> Any:
    if capturing and key not in cache:
        raise KernelError(
            "The fused Lion step met new tensors while a CUDA graph was being captured; "
            "its address tables are built with a host-to-device copy, which cannot be "
            "captured. Run the step once before capturing it (warm-up), on the same tensors."
        )
    return cache.get(key, build, pin=capturing)


def _to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return values
    # From pinned memory the copy is asynchronous: a miss (new tensors) does not wait for the GPU.
    # The caching host allocator keeps the pinned block until the copy has completed.
    return values.pin_memory().to(device, non_blocking=True)


def _build_layout(numels: Sequence[int], device: torch.device) -> _Layout:
    """Splits every tensor into chunks of ``CHUNK`` elements; empty tensors get none."""
    sizes = torch.tensor(numels, dtype=torch.int64)
    per_tensor = (sizes + (CHUNK - 1)) // CHUNK
    n_chunks = int(per_tensor.sum())
    owner = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int64), per_tensor)
    first = torch.cumsum(per_tensor, 0) - per_tensor
    index = torch.arange(n_chunks, dtype=torch.int64) - first[owner]
    table = torch.cat([sizes, owner, index])
    return _Layout(_to_device(table, device), len(numels), n_chunks)


def _build_addresses(pointers: Sequence[int], device: torch.device) -> _Addresses:
    table = torch.tensor(pointers, dtype=torch.int64)
    aligned = all(pointer % _ALIGNMENT == 0 for pointer in pointers)
    return _Addresses(_to_device(table, device), aligned)


_modules: dict[bool, ModuleType] = {}
_interpreter_lock = threading.Lock()


def _kernel_module(interpret: bool) -> ModuleType:
    """Loads ``_triton_lion_kernels`` compiled (CUDA) or interpreted (CPU tensors).

    ``triton.jit`` decides between the two when the module is executed, from ``TRITON_INTERPRET``;
    loading one copy per mode, with the setting forced, lets a test run on a GPU machine use the
    interpreter for CPU tensors and the compiler for CUDA tensors in one process.
    """
    module = _modules.get(interpret)
    if module is None:
        triton = _import_triton()
        with _import_lock:
            module = _modules.get(interpret)
            if module is None:
                name = f"lion_kernels._triton_lion_kernels_{'interpreted' if interpret else 'compiled'}"
                spec = importlib.util.spec_from_file_location(name, _KERNELS_SOURCE)
                if spec is None or spec.loader is None:
                    raise KernelError(
                        f"the Triton kernel's source {_KERNELS_SOURCE} is missing; reinstall lionkit"
                    )
                module = importlib.util.module_from_spec(spec)
                with triton.knobs.runtime.scope():
                    triton.knobs.runtime.interpret = interpret
                    spec.loader.exec_module(module)
                _modules[interpret] = module
    return module


def _launch(kernel: Any, grid: tuple[int], arguments: dict[str, Any]) -> None:
    """Launches ``kernel`` with the fixed configuration; one place for tests to observe launches."""
    kernel[grid](**arguments, num_warps=NUM_WARPS, enable_fp_fusion=False)


def _on_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A one-element float32 or float64 tensor on ``device``: what the kernel reads scalars from.

    Copies (asynchronously) only when needed; other float dtypes are widened on the device, exactly.
    """
    if tensor.device != device:
        tensor = tensor.to(device, non_blocking=True)
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    return tensor


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


_DEVICE = operator.attrgetter("device")
_DTYPE = operator.attrgetter("dtype")


class _Group(NamedTuple):
    """The triples of one launch: one device, one (param, grad, momentum) dtype combination, none
    empty; the keys of its tables, hashed once."""

    device: torch.device
    dtypes: tuple[torch.dtype, ...]
    #: Positions in the call.
    members: tuple[int, ...]
    numels: tuple[int, ...]
    #: The parameters' data pointers, then the gradients', then the momenta's.
    pointers: tuple[int, ...]
    layout_key: HashedKey
    address_key: HashedKey


def _group(device: torch.device, dtypes: tuple[torch.dtype, ...], members: Sequence[int],
           numels: Sequence[int], pointers: tuple[int, ...]) -> _Group:
    sizes = tuple(numels[i] for i in members)
    return _Group(device, dtypes, tuple(members), sizes, pointers, HashedKey((device, dtypes, sizes)),
                  HashedKey((device, dtypes, pointers)))


class _Plan(NamedTuple):
    """What a call of these tensors launches: the triples handed back because they overlap, the
    updated ones, their devices and their launch groups."""

    aliased: list[int]
    updated: list[int]
    updated_devices: frozenset[torch.device]
    groups: list[_Group]


#: Plans of recent calls, by their scan's key (and whether CPU tensors are interpreted).
_plans = TableCache(_CACHE_SIZE)


def _plan(
    tensors: Sequence[torch.Tensor], devices: Sequence[torch.device], pointers: tuple[int, ...]
) -> _Plan:
    """Plans a call of supported triples: ``tensors`` is ``(*params, *grads, *momenta)``."""
    n = len(tensors) // 3
    dtypes = list(map(_DTYPE, tensors))
    numels = list(map(torch.Tensor.numel, tensors[:n]))
    aliased = _cached(
        _overlaps, (pointers, tuple(numels), tuple(dtypes)),
        lambda: overlapping(pointers, [numels[k % n] * dtypes[k].itemsize for k in range(3 * n)], n),
        capturing=any(map(_capturing, set(devices))),
    )
    skip = set(aliased)
    updated = [i for i in range(n) if i not in skip]
    members: dict[tuple[torch.device, torch.dtype, torch.dtype, torch.dtype], list[int]] = {}
    for i in updated:
        if numels[i]:
            members.setdefault((devices[i], dtypes[i], dtypes[i + n], dtypes[i + 2 * n]), []).append(i)
    groups = [
        _group(key[0], key[1:], chosen, numels, tuple(pointers[i + k * n] for k in range(3) for i in chosen))
        for key, chosen in members.items()
    ]
    return _Plan(aliased, updated, frozenset(devices[i] for i in updated), groups)


def _fast_plan(scan: Scan, n: int) -> _Plan | None:
    """The plan of a scanned call, or ``None`` when its devices need the per-triple pass (a device
    this kernel does not run on, or a triple spread over two devices)."""
    devices = list(map(_DEVICE, scan.tensors))
    if not all(map(_device_ok, set(devices))):
        return None
    if devices.count(devices[0]) != 3 * n and not devices[:n] == devices[n : 2 * n] == devices[2 * n :]:
        return None
    return _plan(scan.tensors, devices, scan.pointers)


def lion_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    momenta: Sequence[torch.Tensor],
    *,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    max_lr: float | None,
    cautious: bool,
    maximize: bool,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    cautious_reduce: CautiousReduce | None = None,
    scales: Sequence[torch.Tensor | None] | None = None,
    momentum_keys: Sequence[int | None] | None = None,
    param_keys: Sequence[int | None] | None = None,
) -> list[int]:
    r"""Applies one Lion step in place to every supported triple, in a few launches; returns the others.

    .. math::

        c = \beta_1 m + (1 - \beta_1) g, \quad
        p \leftarrow p \, d - \eta \operatorname{sign}(c), \quad
        m \leftarrow \beta_2 m + (1 - \beta_2) g

    with :math:`d = 1 - \eta\lambda`, or :math:`1 - \lambda \eta / \eta_\text{max}` when ``max_lr``
    is given (``lion_core.decay_factor``). Hyperparameters are validated by the caller
    (``lion_torch.Lion``). The full contract: ``lion_kernels._contract``.

    Args:
      params: the parameters :math:`p`, updated in place.
      grads: their gradients :math:`g`, read only.
      momenta: their momenta :math:`m`, updated in place.
      lr: the learning rate :math:`\eta`: a float, or a one-element tensor. On the parameters'
        device it is read by the kernel (capturable; changing it neither recompiles nor syncs);
        a CPU tensor is read on the host.
      beta1: the interpolation coefficient :math:`\beta_1` of the direction.
      beta2: the momentum decay :math:`\beta_2`.
      weight_decay: the decoupled weight decay :math:`\lambda`.
      max_lr: the group's peak learning rate for fully decoupled weight decay, or ``None``.
      cautious: mask the update where it disagrees with the gradient (per-tensor rescaling).
      maximize: ascend instead of descend.
      grad_scale: ``GradScaler``'s scale (one-element float tensor): gradients are divided by it in
        the kernel. Default ``None``.
      found_inf: ``GradScaler``'s flag: when nonzero the step changes nothing, decided on the device
        (a CPU flag is read on the host, and ``[]`` returned). Default ``None``.
      cautious_reduce: turns the local (kept, count) rows into global ones (DTensor shards); the
        rows are assembled on the tensors' device. Default ``None``.
      scales, momentum_keys, param_keys: state formats (``lion_kernels._contract``): int8
        momenta (codes in ``momenta[i]``, block scales in ``scales[i]``, updated in place) and
        stochastically rounded bfloat16 parameters, updated by ``lion_stored_kernel`` (see
        :func:`_lion_stored`). Default ``None``.

    Returns:
      The sorted indices of the triples left untouched: unsupported, or overlapping in memory.

    Raises:
      KernelError: Triton is missing or broken, there is no CUDA device (see
        :func:`unavailable_reason`), the lists differ in length, a state format is misused
        (``_contract.check_formats``), ``cautious_reduce`` is given for
        tensors on several devices or returned counts of another shape or dtype.

    Example:
      >>> import torch
      >>> from lion_kernels.triton_lion import unavailable_reason, lion_
      >>> if unavailable_reason() is None and torch.cuda.is_available():
      ...     p = torch.ones(3, device="cuda"); m = torch.zeros(3, device="cuda")
      ...     left = lion_([p], [torch.ones(3, device="cuda")], [m], lr=0.1, beta1=0.9, beta2=0.99,
      ...                  weight_decay=0.0, max_lr=None, cautious=False, maximize=False)

    References:
      Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
    """
    n = check_lengths(params, grads, momenta)
    formats = check_formats(n, params, momenta, scales, momentum_keys, param_keys)
    reason = unavailable_reason()
    if reason is not None:
        raise KernelError(f"The fused Triton Lion kernel cannot run: {reason}")
    if n == 0:
        return []
    if found_inf is not None and found_inf.device.type == "cpu" and float(found_inf) != 0.0:
        return []
    if formats is not None:
        return _lion_stored(
            params, grads, momenta, formats, lr=lr, beta1=float(beta1), beta2=float(beta2),
            weight_decay=float(weight_decay), max_lr=None if max_lr is None else float(max_lr),
            cautious=bool(cautious), maximize=bool(maximize), grad_scale=grad_scale, found_inf=found_inf,
            cautious_reduce=cautious_reduce,
        )
    positions: list[int] | None = None
    refused: list[int] = []
    scan = bulk_plain(params, grads, momenta, _CODES)
    plan = None
    if scan is not None:  # the usual call: planned once for these addresses, shapes and dtypes
        plan_key = (scan.key, _interpreting())
        plan = _plans.find(plan_key)
        if plan is None:
            plan = _fast_plan(scan, n)
            if plan is not None:
                _plans.put(plan_key, plan)
    if plan is None:
        # A slower pass, per triple: channels-last triples are supported, the rest handed back.
        positions = [i for i in range(n) if supports(params[i], grads[i], momenta[i])]
        refused = sorted(set(range(n)).difference(positions))
        if not positions:
            return refused
        params = [params[i] for i in positions]
        grads = [grads[i] for i in positions]
        momenta = [momenta[i] for i in positions]
        tensors = (*params, *grads, *momenta)
        plan = _plan(tensors, list(map(_DEVICE, tensors)), tuple(map(torch.Tensor.data_ptr, tensors)))
    _import_triton()
    aliased, updated, groups = plan.aliased, plan.updated, plan.groups
    if cautious and cautious_reduce is not None and len(plan.updated_devices) > 1:
        raise KernelError(
            "`cautious_reduce` needs the tensors of one call on one device: their counts are gathered "
            f"into one tensor. Received: tensors on {sorted(str(d) for d in plan.updated_devices)}"
        )
    hyper = dict(
        lr=lr,
        beta1=float(beta1),
        beta2=float(beta2),
        weight_decay=float(weight_decay),
        max_lr=None if max_lr is None else float(max_lr),
        maximize=bool(maximize),
        grad_scale=grad_scale,
        found_inf=found_inf,
    )
    prepared = [_prepare(group, bool(cautious), **hyper) for group in groups]
    if cautious:
        for launch in prepared:
            launch.count()
        if cautious_reduce is not None and updated:
            (device,) = plan.updated_devices
            local = torch.zeros((len(updated), 2), dtype=torch.int64, device=device)
            row = {i: r for r, i in enumerate(updated)}
            where = [torch.tensor([row[i] for i in group.members], device=device) for group in groups]
            for launch, rows in zip(prepared, where):
                local.index_copy_(0, rows, launch.counts)
            total = global_counts(cautious_reduce, local)
            for launch, rows in zip(prepared, where):
                launch.counts = total.index_select(0, rows)
    for launch in prepared:
        launch.update()
    if not aliased:
        return refused
    handed = aliased if positions is None else [positions[i] for i in aliased]
    return sorted([*refused, *handed])


class _Launch:
    """The two launches of one group (one device, one dtype combination, no empty tensor): the
    cautious count (optional) and the update, sharing their arguments."""

    def __init__(self, kernel: Any, grid: tuple[int], arguments: dict[str, Any], device: torch.device,
                 counts: torch.Tensor) -> None:
        self.kernel, self.grid, self.arguments = kernel, grid, arguments
        self.device, self.counts = device, counts

    def _guard(self) -> Any:
        # Triton launches on the current device. The interpreter patches triton.language while it
        # runs, so two threads must not interpret at once: interpreted launches take turns.
        return torch.cuda.device(self.device) if self.device.type == "cuda" else _interpreter_lock

    def count(self) -> None:
        self._run(count_only=True)

    def update(self) -> None:
        self._run(count_only=False)

    def _run(self, *, count_only: bool) -> None:
        with self._guard():
            arguments = {**self.arguments, "counts_ptr": self.counts, "COUNT_ONLY": count_only}
            _launch(self.kernel, self.grid, arguments)


def _prepare(
    group: _Group,
    cautious: bool,
    *,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    max_lr: float | None,
    maximize: bool,
    grad_scale: torch.Tensor | None,
    found_inf: torch.Tensor | None,
) -> _Launch:
    """The launches of one group: tensors on one device with one dtype combination, none empty."""
    device, dtypes, numels = group.device, group.dtypes, group.numels
    capturing = _capturing(device)
    layout = _cached(_layouts, group.layout_key, lambda: _build_layout(numels, device), capturing=capturing)
    addresses = _cached(_addresses, group.address_key, lambda: _build_addresses(group.pointers, device),
                        capturing=capturing)
    # Pointer arguments the chosen variant never reads still need a tensor.
    unused = layout.table

    # A CUDA learning rate is read by the kernel; a CPU one costs nothing to read on the host, except
    # for CPU (interpreted) parameters, where the kernel reads it so that the tests cover that path.
    if isinstance(lr, torch.Tensor) and (lr.device.type != "cpu" or device.type == "cpu"):
        lr_on_device = True
        lr_tensor = _on_device(lr, device)
        lr_value = decay = 0.0  # read on the device
    else:
        lr_on_device = False
        lr_tensor = unused
        lr_value = float(lr)  # a float, or a CPU tensor: no device synchronisation
        decay = float(lion_core.decay_factor(lr_value, weight_decay, max_lr))
    if cautious:
        # (kept, element count) per tensor: the count launch adds up the kept entries.
        counts = torch.zeros((len(numels), 2), dtype=torch.int64, device=device)
        counts[:, 1] = torch.tensor(numels, dtype=torch.int64)
    else:
        counts = unused
    arguments = dict(
        addresses_ptr=addresses.table,
        layout_ptr=layout.table,
        n_tensors=layout.n_tensors,
        n_chunks=layout.n_chunks,
        lr_ptr=lr_tensor,
        lr=lr_value,
        decay=decay,
        weight_decay=weight_decay,
        max_lr=1.0 if max_lr is None else max_lr,
        beta1=beta1,
        # Rounded to float32 from the float64 difference, as NumPy rounds ``(1 - beta1) * g``.
        one_minus_beta1=1.0 - beta1,
        beta2=beta2,
        one_minus_beta2=1.0 - beta2,
        grad_scale_ptr=unused if grad_scale is None else _on_device(grad_scale, device),
        found_inf_ptr=unused if found_inf is None else _on_device(found_inf, device),
        P_KIND=DTYPE_CODE[dtypes[0]],
        G_KIND=DTYPE_CODE[dtypes[1]],
        M_KIND=DTYPE_CODE[dtypes[2]],
        LR_ON_DEVICE=lr_on_device,
        DECOUPLED=max_lr is not None,
        MAXIMIZE=maximize,
        CAUTIOUS=cautious,
        HAS_GRAD_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None,
        ALIGNED=addresses.aligned,
        BLOCK=BLOCK,
        CHUNK=CHUNK,
    )
    kernel = _kernel_module(interpret=device.type == "cpu").lion_kernel
    return _Launch(kernel, (layout.n_chunks,), arguments, device, counts)


def _compiled_variants() -> int:
    """How many variants of the kernel Triton has compiled in this process (for the CUDA tests)."""
    module = _modules.get(False)
    if module is None:
        return 0
    return sum(len(caches[0]) for caches in module.lion_kernel.device_caches.values())


def _compile_for_inspection(arch: int = 90, *, stored: bool = False, **constexprs: Any) -> dict[str, Any]:
    """Compiles the kernel for an NVIDIA GPU of compute capability ``arch`` without needing one.

    Returns Triton's assembly stages (``ttir``, ``ttgir``, ``llir``, ``ptx``, ``cubin``), so tests
    and maintainers can check what the GPU will run: no FMA contraction, correctly rounded
    division, 16-byte vector accesses. Pointer arguments are assumed 16-byte aligned, as the
    launcher's tensors are; ``constexprs`` override the float32, non-cautious defaults.
    ``stored=True`` compiles ``lion_stored_kernel`` (state formats; default: an int8 momentum).
    """
    triton = _import_triton()
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module = _kernel_module(interpret=False)
    kernel = module.lion_stored_kernel if stored else module.lion_kernel
    signature = dict(
        addresses_ptr="*i64", layout_ptr="*i64", n_tensors="i32", n_chunks="i32", counts_ptr="*i64",
        lr_ptr="*fp32", lr="fp32", decay="fp32", weight_decay="fp64", max_lr="fp64", beta1="fp32",
        one_minus_beta1="fp32", beta2="fp32", one_minus_beta2="fp32", grad_scale_ptr="*fp32",
        found_inf_ptr="*fp32",
    )
    values = dict(
        P_KIND=0, G_KIND=0, M_KIND=0, LR_ON_DEVICE=False, DECOUPLED=False, MAXIMIZE=False,
        CAUTIOUS=False, HAS_GRAD_SCALE=False, HAS_FOUND_INF=False, COUNT_ONLY=False, ALIGNED=True,
        BLOCK=BLOCK, CHUNK=CHUNK,
    )
    if stored:
        signature = {"addresses_ptr": "*i64", "layout_ptr": "*i64", "keys_ptr": "*i64", **{
            k: v for k, v in signature.items() if k not in ("addresses_ptr", "layout_ptr")}}
        del values["ALIGNED"], values["BLOCK"]
        values.update(M_KIND=_INT8_KIND, STOCHASTIC=False, ROWS=_ROWS)
    values.update(constexprs)
    signature.update({name: "constexpr" for name in values})
    attrs = {
        (kernel.arg_names.index(name),): [["tt.divisibility", _ALIGNMENT]]
        for name, kind in signature.items()
        if kind.startswith("*")
    }
    compiled = triton.compile(
        ASTSource(kernel, signature, values, attrs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": NUM_WARPS, "enable_fp_fusion": False},
    )
    return dict(compiled.asm)


# --- state formats ------------------------------------------------------------------------------

#: ``lion_stored_kernel``'s code for an int8 momentum (``_triton_lion_kernels.I8``).
_INT8_KIND = 4
_STORED_STORAGE = frozenset({torch.float32, torch.bfloat16, torch.float16})
#: Blocks of ``lion_core.INT8`` per tile of a program (``ROWS * 256 = BLOCK`` elements).
_ROWS = BLOCK // lion_core.INT8.block_size
_stored_overlaps = TableCache(_CACHE_SIZE)


def _stored_supported(param: Any, grad: Any, momentum: Any) -> bool:
    """Whether a triple of a call with state formats runs through ``lion_stored_kernel``: plain,
    contiguous tensors of one shape on one usable device; float32, bfloat16 or float16 parameters
    and gradients; such a momentum, or int8 codes. (A block is a run of the flattened tensor, so
    channels-last triples, supported without formats, are handed back here.)"""
    try:
        return (
            is_plain(param, grad, momentum)
            and param.layout is torch.strided
            and grad.layout is torch.strided
            and momentum.layout is torch.strided
            and param.dtype in _STORED_STORAGE
            and grad.dtype in _STORED_STORAGE
            and (momentum.dtype in _STORED_STORAGE or momentum.dtype == torch.int8)
            and param.shape == grad.shape == momentum.shape
            and grad.device == param.device
            and momentum.device == param.device
            and _device_ok(param.device)
            and param.is_contiguous()
            and grad.is_contiguous()
            and momentum.is_contiguous()
            and not (param.is_neg() or grad.is_neg() or momentum.is_neg())
        )
    except (AttributeError, RuntimeError):
        return False


def _lion_stored(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    momenta: Sequence[torch.Tensor],
    formats: Formats,
    *,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    max_lr: float | None,
    cautious: bool,
    maximize: bool,
    grad_scale: torch.Tensor | None,
    found_inf: torch.Tensor | None,
    cautious_reduce: CautiousReduce | None,
) -> list[int]:
    """:func:`lion_` for a call with state formats: every supported triple, float momenta included
    (the same operation order as ``lion_kernel``), through ``lion_stored_kernel``, one launch per
    (device, dtypes, rounding) group, with one cautious count and one ``cautious_reduce`` call.

    Per block of 256 elements of the flattened tensor, in float32: the codes are decoded
    (``code * scale``), the Lion step is taken, the parameter stored (bfloat16: to nearest, or
    stochastically with ``param_keys[i]``), and the new momentum encoded as
    ``lion_core.BlockwiseInt8.encode`` does, bit for bit (scale = absmax * INV_CODE_MAX; codes
    ``floor(y) + (u < y - floor(y))``, ``u`` from ``counter_hash`` with ``momentum_keys[i]``).
    """
    n = len(params)
    supported = [_stored_supported(params[i], grads[i], momenta[i]) for i in range(n)]
    if any(_capturing(params[i].device) for i in range(n) if supported[i]):
        raise KernelError(
            "The fused Lion step with state formats (int8 momentum, stochastic rounding) cannot be "
            "captured in a CUDA graph: its step keys change every step and are copied to the device. "
            "Run it without capture, or use float momenta and nearest rounding."
        )
    refused = [i for i in range(n) if not supported[i]]
    _import_triton()
    rows = [(params[i], grads[i], momenta[i], formats.scales[i]) for i in range(n)]
    pointers = tuple(
        0 if t is None or not supported[i] else t.data_ptr() for i, row in enumerate(rows) for t in row
    )
    numels = [params[i].numel() if supported[i] else 0 for i in range(n)]
    signature = tuple(
        (params[i].dtype, grads[i].dtype, momenta[i].dtype, formats.stochastic[i]) if supported[i] else None
        for i in range(n)
    )
    devices = [params[i].device if supported[i] else None for i in range(n)]
    key = (pointers, tuple(numels), signature)

    def spans() -> list[int]:
        out = []
        for i, row in enumerate(rows):
            if supported[i]:
                for tensor, written in zip(row, (True, False, True, True)):
                    if tensor is not None:
                        start = tensor.data_ptr()
                        out.append((start, start + tensor.numel() * tensor.element_size(), i, written))
        return overlapping_spans(out)

    aliased = _cached(_stored_overlaps, key, spans,
                      capturing=any(_capturing(d) for d in set(devices) if d is not None))
    skip = set(aliased)
    updated = [i for i in range(n) if supported[i] and i not in skip]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i in updated:
        if numels[i]:
            groups.setdefault((devices[i], *signature[i]), []).append(i)  # type: ignore[misc]
    if cautious and cautious_reduce is not None and len({devices[i] for i in updated}) > 1:
        raise KernelError(
            "`cautious_reduce` needs the tensors of one call on one device: their counts are gathered "
            f"into one tensor. Received: tensors on {sorted(str(d) for d in {devices[i] for i in updated})}"
        )
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, max_lr=max_lr, maximize=maximize,
                 grad_scale=grad_scale, found_inf=found_inf)
    launches = []
    for group, members in groups.items():
        device, p_dtype, g_dtype, m_dtype, stochastic = group
        three = tuple(pointers[4 * i + k] for k in range(3) for i in members)
        launch = _prepare(_group(device, (p_dtype, g_dtype, torch.float32), members, numels, three), cautious,
                          **hyper)
        # [param (T), grad (T), momentum (T), scales (T)]: 0 for a float momentum's scales.
        four = tuple(pointers[4 * i + k] for k in range(4) for i in members)
        table = _cached(_addresses, (device, "stored", four),
                        lambda four=four, device=device: _build_addresses(four, device),
                        capturing=_capturing(device))
        keys = torch.tensor(
            [formats.momentum_keys[i] for i in members] + [formats.param_keys[i] for i in members],
            dtype=torch.int64,
        )
        arguments = dict(launch.arguments)
        arguments.update(
            addresses_ptr=table.table,
            keys_ptr=_to_device(keys, device),
            M_KIND=_INT8_KIND if m_dtype == torch.int8 else DTYPE_CODE[m_dtype],
            STOCHASTIC=bool(stochastic),
            ROWS=_ROWS,
        )
        del arguments["ALIGNED"], arguments["BLOCK"]
        kernel = _kernel_module(interpret=device.type == "cpu").lion_stored_kernel
        launches.append((members, _Launch(kernel, launch.grid, arguments, device, launch.counts)))
    if cautious:
        for _, launch in launches:
            launch.count()
        if cautious_reduce is not None and updated:
            device = devices[updated[0]]
            local = torch.zeros((len(updated), 2), dtype=torch.int64, device=device)
            row = {i: r for r, i in enumerate(updated)}
            where = [torch.tensor([row[i] for i in members], device=device) for members, _ in launches]
            for (_, launch), positions in zip(launches, where):
                local.index_copy_(0, positions, launch.counts)
            total = global_counts(cautious_reduce, local)
            for (_, launch), positions in zip(launches, where):
                launch.counts = total.index_select(0, positions)
    for _, launch in launches:
        launch.update()
    return sorted([*refused, *aliased])

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

The module shares its interface with the CPU kernel (``lion_kernels.cpu_lion``): ``available``,
``require``, ``supports`` and ``lion_``. Importing it never imports Triton.

Example:
  >>> import torch
  >>> from lion_kernels import triton_lion
  >>> device = "cuda" if torch.cuda.is_available() else "cpu"
  >>> p = torch.tensor([1.0, -2.0], device=device)
  >>> g, m = torch.tensor([0.5, -0.5], device=device), torch.zeros(2, device=device)
  >>> if triton_lion.available() and triton_lion.supports(p, g, m):
  ...     triton_lion.lion_([p], [g], [m], lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0,
  ...                       max_lr=None, cautious=False, maximize=False)
  ... else:
  ...     p = torch.tensor([0.9, -1.9])
  >>> p.tolist()
  [0.8999999761581421, -1.899999976158142]

References:
  Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
  Liang et al. 2024, "Cautious Optimizers: Improving Training with One Line of Code", arXiv:2411.16085.
"""

from __future__ import annotations

import contextlib
import importlib.util
import operator
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch

import lion_core

__all__ = ["BLOCK", "CHUNK", "NUM_WARPS", "available", "lion_", "require", "supports"]

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

# Storage dtype -> the kernel's kind constant (_triton_lion_kernels.F32 / BF16 / F16).
_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_KERNELS_SOURCE = Path(__file__).resolve().parent / "_triton_lion_kernels.py"
_TRUE = frozenset({"1", "true", "yes", "on", "y"})


def _missing_triton() -> ImportError:
    return lion_core.missing_dependency("Triton (pip install triton)", "pass fused=False")


def _interpreting() -> bool:
    """Whether CPU tensors may run through the Triton interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


_triton_error: BaseException | None = None
_triton_checked = False


def _import_triton() -> ModuleType | None:
    """Imports Triton once; returns ``None`` (and remembers why) when it is missing or broken."""
    global _triton_error, _triton_checked
    if not _triton_checked:
        _triton_checked = True
        try:
            import triton  # noqa: F401
        except Exception as error:  # a broken install must not kill the program either
            _triton_error = error
    if _triton_error is not None:
        return None
    import triton

    return triton


def _cuda_available() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:
        return False


def available() -> bool:
    """Returns whether the kernel can run here: Triton imports, and CUDA (or the interpreter) is present.

    Never raises. With ``TRITON_INTERPRET=1`` the kernel also runs on CPU tensors, slowly, for tests.
    """
    if _import_triton() is None:
        return False
    return _interpreting() or _cuda_available()


def require() -> None:
    """Raises the error that names the remedy when :func:`available` is ``False``.

    Raises:
      ImportError: Triton is not installed (or fails to import).
      RuntimeError: there is no CUDA device (and ``TRITON_INTERPRET=1`` is not set).
    """
    if _import_triton() is None:
        raise _missing_triton() from _triton_error
    if not (_interpreting() or _cuda_available()):
        raise lion_core.incompatible(
            "`fused=True` runs a Triton kernel on CUDA tensors, but no CUDA device is available. "
            "Pass fused=False (or set TRITON_INTERPRET=1 to run the kernel on CPU tensors, for tests)."
        )


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


def _unsupported(param: Any, grad: Any, exp_avg: Any) -> str | None:
    """Why the kernel cannot take this triple, or ``None`` when it can."""
    tensors = (param, grad, exp_avg)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return "tensors"
    if any(t.layout != torch.strided for t in tensors):
        return "dense (strided) tensors"
    if param.dtype not in _KIND or grad.dtype not in _KIND or exp_avg.dtype not in _KIND:
        return "float32, bfloat16 or float16 tensors"
    device = param.device
    if grad.device != device or exp_avg.device != device:
        return "the parameter, gradient and momentum on one device"
    if device.type == "cpu":
        if not _interpreting():
            return "CUDA tensors (CPU tensors only with TRITON_INTERPRET=1)"
    elif device.type != "cuda":
        return "CUDA tensors"
    if not _same_order(tensors):
        return "contiguous (or all channels-last) tensors"
    if param.is_contiguous() and grad.is_contiguous() and exp_avg.is_contiguous():
        # The kernel sees flat memory: contiguous tensors need only the same number of elements.
        if grad.numel() != param.numel() or exp_avg.numel() != param.numel():
            return "a gradient and momentum with the parameter's number of elements"
    elif grad.shape != param.shape or exp_avg.shape != param.shape:
        return "a gradient and momentum of the parameter's shape"
    return None


def supports(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor) -> bool:
    """Returns whether :func:`lion_` can update this parameter; the caller routes others to foreach.

    True for float32, bfloat16 and float16 tensors (any mix) on one CUDA device (or on the CPU with
    ``TRITON_INTERPRET=1``) that are all contiguous with one number of elements, or all channels-last
    with one shape. False for
    anything else: strided views, complex tensors (pass ``torch.view_as_real`` views), float64,
    sparse tensors, tensors on different devices. Does not check :func:`available`.
    """
    return _unsupported(param, grad, exp_avg) is None


def supports_all(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], exp_avgs: Sequence[torch.Tensor]
) -> bool:
    """Returns whether :func:`supports` holds for every parameter (the launcher's bulk check)."""
    return all(map(supports, params, grads, exp_avgs))


class _Layout(NamedTuple):
    """The int64 table ``[numel (T), chunk -> tensor (C), chunk -> index in tensor (C)]``."""

    table: torch.Tensor
    n_tensors: int
    n_chunks: int


class _Addresses(NamedTuple):
    """The int64 table ``[param (T), grad (T), momentum (T)]`` of data pointers."""

    table: torch.Tensor
    aligned: bool


class _TableCache:
    """A least-recently-used map from what identifies a group's tensors to its device tables.

    A table's content is a function of its key alone (addresses and sizes, per device and dtype
    combination), so a hit is always correct: a replaced tensor has another address or size and
    misses. Entries used while a CUDA graph is being captured are never evicted, since the graph
    keeps reading them at every replay.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._pinned: set[Hashable] = set()

    def get(self, key: Hashable, build: Callable[[], Any], *, capturing: bool) -> Any:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        else:
            if capturing:
                raise lion_core.incompatible(
                    "The fused Lion step met new tensors while a CUDA graph was being captured; "
                    "its address tables are built with a host-to-device copy, which cannot be "
                    "captured. Run the step once before capturing it (warm-up), on the same tensors."
                )
            self.misses += 1
            entry = build()
            self._entries[key] = entry
            self._evict()
        if capturing:
            self._pinned.add(key)
        return entry

    def _evict(self) -> None:
        for key in list(self._entries):
            if len(self._entries) <= self.size:
                return
            if key not in self._pinned:
                del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
        self._pinned.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


_layouts = _TableCache(_CACHE_SIZE)
_addresses = _TableCache(_CACHE_SIZE)


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


def _kernel_module(interpret: bool) -> ModuleType:
    """Loads ``_triton_lion_kernels`` compiled (CUDA) or interpreted (CPU tensors).

    ``triton.jit`` decides between the two when the module is executed, from ``TRITON_INTERPRET``;
    loading one copy per mode, with the setting forced, lets a test run on a GPU machine use the
    interpreter for CPU tensors and the compiler for CUDA tensors in one process.
    """
    module = _modules.get(interpret)
    if module is None:
        triton = _import_triton()
        if triton is None:
            raise _missing_triton() from _triton_error
        name = f"lion_kernels._triton_lion_kernels_{'interpreted' if interpret else 'compiled'}"
        spec = importlib.util.spec_from_file_location(name, _KERNELS_SOURCE)
        assert spec is not None and spec.loader is not None
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


def _describe(param: torch.Tensor, grad: Any, exp_avg: Any) -> str:
    def one(t: Any) -> str:
        if not isinstance(t, torch.Tensor):
            return type(t).__name__
        return f"{t.dtype} {tuple(t.shape)} stride={t.stride()} on {t.device}"

    return f"param {one(param)}, grad {one(grad)}, exp_avg {one(exp_avg)}"


def lion_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
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
) -> None:
    r"""Applies one Lion step to every parameter in place, in a few kernel launches.

    .. math::

        c = \beta_1 m + (1 - \beta_1) g, \quad
        p \leftarrow p \, d - \eta \operatorname{sign}(c), \quad
        m \leftarrow \beta_2 m + (1 - \beta_2) g

    with :math:`d = 1 - \eta\lambda`, or :math:`1 - \lambda \eta / \eta_\text{max}` when ``max_lr``
    is given (``lion_core.decay_factor``). Hyperparameters are validated by the caller
    (``lion_torch.Lion``); every tensor must pass :func:`supports`.

    Args:
      params: the parameters :math:`p`, updated in place.
      grads: their gradients :math:`g`, read only.
      exp_avgs: their momenta :math:`m`, updated in place.
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
      found_inf: ``GradScaler``'s flag: when nonzero the step changes nothing, decided on the device.
        Default ``None``.

    Raises:
      ValueError: the lists differ in length, or a parameter fails :func:`supports`.
      ImportError, RuntimeError: as :func:`require`.

    Example:
      >>> import torch
      >>> from lion_kernels.triton_lion import available, lion_
      >>> if available() and torch.cuda.is_available():
      ...     p = torch.ones(3, device="cuda"); m = torch.zeros(3, device="cuda")
      ...     lion_([p], [torch.ones(3, device="cuda")], [m], lr=0.1, beta1=0.9, beta2=0.99,
      ...           weight_decay=0.0, max_lr=None, cautious=False, maximize=False)

    References:
      Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
    """
    n = len(params)
    if len(grads) != n or len(exp_avgs) != n:
        raise lion_core.invalid_value(
            "grads", f"one gradient and one momentum per parameter ({n})",
            f"{len(grads)} gradients, {len(exp_avgs)} momenta",
        )
    if not n:
        return
    tensors = [*params, *grads, *exp_avgs]
    # Attributes are read with map over C methods, one pass each: a per-tensor Python loop costs
    # microseconds per tensor, which for a thousand small tensors would rival the kernel's time.
    try:
        contiguous = all(map(torch.Tensor.is_contiguous, tensors))
    except (TypeError, RuntimeError):  # not a tensor; a sparse CSR tensor
        contiguous = False
    if contiguous:
        devices = list(map(_DEVICE, tensors))
        dtypes = list(map(_DTYPE, tensors))
        numels = list(map(torch.Tensor.numel, tensors))
        contiguous = _plainly_supported(devices, dtypes, numels, n)
    if not contiguous:
        # A slow pass that names the first triple the kernel cannot take (or accepts channels-last).
        for i, (p, g, m) in enumerate(zip(params, grads, exp_avgs)):
            reason = _unsupported(p, g, m)
            if reason is not None:
                raise lion_core.invalid_value(f"params[{i}]", reason, _describe(p, g, m))
        devices = list(map(_DEVICE, tensors))
        dtypes = list(map(_DTYPE, tensors))
        numels = list(map(torch.Tensor.numel, tensors))
    require()
    pointers = list(map(torch.Tensor.data_ptr, tensors))
    hyper = dict(
        lr=lr,
        beta1=float(beta1),
        beta2=float(beta2),
        weight_decay=float(weight_decay),
        max_lr=None if max_lr is None else float(max_lr),
        cautious=bool(cautious),
        maximize=bool(maximize),
        grad_scale=grad_scale,
        found_inf=found_inf,
    )
    numels = numels[:n]
    if (
        devices.count(devices[0]) == 3 * n
        and all(dtypes[k * n : (k + 1) * n].count(dtypes[k * n]) == n for k in range(3))
        and 0 not in numels
    ):  # the common case: one group, nothing empty
        key = (devices[0], dtypes[0], dtypes[n], dtypes[2 * n])
        _step_group(key, tuple(numels), tuple(pointers), **hyper)
        return
    groups: dict[tuple[torch.device, torch.dtype, torch.dtype, torch.dtype], list[int]] = {}
    for i in range(n):
        if numels[i]:
            key = (devices[i], dtypes[i], dtypes[i + n], dtypes[i + 2 * n])
            groups.setdefault(key, []).append(i)
    for key, members in groups.items():
        group_pointers = tuple(pointers[i + k * n] for k in range(3) for i in members)
        _step_group(key, tuple(numels[i] for i in members), group_pointers, **hyper)


_DEVICE = operator.attrgetter("device")
_DTYPE = operator.attrgetter("dtype")


def _plainly_supported(
    devices: list[torch.device], dtypes: list[torch.dtype], numels: list[int], n: int
) -> bool:
    """For contiguous tensors: whether every triple is supported, checked in bulk."""
    if not set(dtypes) <= _KIND.keys():
        return False
    if not numels[:n] == numels[n : 2 * n] == numels[2 * n :]:
        return False  # contiguous tensors need only the same number of elements
    distinct = set(devices)
    allowed = {"cuda", "cpu"} if _interpreting() else {"cuda"}
    if any(device.type not in allowed for device in distinct):
        return False
    return len(distinct) == 1 or devices[:n] == devices[n : 2 * n] == devices[2 * n :]


def _step_group(
    key: tuple[torch.device, torch.dtype, torch.dtype, torch.dtype],
    numels: tuple[int, ...],
    pointers: tuple[int, ...],
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
) -> None:
    """Updates one group: tensors on one device with one dtype combination, none empty.

    ``pointers`` holds the parameters' data pointers, then the gradients', then the momenta's.
    """
    device, dtypes = key[0], key[1:]
    capturing = _capturing(device)
    layout = _layouts.get(
        (device, dtypes, numels), lambda: _build_layout(numels, device), capturing=capturing
    )
    addresses = _addresses.get(
        (device, dtypes, pointers), lambda: _build_addresses(pointers, device), capturing=capturing
    )
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
    counts = torch.zeros(len(numels), dtype=torch.int64, device=device) if cautious else unused
    arguments = dict(
        addresses_ptr=addresses.table,
        layout_ptr=layout.table,
        n_tensors=layout.n_tensors,
        n_chunks=layout.n_chunks,
        counts_ptr=counts,
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
        P_KIND=_KIND[dtypes[0]],
        G_KIND=_KIND[dtypes[1]],
        M_KIND=_KIND[dtypes[2]],
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
    grid = (layout.n_chunks,)
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with guard:  # Triton launches on the current device
        if cautious:
            _launch(kernel, grid, {**arguments, "COUNT_ONLY": True})
        _launch(kernel, grid, {**arguments, "COUNT_ONLY": False})


def _compiled_variants() -> int:
    """How many variants of the kernel Triton has compiled in this process (for the CUDA tests)."""
    module = _modules.get(False)
    if module is None:
        return 0
    return sum(len(caches[0]) for caches in module.lion_kernel.device_caches.values())


def _compile_for_inspection(arch: int = 90, **constexprs: Any) -> dict[str, Any]:
    """Compiles the kernel for an NVIDIA GPU of compute capability ``arch`` without needing one.

    Returns Triton's assembly stages (``ttir``, ``ttgir``, ``llir``, ``ptx``, ``cubin``), so tests
    and maintainers can check what the GPU will run: no FMA contraction, correctly rounded
    division, 16-byte vector accesses. Pointer arguments are assumed 16-byte aligned, as the
    launcher's tensors are; ``constexprs`` override the float32, non-cautious defaults.
    """
    triton = _import_triton()
    if triton is None:
        raise _missing_triton() from _triton_error
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = _kernel_module(interpret=False).lion_kernel
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

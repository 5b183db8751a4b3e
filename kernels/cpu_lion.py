r"""Lion for CPU tensors in one pass: a multi-tensor C kernel, compiled on first use.

One call updates every tensor of a parameter group. The kernel reads :math:`p, g, m` and writes
:math:`p, m` once per element (20 bytes per float32 parameter), which is the memory traffic that
bounds any Lion step on a CPU; the per-tensor loops of other implementations read and write each
array several times and pay Python and dispatch costs per tensor.

The update is ``lion_core``'s rule, in the same operation order:

.. math::

    c &= \beta_1 m + (1 - \beta_1) g \\
    u &= \operatorname{sign}(c) \quad (\text{NaN where } c \text{ is NaN or } \pm\infty) \\
    p &\leftarrow p \, d - \eta \, u
       \qquad (d = 1 - \eta \lambda \text{ or } 1 - \lambda \eta / \eta_\text{max}) \\
    m &\leftarrow \beta_2 m + (1 - \beta_2) g

so float32 and float64 results equal ``lion_core.reference.reference_lion(..., dtype=...)`` bit for
bit. bfloat16 parameters and gradients are widened to float32 (with a float32 momentum), updated in
float32 and rounded once, to nearest even.

The C source (``kernels/csrc/cpu_lion.c``) is compiled by the system C compiler (``$CC``, else
``cc``, ``gcc`` or ``clang``) with ``-O3 -march=native -fopenmp -ffp-contract=off`` into a cache
directory (``$LIONKIT_CACHE_DIR``, default ``~/.cache/lionkit``), keyed by a hash of the source, the
compiler, its flags and the CPU, and loaded with :mod:`ctypes`. The first build takes about a second;
later processes load the cached library.

The module shares its interface with the Triton kernel (``lion_kernels.triton_lion``): ``available``,
``require``, ``supports``, ``supports_all`` and ``lion_``.

Example:
  >>> import torch
  >>> from lion_kernels import cpu_lion
  >>> p, g, m = torch.tensor([1.0, -2.0]), torch.tensor([0.5, -0.5]), torch.zeros(2)
  >>> if cpu_lion.available():
  ...     cpu_lion.lion_([p], [g], [m], lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0,
  ...                    max_lr=None, cautious=False, maximize=False)
  ... else:
  ...     p = torch.tensor([0.9, -1.9])
  >>> p.tolist()
  [0.8999999761581421, -1.899999976158142]

References:
  Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import operator
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from array import array
from collections.abc import Sequence
from pathlib import Path

import torch

import lion_core

__all__ = ["available", "lion_", "require", "supports", "supports_all"]

_SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_lion.c"
#: Must equal LIONKIT_CPU_ABI in the C source; checked after loading, as a guard on the cache.
_ABI = 1
#: ``-ffp-contract=off``: a fused multiply-add rounds once where the reference rounds twice.
#: No ``-ffast-math``: it would reassociate the arithmetic and drop NaN comparisons.
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-std=c11", "-fPIC", "-shared")
#: Fallbacks for compilers without OpenMP (the kernel then runs on one thread) or ``-march=native``.
_FALLBACK_DROPS = ((), ("-fopenmp",), ("-fopenmp", "-march=native"))
#: Elements per work item. Large enough that each item is a long streaming loop, small enough that
#: two threads split a 2M-element group evenly.
_CHUNK = 1 << 16
_REMEDY = "install a C compiler (gcc) or pass fused=False"

# (param, grad, momentum) dtypes -> kernel kind, as numbered in the C source.
_KINDS = {
    (torch.float32, torch.float32, torch.float32): 0,
    (torch.float64, torch.float64, torch.float64): 1,
    (torch.bfloat16, torch.bfloat16, torch.float32): 2,
}
_CAUTIOUS, _MAXIMIZE, _UNSCALE = 1, 2, 4
_STRIDED = torch.strided


class _Build:
    """The outcome of the one build attempt a process makes: the library, or why there is none."""

    def __init__(self) -> None:
        self.tried = False
        self.function: ctypes._CFuncPtr | None = None  # type: ignore[name-defined]
        self.error: str | None = None


_state = _Build()


def _cache_dir() -> Path:
    configured = os.environ.get("LIONKIT_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "lionkit"


def _compiler() -> list[str]:
    """The compiler command: ``$CC`` when set (it may carry arguments), else cc, gcc or clang."""
    configured = os.environ.get("CC")
    if configured:
        command = shlex.split(configured)
        path = shutil.which(command[0]) if command else None
        if path is None:
            raise FileNotFoundError(f"the C compiler named by CC={configured!r} was not found")
        return [path, *command[1:]]
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path is not None:
            return [path]
    raise FileNotFoundError("no C compiler (cc, gcc or clang) was found on PATH")


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: a library built for one CPU may crash on another."""
    found = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if not line.strip():
                    break  # the first processor's block is enough
                if line.startswith(("flags", "Features", "model name", "vendor_id", "CPU part")):
                    found.append(line.strip())
    except OSError:
        pass
    return "\n".join(found)


def _compile(command: list[str], target: Path) -> None:
    """Compiles to a private temporary file, then renames it into place (atomic on POSIX), so two
    processes building at once never load a half-written library."""
    errors = []
    for drop in _FALLBACK_DROPS:
        flags = [flag for flag in _FLAGS if flag not in drop]
        handle, temporary = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
        os.close(handle)
        try:
            result = subprocess.run(
                [*command, *flags, "-o", temporary, str(_SOURCE)],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if result.returncode == 0:
                os.replace(temporary, target)
                return
            shown = shlex.join([*command, *flags, "-o", temporary, str(_SOURCE)])
            errors.append(f"$ {shown}\n{result.stderr}")
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    raise RuntimeError("the C kernel did not compile:\n" + "\n".join(errors))


def _build() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    command = _compiler()
    version = subprocess.run(
        [*command, "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    source = _SOURCE.read_bytes()
    key = hashlib.sha256()
    for part in (str(_ABI), source.decode(), shlex.join(command), version, " ".join(_FLAGS),
                 _cpu_signature(), sys.platform, platform.machine()):
        key.update(part.encode())
        key.update(b"\0")
    directory = _cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RuntimeError(
            f"cannot create the kernel cache directory {directory} ({error}); "
            "set LIONKIT_CACHE_DIR to a writable directory"
        ) from error
    suffix = ".dll" if sys.platform == "win32" else ".so"
    target = directory / f"cpu_lion-{key.hexdigest()[:20]}{suffix}"
    if not target.exists():
        _compile(command, target)
    library = ctypes.CDLL(str(target))
    if library.lionkit_cpu_abi() != _ABI:
        raise RuntimeError(f"{target} has ABI {library.lionkit_cpu_abi()}, expected {_ABI}")
    function = library.lionkit_cpu_lion
    function.restype = ctypes.c_int
    function.argtypes = [
        ctypes.c_int,  # kind
        ctypes.c_int64,  # number of tensors
        ctypes.c_void_p,  # pointer and offset table
        ctypes.c_void_p,  # float64 scalars
        ctypes.c_int,  # flags
        ctypes.c_int64,  # chunk
        ctypes.c_int,  # threads
    ]
    return function


def _load() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not _state.tried:
        _state.tried = True
        try:
            _state.function = _build()
        except Exception as error:  # noqa: BLE001 - every failure means "not available", with its cause
            _state.error = f"{type(error).__name__}: {error}"
    return _state.function


def available() -> bool:
    """Returns whether the CPU kernel can run: a C compiler is present and the build succeeded.

    Builds the kernel on the first call (about a second) and caches the answer; never raises.
    """
    return _load() is not None


def require() -> None:
    """Raises ``ImportError`` naming the remedy, with the compiler's output, if the kernel cannot run.

    Raises:
      ImportError: no C compiler was found, or the kernel did not compile or load.
    """
    if _load() is None:
        raise ImportError(
            f"The fused CPU Lion kernel is unavailable: {_REMEDY}. Cause: {_state.error}"
        )


def supports(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor) -> bool:
    """Returns whether ``lion_`` can update this parameter; callers route the rest to foreach.

    Supported: dense, contiguous CPU tensors of one shape, with (param, grad, momentum) dtypes
    float32/float32/float32, float64/float64/float64 or bfloat16/bfloat16/float32. Called once per
    parameter per step, so it reads as few tensor attributes as it can.
    """
    try:
        return (
            (param.dtype, grad.dtype, exp_avg.dtype) in _KINDS
            and param.layout is _STRIDED
            and grad.layout is _STRIDED
            and exp_avg.layout is _STRIDED
            and param.is_cpu
            and grad.is_cpu
            and exp_avg.is_cpu
            and param.shape == grad.shape == exp_avg.shape
            and param.is_contiguous()
            and grad.is_contiguous()
            and exp_avg.is_contiguous()
            and not (param.is_neg() or grad.is_neg() or exp_avg.is_neg())
        )
    except (AttributeError, RuntimeError):  # not a tensor; nested tensors have no shape
        return False


def supports_all(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], exp_avgs: Sequence[torch.Tensor]
) -> bool:
    """Returns whether ``supports`` holds for every parameter, in one bulk check.

    With hundreds of small tensors, a Python call of ``supports`` per parameter would cost more than
    the update itself; callers try this first and check parameters one by one only when it fails.
    """
    try:
        shapes = list(map(_shape, params))
        if list(map(_shape, grads)) != shapes or list(map(_shape, exp_avgs)) != shapes:
            return False
        everything = (*params, *grads, *exp_avgs)
        if not set(map(_layout, everything)) <= _STRIDED_ONLY:
            return False
        return _kinds(params, grads, exp_avgs, everything)[1]
    except (AttributeError, RuntimeError):  # not tensors; nested tensors have no shape
        return False


def _unsupported(index: int, param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor) -> RuntimeError:
    def describe(t: torch.Tensor) -> str:
        try:
            strided = t.layout == torch.strided
            order = (" contiguous" if t.is_contiguous() else " non-contiguous") if strided else ""
            return f"{t.dtype} {t.layout}{order} {tuple(t.shape)} on {t.device}"
        except (AttributeError, RuntimeError):
            return f"{type(t).__name__}"

    return lion_core.incompatible(
        f"The fused CPU Lion kernel cannot update `params[{index}]`; route it to the foreach path "
        "(check lion_kernels.cpu_lion.supports first). Received: "
        f"param {describe(param)}, grad {describe(grad)}, exp_avg {describe(exp_avg)}"
    )


_data_ptr = torch.Tensor.data_ptr
_numel = torch.Tensor.numel
_is_contiguous = torch.Tensor.is_contiguous
_is_neg = torch.Tensor.is_neg
_dtype = operator.attrgetter("dtype")
_is_cpu = operator.attrgetter("is_cpu")
_shape = operator.attrgetter("shape")
_layout = operator.attrgetter("layout")
_STRIDED_ONLY = frozenset({torch.strided})


def _kinds(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    everything: tuple[torch.Tensor, ...],
) -> tuple[list[int | None], bool]:
    """The kernel kind of each parameter, and whether every tensor is a plain CPU tensor that the
    kernel may stream through: contiguous and without a lazy negation.

    The checks cost one C-level ``map`` per attribute over all tensors rather than a Python loop per
    tensor: with hundreds of small tensors they are most of the launcher's cost. May raise
    RuntimeError for layouts without strides (sparse CSR).
    """
    dtypes = tuple(set(map(_dtype, tensors)) for tensors in (params, grads, exp_avgs))
    if all(len(found) == 1 for found in dtypes):  # the usual case: one kind for the whole group
        kinds = [_KINDS.get(tuple(found.pop() for found in dtypes))] * len(params)
    else:
        kinds = list(map(_KINDS.get, zip(map(_dtype, params), map(_dtype, grads), map(_dtype, exp_avgs))))
    ok = (
        None not in kinds
        and all(map(_is_cpu, everything))
        and all(map(_is_contiguous, everything))
        and not any(map(_is_neg, everything))
    )
    return kinds, ok


def _tables(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], exp_avgs: Sequence[torch.Tensor]
) -> list[tuple[int, int, array]]:
    """Checks every tensor and returns, per kernel kind, ``(kind, count, table)``.

    A table holds the data pointers of the parameters, gradients and momenta, then the n + 1 prefix
    offsets of their sizes. Sizes are compared as element counts: that is what memory safety needs
    (``supports`` also asks for equal shapes, which autograd guarantees for gradients).
    """
    lists = (params, grads, exp_avgs)
    try:
        numels = list(map(_numel, params))
        everything = (*params, *grads, *exp_avgs)
        kinds, ok = _kinds(params, grads, exp_avgs, everything)
        ok = ok and list(map(_numel, grads)) == numels and list(map(_numel, exp_avgs)) == numels
        # Sparse and MKL-DNN tensors have no data pointer.
        pointers = list(map(_data_ptr, everything)) if ok else []
    except RuntimeError:
        ok = False
    if not ok:
        for index, triple in enumerate(zip(*lists)):
            if not supports(*triple):
                raise _unsupported(index, *triple)
        raise _unsupported(0, params[0], grads[0], exp_avgs[0])  # unreachable: supports() is stricter
    count = len(numels)
    if len(set(kinds)) == 1:
        table = array("q", pointers)
        table.append(0)
        table.extend(itertools.accumulate(numels))
        return [(kinds[0], count, table)]  # type: ignore[list-item]
    tables = []
    for kind in sorted(set(kinds)):  # type: ignore[type-var]
        chosen = [i for i, k in enumerate(kinds) if k == kind]
        table = array("q", [pointers[i] for i in chosen])
        table.extend([pointers[count + i] for i in chosen])
        table.extend([pointers[2 * count + i] for i in chosen])
        table.append(0)
        table.extend(itertools.accumulate(numels[i] for i in chosen))
        tables.append((kind, len(chosen), table))
    return tables  # type: ignore[return-value]


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
    r"""Applies one Lion step, in place, to every parameter and momentum, in one pass and one call.

    .. math::

        c = \beta_1 m + (1 - \beta_1) g, \quad
        p \leftarrow p \, d - \eta \operatorname{sign}(c), \quad
        m \leftarrow \beta_2 m + (1 - \beta_2) g

    with :math:`d` = ``lion_core.decay_factor(lr, weight_decay, max_lr)``. Gradients are only read.

    Args:
      params: the parameters, updated in place (complex ones passed as real views).
      grads: their gradients, one per parameter.
      exp_avgs: their momenta, updated in place.
      lr: the learning rate, a float or a 0-d CPU tensor.
      beta1: the interpolation coefficient of the direction.
      beta2: the decay rate of the momentum.
      weight_decay: decoupled weight decay.
      max_lr: the group's peak learning rate for fully decoupled weight decay, or ``None``.
      cautious: mask the update where it disagrees in sign with the gradient (per tensor).
      maximize: ascend instead of descend.
      grad_scale: GradScaler's scale; the kernel divides the gradients by it. Default ``None``.
      found_inf: GradScaler's flag; when nonzero the step is skipped entirely. Default ``None``.

    Raises:
      ImportError: the kernel is unavailable (see ``require``).
      RuntimeError: a tensor that the kernel cannot take (wrong dtype, device, size or layout), or
        lists of different lengths. Every tensor is checked before the kernel runs, so nothing has
        been modified when this is raised: a caller may call ``lion_`` directly and sort the
        parameters with ``supports`` only when it raises, which saves a second bulk check.

    Example:
      >>> import torch
      >>> from lion_kernels import cpu_lion
      >>> p, g, m = [torch.ones(3)], [torch.full((3,), -1.0)], [torch.zeros(3)]
      >>> if cpu_lion.available():
      ...     cpu_lion.lion_(p, g, m, lr=0.5, beta1=0.9, beta2=0.99, weight_decay=0.0,
      ...                    max_lr=None, cautious=False, maximize=False)
      ...     print(p[0].tolist())
      ... else:
      ...     print([1.5, 1.5, 1.5])
      [1.5, 1.5, 1.5]

    References:
      Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
    """
    function = _load()
    if function is None:
        require()
    count = len(params)
    if len(grads) != count or len(exp_avgs) != count:
        raise lion_core.incompatible(
            "`params`, `grads` and `exp_avgs` must have one entry per parameter. Received: "
            f"{count} params, {len(grads)} grads, {len(exp_avgs)} exp_avgs"
        )
    if count == 0 or (found_inf is not None and float(found_inf) != 0.0):
        return
    lr = float(lr)
    beta1, beta2 = float(beta1), float(beta2)
    # Python floats, as lion_core computes them: the kernel rounds each to its compute dtype, just as
    # NumPy rounds a Python float that meets a float32 array.
    scalars = array(
        "d",
        (
            beta1,
            1 - beta1,
            beta2,
            1 - beta2,
            lr,
            lion_core.decay_factor(lr, float(weight_decay), None if max_lr is None else float(max_lr)),
            1.0 if grad_scale is None else float(grad_scale),
        ),
    )
    flags = (_CAUTIOUS if cautious else 0) | (_MAXIMIZE if maximize else 0)
    flags |= 0 if grad_scale is None else _UNSCALE

    tables = _tables(params, grads, exp_avgs)
    threads = torch.get_num_threads()
    for kind, count, table in tables:
        status = function(
            kind, count, table.buffer_info()[0], scalars.buffer_info()[0], flags, _CHUNK, threads
        )
        if status != 0:
            raise MemoryError(f"the fused CPU Lion kernel failed with status {status}")
    # The kernel writes through raw pointers; bump the version counters as an in-place torch op
    # would, so autograd still detects a saved tensor that was modified.
    torch._C._increment_version(list(params))
    torch._C._increment_version(list(exp_avgs))

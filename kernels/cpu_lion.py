r"""Lion for CPU tensors in one pass: a multi-tensor C kernel, compiled when lionkit is installed.

Implements the kernel contract (``lion_kernels._contract``). One call updates every tensor of a
parameter group. The kernel reads :math:`p, g, m` and writes :math:`p, m` once per element (20 bytes
per float32 parameter), which is the memory traffic that bounds any Lion step on a CPU; the
per-tensor loops of other implementations read and write each array several times and pay Python
and dispatch costs per tensor.

The update is ``lion_core``'s rule, in the same operation order:

.. math::

    c &= \beta_1 m + (1 - \beta_1) g \\
    u &= \operatorname{sign}(c) \quad (\text{NaN where } c \text{ is NaN or } \pm\infty) \\
    p &\leftarrow p \, d - \eta \, u
       \qquad (d = 1 - \eta \lambda \text{ or } 1 - \lambda \eta / \eta_\text{max}) \\
    m &\leftarrow \beta_2 m + (1 - \beta_2) g

so float32 and float64 results equal ``lion_core.reference.reference_lion(..., dtype=...)`` bit for
bit. bfloat16 parameters and gradients (with a float32 or bfloat16 momentum) are widened to float32,
updated in float32 and rounded once, to nearest even (NaN stored as torch stores it, ``0x7fc0``).

State formats (``lion_core.state_spec``; ``scales``, ``momentum_keys``, ``param_keys``): a call with
an int8 momentum (``lion_core.INT8``: codes in the momentum tensor, one float32 scale per 256
elements of the flattened tensor) or a stochastically rounded bfloat16 parameter runs every triple
it supports through the stored-format routine: per block, the codes are decoded (``code * scale``),
the step above is taken, the parameter stored (bfloat16 to nearest, or stochastically with the bits
``counter_hash`` gives for ``param_keys[i]``) and the new momentum encoded as
``BlockwiseInt8.encode`` does (scale = absmax * INV_CODE_MAX, codes rounded stochastically with
``momentum_keys[i]``): codes, scales and parameters equal ``lion_core.reference.reference_lion_stored``
bit for bit. Float triples in such a call take the same routine (same bits as the float routines),
so one cautious count and one ``cautious_reduce`` call cover the call. float64 parameters with an
int8 momentum are computed in float64 (the codes decoded in float32 and encoded from the float64
momentum, as the reference does); float64 triples with a float momentum are handed back there.
Tensors start on block boundaries of the work space and chunks are whole blocks.

The binary. The C source (``kernels/csrc/cpu_lion.c``) is compiled by setup.py when lionkit is
installed (``pip install``, ``pip wheel``, editable installs alike) into the extension module
``lion_kernels._cpu_lion``, with ``-O3 -ffp-contract=off``. It runs on the calling thread and up to
``torch.get_num_threads() - 1`` helper threads of its own (an OpenMP loop where there are no POSIX
threads).
Nothing is compiled at training time. One binary serves every x86-64 CPU: GCC's ``target_clones``
compiles the streaming loops for x86-64-v4 (AVX-512 with BW and VL; AVX-512F before GCC 12), AVX2
and baseline x86-64, and the dynamic loader picks one per process from the CPU's features. Next to
the binary, the build writes its SHA-256
(``_cpu_lion.sha256``).

Loading. :func:`unavailable_reason` only looks for the binary (``importlib.util.find_spec``); the
first :func:`lion_` call verifies the checksum, then imports the module (one thread loads, others
wait). Without a binary (installed without a C compiler) the kernel is unavailable and ``lion_torch``
takes its foreach path, with a warning; a binary that is truncated, corrupt or built for another
platform raises :class:`~lion_kernels.KernelError` naming the file and the remedy (reinstall), and
never crashes the process: a truncated shared library would crash ``dlopen`` with SIGBUS, so it is
checked before it is loaded.

Example:
  >>> import torch
  >>> from lion_kernels import cpu_lion
  >>> p, g, m = torch.tensor([1.0, -2.0]), torch.tensor([0.5, -0.5]), torch.zeros(2)
  >>> if cpu_lion.unavailable_reason() is None:
  ...     left = cpu_lion.lion_([p], [g], [m], lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0,
  ...                           max_lr=None, cautious=False, maximize=False)
  ... else:
  ...     p, left = torch.tensor([0.9, -1.9]), []
  >>> p.tolist(), left
  ([0.8999999761581421, -1.899999976158142], [])

References:
  Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.util
import itertools
import threading
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import lion_core

from ._contract import (
    CautiousReduce,
    Formats,
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

__all__ = ["device_type", "lion_", "name", "supports", "unavailable_reason"]

name = "cpu_lion"
device_type = "cpu"

#: The extension module setup.py builds; its ABI number must equal LIONKIT_CPU_ABI in the C source.
EXTENSION = "lion_kernels._cpu_lion"
_ABI = 3
#: Elements per work item. Large enough that each item is a long streaming loop, small enough that
#: two threads split a 2M-element group evenly.
_CHUNK = 1 << 16
_REMEDY = "reinstall lionkit with a C compiler present: pip install --force-reinstall --no-cache-dir lionkit"

#: The (param, grad, momentum) dtype triples the C source implements, as ``_contract.triple_code``
#: numbers them (which the C source's KIND_* constants equal).
_CODES = frozenset(
    code
    for code in (
        triple_code(torch.float32, torch.float32, torch.float32),
        triple_code(torch.float64, torch.float64, torch.float64),
        triple_code(torch.bfloat16, torch.bfloat16, torch.float32),
        triple_code(torch.bfloat16, torch.bfloat16, torch.bfloat16),
    )
    if code is not None
)
_CAUTIOUS, _MAXIMIZE, _UNSCALE = 1, 2, 4
#: Plans kept (one per parameter group and set of addresses, typically).
_CACHE_SIZE = 64

_SIGNATURE = (
    ctypes.c_int,  # kind
    ctypes.c_int64,  # number of tensors
    ctypes.c_void_p,  # pointer and offset table
    ctypes.c_void_p,  # float64 scalars
    ctypes.c_int,  # flags
    ctypes.c_int64,  # chunk
    ctypes.c_int,  # threads
    ctypes.c_void_p,  # counts: (kept, element count) per tensor in, or kept per tensor out
)


#: The stored-format entry points (count and update) take the step keys after the table.
_STORED_SIGNATURE = (*_SIGNATURE[:3], ctypes.c_void_p, *_SIGNATURE[3:])


class _Library:
    """The loaded kernel, or why it could not be loaded. Loaded once per process, under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tried = False
        self.lion: Any = None
        self.count: Any = None
        self.stored: Any = None
        self.count_stored: Any = None
        self.error: str | None = None


_library = _Library()
_missing: str | None | bool = False  # False: not looked for yet


def _binary() -> Path | None:
    spec = importlib.util.find_spec(EXTENSION)
    return None if spec is None or spec.origin is None else Path(spec.origin)


def unavailable_reason() -> str | None:
    """``None`` when the CPU kernel can run here; otherwise why not, and the remedy.

    Pure and cheap: looks for the compiled extension without loading it (cached after the first
    call); after a load that failed, returns that failure.
    """
    global _missing
    if _library.error is not None:
        return _library.error
    if _missing is False:
        _missing = (
            None
            if _binary() is not None
            else f"the CPU kernel's compiled extension {EXTENSION} is not installed ({_REMEDY})"
        )
    return _missing  # type: ignore[return-value]


def _verify(path: Path) -> None:
    """Raises KernelError unless the binary's SHA-256 equals the one the build wrote next to it."""
    recorded = path.with_name("_cpu_lion.sha256")
    try:
        expected = recorded.read_text(encoding="ascii").split()[0]
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, IndexError, UnicodeDecodeError) as error:
        raise KernelError(
            f"the CPU kernel's binary {path} cannot be verified ({type(error).__name__}: {error}); "
            f"{_REMEDY}"
        ) from None
    if actual != expected:
        raise KernelError(
            f"the CPU kernel's binary {path} is damaged (its SHA-256 differs from the one recorded "
            f"when it was built, in {recorded.name}: a truncated or overwritten file); {_REMEDY}"
        )


def _load_library() -> None:
    path = _binary()
    if path is None:
        raise KernelError(f"the CPU kernel's compiled extension {EXTENSION} is not installed ({_REMEDY})")
    _verify(path)
    try:
        module = importlib.import_module(EXTENSION)
    except ImportError as error:  # another platform's binary, a missing runtime library
        raise KernelError(f"the CPU kernel's binary {path} does not load ({error}); {_REMEDY}") from None
    if getattr(module, "ABI", None) != _ABI:
        raise KernelError(
            f"the CPU kernel's binary {path} has ABI {getattr(module, 'ABI', None)}, this launcher "
            f"expects {_ABI} (a binary left from another version); {_REMEDY}"
        )
    prototype = ctypes.CFUNCTYPE(ctypes.c_int, *_SIGNATURE)
    _library.lion = prototype(module.lion_address)
    _library.count = prototype(module.count_address)
    stored = ctypes.CFUNCTYPE(ctypes.c_int, *_STORED_SIGNATURE)
    _library.stored = stored(module.stored_address)
    _library.count_stored = stored(module.count_stored_address)


def _load() -> Any:
    """The C entry points; raises KernelError (every time) when they cannot be loaded."""
    if not _library.tried:
        with _library.lock:
            if not _library.tried:
                try:
                    _load_library()
                except KernelError as error:
                    _library.error = str(error)
                _library.tried = True
    if _library.error is not None:
        raise KernelError(_library.error)
    return _library


def supports(param: torch.Tensor, grad: torch.Tensor, momentum: torch.Tensor) -> bool:
    """Whether :func:`lion_` updates this triple (it hands the others back).

    True for plain (not subclassed) dense, contiguous CPU tensors of one shape, with (param, grad,
    momentum) dtypes float32/float32/float32, float64/float64/float64, or bfloat16/bfloat16 with a
    float32 or bfloat16 momentum. Does not check :func:`unavailable_reason`. (An int8 momentum is
    updated only with its ``scales`` and keys, in a call with state formats; see :func:`lion_`.)
    """
    try:
        return (
            plain_triple(param, grad, momentum, _CODES)
            and param.is_cpu
            and grad.is_cpu
            and momentum.is_cpu
            and param.is_contiguous()
            and grad.is_contiguous()
            and momentum.is_contiguous()
        )
    except (AttributeError, RuntimeError):
        return False


class _Plan:
    """What one set of tensors (addresses, sizes, dtypes) needs: the triples to hand back because they
    overlap, and per kernel kind the positions it updates and its table of pointers and offsets."""

    def __init__(self, pointers: Sequence[int], numels: Sequence[int], codes: Sequence[int],
                 itemsizes: Sequence[int]) -> None:
        n = len(numels)
        nbytes = [numels[k % n] * itemsizes[k] for k in range(3 * n)]
        self.overlapping = overlapping(pointers, nbytes, n)
        skip = set(self.overlapping)
        self.updated = [i for i in range(n) if i not in skip]
        self.numels = [numels[i] for i in self.updated]
        self.tables: list[tuple[int, list[int], array]] = []
        for kind in sorted({codes[i] for i in self.updated}):
            chosen = [i for i in self.updated if codes[i] == kind]
            table = array("q", [pointers[i] for i in chosen])
            table.extend([pointers[n + i] for i in chosen])
            table.extend([pointers[2 * n + i] for i in chosen])
            table.append(0)
            table.extend(itertools.accumulate(numels[i] for i in chosen))
            self.tables.append((kind, chosen, table))


_plans = TableCache(_CACHE_SIZE)
_CPU = frozenset({"cpu"})


def _plan(scan: Scan, params: Sequence[torch.Tensor]) -> _Plan:
    """The plan of a scanned call, cached on the scan's key (addresses, shapes, dtype codes)."""
    return _plans.get(
        scan.key,
        lambda: _Plan(scan.pointers, list(map(torch.Tensor.numel, params)), scan.codes,
                      list(map(torch.Tensor.element_size, scan.tensors))),
    )


def _scalars_and_flags(
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    max_lr: float | None,
    grad_scale: torch.Tensor | None,
    cautious: bool,
    maximize: bool,
) -> tuple[array, int]:
    """The C routines' ``scalars`` (beta1, 1 - beta1, beta2, 1 - beta2, lr, decay factor, grad scale)
    and ``flags`` arguments."""
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
    return scalars, flags


def _counts_by_kind(
    plan: _Plan | _StoredPlan, kept: dict[int, int], cautious_reduce: CautiousReduce | None
) -> dict[int, array]:
    """Per kind of ``plan.tables``, the (kept, element count) rows of its triples, made global by
    ``cautious_reduce``, flattened as the C routines read them; ``kept``: position -> local count."""
    local = torch.tensor([[kept[i], size] for i, size in zip(plan.updated, plan.numels)],
                         dtype=torch.int64).reshape(len(plan.updated), 2)
    rows = global_counts(cautious_reduce, local).tolist()
    row_of = dict(zip(plan.updated, rows))
    return {kind: array("q", [value for i in chosen for value in row_of[i]]) for kind, chosen, _ in plan.tables}


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
    r"""Applies one Lion step, in place, to every supported triple, in one pass; returns the others.

    .. math::

        c = \beta_1 m + (1 - \beta_1) g, \quad
        p \leftarrow p \, d - \eta \operatorname{sign}(c), \quad
        m \leftarrow \beta_2 m + (1 - \beta_2) g

    with :math:`d` = ``lion_core.decay_factor(lr, weight_decay, max_lr)``. Gradients are only read.
    The full contract (hand-back, aliasing, ``cautious_reduce``): ``lion_kernels._contract``.

    Args:
      params: the parameters, updated in place (complex ones passed as real views).
      grads: their gradients, one per parameter.
      momenta: their momenta, updated in place.
      lr: the learning rate, a float or a one-element CPU tensor.
      beta1: the interpolation coefficient of the direction.
      beta2: the decay rate of the momentum.
      weight_decay: decoupled weight decay.
      max_lr: the group's peak learning rate for fully decoupled weight decay, or ``None``.
      cautious: mask the update where it disagrees in sign with the gradient (per tensor).
      maximize: ascend instead of descend.
      grad_scale: GradScaler's scale; the kernel divides the gradients by it. Default ``None``.
      found_inf: GradScaler's flag; when nonzero nothing is written and ``[]`` is returned.
        Default ``None``.
      cautious_reduce: turns local (kept, count) rows into global ones (DTensor shards). Default
        ``None``.
      scales, momentum_keys, param_keys: state formats (``lion_kernels._contract``): int8
        momenta (codes in ``momenta[i]``, block scales in ``scales[i]``, updated in place) and
        stochastically rounded bfloat16 parameters, updated by the stored-format routine (see
        below). Default ``None``.

    Returns:
      The sorted indices of the triples left untouched: unsupported, or overlapping in memory.

    Raises:
      KernelError: the kernel is unavailable (see :func:`unavailable_reason`), the lists differ in
        length, a state format is misused (``_contract.check_formats``: ``scales[i]`` of another
        dtype, shape or device, a missing key, ...), or ``cautious_reduce`` returned something
        else than the counts' shape and dtype.
        Nothing has been written when it is raised.

    Example:
      >>> import torch
      >>> from lion_kernels import cpu_lion
      >>> p = [torch.ones(3), torch.ones(2, 2).t()]
      >>> g = [torch.full((3,), -1.0), torch.ones(2, 2).t()]
      >>> m = [torch.zeros(3), torch.zeros(2, 2).t()]
      >>> if cpu_lion.unavailable_reason() is None:
      ...     left = cpu_lion.lion_(p, g, m, lr=0.5, beta1=0.9, beta2=0.99, weight_decay=0.0,
      ...                           max_lr=None, cautious=False, maximize=False)
      ...     print(p[0].tolist(), left)  # the transposed (non-contiguous) triple is handed back
      ... else:
      ...     print([1.5, 1.5, 1.5], [1])
      [1.5, 1.5, 1.5] [1]

    References:
      Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
    """
    n = check_lengths(params, grads, momenta)
    formats = check_formats(n, params, momenta, scales, momentum_keys, param_keys)
    library = _load()
    if n == 0 or (found_inf is not None and float(found_inf) != 0.0):
        return []
    if formats is not None:
        return _lion_stored(
            library, params, grads, momenta, formats, lr=lr, beta1=beta1, beta2=beta2,
            weight_decay=weight_decay, max_lr=max_lr, cautious=cautious, maximize=maximize,
            grad_scale=grad_scale, cautious_reduce=cautious_reduce,
        )
    scan = bulk_plain(params, grads, momenta, _CODES)
    refused: list[int] = []
    if scan is not None and scan.device_types == _CPU:
        positions = None
    else:
        positions = [i for i in range(n) if supports(params[i], grads[i], momenta[i])]
        refused = sorted(set(range(n)).difference(positions))
        if not positions:
            return refused
        params = [params[i] for i in positions]
        grads = [grads[i] for i in positions]
        momenta = [momenta[i] for i in positions]
        scan = bulk_plain(params, grads, momenta, _CODES)
        if scan is None:  # supported, yet no data pointer (a storage-less tensor): nothing is written
            return list(range(n))
    plan = _plan(scan, params)

    scalars, flags = _scalars_and_flags(
        lr, beta1, beta2, weight_decay, max_lr, grad_scale, cautious, maximize
    )
    threads = torch.get_num_threads()
    scalars_address = scalars.buffer_info()[0]

    counts: dict[int, array] = {}
    if cautious and plan.updated:
        kept: dict[int, int] = {}
        for kind, chosen, table in plan.tables:
            out = array("q", bytes(8 * len(chosen)))
            library.count(kind, len(chosen), table.buffer_info()[0], scalars_address, flags, _CHUNK,
                          threads, out.buffer_info()[0])
            kept.update(zip(chosen, out))
        counts = _counts_by_kind(plan, kept, cautious_reduce)
    for kind, chosen, table in plan.tables:
        status = library.lion(
            kind, len(chosen), table.buffer_info()[0], scalars_address, flags, _CHUNK, threads,
            counts[kind].buffer_info()[0] if kind in counts else None,
        )
        if status != 0:
            raise MemoryError(f"the fused CPU Lion kernel failed with status {status}")
    if not plan.overlapping:
        # The kernel writes through raw pointers; bump the version counters as an in-place torch op
        # would, so autograd still detects a saved tensor that was modified.
        torch._C._increment_version(list(params))
        torch._C._increment_version(list(momenta))
        return refused
    if plan.updated:
        torch._C._increment_version([params[i] for i in plan.updated])
        torch._C._increment_version([momenta[i] for i in plan.updated])
    aliased = plan.overlapping if positions is None else [positions[i] for i in plan.overlapping]
    return sorted([*refused, *aliased])


# --- state formats ------------------------------------------------------------------------------

#: (parameter dtype, momentum dtype, stochastic parameter rounding) -> the C source's stored kind
#: (SK_P_BF16 = 1, SK_M_BF16 = 2, SK_M_INT8 = 4, SK_STOCHASTIC = 8, SK_F64 = 16); gradients have
#: the parameter's dtype. A call with state formats runs every triple it supports through these
#: routines, float momenta included (the same operation order as the float routines: the same
#: bits), so that one plan, one cautious count and one ``cautious_reduce`` call serve the call.
_STORED_KINDS: dict[tuple[torch.dtype, torch.dtype, bool], int] = {
    (torch.float32, torch.float32, False): 0,
    (torch.float32, torch.int8, False): 4,
    (torch.bfloat16, torch.float32, False): 1,
    (torch.bfloat16, torch.bfloat16, False): 3,
    (torch.bfloat16, torch.int8, False): 5,
    (torch.bfloat16, torch.float32, True): 9,
    (torch.bfloat16, torch.bfloat16, True): 11,
    (torch.bfloat16, torch.int8, True): 13,
    (torch.float64, torch.int8, False): 20,  # SK_F64 | SK_M_INT8: computed in float64
}
_BLOCK = lion_core.INT8.block_size
_stored_plans = TableCache(_CACHE_SIZE)


def _stored_kind(param: Any, grad: Any, momentum: Any, stochastic: bool) -> int | None:
    """The stored kind of a triple of a call with state formats, or None (handed back)."""
    try:
        if not (
            is_plain(param, grad, momentum)
            and param.layout is torch.strided
            and grad.layout is torch.strided
            and momentum.layout is torch.strided
            and grad.dtype == param.dtype
            and param.shape == grad.shape == momentum.shape
            and param.is_cpu
            and grad.is_cpu
            and momentum.is_cpu
            and param.is_contiguous()
            and grad.is_contiguous()
            and momentum.is_contiguous()
            and not (param.is_neg() or grad.is_neg() or momentum.is_neg())
        ):
            return None
        return _STORED_KINDS.get((param.dtype, momentum.dtype, stochastic))
    except (AttributeError, RuntimeError):
        return None


class _StoredPlan:
    """A call with state formats, planned: the overlapping triples, and per stored kind the positions
    it updates and its table (pointers of parameters, gradients, momenta and scales; element counts;
    offsets padded to whole blocks, so that every block belongs to one chunk)."""

    def __init__(self, tensors: Sequence[tuple[Any, ...]], kinds: Sequence[int | None]) -> None:
        spans = []
        for i, (p, g, m, s) in enumerate(tensors):
            if kinds[i] is None:
                continue
            for tensor, written in ((p, True), (g, False), (m, True), (s, True)):
                if tensor is not None:
                    start = tensor.data_ptr()
                    spans.append((start, start + tensor.numel() * tensor.element_size(), i, written))
        self.overlapping = overlapping_spans(spans)
        skip = set(self.overlapping)
        self.updated = [i for i, kind in enumerate(kinds) if kind is not None and i not in skip]
        self.numels = [tensors[i][0].numel() for i in self.updated]
        self.tables: list[tuple[int, list[int], array]] = []
        for kind in sorted({kinds[i] for i in self.updated}):  # type: ignore[type-var]
            chosen = [i for i in self.updated if kinds[i] == kind]
            table = array("q")
            for column in range(4):
                table.extend(
                    0 if tensors[i][column] is None else tensors[i][column].data_ptr() for i in chosen
                )
            numels = [tensors[i][0].numel() for i in chosen]
            table.extend(numels)
            table.append(0)
            table.extend(itertools.accumulate(-(-size // _BLOCK) * _BLOCK for size in numels))
            self.tables.append((kind, chosen, table))


def _lion_stored(
    library: Any,
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
    cautious_reduce: CautiousReduce | None,
) -> list[int]:
    """:func:`lion_` for a call with state formats (int8 momenta, stochastically rounded bfloat16
    parameters): every supported triple, float formats included, through the stored routines."""
    n = len(params)
    kinds = [_stored_kind(params[i], grads[i], momenta[i], formats.stochastic[i]) for i in range(n)]
    refused = [i for i in range(n) if kinds[i] is None]
    tensors = [(params[i], grads[i], momenta[i], formats.scales[i]) for i in range(n)]
    key = (
        tuple(
            0 if t is None or kinds[i] is None else t.data_ptr() for i, row in enumerate(tensors) for t in row
        ),
        tuple(None if kinds[i] is None else params[i].shape for i in range(n)),
        tuple(kinds),
    )
    plan = _stored_plans.get(key, lambda: _StoredPlan(tensors, kinds))

    scalars, flags = _scalars_and_flags(
        lr, beta1, beta2, weight_decay, max_lr, grad_scale, cautious, maximize
    )
    threads = torch.get_num_threads()
    scalars_address = scalars.buffer_info()[0]
    keys = {
        kind: array("q", [formats.momentum_keys[i] for i in chosen] + [formats.param_keys[i] for i in chosen])
        for kind, chosen, _ in plan.tables
    }

    counts: dict[int, array] = {}
    if cautious and plan.updated:
        kept: dict[int, int] = {}
        for kind, chosen, table in plan.tables:
            out = array("q", bytes(8 * len(chosen)))
            status = library.count_stored(
                kind, len(chosen), table.buffer_info()[0], keys[kind].buffer_info()[0], scalars_address,
                flags, _CHUNK, threads, out.buffer_info()[0],
            )
            if status != 0:
                raise MemoryError(f"the fused CPU Lion kernel's count failed with status {status}")
            kept.update(zip(chosen, out))
        counts = _counts_by_kind(plan, kept, cautious_reduce)
    for kind, chosen, table in plan.tables:
        status = library.stored(
            kind, len(chosen), table.buffer_info()[0], keys[kind].buffer_info()[0], scalars_address, flags,
            _CHUNK, threads, counts[kind].buffer_info()[0] if kind in counts else None,
        )
        if status != 0:
            raise MemoryError(f"the fused CPU Lion kernel failed with status {status}")
    if plan.updated:
        torch._C._increment_version([params[i] for i in plan.updated])
        torch._C._increment_version([momenta[i] for i in plan.updated])
        written_scales = [s for s in (formats.scales[i] for i in plan.updated) if s is not None]
        if written_scales:
            torch._C._increment_version(written_scales)
    return sorted([*refused, *plan.overlapping])

r"""The contract every Lion kernel module implements, written once: ``cpu_lion`` and ``triton_lion``.

A kernel module is a plain module (not a class) with these names; :class:`LionKernel` spells them out
as a :class:`typing.Protocol`, so a type checker verifies both modules, and the helpers below are the
checks the two kernels share. A caller (``lion_torch``'s fused path) needs nothing else:

1. ``unavailable_reason()`` picks the default path. It is pure and cheap: it never builds, compiles,
   loads a library or imports Triton's compiler.
2. ``lion_(params, grads, momenta, ...)`` updates, in place and in one pass, every triple it supports
   and returns the sorted indices of the triples it left untouched; the caller runs those through its
   single-tensor path. There is no separate bulk pre-check: ``lion_`` does the cheap checks itself and
   caches what it derives from addresses, sizes and dtypes (its address tables, the aliasing check).
3. ``supports(param, grad, momentum)`` says, for one triple, what ``lion_`` would decide.
4. Misuse, or a kernel that cannot run here, raises :class:`KernelError`, whose text names the cause
   and the remedy. Nothing has been written when it is raised.

Handed back (never written): a triple that ``supports`` refuses (wrong device, dtype, layout, shape; a
tensor subclass such as DTensor, whose pointer is not the data; ``None``), and every member of a set of
triples whose parameters or momenta overlap in memory with another tensor of the call (two parameters
viewing one storage, one parameter listed twice): threads updating overlapping memory race, while the
caller's single-tensor path is deterministic.

Example:
  >>> import torch
  >>> from lion_kernels import cpu_lion
  >>> p = torch.zeros(4)
  >>> cpu_lion.supports(p, torch.ones(4), torch.zeros(4))
  True
  >>> cpu_lion.supports(p, torch.ones(4), torch.zeros(4, dtype=torch.float64))  # mixed dtypes
  False
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

__all__ = [
    "DTYPE_CODE", "CautiousReduce", "Formats", "HashedKey", "KernelError", "LionKernel", "Scan", "check_formats",
]

#: The hook that turns each updated triple's local (kept, element count) into the global counts.
CautiousReduce = Callable[[torch.Tensor], torch.Tensor]


class KernelError(RuntimeError):
    """A kernel that cannot run here, or a call that breaks the contract; the text names the remedy."""


@runtime_checkable
class LionKernel(Protocol):
    """What every kernel module provides (``lion_kernels.cpu_lion``, ``lion_kernels.triton_lion``)."""

    #: ``"cpu_lion"`` or ``"triton_lion"``: the module's short name.
    name: str
    #: The ``torch.device.type`` whose tensors the kernel updates: ``"cpu"`` or ``"cuda"``.
    device_type: str

    def unavailable_reason(self) -> str | None:
        """``None`` when the kernel can run here; otherwise one sentence naming the cause and remedy.

        Pure and cheap: never builds, compiles, loads a library or imports Triton's compiler. After a
        load that failed in ``lion_``, returns that failure.
        """

    def supports(self, param: torch.Tensor, grad: torch.Tensor, momentum: torch.Tensor) -> bool:
        """Whether ``lion_`` would update this triple: device, dtypes, layout, equal shapes, and plain
        ``torch.Tensor``/``torch.nn.Parameter`` objects only (any subclass: ``False``; the caller
        passes a DTensor's local shard, and complex tensors as ``torch.view_as_real`` views)."""

    def lion_(
        self,
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
        r"""One Lion step, in place, for every supported triple; returns the indices left untouched.

        .. math::

            c = \beta_1 m + (1 - \beta_1) g, \quad
            p \leftarrow p \, d - \eta \operatorname{sign}(c), \quad
            m \leftarrow \beta_2 m + (1 - \beta_2) g

        with :math:`d` = ``lion_core.decay_factor(lr, weight_decay, max_lr)``.

        Args:
          params, grads, momenta: equal-length lists; gradients are only read.
          lr, beta1, beta2, weight_decay, max_lr, cautious, maximize: as ``lion_core.lion_step``.
          grad_scale: GradScaler's scale: gradients are divided by it. Default ``None``.
          found_inf: GradScaler's flag. Nonzero: nothing is written; a host (CPU) flag also makes
            ``lion_`` return ``[]``, while a CUDA flag is read on the device (no synchronisation) and
            the handed-back indices are returned as usual. Default ``None``.
          cautious_reduce: with ``cautious=True``, called once per step with an int64 tensor of shape
            ``(n, 2)`` on the kernel's device: one row ``(kept, element count)`` per updated triple,
            in increasing index order, counted on this process's tensors (a DTensor's local shard).
            It returns the counts of the whole tensors (an all-reduce over the shards) in the same
            shape, and the kernel rescales each tensor's kept entries by count / kept, as
            ``lion_core.cautious_mask`` does for a whole tensor. Default ``None``: the local counts.
          scales, momentum_keys, param_keys: the state formats of ``lion_core.state_spec``, one entry
            per triple (``None`` for a triple without one). ``scales[i]``: the float32 block scales
            of an int8 momentum (``momenta[i]`` holds its codes, ``lion_core.INT8``);
            ``momentum_keys[i]``: the step key of those codes' stochastic rounding,
            ``lion_core.step_key(derive_seed(seed, MOMENTUM_STREAM, t), step)``; ``param_keys[i]``:
            the step key of a bfloat16 parameter's stochastic rounding (``PARAM_STREAM``). A kernel
            without a routine for a triple's format hands the triple back; a list of another
            length, or a ``scales[i]`` of another dtype, shape or device, raises KernelError
            (:func:`check_formats`). Default ``None``.

        Returns:
          The sorted indices of the triples that were not updated.

        Raises:
          KernelError: the kernel cannot run here (``unavailable_reason()``), the lists differ in
            length, or ``cautious_reduce`` returned counts of another shape or dtype.
        """


#: Storage dtype -> the code the kernels use for it (the C source and the Triton kernel number
#: dtypes this way). A kernel declares which (param, grad, momentum) code triples it supports.
DTYPE_CODE: dict[torch.dtype, int] = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}
#: The only tensor types a kernel accepts: subclasses (DTensor, ``__torch_dispatch__`` wrappers) may
#: hold their data elsewhere than their data pointer says.
PLAIN_TYPES = frozenset({torch.Tensor, torch.nn.Parameter})

_dtype = operator.attrgetter("dtype")
_shape = operator.attrgetter("shape")
_data_ptr = torch.Tensor.data_ptr
_device_type = operator.attrgetter("device.type")


def triple_code(param_dtype: torch.dtype, grad_dtype: torch.dtype, momentum_dtype: torch.dtype) -> int | None:
    """One integer for a (param, grad, momentum) dtype triple: ``16 p + 4 g + m``; None if unknown."""
    p, g, m = DTYPE_CODE.get(param_dtype), DTYPE_CODE.get(grad_dtype), DTYPE_CODE.get(momentum_dtype)
    if p is None or g is None or m is None:
        return None
    return 16 * p + 4 * g + m


def check_lengths(params: Sequence[Any], grads: Sequence[Any], momenta: Sequence[Any]) -> int:
    """The number of triples; raises KernelError when the lists differ in length."""
    n = len(params)
    if len(grads) != n or len(momenta) != n:
        raise KernelError(
            "`params`, `grads` and `momenta` must have one entry per parameter. "
            f"Received: {n} params, {len(grads)} grads, {len(momenta)} momenta"
        )
    return n


def is_plain(*tensors: Any) -> bool:
    """Whether every object is a plain ``torch.Tensor`` or ``torch.nn.Parameter`` (no subclass)."""
    return all(type(t) in PLAIN_TYPES for t in tensors)


def plain_triple(param: Any, grad: Any, momentum: Any, codes: frozenset[int]) -> bool:
    """The checks both kernels make of one triple: plain strided tensors of one shape, no lazy
    negation or conjugation, a supported dtype triple. Devices and memory order are the kernel's."""
    try:
        return (
            is_plain(param, grad, momentum)
            and param.layout is torch.strided
            and grad.layout is torch.strided
            and momentum.layout is torch.strided
            and triple_code(param.dtype, grad.dtype, momentum.dtype) in codes
            and param.shape == grad.shape == momentum.shape
            and not (param.is_neg() or grad.is_neg() or momentum.is_neg())
            and not (param.is_conj() or grad.is_conj() or momentum.is_conj())
        )
    except (AttributeError, RuntimeError):  # nested tensors have no shape
        return False


class Scan(NamedTuple):
    """What :func:`bulk_plain` found in a call whose triples are all plain, contiguous and supported."""

    #: The dtype triple code of each triple.
    codes: list[int]
    #: The data pointers of the parameters, then the gradients, then the momenta (``3 n``).
    pointers: tuple[int, ...]
    #: What identifies everything a kernel derives from these tensors (address tables, the aliasing
    #: check): the pointers, the parameters' shapes (equal to the gradients' and momenta's) and the
    #: dtype codes, as a :class:`HashedKey`. Contiguity, the negation bit, the tensor types and the
    #: devices are checked on every call (by a full scan, or by the guard recorded with one), not
    #: keyed: a tensor can change any of them, and its dtype or shape, while keeping its address
    #: (``p.data = p.data.t()``, ``p.data = p.data.view(torch.bfloat16)``, ``p.data = p.data[:4]``,
    #: ``p.unsqueeze_(0)``).
    key: HashedKey
    #: ``(*params, *grads, *momenta)``.
    tensors: tuple[Any, ...]
    #: The device types of ``tensors`` (``{"cpu"}`` for a call of CPU tensors).
    device_types: frozenset[str]


class HashedKey:
    """A cache key: a tuple that is hashed once, when the key is made.

    A :class:`Scan`'s key (pointers, shapes, dtype codes) of a call of 400 triples holds 1600 items
    and takes tens of microseconds to hash; Python does not cache a tuple's hash. A call of the same
    tensors gets the same key object back, so a kernel's caches find it by identity and one stored
    hash; an equal key made anew still finds the entry, at the price of one comparison.
    """

    __slots__ = ("_hash", "value")

    def __init__(self, value: tuple[Any, ...]) -> None:
        self.value = value
        self._hash = hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return isinstance(other, HashedKey) and self._hash == other._hash and self.value == other.value


try:
    # The C++ check torch.compile runs on the tensors of every compiled call: exact Python type,
    # dtype, device, dispatch keys (the negation and conjugation bits among them), requires_grad,
    # sizes and strides, about 60 ns a tensor. A private torch API: without it (another torch, or a
    # constructor that refuses our arguments), every call is scanned in full.
    from torch._C._dynamo.guards import TensorGuards as _TensorGuards
except ImportError:  # pragma: no cover - torch builds without dynamo
    _TensorGuards = None


def _guard(tensors: tuple[Any, ...]) -> Any:
    """A ``TensorGuards`` over ``tensors`` as they are now, or ``None`` where there is none."""
    global _TensorGuards
    if _TensorGuards is None:
        return None
    sizes = [list(t.shape) for t in tensors]
    strides = [list(t.stride()) for t in tensors]
    try:
        return _TensorGuards(*tensors, dynamic_dims_sizes=sizes, dynamic_dims_strides=strides)
    except (TypeError, RuntimeError, SystemError):  # another torch's signature: no guard from now on
        _TensorGuards = None
        return None


class _Recorded(NamedTuple):
    """A scan, kept for the next call of tensors at the same addresses, with the guard that says
    whether their metadata is still what the scan saw."""

    scan: Scan
    guard: Any


def bulk_plain(
    params: Sequence[Any], grads: Sequence[Any], momenta: Sequence[Any], codes: frozenset[int]
) -> Scan | None:
    """For the usual call, every triple plain, contiguous and supported: their dtype triple codes, data
    pointers and cache key. ``None`` when some triple is not like that: the caller then asks
    ``supports`` for each triple.

    Cost: a call of 1200 tensors must not spend more on its checks than the kernel spends on their
    data. Reading one attribute of 1200 tensors costs 30 - 130 us (one C-level ``map`` each), and the
    full scan reads seven. So a call reads two (the types, the data pointers) and looks its pointers
    up among the scans of recent calls; a scan found there is reused when a C++ guard recorded with
    it (``TensorGuards``, the check of ``torch.compile``) finds every tensor's type, dtype, device,
    dispatch keys, sizes and strides unchanged, else the call is scanned again. A tensor changed in
    place (``p.data = ...``, ``set_``, ``resize_``, ``as_strided_``) changes its data pointer or
    fails the guard."""
    everything = (*params, *grads, *momenta)
    if not set(map(type, everything)) <= PLAIN_TYPES:
        return None
    try:
        # Only a strided tensor with storage has a data pointer: ``data_ptr`` raises for every other
        # layout (sparse COO/CSR/CSC/BSR/BSC, mkldnn), which is this path's layout check.
        pointers = tuple(map(_data_ptr, everything))
    except RuntimeError:
        return None
    # Keyed on the kernel's dtype codes too: a scan another kernel accepted says nothing for this one.
    recorded = _recorded.find((codes, pointers))
    if recorded is not None and recorded.guard.check(*everything):
        return recorded.scan._replace(tensors=everything)
    scan = _scan(params, grads, momenta, codes, pointers, everything)
    if scan is not None:
        guard = _guard(everything)
        if guard is not None:
            _recorded.put((codes, pointers), _Recorded(scan._replace(tensors=()), guard))
    return scan


def _scan(
    params: Sequence[Any],
    grads: Sequence[Any],
    momenta: Sequence[Any],
    codes: frozenset[int],
    pointers: tuple[int, ...],
    everything: tuple[Any, ...],
) -> Scan | None:
    """:func:`bulk_plain`'s full scan: one C-level ``map`` per attribute, each attribute read once."""
    try:
        shapes = tuple(map(_shape, params))
        if tuple(map(_shape, grads)) != shapes or tuple(map(_shape, momenta)) != shapes:
            return None
        if not all(map(torch.Tensor.is_contiguous, everything)):
            return None
        # A lazily negated real tensor (``x.conj().imag``) would be read without its sign. (The
        # conjugate bit exists only on complex tensors, which the dtype check below refuses.)
        if any(map(torch.Tensor.is_neg, everything)):
            return None
    except RuntimeError:
        return None
    device_types = frozenset(map(_device_type, everything))
    found = tuple(set(map(_dtype, tensors)) for tensors in (params, grads, momenta))
    if all(len(dtypes) == 1 for dtypes in found):  # one dtype triple for the whole group
        code = triple_code(*(dtypes.pop() for dtypes in found))
        if code is None or code not in codes:
            return None
        key = HashedKey((pointers, shapes, code))
        return Scan([code] * len(params), pointers, key, everything, device_types)
    per_triple = list(map(triple_code, map(_dtype, params), map(_dtype, grads), map(_dtype, momenta)))
    if not set(per_triple) <= codes:
        return None
    key = HashedKey((pointers, shapes, tuple(per_triple)))
    return Scan(per_triple, pointers, key, everything, device_types)  # type: ignore[arg-type]


class Formats(NamedTuple):
    """The state formats of one call, checked (:func:`check_formats`), one entry per triple."""

    #: The float32 block scales of an int8 momentum, else ``None``.
    scales: list[torch.Tensor | None]
    #: The step key of the momentum codes' rounding (0 without an int8 momentum).
    momentum_keys: list[int]
    #: The step key of a bfloat16 parameter's stochastic rounding (0 where it is rounded to nearest).
    param_keys: list[int]
    #: Whether the parameter is rounded stochastically (``param_keys[i]`` was given).
    stochastic: list[bool]


def _entries(name: str, values: Sequence[Any] | None, n: int) -> Sequence[Any]:
    if values is None:
        return [None] * n
    if len(values) != n:
        raise KernelError(f"`{name}` must have one entry per parameter. Received: {len(values)} "
                          f"entries for {n} params")
    return values


def _key(name: str, i: int, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise KernelError(f"`{name}[{i}]` must be a step key, an int 0 <= key < 2**32 "
                          f"(lion_core.step_key). Received: {value!r}")
    return value


def check_formats(
    n: int,
    params: Sequence[Any],
    momenta: Sequence[Any],
    scales: Sequence[Any] | None,
    momentum_keys: Sequence[Any] | None,
    param_keys: Sequence[Any] | None,
) -> Formats | None:
    """Checks the state formats of a call; ``None`` when no triple has one (the plain float path).

    An int8 momentum (``momenta[i]`` holds ``lion_core.INT8`` codes) comes with ``scales[i]``, a
    contiguous float32 vector of ``INT8.blocks(numel)`` scales on the momentum's device, and a
    ``momentum_keys[i]``; a ``param_keys[i]`` belongs to a bfloat16 parameter. Anything else raises
    KernelError naming the argument, before anything is written.
    """
    if scales is None and momentum_keys is None and param_keys is None:  # the usual call: no cost
        return None
    given = {"scales": scales, "momentum_keys": momentum_keys, "param_keys": param_keys}
    columns = {name: _entries(name, values, n) for name, values in given.items()}
    # Lists of None are a call without formats: found with C-level counts, not a loop over n.
    if all(values is None or list(values).count(None) == n for values in given.values()):
        return None
    from lion_core import INT8

    out = Formats([], [], [], [])
    for i, (s, mk, pk) in enumerate(zip(columns["scales"], columns["momentum_keys"], columns["param_keys"])):
        momentum = momenta[i]
        codes = isinstance(momentum, torch.Tensor) and momentum.dtype == torch.int8
        if s is None:
            if codes:
                raise KernelError(f"`scales[{i}]` is None, but `momenta[{i}]` holds int8 codes, which need "
                                  "their block scales (lion_core.INT8)")
            if mk is not None:
                raise KernelError(f"`momentum_keys[{i}]` is given without `scales[{i}]`: only an int8 "
                                  f"momentum is rounded with a key. Received: momentum_keys[{i}]={mk!r}")
        else:
            if not codes:
                shown = momentum.dtype if isinstance(momentum, torch.Tensor) else type(momentum).__name__
                raise KernelError(f"`scales[{i}]` is given, but `momenta[{i}]` is not int8 codes. "
                                  f"Received: momenta[{i}] of {shown}")
            blocks = INT8.blocks(momentum.numel())
            if (
                not is_plain(s)
                or s.dtype != torch.float32
                or s.dim() != 1
                or s.numel() != blocks
                or not s.is_contiguous()
                or s.device != momentum.device
            ):
                shown = (f"{s.dtype} {tuple(s.shape)} on {s.device}" if isinstance(s, torch.Tensor)
                         else type(s).__name__)
                raise KernelError(
                    f"`scales[{i}]` must be a contiguous float32 tensor of shape ({blocks},) (one scale per "
                    f"block of {INT8.block_size}) on {momentum.device}. Received: {shown}"
                )
            if mk is None:
                raise KernelError(f"`momentum_keys[{i}]` is None, but the int8 momentum's codes are rounded "
                                  "stochastically with a step key (lion_core.step_key)")
        if pk is not None:
            param = params[i]
            if not isinstance(param, torch.Tensor) or param.dtype != torch.bfloat16:
                shown = param.dtype if isinstance(param, torch.Tensor) else type(param).__name__
                raise KernelError(f"`param_keys[{i}]` is given for a parameter of {shown}: stochastic "
                                  f"rounding stores bfloat16 parameters only")
        out.scales.append(s)
        out.momentum_keys.append(0 if mk is None else _key("momentum_keys", i, mk))
        out.param_keys.append(0 if pk is None else _key("param_keys", i, pk))
        out.stochastic.append(pk is not None)
    return out


def overlapping_spans(spans: Sequence[tuple[int, int, int, bool]]) -> list[int]:
    """The sorted triple indices of the tensors that share memory with another tensor of the call.

    ``spans``: ``(start, stop, triple, written)`` per tensor (a state format's extra buffers, such as
    an int8 momentum's scales, included). A cluster of overlapping tensors that holds a written one
    returns all its triples; :func:`overlapping` is this for plain (param, grad, momentum) triples.
    """
    ordered = sorted(span for span in spans if span[1] > span[0])
    found: set[int] = set()
    cluster: list[tuple[int, int, int, bool]] = []
    end = -1
    for span in [*ordered, None]:
        if span is None or span[0] >= end:
            if len(cluster) > 1 and any(written for *_, written in cluster):
                found.update(triple for _, _, triple, _ in cluster)
            cluster, end = [], -1
        if span is not None:
            cluster.append(span)
            end = max(end, span[1])
    return sorted(found)


def overlapping(pointers: Sequence[int], nbytes: Sequence[int], n: int) -> list[int]:
    """The sorted indices of the triples that share memory with another tensor of the call.

    ``pointers`` and ``nbytes`` hold the parameters', then the gradients', then the momenta's
    (``3 n`` entries). A triple is returned when its parameter or momentum (written) overlaps any
    other tensor, or its gradient overlaps another triple's written tensor; read-only gradients may
    share memory. Every member of a chain of overlaps is returned. Sorting makes this O(n log n);
    callers cache the answer with their address tables.
    """
    # Parameters (k < n) and momenta (k >= 2 n) are written; gradients are only read.
    return overlapping_spans(
        [(pointers[k], pointers[k] + nbytes[k], k % n, k < n or k >= 2 * n) for k in range(3 * n)]
    )


class TableCache:
    """A least-recently-used map from what identifies a call's tensors to what the kernel derived.

    A value is a function of its key alone (addresses, sizes, dtypes), so a hit is always correct: a
    replaced tensor has another address or size and misses. ``pin`` keeps an entry from eviction
    (entries a captured CUDA graph reads at every replay).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()  # two threads stepping at once share the cache
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._pinned: set[Hashable] = set()
        # The entry used last, already at the end of the LRU order. A key of a few thousand items
        # costs tens of microseconds to hash and compare, so a hit on it skips the second lookup
        # that moving it to the end would make.
        self._recent: Any = None

    def get(self, key: Hashable, build: Callable[[], Any], *, pin: bool = False) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if entry is not self._recent:
                    self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
                entry = build()
                self._entries[key] = entry
                self._evict()
            self._recent = entry
            if pin:
                self._pinned.add(key)
            return entry

    def find(self, key: Hashable) -> Any:
        """The entry of ``key``, or ``None`` (counted as a hit or a miss, as :meth:`get` counts)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            if entry is not self._recent:
                self._entries.move_to_end(key)
                self._recent = entry
            self.hits += 1
            return entry

    def put(self, key: Hashable, value: Any) -> None:
        """Stores ``value`` as the entry of ``key``, replacing the one it had."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            self._recent = value
            self._evict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def _evict(self) -> None:
        for key in list(self._entries):
            if len(self._entries) <= self.size:
                return
            if key not in self._pinned:
                self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self._pinned.clear()
        self._recent = None
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


#: Scans of recent calls (:func:`bulk_plain`), by the kernel's dtype codes and the tensors' data pointers.
_recorded = TableCache(64)


def global_counts(hook: CautiousReduce | None, local: torch.Tensor) -> torch.Tensor:
    """Calls ``cautious_reduce`` on the local (kept, count) rows and checks what it returned."""
    if hook is None:
        return local
    result = hook(local)
    if (
        not isinstance(result, torch.Tensor)
        or result.shape != local.shape
        or result.dtype != torch.int64
        or result.device != local.device
    ):
        shown = (
            f"{result.dtype} {tuple(result.shape)} on {result.device}"
            if isinstance(result, torch.Tensor)
            else type(result).__name__
        )
        raise KernelError(
            "`cautious_reduce` must return the global counts as an int64 tensor of the shape and "
            f"device it was given ({tuple(local.shape)} on {local.device}). Received: {shown}"
        )
    return result.contiguous()

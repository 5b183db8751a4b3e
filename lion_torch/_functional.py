r"""The functional Lion step for PyTorch and its three implementations.

``lion`` dispatches, as ``torch.optim.adam.adam`` does, to one of three paths that share one keyword-only
signature and compute ``lion_core``'s rule:

* ``_single_tensor_lion``: one tensor at a time through ``lion_core.lion_step(..., xp=torch)``;
  always available, and bit-identical to ``lion_core.reference`` in float64.
* ``_foreach_lion``: ``torch._foreach_*`` ops over tensors grouped by device and dtype.
* ``_fused_lion``: one kernel call per device (``lion_kernels.cpu_lion``, ``lion_kernels.triton_lion``,
  which share one contract); DTensors through their local shards; what a kernel hands back goes to
  ``_single_tensor_lion``, other tensor subclasses to ``_foreach_lion``, each detour with a warning.

The caller (``lion_torch.Lion.step``) passes the tensors of one parameter group whose gradient is
not ``None``; complex tensors are updated as pairs of reals through ``torch.view_as_real``. State
formats (``lion_core.state_spec``: an int8 momentum with its block scales, a stochastically
rounded bfloat16 parameter) come as the kernels' contract takes them, ``scales``,
``momentum_keys`` and ``param_keys``; every path implements them with ``lion_torch._formats``.
"""

from __future__ import annotations

import functools
import importlib
import operator
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any, Optional, TypeVar, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

import lion_core

from . import _formats

__all__ = ["lion"]

Scalar = Union[float, Tensor]
T = TypeVar("T")
#: The state formats' per-triple lists (the kernels' contract): one entry per triple, ``None`` for a
#: triple without that format; ``None`` for a call without formats.
Keys = Optional[Sequence[Optional[T]]]

#: Device types whose fused kernel is the default path when it is available. On the CPU the one-pass
#: C kernel beats every peer on large and on many small tensors (docs/benchmarks-cpu.md), where the
#: foreach path loses to lion-pytorch's on 400 small tensors; without a C compiler it is unavailable
#: and the default falls back to foreach.
FUSED_BY_DEFAULT: frozenset[str] = frozenset({"cuda", "cpu"})

#: The kernel module for each device type that has one. Imported lazily, on the fused path only.
KERNEL_MODULES: dict[str, str] = {"cpu": "lion_kernels.cpu_lion", "cuda": "lion_kernels.triton_lion"}

#: Elements per batch of the CPU foreach path: the arrays and temporaries of one batch stay in cache
#: (1 MiB per float32 array), so the six foreach ops read p, g, m from memory about once, and the
#: temporaries are small reused blocks rather than fresh allocations of whole tensors. Slicing
#: changes no value: every op is elementwise. Measured on a 2-core CPU (40M float32 parameters in 10
#: tensors): about 2.4x faster than the same ops on whole tensors; 2**16 and 2**19 were slower.
CPU_BATCH_ELEMENTS = 1 << 18


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _compute_dtype_uncached(*dtypes: torch.dtype) -> torch.dtype:
    return _torch_dtype(lion_core.compute_dtype(*map(_dtype_name, dtypes)))


_compute_dtype_cached = functools.lru_cache(maxsize=None)(_compute_dtype_uncached)


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """``lion_core.compute_dtype`` for torch dtypes: float64 if any operand is, else float32."""
    # Dynamo warns about lru_cache wrappers; while tracing, the dtypes are constants anyway.
    compute = _compute_dtype_uncached if _compiling() else _compute_dtype_cached
    return compute(*dtypes)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _eager_scalar(value: Scalar) -> Scalar:
    """A CPU tensor hyperparameter as a Python float in eager mode, so every path does the same
    float64 scalar arithmetic as the reference; kept a tensor when compiling or on an accelerator,
    where reading it would break the graph or synchronise the device."""
    if isinstance(value, Tensor):
        value = value.squeeze()
        if value.device.type == "cpu" and not _compiling():
            return value.item()
    return value


def _beta(value: Scalar) -> Scalar:
    """A beta given as a tensor, read as a float (foreach lerp takes a Python number for its weight)."""
    if isinstance(value, Tensor) and not _compiling():
        return value.item()
    return value


def _skip_step(found_inf: Tensor | None) -> bool:
    """Whether ``torch.amp.GradScaler`` found an inf or NaN gradient, so the step must not happen."""
    return found_inf is not None and bool(found_inf.item())


def _on(value: Tensor | None, device: torch.device) -> Tensor | None:
    return None if value is None else value.to(device, non_blocking=True)


def _as_real(tensors: Sequence[Tensor]) -> list[Tensor]:
    return [torch.view_as_real(t) if torch.is_complex(t) else t for t in tensors]


def _single_tensor_lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    weight_decay: Scalar,
    max_lr: Scalar | None,
    cautious: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    scales: Keys[Tensor] = None,
    momentum_keys: Keys[int] = None,
    param_keys: Keys[int] = None,
) -> None:
    """One tensor at a time through ``lion_core.lion_step``; see ``lion``."""
    if _skip_step(found_inf):
        return
    lr, beta1, beta2 = _eager_scalar(lr), _eager_scalar(beta1), _eager_scalar(beta2)
    weight_decay = _eager_scalar(weight_decay)
    max_lr = None if max_lr is None else _eager_scalar(max_lr)
    n = len(params)
    formats = zip(_entries(scales, n), _entries(momentum_keys, n), _entries(param_keys, n))
    triples = zip(_as_real(params), _as_real(grads), _as_real(exp_avgs), strict=True)
    for (param, grad, exp_avg), (scale, momentum_key, param_key) in zip(triples, formats):
        if scale is None:
            dtype = _compute_dtype(param.dtype, grad.dtype, exp_avg.dtype)
            momentum = exp_avg.to(dtype)
        else:  # an 8-bit momentum: decoded in float32, the step in float32 (float64 parameters: float64)
            dtype = _compute_dtype(param.dtype, grad.dtype, torch.float32)
            momentum = _formats.decode(exp_avg, scale, dtype)
        grad = grad.to(dtype)
        if grad_scale is not None:
            grad = grad / grad_scale.to(grad.device)
        new_param, new_exp_avg = lion_core.lion_step(
            param.to(dtype),
            grad,
            momentum,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            max_lr=max_lr,
            cautious=cautious,
            maximize=maximize,
            xp=torch,
        )
        _store(param, exp_avg, new_param, new_exp_avg, scale, momentum_key, param_key)


def _entries(values: Keys[object], n: int) -> Sequence[object]:
    return [None] * n if values is None else values


def _store(
    param: Tensor,
    exp_avg: Tensor,
    new_param: Tensor,
    new_exp_avg: Tensor,
    scale: Tensor | None,
    momentum_key: int | None,
    param_key: int | None,
) -> None:
    """Writes a step's results in their storage formats: the parameter rounded to nearest or, with a
    ``param_key``, stochastically (bfloat16); the momentum as is or, with a ``scale``, as int8 codes."""
    if param_key is None:
        param.copy_(new_param)
    else:
        _formats.store_param(param, new_param, param_key)
    if scale is None:
        exp_avg.copy_(new_exp_avg)
    else:
        if momentum_key is None:
            raise lion_core.invalid_value("momentum_keys", "a step key for every int8 momentum", None)
        _formats.store_momentum(exp_avg, scale, new_exp_avg, momentum_key)


def _cpu_batches(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], size: int
) -> Iterator[tuple[list[Tensor], list[Tensor], list[Tensor]]]:
    """Yields batches of about ``size`` elements that cover every element once: small tensors
    whole, large contiguous ones as flat slices. Zero-size tensors are dropped (nothing to do)."""
    batch: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
    filled = 0
    for p, g, m in zip(params, grads, exp_avgs, strict=True):
        numel = p.numel()
        if filled + numel <= size or not (p.is_contiguous() and g.is_contiguous() and m.is_contiguous()):
            pieces: Iterable[tuple[Tensor, Tensor, Tensor]] = [(p, g, m)] if numel else []
        else:
            pieces = _slices((p.view(-1), g.view(-1), m.view(-1)), numel, size - filled, size)
        for piece in pieces:
            for lst, t in zip(batch, piece):
                lst.append(t)
            filled += piece[0].numel()
            if filled >= size:
                yield batch
                batch, filled = ([], [], []), 0
    if batch[0]:
        yield batch


def _slices(
    flat: tuple[Tensor, Tensor, Tensor], numel: int, first: int, size: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Slices of ``first`` elements, then of ``size``, then the rest."""
    start, stop = 0, first
    while start < numel:
        yield (flat[0][start:stop], flat[1][start:stop], flat[2][start:stop])
        start, stop = stop, min(numel, stop + size)


def _widen(tensors: list[Tensor], dtypes: list[torch.dtype]) -> list[Tensor]:
    return [t if t.dtype == d else t.to(d) for t, d in zip(tensors, dtypes)]


def _foreach_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: Scalar,
    beta1: float,
    beta2: float,
    decay: Scalar | None,
    cautious: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    exact_momentum: bool = False,
) -> None:
    """The foreach ops for real tensors of one device; see ``lion`` for the rule.

    ``exact_momentum`` rounds each product of the momentum's update, as ``lion_core``'s rule does,
    instead of one fused multiply-add: an 8-bit momentum's codes then match the reference's exactly.
    """
    dtypes = [_compute_dtype(p.dtype, g.dtype, m.dtype) for p, g, m in zip(params, grads, exp_avgs)]
    # Low-precision tensors are widened to the compute dtype and rounded once when stored.
    work_params = _widen(params, dtypes)
    work_exp_avgs = _widen(exp_avgs, dtypes)
    work_grads = _widen(grads, dtypes)
    owned = all(w is not g for w, g in zip(work_grads, grads))  # in-place ops must not reach p.grad
    if grad_scale is not None:
        work_grads, owned = torch._foreach_div(work_grads, grad_scale), True
    if maximize:
        if owned:
            torch._foreach_neg_(work_grads)
        else:
            work_grads = torch._foreach_neg(work_grads)  # never write to p.grad

    # Only the sign of the interpolation is used, so lerp (one pass) may round it differently
    # from the reference's beta1 * m + (1 - beta1) * g: the signs agree unless c is within an
    # ulp of zero.
    interpolation = torch._foreach_lerp(work_exp_avgs, work_grads, 1 - beta1)
    update = torch._foreach_sign(interpolation)
    # lion_core's rule: the update is NaN where c is NaN or infinite (torch.sign(nan) is 0).
    # 0 * c is +-0 for finite c and NaN otherwise, as c - c is.
    torch._foreach_add_(update, interpolation, alpha=0)
    del interpolation
    if cautious:
        update = [lion_core.cautious_mask(u, g, xp=torch) for u, g in zip(update, work_grads)]

    if decay is not None:
        torch._foreach_mul_(work_params, decay)
    if cautious or isinstance(lr, Tensor):
        # lr * u is rounded separately, as in the reference; for u in {-1, 0, 1} add_'s fused
        # multiply-add below gives the same result.
        torch._foreach_mul_(update, lr)
        torch._foreach_sub_(work_params, update)
    else:
        torch._foreach_add_(work_params, update, alpha=-lr)

    # ATen's add_ with alpha rounds (1 - beta2) * g and the sum once (a fused multiply-add on CPU),
    # the reference twice: the momentum may differ from it by one rounding of the larger term.
    torch._foreach_mul_(work_exp_avgs, beta2)
    if exact_momentum:
        torch._foreach_add_(work_exp_avgs, torch._foreach_mul(work_grads, 1 - beta2))
    else:
        torch._foreach_add_(work_exp_avgs, work_grads, alpha=1 - beta2)

    for stored, work in ((params, work_params), (exp_avgs, work_exp_avgs)):
        changed = [(s, w) for s, w in zip(stored, work) if s is not w]
        if changed:
            torch._foreach_copy_([s for s, _ in changed], [w for _, w in changed])


def _foreach_lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    weight_decay: Scalar,
    max_lr: Scalar | None,
    cautious: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    scales: Keys[Tensor] = None,
    momentum_keys: Keys[int] = None,
    param_keys: Keys[int] = None,
) -> None:
    """``torch._foreach_*`` ops over tensors grouped by device and dtype; see ``lion``."""
    if not params or _skip_step(found_inf):
        return
    lr, beta1, beta2 = _eager_scalar(lr), _beta(beta1), _beta(beta2)
    weight_decay = _eager_scalar(weight_decay)
    max_lr = None if max_lr is None else _eager_scalar(max_lr)
    decay = None
    if isinstance(weight_decay, Tensor) or weight_decay != 0:
        decay = lion_core.decay_factor(lr, weight_decay, max_lr)
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, decay=decay, cautious=cautious, maximize=maximize,
                 grad_scale=grad_scale)
    if scales is not None or param_keys is not None:
        n = len(params)
        formats = list(zip(_entries(scales, n), _entries(momentum_keys, n), _entries(param_keys, n)))
        formatted = [i for i, (scale, _, key) in enumerate(formats) if scale is not None or key is not None]
        if formatted:
            _foreach_formatted(*_pick(formatted, params, grads, exp_avgs), [formats[i] for i in formatted],
                               **hyper)
            if len(formatted) == n:
                return
            plain = sorted(set(range(n)).difference(formatted))
            params, grads, exp_avgs = _pick(plain, params, grads, exp_avgs)
    _foreach_plain(params, grads, exp_avgs, **hyper)


def _foreach_plain(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *, lr: Scalar, decay: Scalar | None,
    grad_scale: Tensor | None, **hyper: Any,
) -> None:
    """``_foreach_lion`` for triples in floating formats, rounded to nearest."""
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, exp_avgs])
    for (device, dtype), ((device_params, device_grads, device_exp_avgs), _) in grouped.items():
        if dtype is None or dtype.is_complex:  # dtype is None while compiling: one mixed group
            device_params, device_grads, device_exp_avgs = (
                _as_real(device_params),
                _as_real(device_grads),
                _as_real(device_exp_avgs),
            )
        device = device_params[0].device
        device_lr = lr.to(device) if isinstance(lr, Tensor) else lr
        device_decay = decay.to(device) if isinstance(decay, Tensor) else decay
        if device.type == "cpu" and not hyper["cautious"] and not _compiling():
            batches = _cpu_batches(device_params, device_grads, device_exp_avgs, CPU_BATCH_ELEMENTS)
        else:  # the cautious mask is normalised over whole tensors
            batches = iter([(device_params, device_grads, device_exp_avgs)])
        for batch_params, batch_grads, batch_exp_avgs in batches:
            _foreach_update(
                batch_params,
                batch_grads,
                batch_exp_avgs,
                lr=device_lr,
                decay=device_decay,
                grad_scale=_on(grad_scale, device),
                **hyper,
            )


def _foreach_formatted(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    formats: list[tuple[Tensor | None, int | None, int | None]],
    *,
    lr: Scalar,
    decay: Scalar | None,
    grad_scale: Tensor | None,
    **hyper: Any,
) -> None:
    """``_foreach_lion`` for triples with a state format (int8 momentum, stochastically rounded
    parameter): the same foreach ops on working copies in the compute dtype (whole tensors, grouped
    by device and compute dtype), then the results stored in their formats, the int8 momenta and the
    rounded parameters of a group each in one pass over all of them (the bits of
    ``_single_tensor_lion``'s per-tensor ``_store``)."""
    grouped: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, (param, grad, exp_avg) in enumerate(zip(params, grads, exp_avgs)):
        momentum_dtype = torch.float32 if formats[i][0] is not None else exp_avg.dtype
        dtype = _compute_dtype(param.dtype, grad.dtype, momentum_dtype)
        grouped.setdefault((param.device, dtype), []).append(i)
    for (device, dtype), indices in grouped.items():
        int8 = [i for i in indices if formats[i][0] is not None]
        rounded = [i for i in indices if formats[i][2] is not None]
        if any(formats[i][1] is None for i in int8):
            raise lion_core.invalid_value("momentum_keys", "a step key for every int8 momentum", None)
        work_params = {i: params[i] for i in indices}
        work_params.update((i, params[i].to(dtype)) for i in rounded)
        work_exp_avgs = {i: exp_avgs[i] for i in indices}
        if int8:
            decoded = _formats.decode_all([exp_avgs[i] for i in int8], [formats[i][0] for i in int8], dtype)
            work_exp_avgs.update(zip(int8, decoded))
        _foreach_update(
            [work_params[i] for i in indices],
            [grads[i] for i in indices],
            [work_exp_avgs[i] for i in indices],
            lr=lr.to(device) if isinstance(lr, Tensor) else lr,
            decay=decay.to(device) if isinstance(decay, Tensor) else decay,
            grad_scale=_on(grad_scale, device),
            exact_momentum=True,
            **hyper,
        )
        if rounded:
            _formats.store_params([params[i] for i in rounded], [work_params[i] for i in rounded],
                                  [formats[i][2] for i in rounded])
        if int8:
            _formats.store_momenta([exp_avgs[i] for i in int8], [formats[i][0] for i in int8],
                                   [work_exp_avgs[i] for i in int8], [formats[i][1] for i in int8])


def kernel_module(device_type: str) -> ModuleType:
    """Imports the fused kernel module for ``device_type`` (``lion_kernels`` imports no compiler).

    Raises:
      ValueError: no fused kernel exists for that device type.
      ImportError: the module cannot be imported.
    """
    name = KERNEL_MODULES.get(device_type)
    if name is None:
        raise lion_core.invalid_value(
            "fused",
            f"False or None for parameters on {device_type!r} "
            f"(fused kernels exist for {', '.join(sorted(KERNEL_MODULES))})",
            True,
        )
    return importlib.import_module(name)


def unavailable_reason(device_type: str) -> str | None:
    """Why the fused kernel for ``device_type`` cannot run here, or ``None`` when it can.

    Pure: it imports the kernel module (which compiles and loads nothing) and asks the kernel's own
    ``unavailable_reason``. Never raises.
    """
    name = KERNEL_MODULES.get(device_type)
    if name is None:
        return f"no fused kernel exists for {device_type!r} tensors"
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        return f"{name} cannot be imported ({error})"
    return module.unavailable_reason()


def kernel_available(device_type: str) -> bool:
    """Whether the fused kernel for ``device_type`` exists and can run here; pure, never raises."""
    return unavailable_reason(device_type) is None


def require_kernel(device_type: str) -> ModuleType:
    """The kernel module for ``device_type``, for ``fused=True``.

    Raises:
      ValueError: no fused kernel exists for that device type.
      ImportError: the kernel cannot run here; the text names the cause and the remedy.
    """
    kernel = kernel_module(device_type)
    reason = kernel.unavailable_reason()
    if reason is not None:
        raise lion_core.kernel_unavailable(f"The fused {device_type} kernel ({kernel.__name__})", reason)
    return kernel


_PLAIN_TYPES = frozenset({Tensor, torch.nn.Parameter})
# C-level getters: with hundreds of tensors per step, a Python lambda or ``p.device.type`` per tensor
# costs as much as the kernel's pass over a small model's memory.
_DEVICE = operator.attrgetter("device")
_DTYPE = operator.attrgetter("dtype")
#: Batches of one ``_fused_lion`` call: (device, cautious count reduction) -> (indices into the
#: caller's lists, then the params, grads and momenta the kernel receives: plain tensors or local shards).
_Batches = dict[tuple[torch.device, object], tuple[Sequence[int], list[Tensor], list[Tensor], list[Tensor]]]


def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def _shard_dims(param: Tensor, grad: Tensor, exp_avg: Tensor, dtensor: type | None) -> tuple[int, ...] | None:
    """The mesh dimensions ``param`` is sharded over when the triple's local shards can be updated
    alone: three DTensors on one mesh with one placement and nothing partial. ``None`` otherwise."""
    if dtensor is None or not all(isinstance(t, dtensor) for t in (param, grad, exp_avg)):
        return None
    mesh, placements = param.device_mesh, param.placements  # type: ignore[attr-defined]
    for other in (grad, exp_avg):
        if other.device_mesh != mesh or other.placements != placements:  # type: ignore[attr-defined]
            return None
    if any(placement.is_partial() for placement in placements):
        return None
    return tuple(dim for dim, placement in enumerate(placements) if placement.is_shard())


def _count_reduction(mesh: object, dims: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    """The ``cautious_reduce`` hook for shards on ``mesh``: sums the (kept, total) counts of all
    tensors at once over the sharded mesh dimensions (one all-reduce per dimension, per step)."""
    groups = [mesh.get_group(dim) for dim in dims]  # type: ignore[attr-defined]

    def reduce(counts: Tensor) -> Tensor:
        for group in groups:
            torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.SUM, group=group)
        return counts

    return reduce


def _kernel_batches(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], cautious: bool
) -> tuple[_Batches, list[int]]:
    """Sorts the triples into kernel batches; returns them and the indices of the triples that
    no kernel may receive (tensor subclasses other than DTensors it can unwrap)."""
    types = set(map(type, params))
    types.update(map(type, grads), map(type, exp_avgs))
    # torch.is_complex on a Parameter costs ~2 us (__torch_function__); a set of dtypes is C-speed.
    if types <= _PLAIN_TYPES and not any(dtype.is_complex for dtype in set(map(_DTYPE, params))):
        # The common case without a per-tensor loop: with hundreds of small tensors, sorting them
        # one by one costs a good part of the kernel's pass over memory.
        devices = set(map(_DEVICE, params))
        if len(devices) == 1:
            return {(devices.pop(), None): (range(len(params)), params, grads, exp_avgs)}, []
    dtensor = None if types <= _PLAIN_TYPES else _dtensor_type()
    batches: _Batches = {}
    wrapped: list[int] = []
    reductions: dict[tuple[object, tuple[int, ...]], Callable[[Tensor], Tensor]] = {}
    for i, triple in enumerate(zip(params, grads, exp_avgs)):
        reduce: object = None
        if all(type(t) in _PLAIN_TYPES for t in triple):
            local = triple
        else:
            dims = _shard_dims(*triple, dtensor)
            if dims is None:
                wrapped.append(i)
                continue
            local = tuple(t.to_local() for t in triple)  # type: ignore[attr-defined]
            if cautious and dims:
                key = (triple[0].device_mesh, dims)  # type: ignore[attr-defined]
                reduce = reductions.get(key)
                if reduce is None:
                    reduce = reductions[key] = _count_reduction(*key)
        indices, *lists = batches.setdefault((local[0].device, reduce), ([], [], [], []))
        indices.append(i)  # type: ignore[attr-defined]
        for lst, t in zip(lists, _as_real(local)):
            lst.append(t)
    return batches, wrapped


def _pick(indices: Sequence[int], *lists: list[Tensor]) -> list[list[Tensor]]:
    return [[tensors[i] for i in indices] for tensors in lists]


def _pick_formats(indices: Sequence[int], formats: dict[str, Keys[Any]]) -> dict[str, Keys[Any]]:
    """The state formats' lists (``scales``, ``momentum_keys``, ``param_keys``) at ``indices``."""
    return {name: None if values is None else [values[i] for i in indices]
            for name, values in formats.items()}


def _describe(i: int, param: Tensor) -> str:
    return f"parameter {i} ({type(param).__name__}, {param.dtype}, shape {tuple(param.shape)})"


def _fused_lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    weight_decay: Scalar,
    max_lr: Scalar | None,
    cautious: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    scales: Keys[Tensor] = None,
    momentum_keys: Keys[int] = None,
    param_keys: Keys[int] = None,
) -> None:
    """One fused kernel call per device (``lion_kernels``' contract); see ``lion``.

    DTensors reach the kernel as their local shards (with ``cautious``, the per-tensor counts are
    summed over the mesh once per step); other tensor subclasses take ``_foreach_lion``; the triples
    a kernel hands back (unsupported layouts or dtypes, overlapping memory) take
    ``_single_tensor_lion``, which is deterministic. Each of these detours warns once per process.
    The state formats (``scales``, ``momentum_keys``, ``param_keys``) go to the kernel with their
    triples; a kernel without a routine for a format hands those triples back.
    """
    if not params:
        return
    hyper = dict(beta1=beta1, beta2=beta2, weight_decay=weight_decay, max_lr=max_lr, cautious=cautious,
                 maximize=maximize, grad_scale=grad_scale, found_inf=found_inf)
    # Only the formats given reach the kernel: a call without any keeps the contract's older signature.
    formats = {name: values for name, values in
               (("scales", scales), ("momentum_keys", momentum_keys), ("param_keys", param_keys))
               if values is not None}
    from lion_kernels import KernelError  # lazily: the kernels are imported on the fused path only

    batches, wrapped = _kernel_batches(params, grads, exp_avgs, cautious)
    if wrapped:
        first = wrapped[0]
        lion_core.warn_fallback(
            f"The fused kernel for parameters of type {type(params[first]).__name__}",
            f"{_describe(first, params[first])} is a tensor subclass whose memory a kernel must not "
            f"receive ({len(wrapped)} of {len(params)} tensors)",
            "the foreach path for them",
        )
        _foreach_lion(*_pick(wrapped, params, grads, exp_avgs), lr=lr, **hyper,
                      **_pick_formats(wrapped, formats))
    for (device, reduce), (indices, *lists) in batches.items():
        kernel = require_kernel(device.type)
        device_lr = lr.to(device) if isinstance(lr, Tensor) and lr.device != device else lr
        try:
            untouched = kernel.lion_(
                *lists,
                lr=device_lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=weight_decay,
                max_lr=max_lr,
                cautious=cautious,
                maximize=maximize,
                grad_scale=_on(grad_scale, device),
                found_inf=_on(found_inf, device),
                cautious_reduce=reduce,
                **_pick_formats(indices, formats),
            )
        except KernelError as error:
            # The contract: nothing was written (a binary that fails to load at its first call, say),
            # so the whole batch can still take the foreach path; the kernel's unavailable_reason()
            # reports the cause from now on, and later steps choose foreach before calling it.
            lion_core.warn_fallback(f"The fused {device.type} kernel ({kernel.__name__})", str(error),
                                    "the foreach path")
            _foreach_lion(*_pick(indices, params, grads, exp_avgs), lr=device_lr, **hyper,
                          **_pick_formats(indices, formats))
            continue
        if untouched:
            rest = [indices[j] for j in untouched]
            lion_core.warn_fallback(
                f"The fused {device.type} kernel for some parameters",
                f"it does not support, or cannot update in place, {len(rest)} of {len(params)} tensors "
                f"(the first: {_describe(rest[0], params[rest[0]])}; see the kernel's `supports` and "
                "its note on overlapping memory)",
                "the single-tensor path for them",
            )
            _single_tensor_lion(*_pick(rest, params, grads, exp_avgs), lr=device_lr, **hyper,
                                **_pick_formats(rest, formats))


def fused_is_default(device_types: Collection[str], available: Callable[[str], bool]) -> bool:
    """The default-path predicate: fused when every tensor is on a device type in
    ``FUSED_BY_DEFAULT`` whose kernel is ``available``; otherwise the caller uses foreach."""
    return bool(device_types) and all(t in FUSED_BY_DEFAULT and available(t) for t in device_types)


def _default_is_fused(device_types: Collection[str]) -> bool:
    """``fused_is_default`` with the kernels' pure ``unavailable_reason``; warns once per process
    when a kernel that would be the default cannot run."""
    if not fused_is_default(device_types, lambda device_type: True):
        return False  # a device type without a default kernel: foreach is the plan, not a fallback
    for device_type in sorted(device_types):
        reason = unavailable_reason(device_type)
        if reason is not None:
            lion_core.warn_fallback(
                f"The fused {device_type} kernel (the default path)", reason, "the foreach path"
            )
            return False
    return True


def _choose(params: Sequence[Tensor], foreach: bool | None, fused: bool | None) -> tuple[bool, bool]:
    """Resolves the tri-state flags: ``None`` means "choose", ``True`` and ``False`` are obeyed.

    Pure: it never compiles or loads a kernel (``unavailable_reason`` is cached by each kernel).
    """
    if foreach and fused:
        raise lion_core.incompatible(
            "`foreach=True` and `fused=True` cannot be combined: pick one implementation. "
            f"Received: foreach={foreach}, fused={fused}"
        )
    if fused is None:
        # An explicit foreach=True or foreach=False names the implementation: only None defers to us.
        fused = (
            foreach is None
            and not _compiling()
            and _default_is_fused({device.type for device in set(map(_DEVICE, params))})
        )
    return (not fused) if foreach is None else foreach, fused


def lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    foreach: bool | None = None,
    fused: bool | None = None,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    weight_decay: Scalar,
    max_lr: Scalar | None,
    cautious: bool,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    scales: Keys[Tensor] = None,
    momentum_keys: Keys[int] = None,
    param_keys: Keys[int] = None,
) -> None:
    r"""Applies one Lion step, in place, to ``params`` and their momenta ``exp_avgs``.

    .. math::

        c &= \beta_1 m + (1 - \beta_1) g \\
        p &\leftarrow p \, (1 - \eta \lambda) - \eta \operatorname{sign}(c) \\
        m &\leftarrow \beta_2 m + (1 - \beta_2) g

    with :math:`1 - \lambda \eta / \eta_\text{max}` as the decay factor when ``max_lr`` is given, the
    update masked when ``cautious``, :math:`g` negated when ``maximize``, and the update NaN where
    :math:`c` is not finite (see ``lion_core``). ``grads`` are never modified.

    Args:
      params: the parameters, each with a gradient.
      grads: their gradients (dense).
      exp_avgs: their momenta, updated in place.
      foreach: use the ``torch._foreach_*`` implementation; ``None`` (default) chooses.
      fused: use a fused kernel (``lion_kernels.cpu_lion`` on CPU, ``lion_kernels.triton_lion`` on
        CUDA); ``None`` (default) chooses: fused where the kernel's ``unavailable_reason()`` is
        ``None`` and the step is not being compiled, foreach otherwise. A kernel that would be the
        default but cannot run warns once (``lion_core.FallbackWarning``, naming the cause); with
        ``fused=True`` it raises ``ImportError`` instead. DTensors are updated through their local
        shards; other tensor subclasses take the foreach path, and tensors a kernel hands back
        (unsupported dtype or layout, overlapping memory) the single-tensor path, each with a
        one-time ``FallbackWarning``.
      lr: the learning rate :math:`\eta`, a float or a one-element tensor.
      beta1: the interpolation coefficient of the direction.
      beta2: the decay rate of the momentum.
      weight_decay: decoupled weight decay :math:`\lambda`.
      max_lr: the group's peak learning rate for fully decoupled weight decay, or ``None``.
      cautious: mask the update where its sign disagrees with the gradient's.
      maximize: ascend instead of descend.
      grad_scale: the ``torch.amp.GradScaler`` scale the gradients carry, or ``None``.
      found_inf: a tensor that is nonzero when the step must be skipped, or ``None``.
      scales: the state formats of ``lion_core.state_spec``, one entry per triple (``None`` for a
        triple without one), as ``lion_kernels``' contract takes them; ``None`` (default) for none.
        ``scales[i]``: the float32 block scales of an 8-bit momentum (``exp_avgs[i]`` holds its int8
        codes, ``lion_core.INT8``), decoded before and encoded after the step, in place.
      momentum_keys: the step key of each int8 momentum's stochastic codes,
        ``lion_core.step_key(lion_core.derive_seed(seed, lion_core.MOMENTUM_STREAM, t), step)``.
      param_keys: the step key of each bfloat16 parameter stored by stochastic rounding
        (``lion_core.PARAM_STREAM``); ``None`` entries are rounded to nearest.

    Raises:
      RuntimeError: ``foreach=True`` together with ``fused=True``.
      ImportError: ``fused=True`` where the kernel cannot run (the text names the cause).

    Example:
      >>> import torch
      >>> from lion_torch import lion
      >>> p, g, m = torch.tensor([1.0, -2.0]), torch.tensor([0.5, -0.5]), torch.zeros(2)
      >>> lion([p], [g], [m], lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0, max_lr=None,
      ...      cautious=False, maximize=False)
      >>> p
      tensor([ 0.9000, -1.9000])

    References:
      Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
    """
    foreach, fused = _choose(params, foreach, fused)
    implementation = _fused_lion if fused else _foreach_lion if foreach else _single_tensor_lion
    implementation(params, grads, exp_avgs, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
                   max_lr=max_lr, cautious=cautious, maximize=maximize, grad_scale=grad_scale,
                   found_inf=found_inf, scales=scales, momentum_keys=momentum_keys, param_keys=param_keys)

"""The PyTorch backend's multi-tensor paths of ``lion_keras.Lion``: see ``Lion.update_step``.

First choice: ``lion_kernels`` (the one-pass C kernel on the CPU, Triton on CUDA), which computes
``lion_core``'s rule over all variables in one call, through the kernel contract. What a kernel cannot
take (or every variable, where no kernel can run, or while ``torch.compile`` traces) takes the foreach
path below, with a one-time ``lion_core.FallbackWarning`` when a kernel was expected to run.

The foreach path: ``lion_core``'s rule is written with ``+ - * / >`` and an injected namespace. Here
its operands are lists of tensors whose operators are ``torch._foreach_*`` calls, so the same
functions that run per array elsewhere run over all of a model's variables at once: one kernel launch
per operation instead of one per operation and variable, as in Keras' own PyTorch Lion.
"""

from __future__ import annotations

import importlib
import numbers
from collections import defaultdict
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from keras import ops

import lion_core

from ._optimizer import _dtype, _python_int

#: The kernel module for each device type that has one (imported on first use; it builds nothing).
KERNEL_MODULES: dict[str, str] = {"cpu": "lion_kernels.cpu_lion", "cuda": "lion_kernels.triton_lion"}
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)

_TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


class _TensorList:
    """A list of tensors that ``lion_core`` can use as one array: elementwise, pairwise, via foreach."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[torch.Tensor]) -> None:
        self.items = list(items)

    @staticmethod
    def _operand(other: Any) -> Any:
        return other.items if isinstance(other, _TensorList) else other

    def __add__(self, other: Any) -> _TensorList:
        return _TensorList(torch._foreach_add(self.items, self._operand(other)))

    __radd__ = __add__

    def __sub__(self, other: Any) -> _TensorList:
        return _TensorList(torch._foreach_sub(self.items, self._operand(other)))

    def __rsub__(self, other: Any) -> _TensorList:
        return _TensorList(torch._foreach_add(torch._foreach_neg(self.items), self._operand(other)))

    def __mul__(self, other: Any) -> _TensorList:
        return _TensorList(torch._foreach_mul(self.items, self._operand(other)))

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> _TensorList:
        return _TensorList(torch._foreach_div(self.items, self._operand(other)))

    def __gt__(self, other: Any) -> _TensorList:  # type: ignore[override]
        return _TensorList([t > o for t, o in _pairs(self, other)])


def _pairs(a: _TensorList, b: Any) -> list[tuple[Any, Any]]:
    return list(zip(a.items, b.items)) if isinstance(b, _TensorList) else [(t, b) for t in a.items]


class _ForeachNamespace:
    """``sign``, ``where`` and ``mean`` over ``_TensorList``s, each result per tensor."""

    @staticmethod
    def sign(x: _TensorList) -> _TensorList:
        return _TensorList(torch._foreach_sign(x.items))

    @staticmethod
    def where(condition: _TensorList, x: Any, y: Any) -> _TensorList:
        xs = x.items if isinstance(x, _TensorList) else [x] * len(condition.items)
        ys = y.items if isinstance(y, _TensorList) else [y] * len(condition.items)
        return _TensorList([torch.where(c, a, b) for c, a, b in zip(condition.items, xs, ys)])

    @staticmethod
    def mean(x: _TensorList) -> _TensorList:
        return _TensorList([t.mean() for t in x.items])


_XP = _ForeachNamespace()


def _real(t: torch.Tensor) -> torch.Tensor:
    """A real view of ``t`` (complex tensors as (real, imag) pairs); in-place ops write through."""
    return torch.view_as_real(t) if t.is_complex() else t


def _kernel(device_type: str) -> ModuleType | None:
    """The fused kernel for ``device_type`` when it can run; else ``None``, after a one-time warning
    naming the cause where one was expected (``unavailable_reason`` is pure: nothing is built)."""
    name = KERNEL_MODULES.get(device_type)
    if name is None:
        return None  # no kernel exists for this device: foreach is the plan, not a fallback
    what = f"lionkit's fused {device_type} kernel for lion_keras.Lion"
    try:
        kernel = importlib.import_module(name)
    except ImportError as error:
        lion_core.warn_fallback(what, f"{name} cannot be imported ({error})", "the foreach update")
        return None
    reason = kernel.unavailable_reason()
    if reason is not None:
        lion_core.warn_fallback(what, reason, "the foreach update")
        return None
    return kernel


def _scalar(value: Any, dtype: torch.dtype) -> float:
    """``value`` rounded to the compute dtype, as a float: the kernel then forms ``1 - beta`` from
    the same number as Keras' Lion, which casts the betas before subtracting."""
    return float(torch.as_tensor(ops.convert_to_tensor(value), dtype=dtype).item())


def _reference_beta(beta: Any, dtype: torch.dtype) -> float:
    """A beta as ``lion_core.reference`` takes it: a Python number as given (the kernel forms
    ``1 - beta`` from it, as ``Lion._formatted_step`` does), a tensor rounded to the compute dtype."""
    value = beta() if callable(beta) else beta
    return float(value) if isinstance(value, numbers.Real) else _scalar(value, dtype)


def _format_keys(optimizer: Any, variables: Sequence[Any]) -> tuple[list[Any], list[Any], list[Any]]:
    """Per variable: its int8 momentum's scales tensor, and the step keys of its codes' and its own
    stochastic rounding (``lion_core.step_key``; ``None`` where the variable has no such format)."""
    indices = [optimizer._get_variable_index(v) for v in variables]
    specs = [optimizer._specs[t] for t in indices]
    scales = [optimizer._momentum_scales[t] for t in indices]
    momentum_keys: list[Any] = [None] * len(variables)
    param_keys: list[Any] = [None] * len(variables)
    if optimizer._seed is not None:
        seed = optimizer._seed_value()

        def key(stream: int, t: int) -> int:
            # The variable's own step: the updates it has had before this one.
            step = _python_int(optimizer._steps[t])
            return lion_core.step_key(lion_core.derive_seed(seed, stream, t), step)

        for j, (t, spec) in enumerate(zip(indices, specs)):
            if scales[j] is not None:
                momentum_keys[j] = key(lion_core.MOMENTUM_STREAM, t)
            if spec is not None and spec.param_rounding == "stochastic":
                param_keys[j] = key(lion_core.PARAM_STREAM, t)
    return [None if s is None else s.value for s in scales], momentum_keys, param_keys


def _fused_update(
    optimizer: Any, grads: list[Any], variables: Sequence[Any], momentums: list[Any], learning_rate: Any
) -> list[int]:
    """Updates through ``lion_kernels`` what a kernel takes; returns the indices left to foreach."""
    params = [_real(v.value) for v in variables]
    moms = [_real(m.value) for m in momentums]
    reals = [_real(g) for g in grads]
    scales, momentum_keys, param_keys = _format_keys(optimizer, variables)
    # Stochastically rounded variables are decayed by the kernel, before their one rounding.
    decays = [k is not None and optimizer._decays_in_step(v) for k, v in zip(param_keys, variables)]
    batches: dict[tuple[torch.device, str, bool, bool], list[int]] = defaultdict(list)
    rest: list[int] = []
    for i, (variable, grad, momentum, param) in enumerate(zip(variables, grads, momentums, params)):
        if not all(type(t) in _PLAIN_TYPES for t in (param, reals[i], moms[i])):
            rest.append(i)  # a tensor subclass: a kernel must never receive its pointer
            continue
        name = lion_core.compute_dtype(_dtype(variable), _dtype(grad), _dtype(momentum))
        formatted = optimizer._has_formats(variable)
        batches[(param.device, name, decays[i], formatted)].append(i)
    for (device, name, decay, formatted), indices in batches.items():
        kernel = _kernel(device.type)
        if kernel is None:
            rest.extend(indices)
            continue
        dtype = _TORCH_DTYPES[name]
        if formatted:  # 1 - beta as lion_core.reference forms it, so that the codes match it
            beta_1, beta_2 = (_reference_beta(b, dtype) for b in (optimizer.beta_1, optimizer.beta_2))
        else:
            beta_1, beta_2 = (_scalar(beta, dtype) for beta in optimizer._betas(name))
        formats: dict[str, Any] = {}
        for key, values in (("scales", scales), ("momentum_keys", momentum_keys), ("param_keys", param_keys)):
            if any(values[i] is not None for i in indices):
                formats[key] = [values[i] for i in indices]
        untouched = kernel.lion_(
            [params[i] for i in indices],
            [reals[i] for i in indices],
            [moms[i] for i in indices],
            lr=_scalar(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            # Applied by the base class's `_apply_weight_decay`, as for Keras' Lion, except for
            # stochastically rounded variables.
            weight_decay=float(optimizer.weight_decay) if decay else 0.0,
            max_lr=float(optimizer.max_lr) if decay and optimizer.decouple_lr else None,
            cautious=optimizer.cautious,
            maximize=False,
            **formats,
        )
        handed_back = [indices[j] for j in untouched]
        for i in sorted(set(indices) - set(handed_back)):  # stepped by the kernel: count the update
            steps = optimizer._steps[optimizer._get_variable_index(variables[i])]
            if steps is not None:
                steps.value.add_(1)
        for formatted, path in ((False, "the foreach update"), (True, "lion_keras.Lion.update_step")):
            some = [i for i in handed_back if optimizer._has_formats(variables[i]) == formatted]
            if not some:
                continue
            what = f"{variables[some[0]].path}', {_dtype(variables[some[0]])}"
            if formatted:
                spec = optimizer._specs[optimizer._get_variable_index(variables[some[0]])]
                what += f", momentum {spec.momentum.name}, {spec.param_rounding} rounding"
            lion_core.warn_fallback(
                f"lionkit's fused {device.type} kernel for some variables of lion_keras.Lion",
                f"it does not support, or cannot update in place, {len(some)} of {len(indices)} "
                f"variables (the first: '{what})",
                f"{path} for them",
            )
        rest.extend(handed_back)
    return sorted(rest)


@torch.no_grad()
def multi_tensor_update(
    optimizer: Any, grads: Sequence[Any], variables: Sequence[Any], learning_rate: Any
) -> None:
    """``Lion.update_step`` for all ``variables`` at once: the fused kernels where they can run,
    else foreach ops grouped by compute dtype (and ``Lion.update_step`` for variables with
    ``lion_core``'s formats, an int8 momentum or stochastic rounding)."""
    momentums = [optimizer._momentums[optimizer._get_variable_index(v)] for v in variables]
    grads = [ops.convert_to_tensor(g) for g in grads]
    if not torch.compiler.is_compiling():  # a kernel call cannot be traced; foreach is the plan there
        rest = _fused_update(optimizer, grads, variables, momentums, learning_rate)
        if not rest:
            return
        variables, grads, momentums = ([x[i] for i in rest] for x in (variables, grads, momentums))
    formatted = [optimizer._has_formats(v) for v in variables]
    for variable, grad, is_formatted in zip(variables, grads, formatted):
        if is_formatted:
            optimizer.update_step(grad, variable, learning_rate)
    if any(formatted):
        variables, grads, momentums = (
            [x for x, f in zip(seq, formatted) if not f] for seq in (variables, grads, momentums)
        )
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (variable, grad, momentum) in enumerate(zip(variables, grads, momentums)):
        groups[lion_core.compute_dtype(_dtype(variable), _dtype(grad), _dtype(momentum))].append(i)
    lr_tensor = ops.convert_to_tensor(learning_rate)
    for name, indices in groups.items():
        dtype = _TORCH_DTYPES[name]
        lr = lr_tensor.to(dtype)
        beta_1, beta_2 = (t.to(dtype) for t in (ops.convert_to_tensor(x) for x in optimizer._betas(name)))
        params = [_real(variables[i].value) for i in indices]
        moms = [_real(momentums[i].value) for i in indices]
        # Low-precision operands are computed in `dtype` and rounded once when stored (`.to` makes a
        # copy only where the dtype differs).
        p = [t.to(dtype) for t in params]
        g = _TensorList([_real(grads[i]).to(dtype) for i in indices])
        m = _TensorList([t.to(dtype) for t in moms])
        update = lion_core.lion_direction(m, g, beta1=beta_1, cautious=optimizer.cautious, xp=_XP)
        new_momentum = lion_core.next_momentum(m, g, beta2=beta_2)
        # Weight decay was applied by `_apply_weight_decay`; what is left of the step is `- lr * u`.
        torch._foreach_sub_(p, (update * lr).items)
        _store(params, p)
        torch._foreach_copy_(moms, new_momentum.items)


def _store(targets: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    copies = [(t, v) for t, v in zip(targets, values) if t is not v]
    if copies:
        torch._foreach_copy_([t for t, _ in copies], [v for _, v in copies])


@torch.no_grad()
def multi_tensor_decay(optimizer: Any, variables: Sequence[Any]) -> None:
    """Fully decoupled weight decay, ``p * lion_core.decay_factor(lr, wd, max_lr)``, for all at once."""
    groups: dict[str, list[torch.Tensor]] = defaultdict(list)
    for variable in variables:
        groups[lion_core.compute_dtype(_dtype(variable))].append(_real(variable.value))
    for name, params in groups.items():
        dtype = _TORCH_DTYPES[name]
        factor = ops.convert_to_tensor(optimizer._decay_factor(name)).to(dtype)
        p = [t.to(dtype) for t in params]
        torch._foreach_mul_(p, factor)
        _store(params, p)

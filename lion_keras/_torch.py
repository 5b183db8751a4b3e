"""The PyTorch backend's multi-tensor path of ``lion_keras.Lion``: see ``Lion.update_step``.

``lion_core``'s rule is written with ``+ - * / >`` and an injected namespace. Here its operands are
lists of tensors whose operators are ``torch._foreach_*`` calls, so the same functions that run
per array elsewhere run over all of a model's variables at once: one kernel launch per operation
instead of one per operation and variable, as in Keras' own PyTorch Lion.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from keras import ops

import lion_core

from ._optimizer import _dtype

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


@torch.no_grad()
def multi_tensor_update(
    optimizer: Any, grads: Sequence[Any], variables: Sequence[Any], learning_rate: Any
) -> None:
    """``Lion.update_step`` for all ``variables`` at once, grouped by compute dtype."""
    groups: dict[str, list[int]] = defaultdict(list)
    momentums = [optimizer._momentums[optimizer._get_variable_index(v)] for v in variables]
    grads = [ops.convert_to_tensor(g) for g in grads]
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

r"""The Lion update rule, written once for every array library.

For a parameter :math:`p`, its gradient :math:`g` and momentum :math:`m`, one step is

.. math::

    c &= \beta_1 m + (1 - \beta_1) g \\
    u &= \operatorname{sign}(c) \\
    p &\leftarrow p \, (1 - \eta \lambda) - \eta \, u \\
    m &\leftarrow \beta_2 m + (1 - \beta_2) g

with learning rate :math:`\eta` (the current, scheduled value) and decoupled weight decay
:math:`\lambda` applied to the old :math:`p`. The functions below use only ``+ - * / >`` and three
functions of an injected array namespace ``xp`` (``sign``, ``where``, ``mean``), which NumPy,
``jax.numpy``, ``keras.ops`` and ``torch`` all provide under those names. Each adapter's simple path
calls them directly; its fast paths are tested against ``lion_core.reference``, which calls them too.

Semantics decided here, once, for every backend and path:

* ``sign(0) = 0``: a coordinate whose interpolation is exactly zero does not move (but still decays).
* Non-finite values surface: where :math:`c` is NaN or :math:`\pm\infty` (a NaN or infinite gradient,
  or momentum that has overflowed), the update is NaN, so the parameter becomes NaN instead of moving
  by a finite :math:`\pm\eta` that would hide the divergence. ``torch.sign(nan)`` is 0, so the rule
  never relies on the library's own ``sign`` for this.
* Complex parameters are pairs of reals: callers pass real views (``torch.view_as_real``), so the sign
  is taken per component, as PyTorch's optimizers do.
* ``cautious=True`` (Liang et al. 2024) zeroes the update where its sign disagrees with the gradient's
  and multiplies the kept entries by :math:`n / n_\text{kept}` over the whole array, so the update's
  :math:`\ell_1` norm is that of the plain sign update with no zero entries; an array where nothing
  is kept is not updated (apart from weight decay).
* ``maximize=True`` ascends: the gradient is negated before it enters :math:`c` and :math:`m`.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

A = TypeVar("A")


class ArrayNamespace(Protocol):
    """The three array functions the rule needs beyond arithmetic operators."""

    def sign(self, x: Any, /) -> Any: ...

    def where(self, condition: Any, x: Any, y: Any, /) -> Any: ...

    def mean(self, x: Any, /) -> Any: ...


def decay_factor(lr: Any, weight_decay: Any, max_lr: Any = None) -> Any:
    r"""Returns the factor that multiplies the old parameter: :math:`1 - \eta\lambda`.

    With fully decoupled weight decay (``max_lr`` given) the factor is
    :math:`1 - \lambda \eta / \eta_\text{max}`: the decay follows the schedule's shape but not the
    size of the learning rate, so tuning ``lr`` does not retune ``weight_decay``. ``max_lr`` belongs
    to a parameter group (its peak learning rate), never to the optimizer as a whole.
    """
    if max_lr is None:
        return 1 - lr * weight_decay
    return 1 - weight_decay * (lr / max_lr)


def sign_with_nan(x: A, *, xp: ArrayNamespace) -> A:
    """Returns ``sign(x)``, with NaN wherever ``x`` is NaN or infinite (``x - x`` is 0 or NaN)."""
    return xp.sign(x) + (x - x)


def cautious_mask(update: A, grad: A, *, xp: ArrayNamespace) -> A:
    """Zeroes ``update`` where it disagrees in sign with ``grad``; rescales by the kept fraction.

    NaN entries of ``update`` stay NaN (``NaN * 0``) and are not counted as kept.
    """
    agree = update * grad > 0
    mask = xp.where(agree, update * update, 0.0)  # update * update is 1 in update's dtype
    kept_fraction = xp.mean(mask)
    return update * mask / xp.where(kept_fraction > 0, kept_fraction, 1.0)


def interpolate(momentum: A, grad: A, beta: Any, *, grad_first: bool = False) -> A:
    r"""Returns :math:`\beta m + (1 - \beta) g`.

    ``grad_first`` writes the gradient's term first. Rounded separately the two orders are equal, but
    a compiler that contracts ``a * b + c * d`` into a fused multiply-add (XLA does) keeps the first
    product exact, so an adapter that must reproduce its host's last bit writes the host's order:
    Keras writes the momentum's term first, Optax the gradient's.
    """
    if grad_first:
        return (1 - beta) * grad + beta * momentum
    return beta * momentum + (1 - beta) * grad


def lion_direction(
    momentum: A,
    grad: A,
    *,
    beta1: Any,
    cautious: bool = False,
    grad_first: bool = False,
    xp: ArrayNamespace,
) -> A:
    r"""Returns the step direction :math:`u = \operatorname{sign}(\beta_1 m + (1 - \beta_1) g)`."""
    update = sign_with_nan(interpolate(momentum, grad, beta1, grad_first=grad_first), xp=xp)
    if cautious:
        update = cautious_mask(update, grad, xp=xp)
    return update


def next_momentum(momentum: A, grad: A, *, beta2: Any, grad_first: bool = False) -> A:
    r"""Returns :math:`\beta_2 m + (1 - \beta_2) g` (``grad_first``: see ``interpolate``)."""
    return interpolate(momentum, grad, beta2, grad_first=grad_first)


def lion_step(
    param: A,
    grad: A,
    momentum: A,
    *,
    lr: Any,
    beta1: Any,
    beta2: Any,
    weight_decay: Any = 0.0,
    max_lr: Any = None,
    cautious: bool = False,
    maximize: bool = False,
    xp: ArrayNamespace,
) -> tuple[A, A]:
    r"""Computes one Lion step for one real array; returns ``(new_param, new_momentum)``.

    Pure: nothing is modified in place. Hyperparameters may be Python numbers or scalar arrays of
    ``xp`` (a traced learning rate, a device tensor). Callers upcast low-precision inputs to
    ``compute_dtype`` first and round the results once when storing them.

    Args:
      param: the parameter :math:`p`.
      grad: its gradient :math:`g`.
      momentum: its momentum :math:`m`.
      lr: the learning rate :math:`\eta` for this step.
      beta1: the interpolation coefficient of the direction.
      beta2: the decay rate of the momentum.
      weight_decay: decoupled weight decay :math:`\lambda`.
      max_lr: the group's peak learning rate, for fully decoupled weight decay; ``None`` for the
        paper's :math:`1 - \eta\lambda`.
      cautious: mask the update where it disagrees with the gradient.
      maximize: ascend instead of descend.
      xp: the array namespace (``numpy``, ``jax.numpy``, ``keras.ops``, ``torch``).
    """
    if maximize:
        grad = -grad
    update = lion_direction(momentum, grad, beta1=beta1, cautious=cautious, xp=xp)
    new_param = param * decay_factor(lr, weight_decay, max_lr) - lr * update
    return new_param, next_momentum(momentum, grad, beta2=beta2)

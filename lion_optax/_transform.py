r"""Lion as Optax gradient transformations: ``scale_by_lion`` and the ``lion`` alias.

The direction is ``lion_core``'s (``sign_with_nan``, ``cautious_mask``, run with ``jax.numpy``, on the
interpolation summed in optax's term order); weight decay, its mask and the learning rate (or its
schedule) are optax's own ``add_decayed_weights`` and ``scale_by_learning_rate``, chained exactly as
``optax.lion`` chains them. A user who swaps ``optax.lion`` for ``lion_optax.lion`` gets the same
numbers, bit for bit, for float32 parameters and gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import optax
from optax import ScaleByLionState  # optax's own class: states move between the two libraries

import lion_core

__all__ = ["ScaleByLionState", "lion", "scale_by_lion"]

MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]


def _requested_momentum_dtype(mu_dtype: Any) -> Optional[str]:
    """Returns ``mu_dtype``'s NumPy-style name after ``lion_core``'s check; ``None`` stays ``None``."""
    if mu_dtype is None:
        return None
    try:
        name = jnp.dtype(mu_dtype).name
    except TypeError:
        name = mu_dtype  # not a dtype at all: lion_core rejects it, quoting what the user passed
    return lion_core.check_momentum_dtype(name, "mu_dtype")


def _real_pairs(x: jax.Array, dtype: Any) -> jax.Array:
    """A complex array as (real, imag) pairs on a new last axis: Lion takes the sign per component."""
    return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1).astype(dtype)


def _from_real_pairs(x: jax.Array, dtype: Any) -> jax.Array:
    """The inverse of ``_real_pairs``, cast to ``dtype``."""
    return jax.lax.complex(x[..., 0], x[..., 1]).astype(dtype)


def _per_component(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner`` with each complex leaf seen as (real, imag) pairs; real leaves pass unchanged.

    Lion's policy treats a complex number as a pair of reals. optax's pieces multiply a complex
    array by a real scalar promoted to complex, and a complex product spreads a NaN in one
    component to both: ``-lr * (nan + 0j)`` is ``nan + nanj``, where per component it is
    ``nan + 0j``, as lion_torch and lion_core's reference give. ``inner``'s state is built the same
    way, so it is the state optax's own piece would have.
    """

    def split(tree: Any) -> Any:
        return jax.tree.map(lambda x: _real_pairs(x, jnp.real(x).dtype) if jnp.iscomplexobj(x) else x, tree)

    def init_fn(params: optax.Params) -> optax.OptState:
        return inner.init(split(params))

    def update_fn(
        updates: optax.Updates, state: optax.OptState, params: Optional[optax.Params] = None
    ) -> tuple[optax.Updates, optax.OptState]:
        new, state = inner.update(split(updates), state, None if params is None else split(params))
        # The pairs' real dtype is what optax gives a complex leaf's parts (f32 -> complex64).
        merged = jax.tree.map(
            lambda u, n: jax.lax.complex(n[..., 0], n[..., 1]) if jnp.iscomplexobj(u) else n, updates, new
        )
        return merged, state

    return optax.GradientTransformation(init_fn, update_fn)


def _lion_leaf(
    grad: jax.Array, mu: jax.Array, *, b1: Any, b2: Any, cautious: bool
) -> tuple[jax.Array, jax.Array]:
    """Direction and next momentum for one array, computed in ``lion_core.compute_dtype``.

    The direction comes back in the dtype ``optax.scale_by_lion`` returns, that of
    ``(1 - b1) * grad + b1 * mu``, so the chain after it (and ``lax.cond`` around it) sees the dtypes
    it would with optax; ``mu`` keeps its own dtype.
    """
    mu_dtype = jnp.result_type(mu)
    out_dtype = jnp.result_type(grad, mu, b1)
    work = jnp.dtype(lion_core.compute_dtype(jnp.result_type(grad).name, mu_dtype.name))
    is_complex = jnp.iscomplexobj(grad) or jnp.iscomplexobj(mu)
    if is_complex:
        g, m = _real_pairs(grad, work), _real_pairs(mu, work)
    else:
        g, m = jnp.asarray(grad, work), jnp.asarray(mu, work)
    # optax's term order: XLA contracts the first product into an FMA, so the order sets the last bit.
    direction = lion_core.lion_direction(m, g, beta1=b1, cautious=cautious, grad_first=True, xp=jnp)
    new_mu = lion_core.next_momentum(m, g, beta2=b2, grad_first=True)
    if is_complex:
        return _from_real_pairs(direction, out_dtype), _from_real_pairs(new_mu, mu_dtype)
    # Rounding to mu's own dtype every step keeps the state's dtype fixed from init on, so a jitted
    # step does not retrace, and a lax.scan carry or a lax.cond branch keeps its type.
    return direction.astype(out_dtype), new_mu.astype(mu_dtype)


def scale_by_lion(
    b1: jax.typing.ArrayLike = lion_core.defaults.OPTAX.beta1,
    b2: jax.typing.ArrayLike = lion_core.defaults.OPTAX.beta2,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
    *,
    cautious: bool = False,
) -> optax.GradientTransformation:
    r"""Rescales updates to Lion's sign direction.

    With gradient :math:`g_t` and momentum :math:`m_{t-1}` (zeros at ``init``), the update is

    .. math::

        c_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        u_t &= \operatorname{sign}(c_t) \\
        m_t &= \beta_2 m_{t-1} + (1 - \beta_2) g_t

    and the transformation returns :math:`u_t`. ``lion`` chains it with weight decay and the
    learning rate; use this piece alone to build your own chain. The rule is ``lion_core``'s:
    ``sign(0) = 0``; a NaN or infinite :math:`c_t` gives a NaN update (``optax.scale_by_lion`` maps
    an infinite :math:`c_t` to :math:`\pm 1`); complex arrays take the sign of each component
    (``optax`` divides by the modulus). The arithmetic runs in float32 at least, whatever the input
    dtypes; the momentum is rounded once to its own dtype when stored, and the direction is
    returned in the dtype ``optax.scale_by_lion`` returns for the same inputs (the gradients' dtype
    with the default ``mu_dtype``), so the state's and the updates' dtypes are stable across steps
    and under ``jax.lax.cond``. optax multiplies bfloat16 operands in bfloat16, so with bfloat16
    gradients or momenta the momenta differ in the last bits (float32 results are identical).

    Args:
      b1: the interpolation coefficient of the direction, :math:`\beta_1` (default 0.9).
      b2: the decay rate of the momentum, :math:`\beta_2` (default 0.99).
      mu_dtype: the dtype to store the momentum in. ``None`` (the default) keeps each parameter's
        dtype, as ``optax.scale_by_lion`` does (``lion_core.momentum_dtype``); ``jnp.float32`` for
        bfloat16 or float16 parameters keeps the momentum's small increments at two more bytes per
        element, and then the updates come back in float32, as optax's do. The momentum keeps its
        dtype from ``init`` on, whatever the gradients' dtype.
      cautious: zero the entries whose sign disagrees with the gradient and rescale the rest of each
        array by :math:`n / n_\text{kept}` (Liang et al. 2024). The rescaling is a mean over the
        whole array: across devices, a collective.

    Returns:
      An ``optax.GradientTransformation`` whose state is ``optax.ScaleByLionState(count, mu)``, the
      same class ``optax.scale_by_lion`` uses, so states move between the two.

    Raises:
      ValueError: ``b1`` or ``b2`` is a number outside [0, 1), or ``mu_dtype`` is not a floating dtype.
      TypeError: ``cautious`` is not a bool, or a hyperparameter has an unusable type.
      RuntimeError: at ``init``, a ``mu_dtype`` was given and a parameter is complex (its momentum
        keeps the parameter's dtype).

    Example:
      >>> import jax.numpy as jnp
      >>> import lion_optax
      >>> tx = lion_optax.scale_by_lion()
      >>> state = tx.init(jnp.zeros(3))
      >>> updates, state = tx.update(jnp.array([0.5, 0.0, -2.0]), state)
      >>> updates.tolist()
      [1.0, 0.0, -1.0]

    References:
      Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
    """
    lion_core.check_beta(b1, "b1")
    lion_core.check_beta(b2, "b2")
    requested = _requested_momentum_dtype(mu_dtype)
    lion_core.check_bool(cautious, "cautious")

    def momentum_dtype(param: Any) -> Any:
        name = lion_core.momentum_dtype(jnp.result_type(param).name, requested)
        return jax.dtypes.canonicalize_dtype(name)  # float64 -> float32 unless jax_enable_x64

    def init_fn(params: optax.Params) -> ScaleByLionState:
        mu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=momentum_dtype(p)), params)
        return ScaleByLionState(count=jnp.zeros([], jnp.int32), mu=mu)

    def update_fn(
        updates: optax.Updates, state: ScaleByLionState, params: Optional[optax.Params] = None
    ) -> tuple[optax.Updates, ScaleByLionState]:
        del params
        grads, treedef = jax.tree.flatten(updates)
        pairs = [
            _lion_leaf(g, m, b1=b1, b2=b2, cautious=cautious)
            for g, m in zip(grads, treedef.flatten_up_to(state.mu))
        ]
        directions = treedef.unflatten([d for d, _ in pairs])
        mu = treedef.unflatten([m for _, m in pairs])
        return directions, ScaleByLionState(count=optax.safe_increment(state.count), mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


def _fully_decoupled(weight_decay: optax.ScalarOrSchedule, max_lr: Any) -> optax.ScalarOrSchedule:
    """``weight_decay / max_lr``: scaled by the learning rate downstream, the decay is wd * lr / max_lr."""
    if callable(weight_decay):
        return lambda count: weight_decay(count) / max_lr
    return weight_decay / max_lr


def lion(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = lion_core.defaults.OPTAX.beta1,
    b2: jax.typing.ArrayLike = lion_core.defaults.OPTAX.beta2,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
    weight_decay: optax.ScalarOrSchedule = lion_core.defaults.OPTAX.weight_decay,
    mask: MaskOrFn = None,
    *,
    cautious: bool = False,
    decouple_lr: bool = False,
    max_lr: Optional[jax.typing.ArrayLike] = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The Lion optimizer, a drop-in replacement for ``optax.lion``.

    With learning rate :math:`\eta_t` (the schedule's value at step :math:`t`) and weight decay
    :math:`\lambda`, each parameter moves by

    .. math::

        c_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        p_t &= p_{t-1} - \eta_t \left(\operatorname{sign}(c_t) + \lambda p_{t-1}\right) \\
        m_t &= \beta_2 m_{t-1} + (1 - \beta_2) g_t

    which is ``optax.chain(scale_by_lion(b1, b2, mu_dtype), optax.add_decayed_weights(weight_decay,
    mask), optax.scale_by_learning_rate(learning_rate))``: optax's own pieces after the direction, in
    ``optax.lion``'s order, so float32 results are bit-identical to ``optax.lion``'s, and the updates
    and the state have ``optax.lion``'s dtypes. The pieces see a complex parameter as (real, imag)
    pairs, so a NaN direction in one component leaves the other alone. The default weight decay is
    optax's, 1e-3 (PyTorch Lions default to 0).

    With ``decouple_lr=True`` the decay follows the schedule's shape but not its size,
    :math:`p_t = p_{t-1} - \eta_t \operatorname{sign}(c_t) - \lambda (\eta_t / \eta_\text{max}) p_{t-1}`,
    so retuning the learning rate does not retune the decay. It is the same chain with the decay
    rate divided by :math:`\eta_\text{max}` (``add_decayed_weights(weight_decay / max_lr, mask)``).

    Args:
      learning_rate: a number or an optax schedule (a function of the step count).
      b1: the interpolation coefficient of the direction, :math:`\beta_1` (default 0.9).
      b2: the decay rate of the momentum, :math:`\beta_2` (default 0.99).
      mu_dtype: the momentum's dtype; ``None`` (the default) keeps each parameter's dtype, as
        ``optax.lion`` does. See ``scale_by_lion``.
      weight_decay: the decoupled weight decay :math:`\lambda`, a number or a schedule (default 1e-3).
      mask: which parameters to decay: a pytree of bools shaped like (a prefix of) the parameters, or
        a function of the parameters returning one, as for ``optax.add_decayed_weights``. ``None``
        (the default) decays all.
      cautious: mask the direction where it disagrees with the gradient (default False). See
        ``scale_by_lion``.
      decouple_lr: fully decoupled weight decay, :math:`\lambda \eta_t / \eta_\text{max}`
        (default False).
      max_lr: :math:`\eta_\text{max}`, only with ``decouple_lr=True``. It defaults to
        ``learning_rate`` when that is a number; with a schedule or an array (as
        ``optax.inject_hyperparams`` passes) it is required, since its peak cannot be read from it.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is a tuple whose first element is
      ``optax.ScaleByLionState(count, mu)``, as for ``optax.lion``.

    Raises:
      ValueError: a number out of range: ``learning_rate`` or ``weight_decay`` negative or not
        finite, ``b1`` or ``b2`` outside [0, 1), ``max_lr`` not positive; or a ``mu_dtype`` that is
        not a floating dtype. Schedules and traced values pass unchecked.
      TypeError: a hyperparameter of an unusable type, or a flag that is not a bool.
      RuntimeError: ``max_lr`` without ``decouple_lr=True``, or ``decouple_lr=True`` with a
        schedule and no ``max_lr``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import lion_optax
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> tx = lion_optax.lion(learning_rate=0.1, weight_decay=0.0)
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, state, params)
      >>> optax.apply_updates(params, updates)["w"].tolist()
      [0.8999999761581421, -1.899999976158142]

    References:
      Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
    """
    lion_core.check_learning_rate(learning_rate, "learning_rate")
    direction = scale_by_lion(b1, b2, mu_dtype, cautious=cautious)
    lion_core.check_weight_decay(weight_decay, "weight_decay")
    lion_core.check_decoupling(decouple_lr, max_lr, name="max_lr")
    decay = weight_decay
    if decouple_lr:
        decay = _fully_decoupled(weight_decay, lion_core.resolve_max_lr(max_lr, learning_rate))
    # optax.add_decayed_weights(decay, mask) is masked(add_decayed_weights(decay), mask): the same,
    # with the mask applied to the parameters as the user passed them, complex or not.
    decayed_weights = _per_component(optax.add_decayed_weights(decay))
    return optax.chain(
        direction,
        decayed_weights if mask is None else optax.masked(decayed_weights, mask),
        _per_component(optax.scale_by_learning_rate(learning_rate)),
    )

r"""Lion as Optax gradient transformations: ``scale_by_lion`` and the ``lion`` alias.

The direction is ``lion_core``'s (``sign_with_nan``, ``cautious_mask``, run with ``jax.numpy``, on the
interpolation summed in optax's term order); weight decay, its mask and the learning rate (or its
schedule) are optax's own ``add_decayed_weights`` and ``scale_by_learning_rate``, chained exactly as
``optax.lion`` chains them. A user who swaps ``optax.lion`` for ``lion_optax.lion`` gets the same
numbers, bit for bit, for float32 parameters and gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import ScaleByLionState  # optax's own class: states move between the two libraries

import lion_core

__all__ = ["ScaleByLionInt8State", "ScaleByLionState", "apply_updates_stochastic", "lion", "scale_by_lion"]

MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]


class ScaleByLionInt8State(NamedTuple):
    """State of ``scale_by_lion(mu_dtype="int8")``: the momentum as 8-bit blockwise codes and scales.

    Attributes:
      count: the number of updates so far (int32), the step counter of the rounding's hash.
      mu_codes: int8 codes shaped like each parameter.
      mu_scales: one float32 scale per block of ``lion_core.INT8.block_size`` flattened elements.
      seed: the uint32 seed of the codes' stochastic rounding (``lion_core.counter_hash``).
    """

    count: jax.Array
    mu_codes: optax.Updates
    mu_scales: optax.Updates
    seed: jax.Array


def _requested_momentum_dtype(mu_dtype: Any) -> Optional[str]:
    """Returns ``mu_dtype``'s NumPy-style name (or ``"int8"``) after ``lion_core``'s check."""
    if mu_dtype is None:
        return None
    if isinstance(mu_dtype, str) and mu_dtype == "int8":
        return "int8"
    try:
        name = jnp.dtype(mu_dtype).name
    except TypeError:
        name = mu_dtype  # not a dtype at all: lion_core rejects it, quoting what the user passed
    if name == "int8":  # jnp.int8 as a dtype object means the 8-bit format too
        return "int8"
    return lion_core.check_momentum_format(name, "mu_dtype")


def _checked_seed(seed: Any) -> Any:
    """A Python or NumPy integer is checked; an array (as ``inject_hyperparams`` passes) passes through."""
    if isinstance(seed, (jax.Array, np.ndarray)) and jnp.issubdtype(seed.dtype, jnp.integer) and seed.shape == ():
        return seed
    return lion_core.check_seed(seed)


def _flat_index(x: jax.Array) -> jax.Array:
    """Each element's position in the flattened array, as the hash's uint32 counter."""
    return jnp.arange(x.size, dtype=jnp.uint32).reshape(x.shape)


def _int8_lion_leaf(
    grad: jax.Array,
    codes: jax.Array,
    scales: jax.Array,
    *,
    key: jax.Array,
    count: jax.Array,
    b1: Any,
    b2: Any,
    cautious: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Direction, codes and scales for one real array with an 8-bit momentum (float32 arithmetic)."""
    fmt = lion_core.INT8
    mu = fmt.decode(codes, scales, xp=jnp)
    g = jnp.asarray(grad, jnp.float32)
    # The reference rounds each product: XLA would contract the first into an FMA, so each product
    # passes through an integer xor with a zero it cannot see (count is never negative). This keeps
    # the momentum, and so the codes and scales, bit-identical to lion_core.reference.
    zero = jnp.minimum(count, 0).astype(jnp.uint32)

    def rounded(x: jax.Array) -> jax.Array:
        return jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(x, jnp.uint32) ^ zero, jnp.float32)

    direction = lion_core.sign_with_nan(rounded(b1 * mu) + rounded((1 - b1) * g), xp=jnp)
    if cautious:
        direction = lion_core.cautious_mask(direction, g, xp=jnp)
    new_mu = (rounded(b2 * mu) + rounded((1 - b2) * g)).astype(jnp.float32)
    bits = lion_core.counter_hash(key, count.astype(jnp.uint32), _flat_index(new_mu))
    new_codes, new_scales = fmt.encode(new_mu, bits, xp=jnp)
    return direction.astype(jnp.result_type(grad, jnp.float32, b1)), new_codes, new_scales


def _scale_by_lion_int8(b1: Any, b2: Any, cautious: bool, seed: int) -> optax.GradientTransformation:
    """``scale_by_lion(mu_dtype="int8")``: see there."""
    fmt = lion_core.INT8

    def init_fn(params: optax.Params) -> ScaleByLionInt8State:
        def check(p: Any) -> None:
            lion_core.momentum_format(jnp.result_type(p).name, "int8", name="mu_dtype")

        jax.tree.map(check, params)
        # zeros_like keeps each parameter's sharding for its codes; scales are per block, unsharded
        codes = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=jnp.int8), params)
        scales = jax.tree.map(lambda p: jnp.zeros((fmt.blocks(jnp.size(p)),), jnp.float32), params)
        return ScaleByLionInt8State(
            count=jnp.zeros([], jnp.int32), mu_codes=codes, mu_scales=scales, seed=jnp.asarray(seed, jnp.uint32)
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByLionInt8State, params: Optional[optax.Params] = None
    ) -> tuple[optax.Updates, ScaleByLionInt8State]:
        del params
        if not isinstance(state, ScaleByLionInt8State):
            raise lion_core.mismatched_state(
                "state", "a ScaleByLionInt8State (mu_dtype='int8')", f"a {type(state).__name__}"
            )
        grads, treedef = jax.tree.flatten(updates)
        codes = treedef.flatten_up_to(state.mu_codes)
        scales = treedef.flatten_up_to(state.mu_scales)
        for c, s, g in zip(codes, scales, grads):
            wrong_codes = c.dtype != jnp.int8 or c.shape != jnp.shape(g)
            if wrong_codes or s.dtype != jnp.float32 or s.shape != (fmt.blocks(jnp.size(g)),):
                raise lion_core.mismatched_state(
                    "state",
                    f"int8 codes and {fmt.blocks(jnp.size(g))} float32 scales for a parameter of shape "
                    f"{jnp.shape(g)}",
                    f"{c.dtype} codes of shape {c.shape} and {s.dtype} scales of shape {s.shape}",
                )
        out = [
            _int8_lion_leaf(
                g, c, s, key=lion_core.derive_seed(state.seed, lion_core.MOMENTUM_STREAM, k),
                count=state.count, b1=b1, b2=b2, cautious=cautious,
            )
            for k, (g, c, s) in enumerate(zip(grads, codes, scales))
        ]
        new_state = ScaleByLionInt8State(
            count=optax.safe_increment(state.count),
            mu_codes=treedef.unflatten([c for _, c, _ in out]),
            mu_scales=treedef.unflatten([s for _, _, s in out]),
            seed=state.seed,
        )
        return treedef.unflatten([d for d, _, _ in out]), new_state

    return optax.GradientTransformation(init_fn, update_fn)


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
    mu_dtype: Optional[Union[jax.typing.DTypeLike, str]] = None,
    *,
    cautious: bool = False,
    seed: int = 0,
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
        dtype from ``init`` on, whatever the gradients' dtype. ``"int8"`` stores it in 8 bits
        (``lion_core.INT8``: int8 codes and one float32 scale per block of 256 flattened elements,
        1.016 bytes per element, codes rounded stochastically with ``lion_core.counter_hash``); the
        state is then a ``ScaleByLionInt8State`` and the updates come back in float32 (at least).
      cautious: zero the entries whose sign disagrees with the gradient and rescale the rest of each
        array by :math:`n / n_\text{kept}` (Liang et al. 2024). The rescaling is a mean over the
        whole array: across devices, a collective.
      seed: the seed of the 8-bit codes' stochastic rounding, an integer in [0, 2**32), kept in the
        state (default 0: JAX's randomness is explicit, and a fixed default keeps a run a function
        of its inputs). Only used with ``mu_dtype="int8"``.

    Returns:
      An ``optax.GradientTransformation`` whose state is ``optax.ScaleByLionState(count, mu)``, the
      same class ``optax.scale_by_lion`` uses, so states move between the two; with
      ``mu_dtype="int8"``, a ``ScaleByLionInt8State(count, mu_codes, mu_scales, seed)``.

    Raises:
      ValueError: ``b1`` or ``b2`` is a number outside [0, 1), ``mu_dtype`` is neither a floating
        dtype nor ``"int8"``, or ``seed`` is outside [0, 2**32).
      TypeError: ``cautious`` is not a bool, ``seed`` not an integer, or a hyperparameter has an
        unusable type.
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
    seed = _checked_seed(seed)
    if requested == "int8":
        return _scale_by_lion_int8(b1, b2, cautious, seed)

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
        if isinstance(state, ScaleByLionInt8State):
            raise lion_core.mismatched_state(
                "state", "an optax.ScaleByLionState (a floating mu_dtype)", "a ScaleByLionInt8State (int8)"
            )
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
    mu_dtype: Optional[Union[jax.typing.DTypeLike, str]] = None,
    weight_decay: optax.ScalarOrSchedule = lion_core.defaults.OPTAX.weight_decay,
    mask: MaskOrFn = None,
    *,
    cautious: bool = False,
    decouple_lr: bool = False,
    max_lr: Optional[jax.typing.ArrayLike] = None,
    seed: int = 0,
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
        ``optax.lion`` does; ``"int8"`` stores it in 8 bits (1.016 bytes per parameter). See
        ``scale_by_lion``.
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
      seed: the seed of the 8-bit momentum's stochastic rounding (default 0). See ``scale_by_lion``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is a tuple whose first element is
      ``optax.ScaleByLionState(count, mu)``, as for ``optax.lion`` (``ScaleByLionInt8State`` with
      ``mu_dtype="int8"``).

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
    direction = scale_by_lion(b1, b2, mu_dtype, cautious=cautious, seed=seed)
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


def apply_updates_stochastic(
    params: optax.Params, updates: optax.Updates, *, seed: jax.typing.ArrayLike, step: jax.typing.ArrayLike
) -> optax.Params:
    r"""``optax.apply_updates`` with stochastic rounding for bfloat16 parameters.

    Each bfloat16 leaf :math:`p` becomes :math:`\operatorname{SR}(p + u)`: the sum computed in
    float32 and rounded to bfloat16 up or down with probability given by its distance to each
    (``lion_core.stochastic_round_bfloat16_bits``), so an update smaller than half a bfloat16 ulp
    moves the parameter in expectation instead of rounding away: with learning rate 1e-4 and
    weights near 1 (ulp 2**-7), ``optax.apply_updates`` leaves bfloat16 parameters where they
    started. The random bits are ``lion_core.counter_hash(derive_seed(seed, PARAM_STREAM, k), step,
    i)`` for element ``i`` of leaf ``k`` (in ``jax.tree`` order), the same bits lion_torch and
    lion_keras draw, so a run is reproducible and resumes exactly given the same ``seed`` and
    ``step``. Other leaves are added as ``optax.apply_updates`` adds them. Works under ``jax.jit``;
    ``seed`` and ``step`` may be traced.

    Args:
      params: the parameters (a pytree).
      updates: the updates, shaped like ``params`` (e.g. from ``lion_optax.lion``).
      seed: an integer in [0, 2**32) (a Python int or a uint32 scalar): pick it once per run.
      step: a counter that differs at every step, e.g. the number of updates applied so far
        (``optax.tree_utils.tree_get(opt_state, "count")`` before the update).

    Returns:
      The new parameters, each leaf in its own dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import lion_optax
      >>> p = {"w": jnp.ones(4096, jnp.bfloat16)}
      >>> u = {"w": jnp.full(4096, -1e-4, jnp.float32)}
      >>> new = lion_optax.apply_updates_stochastic(p, u, seed=0, step=0)
      >>> float(jnp.mean(new["w"].astype(jnp.float32))) < 1.0  # some elements moved down one ulp
      True
    """
    seed = jnp.asarray(_checked_seed(seed), jnp.uint32)
    step = jnp.asarray(step).astype(jnp.uint32)
    leaves, treedef = jax.tree.flatten(params)
    flat_updates = treedef.flatten_up_to(updates)

    def apply(k: int, p: jax.Array, u: Any) -> jax.Array:
        if u is None:
            return p
        if jnp.result_type(p) != jnp.bfloat16:
            return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)
        total = p.astype(jnp.float32) + jnp.asarray(u).astype(jnp.float32)
        key = lion_core.derive_seed(seed, lion_core.PARAM_STREAM, k)
        bits = lion_core.stochastic_round_bfloat16_bits(
            jax.lax.bitcast_convert_type(total, jnp.uint32),
            lion_core.counter_hash(key, step, _flat_index(total)),
            xp=jnp,
        )
        return jax.lax.bitcast_convert_type((bits >> 16).astype(jnp.uint16), jnp.bfloat16)

    return treedef.unflatten([apply(k, p, u) for k, (p, u) in enumerate(zip(leaves, flat_updates))])

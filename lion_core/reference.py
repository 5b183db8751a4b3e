"""The float64 NumPy reference: the one oracle that every test in the project compares against.

It runs ``lion_core``'s rule with NumPy on copies of the inputs, in float64 unless told otherwise,
one array at a time and one step at a time, with nothing fused, cached or reordered. A fast path
is correct when it reproduces these numbers: exactly in float64, and within a stated budget in lower
precision. Running the reference in float32 (``dtype=numpy.float32``) gives the same operation order
in single precision, which fused fp32 kernels match bit for bit.

State formats (``lion_core.state_spec``: an 8-bit momentum, stochastically rounded bfloat16
parameters) are modelled by ``reference_lion_stored``: each step computed in float32 and stored by
``store_param`` and ``store_momentum``, with the random bits of ``lion_core.counter_hash``.

Example:
  >>> import numpy as np
  >>> from lion_core.reference import reference_lion
  >>> out = reference_lion([np.array([1.0, -2.0])], [[np.array([0.5, -0.5])]], lr=0.1, beta2=0.5)
  >>> out.params[0].tolist(), out.momentum[0].tolist()
  ([0.9, -1.9], [0.25, -0.25])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Union

import numpy as np
import numpy.typing as npt

from ._formats import (
    MOMENTUM_STREAM,
    PARAM_STREAM,
    FloatFormat,
    Format,
    StateSpec,
    counter_hash,
    derive_seed,
    stochastic_round_bfloat16,
)
from ._rule import lion_step
from ._rule import decay_factor, interpolate, next_momentum  # distributed Lion's vote
from ._validation import check_beta, check_decoupling, check_learning_rate, check_weight_decay

#: A hyperparameter for the reference: a constant, one value per step, or a function of the step
#: index (0 for the first step, as PyTorch schedulers and Optax schedules count).
PerStep = Union[float, Sequence[float], Callable[[int], float]]


class ReferenceResult(NamedTuple):
    """Parameters and momenta after the reference has run, as NumPy arrays of the reference dtype."""

    params: list[np.ndarray]
    momentum: list[np.ndarray]


def _value_at(value: PerStep, step: int) -> float:
    if callable(value):
        return float(value(step))
    if isinstance(value, (Sequence, np.ndarray)):
        return float(value[step])
    return float(value)


def _hyperparameters_at(
    step: int, lr: PerStep, beta1: PerStep, beta2: PerStep, weight_decay: PerStep
) -> dict[str, Any]:
    """Step ``step``'s values of the (possibly scheduled) hyperparameters, validated."""
    return {
        "lr": check_learning_rate(_value_at(lr, step)),
        "beta1": check_beta(_value_at(beta1, step), "beta1"),
        "beta2": check_beta(_value_at(beta2, step), "beta2"),
        "weight_decay": check_weight_decay(_value_at(weight_decay, step)),
    }


def _real_dtype(dtype: npt.DTypeLike) -> np.dtype:
    return np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.finfo(dtype).dtype


def _complex_dtype(real: np.dtype) -> np.dtype:
    return np.result_type(real, np.complex64)


def _as_real(array: np.ndarray, real: np.dtype) -> np.ndarray:
    """A flat real view: complex arrays become interleaved (real, imag) pairs."""
    flat = np.ascontiguousarray(array).reshape(-1)
    return flat.view(real) if np.iscomplexobj(flat) else flat


def reference_step(
    param: npt.ArrayLike,
    grad: npt.ArrayLike,
    momentum: npt.ArrayLike,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.99,
    weight_decay: float = 0.0,
    max_lr: float | None = None,
    cautious: bool = False,
    maximize: bool = False,
    dtype: npt.DTypeLike = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """One Lion step on one array, in ``dtype`` (complex inputs in the matching complex dtype).

    Returns ``(new_param, new_momentum)`` with the parameter's shape; the inputs are not modified.
    """
    real = _real_dtype(dtype)
    is_complex = any(np.iscomplexobj(x) for x in (param, grad, momentum))
    work = _complex_dtype(real) if is_complex else real
    arrays = [np.array(x, dtype=work) for x in (param, grad, momentum)]
    shape = arrays[0].shape
    for name, array in zip(("grad", "momentum"), arrays[1:]):
        if array.shape != shape:
            raise ValueError(f"`{name}` has shape {array.shape}, but `param` has shape {shape}")
    if arrays[0].size == 0:  # nothing to update (and no mean of an empty mask to take)
        return arrays[0], arrays[2]
    p, g, m = (_as_real(x, real) for x in arrays)
    with np.errstate(invalid="ignore"):  # inf - inf is how a non-finite c becomes a NaN update
        new_p, new_m = lion_step(
            p,
            g,
            m,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            max_lr=max_lr,
            cautious=cautious,
            maximize=maximize,
            xp=np,  # type: ignore[arg-type]
        )
    if is_complex:
        new_p, new_m = new_p.view(work), new_m.view(work)
    return new_p.reshape(shape), new_m.reshape(shape)


def reference_lion(
    params: Sequence[npt.ArrayLike],
    grads: Iterable[Sequence[npt.ArrayLike | None]],
    *,
    lr: PerStep,
    beta1: PerStep = 0.9,
    beta2: PerStep = 0.99,
    weight_decay: PerStep = 0.0,
    max_lr: float | None = None,
    cautious: bool = False,
    maximize: bool = False,
    momentum: Sequence[npt.ArrayLike] | None = None,
    dtype: npt.DTypeLike = np.float64,
) -> ReferenceResult:
    """Runs Lion for as many steps as ``grads`` has entries.

    Args:
      params: the initial parameters, one array each.
      grads: for each step, one gradient per parameter, or ``None`` where a parameter has no gradient
        that step (it is then left alone: no decay, and its momentum does not move).
      lr, beta1, beta2, weight_decay: constants, one value per step, or functions of the step index.
      max_lr: the peak learning rate for fully decoupled weight decay, or ``None``.
      cautious, maximize: the variants of ``lion_core.lion_step``.
      momentum: the initial momenta; zeros by default, as after a fresh start.
      dtype: the precision to compute in; float64 unless reproducing a kernel's fp32 arithmetic.

    Returns:
      The final parameters and momenta.
    """
    real = _real_dtype(dtype)
    check_decoupling(max_lr is not None, max_lr)

    def start(x: npt.ArrayLike) -> np.ndarray:
        return np.array(x, dtype=_complex_dtype(real) if np.iscomplexobj(x) else real)

    current = [start(p) for p in params]
    moments = [np.zeros_like(p) for p in current] if momentum is None else [start(m) for m in momentum]
    if len(moments) != len(current):
        raise ValueError(f"got {len(moments)} momenta for {len(current)} parameters")
    for step, step_grads in enumerate(grads):
        if len(step_grads) != len(current):
            raise ValueError(f"step {step} has {len(step_grads)} gradients for {len(current)} parameters")
        hyper = _hyperparameters_at(step, lr, beta1, beta2, weight_decay)
        for i, grad in enumerate(step_grads):
            if grad is None:
                continue
            current[i], moments[i] = reference_step(
                current[i],
                grad,
                moments[i],
                max_lr=max_lr,
                cautious=cautious,
                maximize=maximize,
                dtype=real,
                **hyper,
            )
    return ReferenceResult(current, moments)


class DistributedReferenceResult(NamedTuple):
    """The shared parameters and each rank's momenta after ``reference_distributed_lion``."""

    params: list[np.ndarray]
    momentum: list[list[np.ndarray]]  # momentum[rank][i]


def reference_vote(signs: Sequence[np.ndarray], vote: str = "majority") -> np.ndarray:
    """Combines the ranks' ±1 directions: the sign of their sum (0 on a tie), or their mean."""
    total = np.sum(np.stack([np.asarray(s, dtype=np.float64) for s in signs]), axis=0)
    if vote == "majority":
        return np.sign(total)
    if vote == "average":
        return total / len(signs)
    raise ValueError(f"Invalid `vote`: expected 'majority' or 'average'. Received: vote={vote!r}")


def reference_distributed_lion(
    params: Sequence[npt.ArrayLike],
    grads: Iterable[Sequence[Sequence[npt.ArrayLike | None]]],
    *,
    lr: PerStep,
    beta1: PerStep = 0.9,
    beta2: PerStep = 0.99,
    weight_decay: PerStep = 0.0,
    max_lr: float | None = None,
    maximize: bool = False,
    vote: str = "majority",
) -> DistributedReferenceResult:
    """Runs the sign vote of distributed Lion (Liu et al. 2024, arXiv:2404.00438) in float64.

    Each rank ``r`` keeps its own momentum ``m_r``; its local direction is ``sign(c_r)`` with
    ``c_r = beta1 * m_r + (1 - beta1) * g_r``, where an exact 0 counts as +1 if ``r + t`` is even and
    -1 otherwise (``t``: the steps taken so far, counting those where some parameter had a gradient);
    every rank applies ``p <- p * decay - lr * vote(signs)``. A non-finite ``c_r`` on any rank
    makes the step's update NaN for every parameter stepped. Real parameters only.

    Args:
      params: the initial parameters (shared by every rank).
      grads: for each step, for each rank, one gradient per parameter, or ``None`` where the parameter
        has no gradient that step (then on every rank).
      lr, beta1, beta2, weight_decay, max_lr, maximize: as in ``reference_lion``.
      vote: ``"majority"`` or ``"average"`` (``reference_vote``).

    Returns:
      The parameters and every rank's momenta.
    """
    check_decoupling(max_lr is not None, max_lr)
    current = [np.array(p, dtype=np.float64) for p in params]
    moments: list[list[np.ndarray]] | None = None
    steps_taken = 0
    for step, per_rank in enumerate(grads):
        world = len(per_rank)
        if moments is None:
            moments = [[np.zeros_like(p) for p in current] for _ in range(world)]
        if len(moments) != world:
            raise ValueError(f"step {step} has {world} ranks, step 0 had {len(moments)}")
        hyper = _hyperparameters_at(step, lr, beta1, beta2, weight_decay)
        lr_t, b1, b2 = hyper["lr"], hyper["beta1"], hyper["beta2"]
        decay = decay_factor(lr_t, hyper["weight_decay"], max_lr)
        stepped = [i for i, g in enumerate(per_rank[0]) if g is not None]
        if any((g is None) != (per_rank[0][i] is None) for rank in per_rank for i, g in enumerate(rank)):
            raise ValueError(f"step {step}: a parameter has a gradient on some ranks only")
        if not stepped:
            continue
        updates, nonfinite = {}, False
        for i in stepped:
            signs = []
            for r in range(world):
                g = np.array(per_rank[r][i], dtype=np.float64).reshape(current[i].shape)
                g = -g if maximize else g
                with np.errstate(invalid="ignore"):
                    c = interpolate(moments[r][i], g, b1)
                nonfinite |= not np.all(np.isfinite(c))
                zero = 1.0 if (r + steps_taken) % 2 == 0 else -1.0
                signs.append(np.where(c > 0, 1.0, np.where(c < 0, -1.0, zero)))
                moments[r][i] = next_momentum(moments[r][i], g, beta2=b2)
            updates[i] = reference_vote(signs, vote)
        for i in stepped:
            update = np.full_like(current[i], np.nan) if nonfinite else updates[i]
            current[i] = current[i] * decay - lr_t * update
        steps_taken += 1
    return DistributedReferenceResult(current, moments or [])


# --- storage formats and rounding ----------------------------------------------------------------


def round_bfloat16_nearest(x: npt.ArrayLike) -> np.ndarray:
    """float32 values rounded to bfloat16 (to nearest, ties to even), as float32; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    out = np.where(is_nan, (bits.astype(np.uint32) | 0x00400000) & 0xFFFF0000, rounded).astype(np.uint32)
    return out.view(np.float32).reshape(np.shape(x))


def store_param(
    x: npt.ArrayLike, dtype: str, *, rounding: str = "nearest", seed: int = 0, step: int = 0, tensor: int = 0
) -> np.ndarray:
    """A computed parameter as stored in ``dtype``, returned as float64 values.

    ``rounding="stochastic"`` (bfloat16 only) rounds the float32 value with
    ``lion_core.stochastic_round_bfloat16`` and the bits ``counter_hash(derive_seed(seed,
    PARAM_STREAM, tensor), step, flat index)``; values of higher precision are first rounded to
    float32, as every path computes in float32.
    """
    x = np.asarray(x)
    if dtype == "float64":
        return x.astype(np.float64)
    if rounding == "stochastic":
        if dtype != "bfloat16":
            raise ValueError(f"stochastic rounding stores bfloat16 parameters, not {dtype}")
        key = derive_seed(seed, PARAM_STREAM, tensor)
        bits = counter_hash(key, step, np.arange(x.size, dtype=np.uint32))
        return stochastic_round_bfloat16(x.astype(np.float32), bits.reshape(x.shape)).astype(np.float64)
    if dtype == "bfloat16":
        return round_bfloat16_nearest(x.astype(np.float32)).astype(np.float64)
    return x.astype(dtype).astype(np.float64)


class Int8State(NamedTuple):
    """An 8-bit blockwise momentum as the reference keeps it: codes shaped like the parameter, scales."""

    codes: np.ndarray
    scales: np.ndarray


def store_momentum(
    m: npt.ArrayLike, fmt: Format, *, seed: int = 0, step: int = 0, tensor: int = 0
) -> tuple[Any, np.ndarray]:
    """A computed momentum stored in ``fmt``; returns ``(stored, decoded)``, ``decoded`` in float64.

    Floating formats round to nearest (``stored`` is the float64 value). ``BlockwiseInt8`` encodes
    in ``m``'s dtype (float32 on every path) with the bits ``counter_hash(derive_seed(seed,
    MOMENTUM_STREAM, tensor), step, flat index)``, giving an ``Int8State``; ``decoded`` is its
    float32 decoding, the value the next step computes with.
    """
    m = np.asarray(m)
    if isinstance(fmt, FloatFormat):
        value = store_param(m, fmt.dtype)
        return value, value
    key = derive_seed(seed, MOMENTUM_STREAM, tensor)
    bits = counter_hash(key, step, np.arange(m.size, dtype=np.uint32)).reshape(m.shape)
    codes, scales = fmt.encode(m, bits, xp=np)
    return Int8State(codes, scales), load_momentum(Int8State(codes, scales), fmt)


def load_momentum(stored: Any, fmt: Format) -> np.ndarray:
    """The momentum value a step starts from, in float64 (an ``Int8State`` decoded in float32)."""
    if isinstance(fmt, FloatFormat):
        return np.asarray(stored, np.float64)
    with np.errstate(invalid="ignore"):
        return fmt.decode(stored.codes, stored.scales, xp=np).astype(np.float64)


class StoredResult(NamedTuple):
    """Parameters (float64 values of the stored dtype), decoded momenta and the momenta as stored."""

    params: list[np.ndarray]
    momentum: list[np.ndarray]
    stored: list[Any]


def reference_lion_stored(
    params: Sequence[npt.ArrayLike],
    grads: Iterable[Sequence[npt.ArrayLike | None]],
    *,
    spec: StateSpec | Sequence[StateSpec],
    param_dtype: str,
    seed: int = 0,
    lr: PerStep,
    beta1: PerStep = 0.9,
    beta2: PerStep = 0.99,
    weight_decay: PerStep = 0.0,
    max_lr: float | None = None,
    cautious: bool = False,
    maximize: bool = False,
    compute: npt.DTypeLike = np.float32,
) -> StoredResult:
    """Runs Lion with the state formats of ``spec``: each step computed in ``compute`` and stored.

    Every step loads each momentum (``load_momentum``), runs ``reference_step`` in ``compute``,
    stores the parameter with ``spec.param_rounding`` and the momentum in ``spec.momentum``
    (``store_param``, ``store_momentum``); the random bits use ``seed``, the tensor's position in
    ``params`` and its own step: the number of updates it has had before this one (a ``None``
    gradient leaves the tensor and its state alone, and does not count).

    Returns:
      A ``StoredResult``: float64 parameters, decoded momenta, and the stored momenta.
    """
    specs = [spec] * len(params) if isinstance(spec, StateSpec) else list(spec)
    current = [store_param(np.asarray(p, np.float64), param_dtype) for p in params]
    stored: list[Any] = []
    moments: list[np.ndarray] = []
    for p, s in zip(current, specs):
        value, decoded = store_momentum(np.zeros(np.shape(p), compute), s.momentum, seed=seed)
        stored.append(value)
        moments.append(decoded)
    updates = [0] * len(params)  # each tensor's own step count: its random bits' counter
    for step, step_grads in enumerate(grads):
        hyper = _hyperparameters_at(step, lr, beta1, beta2, weight_decay)
        for i, grad in enumerate(step_grads):
            if grad is None:
                continue
            new_p, new_m = reference_step(
                current[i], grad, moments[i], max_lr=max_lr, cautious=cautious, maximize=maximize,
                dtype=compute, **hyper,
            )
            own = updates[i]
            current[i] = store_param(
                new_p, param_dtype, rounding=specs[i].param_rounding, seed=seed, step=own, tensor=i
            )
            stored[i], moments[i] = store_momentum(
                new_m.astype(compute), specs[i].momentum, seed=seed, step=own, tensor=i
            )
            updates[i] += 1
    return StoredResult(current, moments, stored)

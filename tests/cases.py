"""One table of cases that every implementation path and adapter runs against ``lion_core.reference``.

A case is a row of :data:`CASES`: Lion's hyperparameters in ``lion_core``'s names (``lr``, ``beta1``,
``beta2``, ``weight_decay``, ``max_lr``, ``cautious``, ``maximize``) and the dtypes of the parameter,
the gradient and the momentum, each named explicitly (the adapters' default momentum dtype may change;
a case never relies on it). The shapes, step counts, per-dtype mismatch budgets, the seeded problem
generator, the reference runner and the comparison helpers live here too, so that a new path or a new
variant is tested the same way as every other.

How a path runs the table (a translator is the few lines that turn a :class:`Case` into the host's
arguments, and the host's results back into NumPy)::

    import pytest
    from tests import cases

    def run_mine(case, problem):                    # the translator: host names, host tensors
        params = [to_host(x, case.param_dtype) for x in problem.init]
        opt = MyLion(params, lr=case.lr, betas=(case.beta1, case.beta2), ...,
                     momentum_dtype=case.momentum_dtype)
        for step, grads in enumerate(problem.grads):  # a None gradient: no gradient that step
            set_lr(opt, case.lr_at(step)); set_grads(params, grads); opt.step()
        return params, momenta(opt)

    @pytest.mark.parametrize("case", cases.select(cases.CASES, unsupported={...}), ids=cases.case_id)
    def test_float64_exact(case):
        problem = cases.problem(case)               # SHAPES, STEPS, seeded by the case's id
        params, momenta = run_mine(case, problem)
        expected = cases.reference(case, problem)  # lion_core.reference, float64
        cases.assert_all_exact(params, expected.params, what="param")   # exact in float64
        cases.assert_all_exact(momenta, expected.momentum, what="momentum")

    @pytest.mark.parametrize("case", cases.LOW_PRECISION_CASES, ids=cases.case_id)
    def test_low_precision(case):                   # same, within the stated budgets
        problem = cases.problem(case, margin=True)
        params, momenta = run_mine(case, problem)
        expected = cases.reference(case, problem)  # float32 math, rounded when stored
        cases.assert_all_close(params, expected.params, **cases.BUDGETS[case.param_dtype].margin,
                               what="param")

* ``cases.problem(case, margin=True)`` draws gradients that keep ``|beta1 m + (1 - beta1) g| >= 0.05``
  along the reference's own trajectory, so low-precision paths agree with it on every sign and can be
  compared elementwise; ``missing=None`` drops the step with a ``None`` gradient (Optax has no such
  thing). ``case.at_dtypes(...)`` moves a row to other dtypes (float32 for JAX and Keras, which run
  without float64).
* ``cases.reference(case, problem)`` is ``lion_core.reference.reference_lion`` in float64 for float64
  parameters; for lower precision it computes each step in float32 and rounds the parameter and the
  momentum to their storage dtypes after every step (what "compute in float32, round once when
  stored" means), which is what the fast paths must reproduce within :data:`BUDGETS`.
* ``cases.select(table, unsupported={"maximize": "why"})`` leaves out the rows a host cannot express
  (and says why in the test file); every other row runs.

A new variant is one row. State formats are lion_core's declarations (``lion_core.state_spec``):
:data:`FORMAT_CASES` holds the rows with ``momentum_dtype="int8"`` (8-bit blockwise momentum,
``lion_core.INT8``) and ``rounding="stochastic"`` (bfloat16 parameters stored by deterministic
stochastic rounding, with the row's ``seed``). For them :func:`reference` runs
``lion_core.reference.reference_lion_stored``: each step computed in float32, the parameter stored
with the row's rounding (``store_param``) and the momentum in its format (``store_momentum``), the
random bits from ``counter_hash(derive_seed(seed, stream, tensor), step, flat index)`` with the
parameter's own step (the updates it has had before this one: a ``None`` gradient does not count)
and its position in ``problem.init``; its result also carries the stored
momenta (``Int8State(codes, scales)``), which a path must reproduce bit for bit (codes and scales
follow only from the float32 momentum, so every path that rounds each product of the momentum's
update agrees exactly), while parameters keep their dtype's budgets (a path whose float32 parameter
differs by one rounding may round stochastically to the other neighbour: one bfloat16 ulp, on a
few elements, :data:`STOCHASTIC_BUDGET`). :func:`round_to` is the nearest rounding of the float
dtypes in :data:`HALF_ULP`; a storage format that lion_core does not declare is refused. A path that
cannot run a row says so through ``select(unsupported={"dtype=int8": ..., "rounding=stochastic":
...})`` (the row's :attr:`Case.features` names what it needs). A ``world_size > 1`` row has the
one-process reference: every rank must end where one process ends on the same (already averaged)
gradients; its translator shards the problem.

Failures print the first mismatching indices and values, not just "not close".
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lion_core import compute_dtype, state_spec
from lion_core.reference import (
    ReferenceResult,
    StoredResult,
    reference_lion,
    reference_lion_stored,
    reference_step,
)

# --- the table ----------------------------------------------------------------------------------

#: Learning-rate schedules as multipliers of ``Case.lr`` per step index (0 for the first step), cycled,
#: so a schedule is a property of the case and not of one host's schedule objects: each translator
#: builds it natively (a group's lr in torch, a callable in Optax and Keras). Hosts' own schedule
#: objects (``optax.warmup_cosine_decay_schedule``, Keras' ``ExponentialDecay``) are tested in the
#: host-parity tests of each adapter.
SCHEDULES: dict[str, tuple[float, ...]] = {
    # a warm-up over two steps, a peak, then a decay, with one step at lr = 0
    "warmup_decay": (0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.5, 0.125),
}

_ROUNDINGS = ("nearest", "stochastic")
#: Momentum formats beyond the float dtypes, modelled by lion_core's declarations.
_DECLARED_FORMATS = ("int8",)


@dataclass(frozen=True, kw_only=True)
class Case:
    """One row of the table: hyperparameters in ``lion_core``'s names and the dtypes, all explicit.

    Attributes:
      id: the row's name (pytest id; also seeds the problem generator).
      momentum_dtype: the dtype the momentum is stored in, always named (never the adapter's default).
      lr, beta1, beta2, weight_decay: as in ``lion_core.lion_step``.
      decouple_lr: fully decoupled weight decay; ``max_lr`` is then the peak learning rate, or the
        constant ``lr`` when ``max_lr`` is None (the adapters' rule).
      max_lr: the peak learning rate for decoupled weight decay (implies ``decouple_lr``).
      cautious, maximize: the variants of ``lion_core.lion_step``.
      schedule: a name in :data:`SCHEDULES`; the learning rate at step t is
        ``lr * SCHEDULES[name][t % len(SCHEDULES[name])]``.
      param_dtype, grad_dtype: storage dtypes (NumPy names; ``grad_dtype`` None means the parameter's).
      rounding: how the parameter is stored: "nearest", or "stochastic" (bfloat16 parameters).
      seed: the seed of stochastic rounding (of the parameter and of an 8-bit momentum's codes).
      world_size: how many ranks share the update (1 today; the distributed variant adds a row with 2).
    """

    id: str
    momentum_dtype: str
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.0
    decouple_lr: bool = False
    max_lr: float | None = None
    cautious: bool = False
    maximize: bool = False
    schedule: str | None = None
    param_dtype: str = "float64"
    grad_dtype: str | None = None
    rounding: str = "nearest"
    seed: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"case {self.id}: unknown schedule {self.schedule!r}")
        if self.rounding not in _ROUNDINGS:
            raise ValueError(f"case {self.id}: unknown rounding {self.rounding!r}")
        if self.max_lr is not None and not self.decouple_lr:
            object.__setattr__(self, "decouple_lr", True)
        if self.decouple_lr and self.schedule is not None and self.max_lr is None:
            raise ValueError(f"case {self.id}: a schedule with decouple_lr needs max_lr")

    @property
    def stored_formats(self) -> bool:
        """Whether the row needs lion_core's format declarations (8-bit momentum, stochastic rounding)."""
        return self.momentum_dtype in _DECLARED_FORMATS or self.rounding != "nearest"

    @property
    def gradient_dtype(self) -> str:
        return self.param_dtype if self.grad_dtype is None else self.grad_dtype

    @property
    def reference_max_lr(self) -> float | None:
        """The ``max_lr`` the reference takes: None without decoupling, else the peak (``lr`` if unset)."""
        if not self.decouple_lr:
            return None
        return self.lr if self.max_lr is None else self.max_lr

    def lr_at(self, step: int) -> float:
        """The learning rate at ``step`` (0 for the first step)."""
        if self.schedule is None:
            return self.lr
        multipliers = SCHEDULES[self.schedule]
        return self.lr * multipliers[step % len(multipliers)]

    @property
    def peak_lr(self) -> float:
        return max(self.lr_at(step) for step in range(STEPS))

    @property
    def features(self) -> frozenset[str]:
        """What a path must support to run the row, beyond Lion's plain update."""
        out = {name for name in ("decouple_lr", "cautious", "maximize") if getattr(self, name)}
        if self.schedule is not None:
            out.add("schedule")
        if self.rounding != "nearest":
            out.add(f"rounding={self.rounding}")
        if self.world_size != 1:
            out.add("world_size")
        dtypes = {self.param_dtype, self.gradient_dtype, self.momentum_dtype}
        if len(dtypes) > 1:
            out.add("mixed_dtypes")
        out.update(f"dtype={d}" for d in dtypes)
        return frozenset(out)

    def at_dtypes(self, param: str, momentum: str | None = None, grad: str | None = None) -> Case:
        """The same row in other dtypes (the momentum in the parameter's dtype unless named)."""
        return dataclasses.replace(
            self, param_dtype=param, momentum_dtype=param if momentum is None else momentum, grad_dtype=grad
        )


#: The float64 table every path runs exactly, and every adapter runs in its working precision
#: (``Case.at_dtypes``) with margin gradients. One row per behaviour, combinations last.
CASES: tuple[Case, ...] = (
    Case(id="plain", momentum_dtype="float64"),
    Case(id="weight_decay", weight_decay=0.3, momentum_dtype="float64"),
    Case(id="betas", beta1=0.5, beta2=0.9, momentum_dtype="float64"),
    Case(id="beta_zero", beta1=0.0, beta2=0.0, weight_decay=0.1, momentum_dtype="float64"),
    Case(id="cautious", weight_decay=0.1, cautious=True, momentum_dtype="float64"),
    Case(id="decouple_lr", weight_decay=0.5, decouple_lr=True, momentum_dtype="float64"),
    Case(id="max_lr", weight_decay=0.5, max_lr=0.04, momentum_dtype="float64"),
    Case(id="maximize", weight_decay=0.1, maximize=True, momentum_dtype="float64"),
    Case(id="schedule", lr=0.02, weight_decay=0.5, schedule="warmup_decay", momentum_dtype="float64"),
    Case(
        id="decoupled_schedule", lr=0.02, weight_decay=0.5, max_lr=0.04, schedule="warmup_decay",
        momentum_dtype="float64",
    ),
    Case(id="decoupled_cautious", weight_decay=2.0, max_lr=0.05, cautious=True, momentum_dtype="float64"),
    Case(
        id="everything", lr=0.02, beta1=0.5, beta2=0.9, weight_decay=0.2, cautious=True, maximize=True,
        momentum_dtype="float64",
    ),
)

#: Low-precision storage (the momentum dtype named: float32 for bfloat16 parameters), each
#: against the float32-compute, round-when-stored reference.
LOW_PRECISION_CASES: tuple[Case, ...] = (
    Case(id="float32", lr=1e-3, weight_decay=0.1, param_dtype="float32", momentum_dtype="float32"),
    Case(id="bfloat16", lr=1e-3, weight_decay=0.1, param_dtype="bfloat16", momentum_dtype="float32"),
)


#: lion_core's state formats: 8-bit blockwise momentum and stochastically rounded bfloat16
#: parameters, each against ``reference_lion_stored`` (see the module docstring).
FORMAT_CASES: tuple[Case, ...] = (
    Case(id="int8_momentum", lr=1e-3, weight_decay=0.1, param_dtype="float32", momentum_dtype="int8", seed=7),
    Case(
        id="int8_cautious", lr=1e-3, weight_decay=0.1, cautious=True, param_dtype="float32",
        momentum_dtype="int8", seed=8,
    ),
    Case(
        id="stochastic_rounding", lr=1e-3, weight_decay=0.1, param_dtype="bfloat16", momentum_dtype="float32",
        rounding="stochastic", seed=1234,
    ),
    Case(
        id="int8_stochastic_rounding", lr=1e-3, weight_decay=0.1, param_dtype="bfloat16",
        momentum_dtype="int8", rounding="stochastic", seed=99,
    ),
)

#: Stochastically rounded parameters: a path whose float32 result differs from the reference's by
#: a rounding (optax adds ``-lr * (u + wd * p)`` where the reference computes ``p (1 - lr wd) -
#: lr u``) rounds to the other bfloat16 neighbour where that rounding crosses the random threshold;
#: that moves an element by one bfloat16 ulp (rtol 2**-7), on at most 1% of the elements.
STOCHASTIC_BUDGET = {"rtol": 2.0**-7, "max_fraction": 0.01}


def case_id(case: Case) -> str:
    """The pytest id of a row: its name, and its dtypes when they are not float64."""
    if case.param_dtype == "float64" or case.param_dtype in case.id:
        return case.id
    return f"{case.id}-{case.param_dtype}"


def by_id(table: Sequence[Case], name: str) -> Case:
    (found,) = [case for case in table if case.id == name]
    return found


def select(table: Sequence[Case], unsupported: Mapping[str, str] | None = None) -> list[Case]:
    """The rows a path runs: all of them but those needing a feature in ``unsupported``.

    ``unsupported`` maps a :attr:`Case.features` name to the reason the host cannot express it
    (``{"maximize": "optax has no maximize flag: negate the loss"}``), so the test file says why.
    """
    unsupported = unsupported or {}
    return [case for case in table if not case.features & set(unsupported)]


# --- shapes and steps ---------------------------------------------------------------------------

#: A 2-d parameter, a zero-size one, a 0-d one, odd sizes (1, 1023, 4097: no path may rely on whole
#: vectors or blocks), a zero-size 3-d one and a 3-d one with a unit dimension.
SHAPES: tuple[tuple[int, ...], ...] = ((5, 3), (0,), (), (1,), (1023,), (4097,), (2, 0, 3), (3, 1, 5))
#: Steps of the exact and margin tests: enough for the momentum to matter and a schedule to turn.
STEPS = 8
#: (step, parameter) that has no gradient: the parameter is left alone (no decay, momentum kept).
#: Parameter 3 is the one-element one, so the skip is visible in its value.
MISSING = (3, 3)
#: Steps of the trajectory tests, and the step at which the state is saved and reloaded.
TRAJECTORY_STEPS = 200
RELOAD_AT = 100
TRAJECTORY_SHAPES: tuple[tuple[int, ...], ...] = ((40, 25), (301,))
#: Shapes of the NaN and inf tests; the non-finite value goes in parameter 0 at NONFINITE_AT.
NONFINITE_SHAPES: tuple[tuple[int, ...], ...] = ((4, 5), (9,))
NONFINITE_AT = (1, 2)
NONFINITE = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}

# --- budgets ------------------------------------------------------------------------------------

EPS32 = 2.0**-24  # half a float32 ulp, relative: the largest error of one correctly rounded operation
EPS64 = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Budget:
    """How far a path in a given parameter dtype may be from the reference, and why.

    Attributes:
      margin: per-step elementwise tolerance (``rtol``, ``atol``) when ``|c| >= 0.05``.
      max_flipped: fraction of elements that may differ over a trajectory.
      drift: elementwise ``atol`` against the float64 reference over a trajectory (float32 only).
    """

    margin: dict[str, float]
    max_flipped: float
    drift: float | None = None


BUDGETS: dict[str, Budget] = {
    # Exact: every path keeps the reference's operation order in float64 (the momentum of the
    # foreach path has its own stated budget, ``momentum_fma_rtol``).
    "float64": Budget(margin={"rtol": 0.0, "atol": 0.0}, max_flipped=0.0, drift=0.0),
    # One rounding of the stored result and float32 arithmetic: rtol 2**-22 (a few float32 ulps).
    # Trajectory: a sign that flips where c is within rounding of 0 (foreach rounds c and the
    # momentum differently) moves an element by 2 lr, and it rounds differently afterwards; at most
    # 0.5% of the elements may differ from the oracle of the same precision (measured: none). Against
    # float64: each step rounds p * d and p - lr * u, so after 200 steps an element may drift by
    # 200 * 2 * 2**-24 * max|p| (about 5e-5 for standard normal parameters).
    "float32": Budget(margin={"rtol": 2.0**-22, "atol": 2.0**-30}, max_flipped=0.005, drift=5e-5),
    # One bfloat16 rounding of the stored parameter (8-bit mantissa): rtol 2**-8. Same trajectory
    # budget as float32, against the bfloat16-storage oracle.
    "bfloat16": Budget(margin={"rtol": 2.0**-8, "atol": 2.0**-30}, max_flipped=0.005),
}

#: Half an ulp, relative, of each storage dtype: one rounding when a value is stored.
HALF_ULP = {"float64": 2.0**-53, "float32": 2.0**-24, "bfloat16": 2.0**-9, "float16": 2.0**-11}


def param_atol(params: Sequence[np.ndarray], steps: int, lr: float, *, roundings: int = 4) -> float:
    """Float32 tolerance for parameters after ``steps`` steps, against the float64 reference.

    Each step rounds a few times where the parameter is involved (the decay product, the decay
    subtraction or the sum with the direction, ``lr * u``, the addition to the parameter), each time
    by at most half an ulp of a value no larger than ``max|p0| + steps * lr``. ``roundings`` per
    step bound it: 4 for an adapter whose step rounds three times (Keras' ``p - p * wd * lr`` and
    ``p - lr * u``), 6 for one that also rounds the float32 learning rate and the direction's sum
    (Optax's chain of transforms). A sign that differs from the reference moves an element by
    ``2 * lr``, far outside this bound.
    """
    scale = max([float(np.max(np.abs(p))) for p in params if np.size(p)] + [0.0]) + steps * lr
    return roundings * steps * EPS32 * scale


def momentum_atol(grads: Sequence[Sequence[np.ndarray | None]], steps: int | None = None) -> float:
    """Float32 tolerance for momenta against the float64 reference.

    The momentum is a convex combination of the gradients, so no value along the way exceeds the
    largest gradient; each step rounds three times (two products and a sum), by at most half an ulp
    of such a value. The bound is absolute: where the gradients cancel, the momentum is small and
    its relative error large.
    """
    steps = len(grads) if steps is None else steps
    largest = max(
        [float(np.max(np.abs(g))) for step in grads for g in step if g is not None and np.size(g)] + [0.0]
    )
    return 4 * steps * EPS32 * largest


def momentum_fma_tolerance(
    grads: Sequence[Sequence[np.ndarray | None]], index: int, *, beta2: float, eps: float = EPS64
) -> dict[str, float]:
    """Momentum tolerance of a path that updates it with one fused multiply-add.

    ATen's ``add_(g, alpha=1 - beta2)`` rounds once where the reference rounds twice, so each step may
    differ by one rounding of ``|m| + (1 - beta2)|g|``; measured at most 1.03 eps after 8 steps.
    Budget: ``2 eps (|m_ref| + (1 - beta2) max|g|)``.
    """
    gmax = max(
        (float(np.abs(g[index]).max()) for g in grads if g[index] is not None and np.size(g[index])),
        default=0.0,
    )
    return {"rtol": 2 * eps, "atol": 2 * eps * (1 - beta2) * gmax}


# --- the problem generator ----------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Initial parameters and per-step gradients as float64 NumPy arrays.

    Every value is exactly representable in the case's parameter (``init``) or gradient (``grads``)
    dtype, so a translator converts them to host tensors of that dtype without rounding. A ``None``
    gradient means the parameter has no gradient at that step.
    """

    init: list[np.ndarray]
    grads: list[list[np.ndarray | None]]

    @property
    def steps(self) -> int:
        return len(self.grads)

    def column(self, index: int) -> list[np.ndarray | None]:
        return [step[index] for step in self.grads]


def seed_of(name: str) -> int:
    """A stable seed from a name (``hash`` is salted per process)."""
    return zlib.crc32(name.encode())


def margin_gradient(
    rng: np.random.Generator, momentum: np.ndarray, *, beta1: float, margin: float = 0.05
) -> np.ndarray:
    """Draws a gradient for which ``|beta1 * m + (1 - beta1) * g| >= margin`` everywhere.

    With the interpolation far from zero, every path must agree on its sign, so parameters can be
    compared elementwise at tight tolerance even in low precision.
    """
    shape = np.shape(momentum)
    target = rng.uniform(margin, 1.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return (target - beta1 * np.asarray(momentum)) / (1 - beta1)


def problem(
    case: Case,
    *,
    shapes: Sequence[tuple[int, ...]] = SHAPES,
    steps: int = STEPS,
    margin: bool = False,
    missing: tuple[int, int] | None = MISSING,
    seed: int | None = None,
) -> Problem:
    """The seeded problem of a case.

    Args:
      case: the row; its id seeds the generator unless ``seed`` is given.
      shapes, steps: the parameters' shapes and the number of steps.
      margin: draw each gradient from the reference's own momentum so that ``|c| >= 0.05`` (see
        :func:`margin_gradient`); else standard normal gradients with exact zeros at the first step
        (``c = 0`` there, with zero momentum: ``sign(0) = 0`` is exercised).
      missing: the (step, parameter) whose gradient is None, or None for none.
    """
    if margin:
        _check_modelled(case)
        # Margins are drawn along the float32-momentum, nearest-rounding trajectory of the same row:
        # an 8-bit momentum or a stochastic rounding moves c by far less than the 0.05 margin.
        if case.stored_formats:
            case = dataclasses.replace(case, momentum_dtype="float32", rounding="nearest")
    rng = np.random.default_rng(seed_of(case.id) if seed is None else seed)
    init = [round_to(rng.standard_normal(shape), case.param_dtype) for shape in shapes]
    grads: list[list[np.ndarray | None]] = []
    params, moments = list(init), [np.zeros(shape) for shape in shapes]
    for step in range(steps):
        row: list[np.ndarray | None] = []
        for i, shape in enumerate(shapes):
            if (step, i) == missing:
                row.append(None)
                continue
            if margin:
                # maximize negates the gradient before it meets the momentum
                sign = -1.0 if case.maximize else 1.0
                g = sign * margin_gradient(rng, moments[i], beta1=case.beta1)
            else:
                g = rng.standard_normal(shape)
                if step == 0 and g.ndim:
                    g.reshape(-1)[::7] = 0.0
            row.append(round_to(g, case.gradient_dtype))
        if margin:
            params, moments = _reference_row(case, step, params, moments, row)
        grads.append(row)
    return Problem(init, grads)


# --- the reference runner -----------------------------------------------------------------------


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """Rounds to ``dtype`` (to nearest even) and back to float64; complex values stay complex."""
    x = np.asarray(x)
    if dtype in ("float64", "complex128"):
        return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)
    if dtype == "bfloat16":
        import ml_dtypes  # a JAX dependency; only bfloat16 rows need it

        # through float32, as torch's and JAX's conversions go: one rounding for float32 values
        return x.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)
    return x.astype(dtype).astype(np.float64)


def _hyper(case: Case, step: int) -> dict[str, Any]:
    return dict(
        lr=case.lr_at(step),
        beta1=case.beta1,
        beta2=case.beta2,
        weight_decay=case.weight_decay,
        max_lr=case.reference_max_lr,
        cautious=case.cautious,
        maximize=case.maximize,
    )


def _reference_row(
    case: Case,
    step: int,
    params: list[np.ndarray],
    moments: list[np.ndarray],
    grads: Sequence[np.ndarray | None],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One step of the case's reference on every parameter."""
    # lion_core's policy: float64 if any operand is, else float32 (low precision is widened)
    compute = np.dtype(compute_dtype(case.param_dtype, case.gradient_dtype, case.momentum_dtype))
    new_p, new_m = list(params), list(moments)
    for i, g in enumerate(grads):
        if g is None:
            continue
        p, m = reference_step(params[i], g, moments[i], dtype=compute, **_hyper(case, step))
        new_p[i], new_m[i] = round_to(p, case.param_dtype), round_to(m, case.momentum_dtype)
    return new_p, new_m


def reference(
    case: Case, problem: Problem, *, momentum: Sequence[np.ndarray] | None = None
) -> ReferenceResult | StoredResult:
    """What the case must produce: ``lion_core.reference`` on the problem, as float64 arrays.

    float64 rows run ``reference_lion`` itself. Other rows compute each step in
    ``lion_core.compute_dtype`` of their dtypes (float32 unless one is float64) and round the
    parameter and the momentum to their storage dtypes after every step.
    Rows with lion_core's formats (:attr:`Case.stored_formats`) run ``reference_lion_stored`` and
    return its ``StoredResult``, whose ``stored`` are the momenta as stored (``Int8State``).
    """
    _check_modelled(case)
    if case.stored_formats:
        if momentum is not None:
            raise NotImplementedError("a starting momentum for a stored-format row")
        compute = compute_dtype(case.param_dtype, case.gradient_dtype, "float32")
        return reference_lion_stored(
            problem.init,
            problem.grads,
            spec=state_spec(
                case.param_dtype, case.momentum_dtype, stochastic_rounding=case.rounding == "stochastic"
            ),
            param_dtype=case.param_dtype,
            seed=case.seed,
            lr=[case.lr_at(step) for step in range(problem.steps)],
            beta1=case.beta1,
            beta2=case.beta2,
            weight_decay=case.weight_decay,
            max_lr=case.reference_max_lr,
            cautious=case.cautious,
            maximize=case.maximize,
            compute=np.dtype(compute),
        )
    if {case.param_dtype, case.momentum_dtype, case.gradient_dtype} == {"float64"}:
        lrs = [case.lr_at(step) for step in range(problem.steps)]
        return reference_lion(
            problem.init,
            problem.grads,
            lr=lrs,
            beta1=case.beta1,
            beta2=case.beta2,
            weight_decay=case.weight_decay,
            max_lr=case.reference_max_lr,
            cautious=case.cautious,
            maximize=case.maximize,
            momentum=momentum,
        )
    params = list(problem.init)
    moments = [np.zeros(np.shape(p)) for p in params] if momentum is None else list(momentum)
    for step, row in enumerate(problem.grads):
        params, moments = _reference_row(case, step, params, moments, row)
    return ReferenceResult(params, moments)


def _check_modelled(case: Case) -> None:
    unknown = {case.param_dtype, case.gradient_dtype} - set(HALF_ULP)
    unknown |= {case.momentum_dtype} - set(HALF_ULP) - set(_DECLARED_FORMATS)
    if case.rounding == "stochastic" and case.param_dtype != "bfloat16":
        unknown.add(f"stochastic rounding of {case.param_dtype}")
    if unknown:
        raise NotImplementedError(
            f"case {case.id}: the reference models storage in {sorted(HALF_ULP)} (nearest), the momentum "
            f"formats {_DECLARED_FORMATS} and stochastic rounding of bfloat16; declare {sorted(unknown)} in "
            "lion_core (lion_core.state_spec) and model it in lion_core.reference with the row"
        )


def reference_float64(case: Case, problem: Problem) -> ReferenceResult:
    """The float64 reference on the problem, whatever the case's dtypes (for drift budgets)."""
    return reference(case.at_dtypes("float64"), problem)


# --- comparison ---------------------------------------------------------------------------------


def to_numpy(x: Any) -> np.ndarray:
    """Converts a NumPy, PyTorch, JAX, TensorFlow or Keras array to NumPy, bfloat16 to float32.

    Complex values stay complex. The conversion is exact: it never rounds.
    """
    if hasattr(x, "detach"):  # torch
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        return x.numpy().copy()
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):  # tensorflow, keras variables
        x = x.numpy()
    array = np.asarray(x)
    if array.dtype.kind not in "fcbiu":  # ml_dtypes bfloat16 and friends
        array = array.astype(np.float32)
    return array


def _describe(actual: np.ndarray, expected: np.ndarray, bad: np.ndarray, what: str, limit: int = 5) -> str:
    index = np.argwhere(bad)[:limit]
    rows = [
        f"  at {tuple(int(i) for i in ix)}: got {actual[tuple(ix)]!r}, expected {expected[tuple(ix)]!r}"
        for ix in index
    ]
    return f"{what}: {int(bad.sum())} of {bad.size} elements differ; first mismatches:\n" + "\n".join(rows)


def _pair(actual: Any, expected: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, e = to_numpy(actual), to_numpy(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape} != expected {e.shape}")
    return a, e


def assert_exact(actual: Any, expected: Any, *, what: str = "array") -> None:
    """Asserts bitwise-equal values (NaN equals NaN, and -0.0 equals 0.0)."""
    a, e = _pair(actual, expected, what)
    e = e.astype(a.dtype) if a.dtype != e.dtype else e
    bad = ~((a == e) | (np.isnan(a) & np.isnan(e)))
    if bad.any():
        raise AssertionError(_describe(a, e, bad, what))


def assert_close(actual: Any, expected: Any, *, rtol: float, atol: float, what: str = "array") -> None:
    """Asserts ``|actual - expected| <= atol + rtol * |expected|`` elementwise, NaN matching NaN."""
    a, e = _pair(actual, expected, what)
    a64 = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
    e64 = e.astype(np.complex128 if np.iscomplexobj(e) else np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.abs(a64 - e64) <= atol + rtol * np.abs(e64)
    bad = ~(ok | (np.isnan(a64) & np.isnan(e64)))
    if bad.any():
        raise AssertionError(_describe(a, e, bad, what))


def assert_within_budget(
    actual: Any, expected: Any, *, atol: float, rtol: float = 0.0, max_fraction: float, what: str = "array"
) -> None:
    """Asserts that at most ``max_fraction`` of the elements lie outside ``atol + rtol * |expected|``.

    For low-precision trajectories: a sign that flips where the interpolation is near zero moves one
    element by ``2 * lr``, and rounding differs between paths, so a few elements may disagree; many
    may not.
    """
    a, e = _pair(actual, expected, what)
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~((np.abs(a64 - e64) <= atol + rtol * np.abs(e64)) | (np.isnan(a64) & np.isnan(e64)))
    if bad.size and bad.mean() > max_fraction:
        raise AssertionError(f"budget {max_fraction:.2%} exceeded. " + _describe(a, e, bad, what))


def assert_all_close(
    actual: Sequence[Any], expected: Sequence[Any], *, rtol: float, atol: float, what: str
) -> None:
    """``assert_close`` over two lists, naming the index of each entry."""
    if len(actual) != len(expected):
        raise AssertionError(f"{what}: {len(actual)} arrays, expected {len(expected)}")
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, rtol=rtol, atol=atol, what=f"{what} {i}")


def assert_all_exact(actual: Sequence[Any], expected: Sequence[Any], *, what: str) -> None:
    """``assert_exact`` over two lists, naming the index of each entry."""
    if len(actual) != len(expected):
        raise AssertionError(f"{what}: {len(actual)} arrays, expected {len(expected)}")
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_exact(a, e, what=f"{what} {i}")


__all__ = [
    "BUDGETS",
    "CASES",
    "EPS32",
    "EPS64",
    "FORMAT_CASES",
    "HALF_ULP",
    "LOW_PRECISION_CASES",
    "MISSING",
    "NONFINITE",
    "NONFINITE_AT",
    "NONFINITE_SHAPES",
    "RELOAD_AT",
    "SCHEDULES",
    "SHAPES",
    "STEPS",
    "STOCHASTIC_BUDGET",
    "TRAJECTORY_SHAPES",
    "TRAJECTORY_STEPS",
    "Budget",
    "Case",
    "Problem",
    "assert_all_close",
    "assert_all_exact",
    "assert_close",
    "assert_exact",
    "assert_within_budget",
    "by_id",
    "case_id",
    "margin_gradient",
    "momentum_atol",
    "momentum_fma_tolerance",
    "param_atol",
    "problem",
    "reference",
    "reference_float64",
    "round_to",
    "seed_of",
    "select",
    "to_numpy",
]


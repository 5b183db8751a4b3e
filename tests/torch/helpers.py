"""The translator of the case table (``tests.cases``) for lion_torch, and its implementation paths.

The oracle is ``lion_core.reference`` through ``tests.cases.reference``: float64 for float64 rows;
for lower precision, float32 arithmetic rounded to the storage dtypes after each step (what "compute
in float32, round once when stored" means).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from lion_torch import Lion
from tests import cases


def _fused_param() -> Any:
    try:
        from lion_kernels import cpu_lion
    except ImportError as error:  # pragma: no cover - lion_kernels ships with lionkit
        why = f"lion_kernels cannot be imported: {error}"
        return pytest.param("fused", marks=pytest.mark.skip(reason=why))
    reason = cpu_lion.unavailable_reason()
    if reason is not None:
        why = f"lion_kernels.cpu_lion cannot run: {reason}"
        return pytest.param("fused", marks=pytest.mark.skip(reason=why))
    return "fused"


#: Every implementation path of ``lion_torch.lion``; "fused" is skipped, with the reason, when the CPU
#: kernel cannot run here.
PATHS = ["single", "foreach", _fused_param()]
#: The constructor flags that select each path.
FLAGS: dict[str, dict[str, bool]] = {
    "single": {"foreach": False, "fused": False},
    "foreach": {"foreach": True, "fused": False},
    "fused": {"fused": True},
}

EPS64 = cases.EPS64
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


def tensor(x: Any, dtype: torch.dtype, requires_grad: bool = False) -> torch.Tensor:
    t = torch.tensor(np.asarray(x)).to(dtype)
    return t.requires_grad_(requires_grad)


def options(case: cases.Case, path: str) -> dict[str, Any]:
    """The case as ``lion_torch.Lion`` arguments on ``path`` (the momentum dtype always named)."""
    momentum = case.momentum_dtype
    return dict(
        lr=case.lr,
        betas=(case.beta1, case.beta2),
        weight_decay=case.weight_decay,
        cautious=case.cautious,
        decouple_lr=case.decouple_lr,
        max_lr=case.max_lr,
        maximize=case.maximize,
        momentum_dtype="int8" if momentum == "int8" else DTYPES[momentum],
        **FLAGS[path],
    )


def through_disk(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` saved with ``torch.save`` and loaded back (``weights_only``)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def train(params: list[torch.Tensor], opt: torch.optim.Optimizer, grads: Any) -> None:
    """One ``opt.step()`` per entry of ``grads`` (arrays, one per parameter; ``None``: no gradient)."""
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else tensor(g, p.dtype)
        opt.step()


def run_case(path: str, case: cases.Case, problem: cases.Problem) -> tuple[list[torch.Tensor], Lion]:
    """Runs the case's problem on ``path``; the group's lr follows the case's schedule."""
    dtype, grad_dtype = DTYPES[case.param_dtype], DTYPES[case.gradient_dtype]
    params = [tensor(x, dtype, True) for x in problem.init]
    opt = Lion(params, **options(case, path))
    for step, step_grads in enumerate(problem.grads):
        opt.param_groups[0]["lr"] = case.lr_at(step)
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else tensor(g, grad_dtype)
        opt.step()
    return params, opt


def run(
    path: str,
    init: Sequence[np.ndarray],
    grads: Sequence[Sequence[np.ndarray | None]],
    *,
    dtype: torch.dtype = torch.float64,
    **options: Any,
) -> tuple[list[torch.Tensor], Lion]:
    """Runs our optimizer on ``path`` over ``grads`` with raw options (for the torch-only tests)."""
    params = [tensor(x, dtype if not np.iscomplexobj(x) else torch.complex128, True) for x in init]
    opt = Lion(params, **FLAGS[path], **options)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else tensor(g, p.dtype)
        opt.step()
    return params, opt


def momenta(opt: Lion, params: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    return [opt.state[p]["exp_avg"] if p in opt.state else None for p in params]


def assert_momentum(
    path: str,
    actual: Any,
    expected: Any,
    *,
    grads: Sequence[Sequence[np.ndarray | None]],
    index: int,
    beta2: float = 0.99,
    eps: float = EPS64,
    what: str = "momentum",
) -> None:
    """The momentum budget of each path.

    single-tensor and fused: bit-identical to the reference. foreach: one fused multiply-add per
    step, within ``cases.momentum_fma_tolerance``.
    """
    if path != "foreach":
        cases.assert_exact(actual, expected, what=what)
        return
    tolerance = cases.momentum_fma_tolerance(grads, index, beta2=beta2, eps=eps)
    cases.assert_close(actual, expected, **tolerance, what=what)


def reference_stored(
    init: Sequence[np.ndarray],
    grads: Sequence[Sequence[np.ndarray | None]],
    *,
    param_dtypes: Sequence[torch.dtype],
    momentum_dtypes: Sequence[torch.dtype],
    **hyper: Any,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``tests.cases.reference`` for parameters of different storage dtypes, one column at a time.

    ``hyper`` holds ``cases.Case`` fields (``lr``, ``weight_decay``, ...); gradients are rounded to
    each parameter's dtype, as setting ``p.grad`` in that dtype does.
    """
    params, moments = [], []
    for i, x in enumerate(init):
        case = cases.Case(id=f"column {i}", param_dtype=NAMES[param_dtypes[i]],
                          momentum_dtype=NAMES[momentum_dtypes[i]], **hyper)
        column = [[None if step[i] is None else cases.round_to(step[i], case.gradient_dtype)]
                  for step in grads]
        problem = cases.Problem([cases.round_to(x, case.param_dtype)], column)
        ref = cases.reference(case, problem)
        params.append(ref.params[0])
        moments.append(ref.momentum[0])
    return params, moments

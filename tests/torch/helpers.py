"""Shared pieces of the lion_torch tests: the implementation paths, a runner, and the budgets.

The oracle is ``lion_core.reference``. For parameters stored in bfloat16 it is run one step at a
time in float32 with the parameter rounded to bfloat16 after each step (what "compute in float32,
round once when stored" means); the rounding is torch's, the arithmetic the reference's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from lion_core.reference import reference_step
from lion_torch import Lion
from tests.support import assert_close, assert_exact


def _fused_param() -> Any:
    try:
        from lion_kernels import cpu_lion
    except ImportError as error:  # pragma: no cover - depends on the kernels helper's progress
        reason = f"lion_kernels.cpu_lion cannot be imported: {error}"
        return pytest.param("fused", marks=pytest.mark.skip(reason=reason))
    if not cpu_lion.available():
        try:
            cpu_lion.require()
            reason = "lion_kernels.cpu_lion.available() is False"
        except (ImportError, RuntimeError) as error:
            reason = f"lion_kernels.cpu_lion is not available: {error}"
        return pytest.param("fused", marks=pytest.mark.skip(reason=reason))
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

EPS64 = float(np.finfo(np.float64).eps)


def tensor(x: Any, dtype: torch.dtype, requires_grad: bool = False) -> torch.Tensor:
    t = torch.tensor(np.asarray(x)).to(dtype)
    return t.requires_grad_(requires_grad)


def run(
    path: str,
    init: Sequence[np.ndarray],
    grads: Sequence[Sequence[np.ndarray | None]],
    *,
    dtype: torch.dtype = torch.float64,
    **options: Any,
) -> tuple[list[torch.Tensor], Lion]:
    """Runs our optimizer on ``path`` over ``grads``; returns the parameters and the optimizer."""
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

    single-tensor and fused: bit-identical to the reference. foreach: ATen's ``add_(g, alpha=1 -
    beta2)`` rounds with one fused multiply-add where the reference rounds twice, so each step may
    differ by one rounding of ``|m| + (1 - beta2)|g|``; measured at most 1.03 eps after 8 steps.
    Budget: ``2 eps (|m_ref| + (1 - beta2) max|g|)``.
    """
    if path != "foreach":
        assert_exact(actual, expected, what=what)
        return
    gmax = max((float(np.abs(g[index]).max()) for g in grads if g[index] is not None and np.size(g[index])),
               default=0.0)
    assert_close(actual, expected, rtol=2 * eps, atol=2 * eps * (1 - beta2) * gmax, what=what)


def round_to(x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Rounds a float array to ``dtype`` (to nearest even) and back to float64."""
    return torch.from_numpy(np.asarray(x, dtype=np.float64)).to(dtype).double().numpy()


def reference_stored(
    init: Sequence[np.ndarray],
    grads: Sequence[Sequence[np.ndarray | None]],
    *,
    param_dtypes: Sequence[torch.dtype],
    momentum_dtypes: Sequence[torch.dtype],
    compute: Any = np.float32,
    **hyper: Any,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``reference_step`` in ``compute`` precision, rounding parameters and momenta to their storage
    dtypes after every step: the oracle for low-precision parameters."""
    params = [round_to(x, d) for x, d in zip(init, param_dtypes)]
    moments = [np.zeros_like(x) for x in params]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            if g is None:
                continue
            p, m = reference_step(params[i], g, moments[i], dtype=compute, **hyper)
            params[i], moments[i] = round_to(p, param_dtypes[i]), round_to(m, momentum_dtypes[i])
    return params, moments

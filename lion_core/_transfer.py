"""A Lion starting point from tuned AdamW hyperparameters, following the paper's section 5."""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

from ._defaults import BETA1, BETA2
from ._validation import check_betas, check_learning_rate, check_weight_decay, invalid_type, invalid_value

#: Betas the paper suggests for runs that are unstable with the defaults (Chen et al. 2023, sec. 5).
STABLE_BETAS = (0.95, 0.98)


class LionSettings(NamedTuple):
    """Lion hyperparameters in the project's canonical names."""

    lr: float
    beta1: float
    beta2: float
    weight_decay: float


def from_adamw(
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    *,
    factor: float = 3.0,
) -> LionSettings:
    r"""Converts tuned AdamW hyperparameters into a Lion starting point.

    Lion's update is a sign, so every coordinate moves by the full learning rate; its updates have a
    larger norm than AdamW's and the paper finds a learning rate 3-10x smaller suitable. The effective
    weight decay is :math:`\eta\lambda`, so :math:`\lambda` grows by the same factor to keep the
    strength of the decay:

    .. math::

        \eta_\text{Lion} = \eta_\text{AdamW} / k, \qquad \lambda_\text{Lion} = k \, \lambda_\text{AdamW}

    with :math:`3 \le k \le 10` (default 3; the paper's own runs often use 10). Runs whose AdamW
    :math:`\beta_2` was lowered for stability (to 0.99 or below) get the paper's stable betas
    ``(0.95, 0.98)``; others get the searched defaults ``(0.9, 0.99)``. This is where tuning starts, not
    where it ends: sweep ``lr`` around the result.

    Args:
      lr: AdamW's peak learning rate.
      weight_decay: AdamW's decoupled weight decay (default 0).
      betas: AdamW's ``(beta1, beta2)`` (default ``(0.9, 0.999)``).
      factor: :math:`k`, how much smaller Lion's learning rate is (default 3, between 1 and 100).

    Returns:
      A ``LionSettings(lr, beta1, beta2, weight_decay)``; schedules keep their shape: scale the
      initial, peak and final learning rates by the same ``1 / factor``.

    Example:
      >>> from lion_core import from_adamw
      >>> from_adamw(lr=3e-4, weight_decay=0.1, factor=10)
      LionSettings(lr=3e-05, beta1=0.9, beta2=0.99, weight_decay=1.0)

    References:
      Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675, section 5.
    """
    check_learning_rate(lr, "lr")
    check_weight_decay(weight_decay, "weight_decay")
    beta2 = check_betas(betas)[1]
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
        raise invalid_type("factor", "a real number", factor)
    if not 1 <= factor <= 100:
        raise invalid_value("factor", "1 <= factor <= 100", factor)
    beta1, beta2 = STABLE_BETAS if beta2 <= 0.99 else (BETA1, BETA2)
    # Rounded to 12 significant digits so that 3e-4 / 10 reads 3e-05, not 2.9999999999999997e-05.
    return LionSettings(
        lr=_tidy(lr / factor), beta1=beta1, beta2=beta2, weight_decay=_tidy(weight_decay * factor)
    )


def _tidy(x: float) -> float:
    return float(f"{x:.12g}") if math.isfinite(x) else x

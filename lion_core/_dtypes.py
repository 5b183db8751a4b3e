"""Which dtype the momentum is stored in, and which dtype the update is computed in.

Dtypes are named as NumPy names them (``"float32"``, ``"bfloat16"``, ``"complex64"``), so the policy is
written once here and each adapter maps the names to its host's dtype objects.
"""

from __future__ import annotations

from typing import Final

from ._validation import check_momentum_dtype, incompatible

#: Parameter dtypes for which a float32 momentum (``momentum_dtype="float32"``) is worth its memory:
#: with 8 bits of mantissa (bfloat16) or a narrow exponent (float16), a momentum of the parameter's
#: dtype rounds ``(1 - beta2) * g`` to a coarse grid. The default is still the parameter's dtype.
LOW_PRECISION: Final = frozenset({"bfloat16", "float16"})

_COMPLEX_PARTS: Final = {"complex64": "float32", "complex128": "float64"}


def momentum_dtype(param_dtype: str, requested: str | None = None) -> str:
    """Returns the dtype to store a parameter's momentum in.

    By default the momentum has the parameter's dtype, as every host keeps its optimizers' state
    (``optax``'s ``mu_dtype=None``, ``torch.zeros_like`` in ``torch.optim``, Keras'
    ``add_variable_from_reference``), so a model cast to bfloat16 gets the memory it counts on. A
    ``requested`` dtype overrides that: ``"float32"`` for a ``LOW_PRECISION`` parameter keeps the
    momentum's small increments at two more bytes per element (with ``beta2 = 0.99`` a step moves
    the momentum by 1% of ``g - m``; bfloat16's 8 significant bits space values 0.4-0.8% apart, so
    the step is rounded away while ``g`` stays within about 20-40% of ``m``); ``"bfloat16"`` halves
    the optimizer's memory for a float32 model. Complex parameters keep a momentum of their own
    dtype: Lion treats them as pairs of reals.

    Args:
      param_dtype: the parameter's dtype name, e.g. ``"float32"``.
      requested: the user's choice, one of ``MOMENTUM_DTYPES``, or ``None`` for the default.

    Raises:
      ValueError, TypeError: ``requested`` is not a floating dtype name.
      RuntimeError: a dtype was requested for a complex parameter.
    """
    requested = check_momentum_dtype(requested)
    if param_dtype in _COMPLEX_PARTS:
        if requested is not None:
            raise incompatible(
                "`momentum_dtype` cannot be set for complex parameters, whose momentum keeps the "
                f"parameter's dtype. Received: momentum_dtype={requested!r} for a {param_dtype} parameter"
            )
        return param_dtype
    return param_dtype if requested is None else requested


def compute_dtype(*dtypes: str) -> str:
    """Returns the dtype the update is computed in: float64 if any operand is, else float32.

    Low-precision parameters, gradients and momenta are upcast for the arithmetic and rounded once
    when stored, so the result does not depend on the order the host evaluates the expression in.
    Complex dtypes count as their real parts.
    """
    parts = {_COMPLEX_PARTS.get(dtype, dtype) for dtype in dtypes}
    return "float64" if "float64" in parts else "float32"

"""Hyperparameter validation: the only place in the project where error text is written.

Every adapter calls these checks from its constructor, passing the argument's name as its host spells
it (``betas[0]`` for PyTorch, ``beta_1`` for Keras, ``b1`` for Optax), so a user reads the name they
typed. Values that cannot be checked at construction (schedules, callables, traced arrays) are
returned unchanged: the host evaluates them later, and rejecting them here would break legitimate use.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Final, TypeVar

T = TypeVar("T")

#: Floating dtypes that a momentum buffer may be stored in, by their NumPy-style names.
MOMENTUM_DTYPES: Final = ("float16", "bfloat16", "float32", "float64")


def invalid_value(name: str, expected: str, value: object) -> ValueError:
    """Builds the project's one ``ValueError`` format: what was expected, and what was received."""
    return ValueError(f"Invalid `{name}`: expected {expected}. Received: {name}={value!r}")


def invalid_type(name: str, expected: str, value: object) -> TypeError:
    """Builds the project's one ``TypeError`` format, naming the type that was received."""
    return TypeError(
        f"Invalid `{name}`: expected {expected}. "
        f"Received: {name}={value!r} of type {type(value).__name__}"
    )


def incompatible(message: str) -> RuntimeError:
    """Builds the error for options that are valid alone but cannot be combined."""
    return RuntimeError(message)


def missing_dependency(package: str, remedy: str) -> ImportError:
    """Builds the error for an optional dependency that is absent: what to install, or what to do instead."""
    return ImportError(f"install {package} or {remedy}")


def concrete_scalar(value: object, name: str) -> float | None:
    """Returns ``value`` as a float when it is a concrete real scalar, else ``None``.

    ``None`` means "cannot be checked now": a callable (a schedule) or an array-like whose value is not
    known yet (a JAX tracer, a symbolic tensor). Strings, booleans, ``None``, containers and arrays
    of more than one element are type errors, whatever the host would later make of them.
    """
    expected = "a real number, a schedule (callable) or a scalar tensor"
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise invalid_type(name, expected, value)
    if isinstance(value, numbers.Real):
        return float(value)
    if callable(value):
        return None
    shape = getattr(value, "shape", None)
    if shape is None:
        raise invalid_type(name, expected, value)
    if "complex" in str(getattr(value, "dtype", "")):
        # Every host's dtype prints its name ("complex64", "torch.complex64"): refused before any
        # host's own conversion fails at the first step with its internal text.
        raise invalid_type(name, f"{expected} (real-valued)", value)
    if math.prod(tuple(shape)) != 1:
        raise invalid_type(name, f"{expected} (one element)", value)
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        # A traced or symbolic value: its number exists only when the host runs the step.
        return None


def check_learning_rate(value: T, name: str = "lr") -> T:
    """Checks ``0 <= value < inf`` for a concrete learning rate; schedules pass through."""
    number = concrete_scalar(value, name)
    if number is not None and not 0.0 <= number < math.inf:
        raise invalid_value(name, f"0 <= {name} < inf", value)
    return value


def check_beta(value: T, name: str) -> T:
    """Checks ``0 <= value < 1`` for a concrete momentum coefficient; callables pass through."""
    number = concrete_scalar(value, name)
    if number is not None and not 0.0 <= number < 1.0:
        raise invalid_value(name, f"0 <= {name} < 1", value)
    return value


def check_betas(value: Any, name: str = "betas") -> tuple[Any, Any]:
    """Checks a PyTorch-style ``(beta1, beta2)`` pair, naming each element by its index."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise invalid_type(name, "a pair (beta1, beta2)", value)
    return check_beta(value[0], f"{name}[0]"), check_beta(value[1], f"{name}[1]")


def check_weight_decay(value: T, name: str = "weight_decay") -> T:
    """Checks ``0 <= value < inf`` for a concrete weight decay; schedules pass through."""
    number = concrete_scalar(value, name)
    if number is not None and not 0.0 <= number < math.inf:
        raise invalid_value(name, f"0 <= {name} < inf", value)
    return value


def check_max_lr(value: T, name: str = "max_lr") -> T:
    """Checks ``0 < value < inf`` for the peak learning rate of fully decoupled weight decay."""
    number = concrete_scalar(value, name)
    if number is not None and not 0.0 < number < math.inf:
        raise invalid_value(name, f"0 < {name} < inf", value)
    return value


def check_bool(value: object, name: str) -> bool:
    """Checks a variant switch such as ``cautious``: exactly ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise invalid_type(name, "True or False", value)
    return value


def check_optional_bool(value: object, name: str) -> bool | None:
    """Checks an implementation flag such as ``foreach``: ``True``, ``False`` or ``None`` (automatic)."""
    if value is not None and not isinstance(value, bool):
        raise invalid_type(name, "True, False or None (choose automatically)", value)
    return value


def check_decoupling(decouple_lr: object, max_lr: object, *, name: str = "max_lr") -> None:
    """Checks the fully decoupled weight decay options together.

    ``max_lr`` only has a meaning when ``decouple_lr=True``; a ``max_lr`` given alone would silently do
    nothing, so it is refused.
    """
    check_bool(decouple_lr, "decouple_lr")
    if max_lr is None:
        return
    if not decouple_lr:
        raise incompatible(
            f"`{name}` is only used with `decouple_lr=True`. "
            f"Received: decouple_lr=False, {name}={max_lr!r}"
        )
    check_max_lr(max_lr, name)


def check_choice(value: object, choices: tuple[str, ...], name: str, *, optional: bool = False) -> str | None:
    """Checks a string option: one of ``choices`` (or ``None`` when ``optional``)."""
    if value is None and optional:
        return None
    expected = f"None or one of {choices}" if optional else f"one of {choices}"
    if not isinstance(value, str):
        raise invalid_type(name, expected, value)
    if value not in choices:
        raise invalid_value(name, expected, value)
    return value


def check_momentum_dtype(value: object, name: str = "momentum_dtype") -> str | None:
    """Checks a requested momentum dtype, given by its NumPy-style name, or ``None`` for the default."""
    return check_choice(value, MOMENTUM_DTYPES, name, optional=True)


def resolve_max_lr(max_lr: Any, learning_rate: Any, *, lr_name: str = "learning_rate") -> Any:
    """Returns the peak learning rate for fully decoupled weight decay: one policy for every adapter.

    The decay factor is ``1 - weight_decay * lr / max_lr``, so the peak must be positive:

    * ``max_lr`` given: it must satisfy ``0 < max_lr < inf`` (``check_max_lr``).
    * ``max_lr`` not given and a constant learning rate (a real number; PyTorch passes the value a
      parameter group's lr has when the group is added): that learning rate, which must then be
      positive. A zero learning rate is refused naming the argument the user passed, and the error
      says to pass ``max_lr``.
    * ``max_lr`` not given and a schedule, or an array whose value may change between steps (as
      ``optax.inject_hyperparams`` passes): refused, since its peak cannot be read at construction;
      a schedule's first value is often the start of a warm-up, not its peak.

    Raises:
      ValueError: ``max_lr`` not in (0, inf), or a zero learning rate with no ``max_lr``.
      TypeError: ``max_lr`` of an unusable type.
      RuntimeError: a schedule or an array learning rate with no ``max_lr``.
    """
    if max_lr is not None:
        return check_max_lr(max_lr)
    if isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool):
        if not 0.0 < float(learning_rate) < math.inf:
            raise invalid_value(
                lr_name,
                f"0 < {lr_name} < inf with `decouple_lr=True` and no `max_lr` (the decay is divided by "
                f"the peak learning rate, which then defaults to {lr_name}); to start from "
                f"{lr_name}={learning_rate!r}, pass max_lr=<the peak learning rate>",
                learning_rate,
            )
        return learning_rate
    raise incompatible(
        f"`max_lr` is required with `decouple_lr=True` when `{lr_name}` is a schedule or an array, "
        f"whose peak cannot be read at construction: pass max_lr=<the peak learning rate>. "
        f"Received: {lr_name}={learning_rate!r}, max_lr=None"
    )

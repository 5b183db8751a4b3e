"""Lion's math, once, for every framework: the update rule, its variants, validation and a reference.

``lion_core`` imports no deep-learning framework. The adapters ``lion_torch``, ``lion_keras`` and
``lion_optax`` build their optimizers on it, and every test checks them against
``lion_core.reference``, a float64 NumPy implementation of the same rule. A parameter's state
(its momentum's storage format, 8-bit blockwise included, and the parameter's rounding) is
declared here too (``state_spec``), with the counter-based hash that makes stochastic rounding
reproducible on every framework.

References:
  Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
  Liang et al. 2024, "Cautious Optimizers: Improving Training with One Line of Code", arXiv:2411.16085.
"""

from . import _defaults as defaults
from ._dtypes import LOW_PRECISION, compute_dtype, momentum_dtype
from ._formats import (
    INT8,
    MOMENTUM_FORMATS,
    MOMENTUM_STREAM,
    PARAM_STREAM,
    ROUNDINGS,
    BlockwiseInt8,
    FloatFormat,
    Slot,
    StateSpec,
    check_momentum_format,
    check_rounding,
    check_seed,
    counter_hash,
    derive_seed,
    keyed_hash,
    mismatched_state,
    momentum_format,
    resolve_seed,
    state_spec,
    step_key,
    stochastic_round_bfloat16,
    stochastic_round_bfloat16_bits,
    uniform_from_bits,
)
from ._fallback import FallbackWarning, kernel_unavailable, warn_fallback
from ._transfer import STABLE_BETAS, LionSettings, from_adamw
from ._rule import (
    ArrayNamespace,
    cautious_mask,
    decay_factor,
    interpolate,
    lion_direction,
    lion_step,
    next_momentum,
    sign_with_nan,
)
from ._validation import (
    MOMENTUM_DTYPES,
    check_beta,
    check_betas,
    check_bool,
    check_choice,
    check_decoupling,
    check_learning_rate,
    check_max_lr,
    check_momentum_dtype,
    check_optional_bool,
    check_weight_decay,
    concrete_scalar,
    incompatible,
    invalid_type,
    invalid_value,
    missing_dependency,
    resolve_max_lr,
)

__version__ = "0.1.0"

__all__ = [
    "INT8",
    "LOW_PRECISION",
    "MOMENTUM_DTYPES",
    "MOMENTUM_FORMATS",
    "MOMENTUM_STREAM",
    "PARAM_STREAM",
    "ROUNDINGS",
    "STABLE_BETAS",
    "ArrayNamespace",
    "BlockwiseInt8",
    "FallbackWarning",
    "FloatFormat",
    "LionSettings",
    "Slot",
    "StateSpec",
    "cautious_mask",
    "check_beta",
    "check_betas",
    "check_bool",
    "check_choice",
    "check_decoupling",
    "check_learning_rate",
    "check_max_lr",
    "check_momentum_dtype",
    "check_momentum_format",
    "check_optional_bool",
    "check_rounding",
    "check_seed",
    "check_weight_decay",
    "compute_dtype",
    "concrete_scalar",
    "counter_hash",
    "decay_factor",
    "defaults",
    "derive_seed",
    "from_adamw",
    "incompatible",
    "interpolate",
    "keyed_hash",
    "invalid_type",
    "invalid_value",
    "kernel_unavailable",
    "lion_direction",
    "lion_step",
    "mismatched_state",
    "missing_dependency",
    "momentum_dtype",
    "momentum_format",
    "next_momentum",
    "resolve_max_lr",
    "resolve_seed",
    "sign_with_nan",
    "state_spec",
    "step_key",
    "stochastic_round_bfloat16",
    "stochastic_round_bfloat16_bits",
    "uniform_from_bits",
    "warn_fallback",
]

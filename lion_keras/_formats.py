"""``lion_core``'s state formats in ``keras.ops``: 8-bit momentum and stochastic bfloat16 rounding.

``lion_core`` writes the formats once, with an injected array namespace and plain integer operators
(``lion_core.counter_hash``, ``BlockwiseInt8.encode``/``decode``, ``stochastic_round_bfloat16_bits``).
Here they run on every Keras backend: :data:`XP` is ``keras.ops`` under the array API's names, and
:class:`Bits` holds unsigned 32-bit integers whose operators are ``keras.ops`` calls (TensorFlow's
tensors have no ``>>``). The integers are ``uint32`` on JAX and TensorFlow and ``int64`` masked to 32
bits on PyTorch, which has no ``uint32`` multiply; the bits are the same on all three.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

import lion_core

_BACKEND = keras.backend.backend()
#: The dtype of :class:`Bits` on this backend.
UINT = "int64" if _BACKEND == "torch" else "uint32"
_NP_UINT = np.int64 if UINT == "int64" else np.uint32
#: The signed integer of a float's width, for bit casts.
_INT_OF = {"float32": "int32", "float64": "int64"}


class Bits:
    """Unsigned 32-bit integers (a backend tensor) with the operators ``lion_core``'s hash uses."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    @classmethod
    def of(cls, x: Any) -> Bits:
        """A non-negative integer tensor (or Keras variable) as :class:`Bits`."""
        return cls(ops.cast(x, UINT))

    @staticmethod
    def _operand(other: Any) -> Any:
        if isinstance(other, Bits):
            return other.value
        # A constant in the integer type: JAX parses a bare int above 2**31 - 1 as int32.
        return ops.convert_to_tensor(np.asarray(other, _NP_UINT))

    def __xor__(self, other: Any) -> Bits:
        return Bits(ops.bitwise_xor(self.value, self._operand(other)))

    def __and__(self, other: Any) -> Bits:
        return Bits(ops.bitwise_and(self.value, self._operand(other)))

    def __or__(self, other: Any) -> Bits:
        return Bits(ops.bitwise_or(self.value, self._operand(other)))

    def __rshift__(self, other: Any) -> Bits:
        return Bits(ops.right_shift(self.value, self._operand(other)))

    def __mul__(self, other: Any) -> Bits:  # wraps modulo 2**32 (uint32) or 2**64 (int64), then masked
        return Bits(ops.multiply(self.value, self._operand(other)))

    def __add__(self, other: Any) -> Bits:
        return Bits(ops.add(self.value, self._operand(other)))

    def __gt__(self, other: Any) -> Any:
        return ops.greater(self.value, self._operand(other))


def _unwrap(x: Any) -> Any:
    return x.value if isinstance(x, Bits) else x


class _Namespace:
    """``keras.ops`` under the names ``lion_core``'s formats call (the Python array API's)."""

    int8 = "int8"
    float32 = "float32"
    uint32 = UINT
    reshape = staticmethod(ops.reshape)
    abs = staticmethod(ops.abs)
    floor = staticmethod(ops.floor)
    round = staticmethod(ops.round)
    clip = staticmethod(ops.clip)
    concatenate = staticmethod(ops.concatenate)
    asarray = staticmethod(ops.convert_to_tensor)
    sign = staticmethod(ops.sign)
    mean = staticmethod(ops.mean)

    @staticmethod
    def max(x: Any, axis: Any = None) -> Any:
        return ops.max(x, axis=axis)

    @staticmethod
    def zeros(shape: Any, dtype: Any = None) -> Any:
        return ops.zeros(shape, dtype=dtype)

    @staticmethod
    def astype(x: Any, dtype: Any) -> Any:
        return ops.cast(_unwrap(x), dtype)

    @staticmethod
    def where(condition: Any, x: Any, y: Any) -> Any:
        out = ops.where(_unwrap(condition), _unwrap(x), _unwrap(y))
        return Bits(out) if isinstance(x, Bits) or isinstance(y, Bits) else out


#: The namespace to pass as ``xp`` to ``lion_core.INT8.encode``/``decode`` and the rounding.
XP = _Namespace()


def flat_index(shape: tuple[int, ...]) -> Bits:
    """Each element's position in the flattened array (the hash's counter), shaped ``shape``."""
    size = int(np.prod(shape, dtype=np.int64))
    if _BACKEND == "jax":  # int64 is float64's companion: absent unless jax_enable_x64
        index = ops.arange(size, dtype="uint32")
    else:
        index = ops.cast(ops.arange(size, dtype="int64"), UINT)
    return Bits(ops.reshape(index, shape))


def random_bits(seed: Bits, stream: int, tensor: int, step: Bits, shape: tuple[int, ...]) -> Bits:
    """``counter_hash(derive_seed(seed, stream, tensor), step, flat index)``, shaped ``shape``."""
    key = lion_core.derive_seed(seed, stream, tensor)
    return lion_core.counter_hash(key, step, flat_index(shape))


def _float32_bits(x: Any) -> Bits:
    if UINT == "uint32":
        return Bits(ops.view(x, "uint32"))
    return Bits(ops.cast(ops.view(x, "int32"), "int64")) & 0xFFFFFFFF  # sign extension dropped


def _bits_float32(bits: Bits) -> Any:
    if UINT == "uint32":
        return ops.view(bits.value, "float32")
    value = bits.value  # int64 in [0, 2**32): the int32 with the same low 32 bits, then its float
    signed = ops.where(value >= 2**31, value - 2**32, value)
    return ops.view(ops.cast(signed, "int32"), "float32")


def stochastic_bfloat16(x: Any, random: Bits) -> Any:
    """float32 ``x`` rounded to bfloat16 with ``lion_core.stochastic_round_bfloat16_bits``."""
    rounded = lion_core.stochastic_round_bfloat16_bits(_float32_bits(x), random, xp=XP)
    return ops.cast(_bits_float32(rounded), "bfloat16")  # the low 16 bits are zero: exact


def rounded(x: Any, zero: Any) -> Any:
    """``x`` itself, through an integer xor with a ``zero`` the compiler cannot see: a product passed
    through it is rounded on its own, never contracted into a fused multiply-add (XLA does that), so
    the momentum's bits are those of ``lion_core.reference``."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    integer = _INT_OF[dtype]
    return ops.view(ops.bitwise_xor(ops.view(x, integer), ops.cast(zero, integer)), dtype)

r"""A parameter's optimizer state, declared once: its slots, their storage formats, and its rounding.

Lion keeps one slot per parameter, the momentum :math:`m`. Where it is stored and how the parameter
is rounded when written are declarations here, consumed by ``lion_core.reference``, the adapters and
the kernels, so a new format is one definition plus one kernel routine:

* ``FloatFormat``: the momentum in a floating dtype (``"float32"``, ``"bfloat16"``, ...), rounded to
  nearest when stored.
* ``BlockwiseInt8``: 8-bit momentum. The flattened array is cut into blocks of ``block_size``
  elements (the last one shorter); each block stores one float32 ``scale`` (its largest magnitude
  divided by 127) and one int8 code per element, :math:`m \approx q \cdot s`, ``-127 <= q <= 127``.
  Codes are rounded stochastically: with :math:`\beta_2 = 0.99` the momentum moves by 1% of
  :math:`g - m` per step, usually less than one code step, so round-to-nearest codes stall where
  stochastic ones follow in expectation (``benchmarks/bench_formats.py`` measures this; see
  docs/low-memory.md). Memory: ``1 + 4 / block_size`` bytes per element (1.016 for 256).
* ``StateSpec``: a parameter's slots and its own rounding (``"nearest"`` or ``"stochastic"``:
  float32 results stored to bfloat16 by unbiased, deterministic stochastic rounding).

Randomness is a counter-based hash, ``counter_hash(seed, step, index)``: pure 32-bit integer
arithmetic (``^ >> * + &``) that NumPy, ``jax.numpy``, ``torch`` (int64, masked to 32 bits) and
Triton (uint32) evaluate identically, so every path and framework draws the same bits for the same
(seed, step, element) and a run is reproducible and resumable. ``step`` counts the updates made
before this one (0 for the first), ``index`` is the element's position in the flattened parameter
(modulo :math:`2^{32}`). Each tensor draws from its own key, ``derive_seed(seed, stream, tensor)``,
so the momentum's and the parameter's roundings, and two tensors, are not correlated.

Operations take an injected namespace ``xp`` (NumPy, ``jax.numpy``; the names of the Python array
API standard: ``reshape``, ``abs``, ``max``, ``floor``, ``round``, ``clip``, ``where``,
``concatenate``, ``zeros``, ``asarray``, ``astype``, ``int8``, ``float32``, ``uint32``), as ``lion_core._rule``
does; integers are Python ints or arrays of unsigned 32-bit (or masked int64) integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Union, cast

import numpy as np

from ._validation import MOMENTUM_DTYPES, check_bool, check_choice, incompatible, invalid_type, invalid_value

MASK32: Final = 0xFFFFFFFF
#: 1/127 rounded to float32: a block's scale is its largest magnitude times this.
INV_CODE_MAX: Final = np.float32(1.0 / 127.0)
_GOLDEN: Final = 0x9E3779B9  # 2**32 / golden ratio: spreads consecutive counters

#: Streams of ``derive_seed``: which rounding a key serves.
PARAM_STREAM: Final = 0
MOMENTUM_STREAM: Final = 1

#: Rounding modes of a stored parameter (and of the 8-bit momentum's codes).
ROUNDINGS: Final = ("nearest", "stochastic")

#: The momentum formats an optimizer accepts by name: the floating dtypes and ``"int8"``.
MOMENTUM_FORMATS: Final = (*MOMENTUM_DTYPES, "int8")


# --- the counter-based hash ---------------------------------------------------------------------


def _const(x: Any, value: int) -> Any:
    """``value`` in ``x``'s integer type where it has one (JAX parses a bare int above 2**31 - 1 as int32)."""
    scalar_type = getattr(getattr(x, "dtype", None), "type", None)
    return value if scalar_type is None else scalar_type(value)


def mix32(x: Any) -> Any:
    """A 32-bit avalanche finalizer (xor-shift-multiply, two rounds); a bijection of ``[0, 2**32)``.

    Written with ``^ >> * &`` only, so it runs on Python ints, uint32 arrays of NumPy and JAX, int64
    tensors masked to 32 bits (PyTorch) and Triton's uint32 values, with the same results.
    """
    mask = _const(x, MASK32)
    with np.errstate(over="ignore"):  # NumPy scalars warn where arrays wrap silently
        x = x ^ (x >> 16)
        x = (x * _const(x, 0x7FEB352D)) & mask
        x = x ^ (x >> 15)
        x = (x * _const(x, 0x846CA68B)) & mask
        return x ^ (x >> 16)


def step_key(seed: Any, step: Any) -> Any:
    """The key of one step: ``mix32(seed ^ mix32(step + golden))`` (scalars; may be traced)."""
    step = (step + _const(step, _GOLDEN)) & _const(step, MASK32)
    return mix32((seed & _const(seed, MASK32)) ^ mix32(step))


def counter_hash(seed: Any, step: Any, index: Any) -> Any:
    """32 random bits for element ``index`` at ``step`` under ``seed``: the project's one generator.

    ``h = mix32((mix32(index ^ k) + k) mod 2**32)`` with ``k = step_key(seed, step)``. ``index`` is
    an array of flat element positions (uint32, or int64 holding values below ``2**32``); ``seed``
    and ``step`` are scalars of the same integer type (or Python ints). The same inputs give the
    same bits on every backend.
    """
    return keyed_hash(step_key(seed, step), index)


def keyed_hash(key: Any, index: Any) -> Any:
    """``counter_hash`` from a step's key ``k = step_key(seed, step)``: ``mix32((mix32(index ^ k) + k)
    mod 2**32)``. For callers that compute one key per tensor and step (the kernels' contract)."""
    if isinstance(key, int):  # a Python-int key: in the index's type
        key = _const(index, key)
    return mix32((mix32(index ^ key) + key) & _const(index, MASK32))


def derive_seed(seed: Any, stream: int, tensor: int) -> Any:
    """A tensor's own key from the optimizer's ``seed``: ``stream`` names the rounding it serves
    (``PARAM_STREAM``, ``MOMENTUM_STREAM``) and ``tensor`` the tensor's position in the host's order
    (optax: the leaves of the parameter tree; PyTorch: the parameters of all groups in order)."""
    mask = _const(seed, MASK32)
    mixed = mix32((seed & mask) ^ _const(seed, stream))
    return mix32((mixed + _const(seed, (tensor * _GOLDEN) & MASK32)) & mask)


def _astype(x: Any, dtype: Any, xp: Any) -> Any:
    """``xp.astype`` (the array API's name), or the array's own method (NumPy before 2.1)."""
    astype = getattr(xp, "astype", None)
    return astype(x, dtype) if astype is not None else x.astype(dtype)


def uniform_from_bits(bits: Any, *, xp: Any) -> Any:
    """Maps 32 random bits to a float32 in ``[0, 1)`` exactly: ``(bits >> 8) * 2**-24``."""
    return _astype(bits >> 8, xp.float32, xp) * np.float32(2.0**-24)


# --- stochastic rounding of float32 to bfloat16 -------------------------------------------------


def stochastic_round_bfloat16_bits(bits: Any, random: Any, *, xp: Any) -> Any:
    """Stochastically rounds float32 values, given as their uint32 bit patterns, to bfloat16.

    Adds the top 16 random bits to the 16 bits that bfloat16 drops and truncates: a value a fraction
    ``f`` of the way from the bfloat16 below it (toward zero) to the one above rounds up with
    probability exactly ``f``, so the rounding is unbiased. Infinities stay infinite, NaN stays NaN
    (quiet), and a finite value above bfloat16's largest may round to infinity. Returns uint32 bit
    patterns whose low 16 bits are zero: the bfloat16 value is the high half (``>> 16``).
    """
    high = _const(bits, 0xFFFF0000)
    rounded = ((bits + (random >> 16)) & _const(bits, MASK32)) & high
    is_nan = (bits & _const(bits, 0x7FFFFFFF)) > _const(bits, 0x7F800000)
    return xp.where(is_nan, (bits | _const(bits, 0x00400000)) & high, rounded)


def stochastic_round_bfloat16(x: np.ndarray, random: np.ndarray) -> np.ndarray:
    """NumPy: float32 ``x`` stochastically rounded to bfloat16 with ``random`` bits, as float32 values."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    with np.errstate(over="ignore"):
        out = stochastic_round_bfloat16_bits(bits, np.asarray(random, np.uint32), xp=np)
    return np.asarray(out, np.uint32).view(np.float32).reshape(np.shape(x))


#: bfloat16's largest finite value, (2 - 2**-7) * 2**127.
BFLOAT16_MAX: Final = (2 - 2.0**-7) * 2.0**127


def reference_stochastic_round_bfloat16(x: np.ndarray, random: np.ndarray) -> np.ndarray:
    """The float64 reference of ``stochastic_round_bfloat16``, written with real arithmetic.

    With ``ulp`` the spacing of bfloat16 values around ``|x|`` (8 significant bits; subnormals below
    ``2**-126`` are spaced ``2**-133``), ``lo = floor(|x| / ulp) * ulp`` and ``f = |x| / ulp - floor``,
    the result is ``sign(x) * (lo + ulp)`` when ``u + f >= 1`` for ``u = (random >> 16) / 2**16``,
    else ``sign(x) * lo``; beyond bfloat16's range it is infinite. ``x`` must hold float32 values.
    """
    x = np.asarray(x, np.float64)
    u = (np.asarray(random, np.uint64) >> 16).astype(np.float64) / 2.0**16
    magnitude = np.abs(x)
    finite = np.isfinite(x) & (magnitude > 0)
    exponent = np.frexp(np.where(finite, magnitude, 1.0))[1]
    ulp = np.ldexp(1.0, np.maximum(exponent, -125) - 8)
    scaled = np.where(finite, magnitude, 0.0) / ulp
    low = np.floor(scaled)
    up = (u + (scaled - low)) >= 1.0
    result = (low + up) * ulp
    result = np.where(result > BFLOAT16_MAX, np.inf, result)
    return np.where(finite, np.copysign(result, x), x)


# --- storage formats ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FloatFormat:
    """A slot stored in a floating dtype, rounded to nearest (NumPy-style dtype name)."""

    dtype: str

    @property
    def name(self) -> str:
        return self.dtype

    def bytes_per_element(self, size: int = 0) -> float:
        """Bytes of storage per element (independent of the array's size)."""
        return {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}[self.dtype]


@dataclass(frozen=True)
class BlockwiseInt8:
    r"""8-bit blockwise momentum: int8 codes and one float32 scale per block of ``block_size``.

    For a block :math:`B` of the flattened array, :math:`s = \max_{i \in B} |m_i| \cdot c` with
    :math:`c` = ``INV_CODE_MAX`` (1/127 in float32; :math:`s` rounded to float32) and
    :math:`q_i = \operatorname{round}(m_i \cdot (1 / s))`, clipped to ``[-127, 127]``; decoding is
    :math:`m_i = q_i s`. Each of these is one correctly rounded operation, so the float32 paths of
    every backend and kernel agree bit for bit. ``rounding="stochastic"`` rounds :math:`y = m_i / s` up with probability
    :math:`y - \lfloor y \rfloor`, comparing it with ``uniform_from_bits(counter_hash(...))``; that
    comparison is exact, so float32 and float64 evaluations of the same :math:`y` agree. A block
    holding a NaN or an infinity stores codes 0 and a non-finite scale: it decodes to NaN, so the
    divergence surfaces. A block whose largest magnitude is below :math:`127 \cdot 2^{-149}` decodes
    to zero.

    Attributes:
      block_size: elements per scale (256: 1.016 bytes per element).
      rounding: how codes are rounded, ``"stochastic"`` (the default, see the module) or ``"nearest"``.
    """

    block_size: int = 256
    rounding: str = "stochastic"
    name: str = field(default="int8", init=False)

    #: The largest code magnitude; -128 is never used, so the code is symmetric.
    code_max = 127

    def __post_init__(self) -> None:
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise invalid_value("block_size", "an integer >= 1", self.block_size)
        check_rounding(self.rounding, "rounding")

    def blocks(self, size: int) -> int:
        """How many blocks (and scales) an array of ``size`` elements has."""
        return -(-size // self.block_size)

    def bytes_per_element(self, size: int) -> float:
        """Bytes of codes and scales per element of an array of ``size`` elements."""
        return (size + 4 * self.blocks(size)) / size if size else 0.0

    def _parts(self, x: Any, *, xp: Any) -> list[Any]:
        """``x`` as rows of ``block_size`` in flat order, in at most two arrays ``(..., block_size)``.

        When the last axis is a whole number of blocks, one array that keeps the leading axes (a
        sharded array stays sharded the same way). Otherwise the whole blocks of the flattened
        array, then its last, short block padded with zeros: padding only the tail keeps XLA from
        copying the whole array.
        """
        shape = tuple(x.shape)
        if shape and shape[-1] % self.block_size == 0:
            return [xp.reshape(x, (*shape[:-1], shape[-1] // self.block_size, self.block_size))]
        size = math.prod(shape)
        flat = xp.reshape(x, (size,))
        whole = size // self.block_size * self.block_size
        parts = [xp.reshape(flat[:whole], (whole // self.block_size, self.block_size))] if whole else []
        if size > whole:
            tail = xp.concatenate([flat[whole:], xp.zeros((whole + self.block_size - size,), dtype=flat.dtype)])
            parts.append(xp.reshape(tail, (1, self.block_size)))
        return parts

    def _joined(self, parts: list[Any], shape: tuple[int, ...], *, xp: Any) -> Any:
        """The inverse of ``_parts``: drops the padding and restores ``shape``."""
        if shape and shape[-1] % self.block_size == 0:
            return xp.reshape(parts[0], shape)
        size = math.prod(shape)
        flats = [xp.reshape(part, (-1,)) for part in parts]
        if size % self.block_size:
            flats[-1] = flats[-1][: size % self.block_size]
        return xp.reshape(flats[0] if len(flats) == 1 else xp.concatenate(flats), shape)

    def _scale_parts(self, scales: Any, parts: list[Any], *, xp: Any) -> list[Any]:
        """The stored flat ``scales`` cut and shaped like ``parts`` without their block axis."""
        out, start = [], 0
        for part in parts:
            count = math.prod(tuple(part.shape[:-1]))
            out.append(xp.reshape(scales[start : start + count], tuple(part.shape[:-1])))
            start += count
        return out

    def _encode_part(self, blocks: Any, u: Any, *, xp: Any) -> tuple[Any, Any]:
        # Multiplications only (by a float32 constant, by a per-block reciprocal): XLA rewrites a
        # division by a broadcast value into a multiplication by its reciprocal, so a division would
        # round differently on different backends.
        absmax = xp.max(xp.abs(blocks), axis=-1)
        scales = _astype(absmax * _astype(xp.asarray(INV_CODE_MAX), absmax.dtype, xp), xp.float32, xp)
        safe = _astype(xp.where(scales == 0, 1.0, scales), blocks.dtype, xp)
        y = blocks * (1.0 / safe)[..., None]
        if u is not None:
            low = xp.floor(y)
            q = low + _astype(u < y - low, y.dtype, xp)
        else:
            q = xp.round(y)
        q = xp.where(q == q, xp.clip(q, -self.code_max, self.code_max), 0.0)  # NaN codes: 0
        return _astype(q, xp.int8, xp), xp.reshape(scales, (-1,))

    def encode(self, m: Any, random: Any = None, *, xp: Any) -> tuple[Any, Any]:
        """Returns ``(codes, scales)``: int8 codes shaped like ``m``, float32 scales of ``blocks(m.size)``.

        Computed in ``m``'s dtype (float32 on every path; float64 for the reference), except the
        scale, which is rounded to float32 where it is stored. ``random``: uint32 bits shaped like
        ``m`` (``counter_hash`` of the flat indices), required when ``rounding == "stochastic"``.
        """
        shape = tuple(m.shape)
        if math.prod(shape) == 0:
            return xp.zeros(shape, dtype=xp.int8), xp.zeros((0,), dtype=xp.float32)
        parts = self._parts(m, xp=xp)
        if self.rounding == "stochastic":
            if random is None:
                raise TypeError("BlockwiseInt8.encode with rounding='stochastic' needs `random` bits")
            u_parts = self._parts(_astype(uniform_from_bits(random, xp=xp), m.dtype, xp), xp=xp)
        else:
            u_parts = [None] * len(parts)
        encoded = [self._encode_part(part, u, xp=xp) for part, u in zip(parts, u_parts)]
        codes = self._joined([c for c, _ in encoded], shape, xp=xp)
        scales = [s for _, s in encoded]
        return codes, scales[0] if len(scales) == 1 else xp.concatenate(scales)

    def decode(self, codes: Any, scales: Any, *, xp: Any, dtype: Any = None) -> Any:
        """Returns ``codes * scale`` shaped like ``codes``, in ``dtype`` (float32 unless given)."""
        dtype = xp.float32 if dtype is None else dtype
        shape = tuple(codes.shape)
        if math.prod(shape) == 0:
            return xp.zeros(shape, dtype=dtype)
        parts = self._parts(_astype(codes, dtype, xp), xp=xp)
        scale_parts = self._scale_parts(_astype(scales, dtype, xp), parts, xp=xp)
        return self._joined([p * s[..., None] for p, s in zip(parts, scale_parts)], shape, xp=xp)

    def reference_encode(self, m: np.ndarray, random: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The float64 reference of ``encode``, block by block with Python loops over blocks."""
        m = np.asarray(m, np.float64)
        flat = m.reshape(-1)
        u = None if random is None else (np.asarray(random, np.uint64).reshape(-1) >> 8) / 2.0**24
        codes = np.zeros(flat.size, np.int8)
        scales = np.zeros(self.blocks(flat.size), np.float32)
        for b in range(scales.size):
            part = slice(b * self.block_size, (b + 1) * self.block_size)
            block = flat[part]
            with np.errstate(invalid="ignore", over="ignore"):
                scale = np.float32(np.max(np.abs(block)) * float(INV_CODE_MAX))
                y = block * (1.0 / (float(scale) if scale != 0 else 1.0))
                if self.rounding == "stochastic":
                    if u is None:
                        raise TypeError("reference_encode with rounding='stochastic' needs `random` bits")
                    q = np.floor(y) + (u[part] < y - np.floor(y))
                else:
                    q = np.round(y)
                q = np.where(np.isnan(q), 0.0, np.clip(q, -self.code_max, self.code_max))
            scales[b], codes[part] = scale, q.astype(np.int8)
        return codes.reshape(m.shape), scales

    def reference_decode(self, codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """The float64 reference of ``decode``: ``q * s`` exactly (NaN where the scale is not finite)."""
        flat = np.asarray(codes).reshape(-1).astype(np.float64)
        with np.errstate(invalid="ignore"):
            per_element = np.repeat(np.asarray(scales, np.float64), self.block_size)[: flat.size]
            return (flat * per_element).reshape(np.shape(codes))


Format = Union[FloatFormat, BlockwiseInt8]


@dataclass(frozen=True)
class Slot:
    """One state slot of a parameter: its name (``"momentum"``) and its storage format."""

    name: str
    format: Format


@dataclass(frozen=True)
class StateSpec:
    """A parameter's state, declared: its slots and how the parameter itself is rounded when stored.

    Attributes:
      slots: the state buffers, in order (Lion: the momentum).
      param_rounding: ``"nearest"`` or ``"stochastic"`` (bfloat16 parameters only: float32 results
        stochastically rounded with ``counter_hash``).
    """

    slots: tuple[Slot, ...]
    param_rounding: str = "nearest"

    @property
    def momentum(self) -> Format:
        return self.slots[0].format

    @property
    def needs_seed(self) -> bool:
        """Whether the state draws random bits (and so keeps a seed)."""
        stochastic_slot = any(getattr(s.format, "rounding", "nearest") == "stochastic" for s in self.slots)
        return stochastic_slot or self.param_rounding == "stochastic"

    def bytes_per_element(self, size: int) -> float:
        """Optimizer-state bytes per parameter element for an array of ``size`` elements."""
        return sum(slot.format.bytes_per_element(size) for slot in self.slots)


def check_rounding(value: object, name: str = "rounding") -> str:
    """Checks a rounding mode: one of ``ROUNDINGS``."""
    return cast(str, check_choice(value, ROUNDINGS, name))


def check_momentum_format(value: object, name: str = "momentum_dtype") -> str | None:
    """Checks a requested momentum storage: ``None`` (the parameter's dtype) or a ``MOMENTUM_FORMATS`` name."""
    return check_choice(value, MOMENTUM_FORMATS, name, optional=True)


def resolve_seed(seed: object, draw: Callable[[], int], name: str = "seed") -> int:
    """The seed an optimizer keeps: ``seed`` if given (checked), else one value from ``draw``.

    ``draw`` is the host's random generator, called once at construction (PyTorch:
    ``lambda: int(torch.randint(0, 2**32, ()))``, so ``torch.manual_seed`` makes it reproducible;
    Keras: its seed generator). The result is saved in the optimizer's state, so a resumed run
    continues with the same bits.
    """
    if seed is None:
        return check_seed(draw(), name)
    return check_seed(seed, name)


def mismatched_state(name: str, expected: str, received: str) -> TypeError:
    """The error for a saved state whose format is not the optimizer's (never silently converted)."""
    return TypeError(
        f"Invalid `{name}`: expected {expected}. Received: {received}; build the optimizer with the "
        "momentum format the state was saved with, or start a fresh state"
    )


def check_seed(value: object, name: str = "seed") -> int:
    """Checks a seed: an integer in ``[0, 2**32)`` (the hash's key width)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise invalid_type(name, "an integer 0 <= seed < 2**32", value)
    if not 0 <= int(value) <= MASK32:
        raise invalid_value(name, "0 <= seed < 2**32", value)
    return int(value)


#: The 8-bit momentum format every path implements (block size and rounding chosen by measurement).
INT8: Final = BlockwiseInt8()

def momentum_format(param_dtype: str, requested: str | None = None, *, name: str = "momentum_dtype") -> Format:
    """The format a parameter's momentum is stored in: the parameter's dtype by default, or ``requested``.

    ``"int8"`` is ``INT8`` (8-bit blockwise); a floating name is that dtype. Complex parameters keep
    their own dtype (see ``lion_core.momentum_dtype``).

    Raises:
      ValueError, TypeError: ``requested`` is not in ``MOMENTUM_FORMATS``.
      RuntimeError: ``requested`` was given for a complex parameter.
    """
    requested = check_momentum_format(requested, name)
    if requested == "int8":
        if param_dtype.startswith("complex"):
            raise incompatible(
                f"`{name}` cannot be set for complex parameters, whose momentum keeps the "
                f"parameter's dtype. Received: {name}='int8' for a {param_dtype} parameter"
            )
        return INT8
    from ._dtypes import momentum_dtype

    return FloatFormat(momentum_dtype(param_dtype, requested))


def state_spec(
    param_dtype: str,
    momentum: str | None = None,
    *,
    stochastic_rounding: bool = False,
    name: str = "momentum_dtype",
) -> StateSpec:
    """Declares a parameter's Lion state from the user's options (checked; error text names ``name``).

    Args:
      param_dtype: the parameter's dtype name.
      momentum: the requested momentum storage (``None``: the parameter's dtype; ``"int8"``).
      stochastic_rounding: store the parameter with stochastic rounding (bfloat16 parameters; other
        dtypes are rounded to nearest, as there is nothing to gain).
    """
    check_bool(stochastic_rounding, "stochastic_rounding")
    rounding = "stochastic" if stochastic_rounding and param_dtype == "bfloat16" else "nearest"
    return StateSpec((Slot("momentum", momentum_format(param_dtype, momentum, name=name)),), rounding)

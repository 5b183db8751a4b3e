"""lion_core's state formats: the counter-based hash, stochastic rounding to bfloat16, 8-bit momentum.

Each operation is checked against its float64 reference (``reference_*``), on odd and zero sizes.
Statistical properties (uniform bits, unbiased rounding) are measured over fixed seeds with a stated
bound of five standard deviations: the inputs are fixed, so a test either always passes or always
fails.
"""

from __future__ import annotations

import numpy as np
import pytest

import lion_core
from lion_core import INT8, BlockwiseInt8, counter_hash, derive_seed
from lion_core._formats import mix32
from lion_core._formats import reference_stochastic_round_bfloat16, stochastic_round_bfloat16
from lion_core.reference import (
    Int8State,
    load_momentum,
    reference_lion_stored,
    reference_step,
    round_bfloat16_nearest,
    store_momentum,
    store_param,
)
from tests.cases import assert_exact

SIZES = (0, 1, 255, 257, 4097)


def _bits(size: int, seed: int = 3, step: int = 0) -> np.ndarray:
    return counter_hash(seed, step, np.arange(size, dtype=np.uint32))


# --- the hash -----------------------------------------------------------------------------------


def test_hash_is_the_same_on_uint32_masked_int64_and_python_ints():
    index = np.arange(1000, dtype=np.uint32)
    as_uint32 = counter_hash(np.uint32(77), np.uint32(12), index)
    as_int64 = counter_hash(np.int64(77), np.int64(12), index.astype(np.int64))  # how torch runs it
    as_python = np.array([counter_hash(77, 12, i) for i in range(1000)], dtype=np.uint64)
    assert as_uint32.dtype == np.uint32
    assert_exact(as_int64, as_uint32.astype(np.int64), what="int64 vs uint32")
    assert_exact(as_python, as_uint32.astype(np.uint64), what="python vs uint32")


def test_keyed_hash_is_counter_hash_from_the_step_key():
    """The kernels' contract passes ``step_key(derive_seed(...), step)``; ``keyed_hash`` finishes it."""
    index = np.arange(1000, dtype=np.uint32)
    for seed, step in [(0, 0), (77, 12), (2**32 - 1, 2**31 + 5)]:
        key = lion_core.step_key(seed, step)
        assert isinstance(key, int) and 0 <= key < 2**32
        expected = counter_hash(np.uint32(seed), np.uint32(step), index)
        assert_exact(lion_core.keyed_hash(key, index), expected, what="python key")
        assert_exact(lion_core.keyed_hash(np.int64(key), index.astype(np.int64)), expected.astype(np.int64),
                     what="int64 key")


def test_mix32_is_a_bijection_on_a_range():
    x = np.arange(1 << 16, dtype=np.uint32) * np.uint32(65537)
    assert np.unique(mix32(x)).size == x.size


def test_hash_bits_are_uniform():
    """Chi-square of the top 8 bits over 2**16 draws: 255 degrees of freedom, mean 255, sd 22.6."""
    for seed, step in [(0, 0), (1, 0), (0, 1), (12345, 999)]:
        top = _bits(1 << 16, seed, step) >> 24
        counts = np.bincount(top.astype(np.int64), minlength=256)
        expected = (1 << 16) / 256
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        assert chi2 < 255 + 5 * 22.6, (seed, step, chi2)


def test_steps_streams_and_tensors_draw_different_bits():
    base = _bits(4096, seed=5, step=0)
    assert np.mean(base == _bits(4096, seed=5, step=1)) < 0.01
    assert np.mean(base == _bits(4096, seed=6, step=0)) < 0.01
    keys = {derive_seed(5, s, t) for s in (lion_core.PARAM_STREAM, lion_core.MOMENTUM_STREAM) for t in range(8)}
    assert len(keys) == 16


# --- stochastic rounding to bfloat16 ------------------------------------------------------------


def _awkward_float32(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(size) * np.exp2(rng.integers(-140, 120, size))
    x = x.astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -3e-39, 3.3e38, -3.39e38], np.float32)
    x[: min(size, special.size)] = special[: min(size, special.size)]
    return x


@pytest.mark.parametrize("size", SIZES + (100_000,))
def test_stochastic_rounding_matches_its_float64_reference(size):
    x = _awkward_float32(size)
    random = _bits(size)
    got = stochastic_round_bfloat16(x, random)
    assert_exact(got.astype(np.float64), reference_stochastic_round_bfloat16(x, random), what="sr bf16")


def test_stochastic_rounding_lands_on_a_neighbour():
    x = _awkward_float32(50_000)
    got = stochastic_round_bfloat16(x, _bits(x.size))
    finite = np.isfinite(x)
    toward_zero = x.view(np.uint32) & np.uint32(0xFFFF0000)
    away = (toward_zero + np.uint32(0x10000)).view(np.float32)  # the next bfloat16 away from zero
    toward_zero = toward_zero.view(np.float32)
    assert np.all((got[finite] == toward_zero[finite]) | (got[finite] == away[finite]))
    assert np.all(got[np.isnan(x)] != got[np.isnan(x)]) and np.all(got[np.isinf(x)] == x[np.isinf(x)])


def test_stochastic_rounding_is_unbiased_over_seeds():
    """Mean over 4096 seeds within 5 standard deviations of the Bernoulli rounding, per value."""
    x = np.array([1.0 + 2.0**-10, 1.0 + 3 * 2.0**-9, -0.3, 7.77e-3, 1e-40, 3.0e5], np.float32)
    n = 4096
    draws = np.stack([stochastic_round_bfloat16(x, _bits(x.size, seed=s)) for s in range(n)]).astype(np.float64)
    lo = (x.view(np.uint32) & 0xFFFF0000).view(np.float32).astype(np.float64)
    hi = np.where(draws.max(0) != lo, draws.max(0), draws.min(0))
    gap = np.abs(np.where(hi != lo, hi - lo, 0.0))
    frac = np.abs(x.astype(np.float64) - lo) / np.where(gap > 0, gap, 1.0)
    sigma = gap * np.sqrt(frac * (1 - frac) / n)
    assert np.all(np.abs(draws.mean(0) - x.astype(np.float64)) <= 5 * sigma + 1e-300), (draws.mean(0), x)
    assert np.all(gap > 0)  # every value was rounded both ways at least once


def test_nearest_bfloat16_matches_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = _awkward_float32(100_000)
    assert_exact(round_bfloat16_nearest(x), x.astype(ml_dtypes.bfloat16).astype(np.float32), what="bf16")


# --- 8-bit blockwise momentum -------------------------------------------------------------------


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize(
    "shape", [(0,), (1,), (), (255,), (257,), (4097,), (3, 1, 5), (2, 0, 3), (3, 512), (0, 256), (2, 1, 768)]
)
def test_int8_round_trip_error_is_within_one_code_step(shape, rounding):
    fmt = BlockwiseInt8(rounding=rounding)
    m = (np.random.default_rng(1).standard_normal(shape) * 1e-3).astype(np.float32)
    codes, scales = fmt.encode(m, _bits(m.size).reshape(shape), xp=np)
    assert codes.dtype == np.int8 and codes.shape == m.shape
    assert scales.dtype == np.float32 and scales.shape == (fmt.blocks(m.size),)
    assert np.all(np.abs(codes.astype(np.int64)) <= 127)
    back = fmt.decode(codes, scales, xp=np)
    step = np.repeat(scales.astype(np.float64), fmt.block_size)[: m.size].reshape(shape)
    bound = (0.5 if rounding == "nearest" else 1.0) * step * (1 + 2.0**-20)
    assert np.all(np.abs(back.astype(np.float64) - m) <= bound)
    # a decoded value is a code times the scale, so encoding it again changes nothing (nearest)
    if rounding == "nearest":
        again = fmt.encode(back, xp=np)
        assert_exact(again[0], codes, what="codes")


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("shape", [(size,) for size in SIZES] + [(3, 512), (5, 256)])
def test_int8_encode_in_float64_is_its_reference(shape, rounding):
    """Both layouts (blocks along a last axis of whole blocks, or the padded flat array) are the
    reference's flat blocks."""
    fmt = BlockwiseInt8(rounding=rounding)
    size = int(np.prod(shape))
    m = np.random.default_rng(2).standard_normal(size)
    m[: size // 3] *= 1e-4
    m = m.reshape(shape)
    codes, scales = fmt.encode(m, _bits(size).reshape(shape), xp=np)
    ref_codes, ref_scales = fmt.reference_encode(m, _bits(size))
    assert_exact(codes, ref_codes, what="codes")
    assert_exact(scales, ref_scales, what="scales")
    assert_exact(fmt.decode(codes, scales, xp=np, dtype=np.float64), fmt.reference_decode(codes, scales),
                 what="decoded")


def test_int8_float32_encode_is_within_one_code_of_the_float64_reference():
    """float32 rounds ``m * (1/s)`` once more than float64: a code may move by one, rarely."""
    m = np.random.default_rng(3).standard_normal(100_000).astype(np.float32)
    codes, scales = INT8.encode(m, _bits(m.size), xp=np)
    ref_codes, ref_scales = INT8.reference_encode(m, _bits(m.size))
    assert_exact(scales, ref_scales, what="scales")
    diff = np.abs(codes.astype(np.int64) - ref_codes)
    assert diff.max() <= 1 and diff.mean() < 1e-3


def test_int8_non_finite_block_decodes_to_nan_and_leaves_other_blocks():
    m = np.random.default_rng(4).standard_normal(3 * 256).astype(np.float32)
    m[300], m[600] = np.nan, np.inf
    with np.errstate(invalid="ignore"):  # inf * 0 and NaN arithmetic, as intended
        codes, scales = INT8.encode(m, _bits(m.size), xp=np)
        back = INT8.decode(codes, scales, xp=np)
    assert np.isfinite(back[:256]).all()
    assert np.isnan(back[256:]).all()
    zero = INT8.encode(np.zeros(300, np.float32), _bits(300), xp=np)
    assert_exact(INT8.decode(*zero, xp=np), np.zeros(300), what="zeros")


def test_int8_stochastic_codes_are_unbiased_over_seeds():
    m = np.random.default_rng(5).standard_normal(512).astype(np.float32)
    n = 2048
    draws = np.stack([INT8.decode(*INT8.encode(m, _bits(m.size, seed=s), xp=np), xp=np) for s in range(n)])
    _, scales = INT8.encode(m, _bits(m.size), xp=np)
    step = np.repeat(scales.astype(np.float64), 256)
    # a Bernoulli between two codes one step apart has standard deviation <= step / 2
    assert np.all(np.abs(draws.mean(0) - m) <= 5 * step * 0.5 / np.sqrt(n) + 1e-7)


def test_nearest_codes_freeze_a_small_momentum_and_stochastic_codes_follow_it():
    """The stall the issue warns of: 1% of a small gradient is under half a code step."""
    g = np.full(256, 0.1, np.float32)
    g[0] = 10.0  # its momentum, already at 10, sets the block's scale: one code step is 10 / 127
    start = np.zeros(256, np.float32)
    start[0] = 10.0
    followed = {}
    for rounding in ("nearest", "stochastic"):
        fmt = BlockwiseInt8(rounding=rounding)
        codes, scales = fmt.encode(start, _bits(256, seed=99), xp=np)
        for step in range(300):
            m = fmt.decode(codes, scales, xp=np)
            m = np.float32(0.99) * m + np.float32(0.01) * g
            codes, scales = fmt.encode(m, _bits(256, step=step), xp=np)
        followed[rounding] = float(fmt.decode(codes, scales, xp=np)[1:].mean())
    exact = 0.1 * (1 - 0.99**300)
    assert followed["nearest"] == 0.0
    assert abs(followed["stochastic"] - exact) < 0.1 * exact


# --- declarations and their errors --------------------------------------------------------------


def test_state_spec_declares_formats_and_bytes():
    spec = lion_core.state_spec("float32", "int8")
    assert spec.momentum is INT8 and spec.param_rounding == "nearest" and spec.needs_seed
    assert spec.bytes_per_element(1 << 20) <= 1.03
    assert lion_core.state_spec("float32").bytes_per_element(10) == 4
    assert lion_core.state_spec("bfloat16").bytes_per_element(10) == 2
    sr = lion_core.state_spec("bfloat16", "float32", stochastic_rounding=True)
    assert sr.param_rounding == "stochastic" and sr.needs_seed
    assert not lion_core.state_spec("float32", "bfloat16").needs_seed


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: lion_core.momentum_format("float32", "int4"), ValueError,
         r"Invalid `momentum_dtype`: expected None or one of \(.*'int8'\)\. Received: momentum_dtype='int4'"),
        (lambda: lion_core.momentum_format("float32", "int8", name="mu_dtype") and
         lion_core.momentum_format("float32", 8, name="mu_dtype"), TypeError,
         r"Invalid `mu_dtype`: .* Received: mu_dtype=8 of type int"),
        (lambda: lion_core.momentum_format("complex64", "int8"), RuntimeError,
         r"`momentum_dtype` cannot be set for complex parameters"),
        (lambda: lion_core.check_seed(-1), ValueError, r"Invalid `seed`: expected 0 <= seed < 2\*\*32"),
        (lambda: lion_core.check_seed(1.5), TypeError, r"Invalid `seed`: .* of type float"),
        (lambda: BlockwiseInt8(rounding="up"), ValueError, r"Invalid `rounding`: expected one of"),
        (lambda: BlockwiseInt8(block_size=0), ValueError, r"Invalid `block_size`"),
        (lambda: lion_core.state_spec("bfloat16", stochastic_rounding=1), TypeError,
         r"Invalid `stochastic_rounding`"),
    ],
)
def test_format_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_float_momentum_dtypes_are_unchanged_for_the_adapters():
    """``check_momentum_dtype`` (used by lion_torch and lion_keras) still refuses "int8"."""
    with pytest.raises(ValueError, match="momentum_dtype"):
        lion_core.check_momentum_dtype("int8")


# --- the reference with formats -----------------------------------------------------------------


def test_reference_stored_runs_step_then_store():
    rng = np.random.default_rng(6)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(300,), (), (0,)]]
    grads = [[rng.standard_normal(np.shape(p)).astype(np.float32) for p in params] for _ in range(4)]
    grads[2][1] = None
    spec = lion_core.state_spec("bfloat16", "int8", stochastic_rounding=True)
    out = reference_lion_stored(params, grads, spec=spec, param_dtype="bfloat16", seed=9, lr=1e-2,
                                weight_decay=0.1)
    # replay by hand with the same pieces; a tensor's bits count its own updates (tensor 1 skips one)
    p = [store_param(x, "bfloat16") for x in params]
    stored = [store_momentum(np.zeros(np.shape(x), np.float32), INT8)[0] for x in params]
    for i in range(len(params)):
        own_steps = [row[i] for row in grads if row[i] is not None]
        for step, g in enumerate(own_steps):
            m = load_momentum(stored[i], INT8)
            new_p, new_m = reference_step(p[i], g, m, lr=1e-2, weight_decay=0.1, dtype=np.float32)
            p[i] = store_param(new_p, "bfloat16", rounding="stochastic", seed=9, step=step, tensor=i)
            stored[i] = store_momentum(new_m, INT8, seed=9, step=step, tensor=i)[0]
    for i in range(len(params)):
        assert_exact(out.params[i], p[i], what=f"param {i}")
        assert isinstance(out.stored[i], Int8State)
        assert_exact(out.stored[i].codes, stored[i].codes, what=f"codes {i}")
        assert_exact(out.stored[i].scales, stored[i].scales, what=f"scales {i}")
        assert_exact(out.params[i], round_bfloat16_nearest(out.params[i]), what="bf16-representable")


def test_resolve_seed_draws_once_only_when_none_is_given():
    calls = []

    def draw() -> int:
        calls.append(1)
        return 2**32 - 1

    assert lion_core.resolve_seed(7, draw) == 7 and calls == []
    assert lion_core.resolve_seed(None, draw) == 2**32 - 1 and calls == [1]
    with pytest.raises(ValueError, match=r"Invalid `seed`: expected 0 <= seed < 2\*\*32. Received: seed=4294967296"):
        lion_core.resolve_seed(None, lambda: 2**32)

"""Comparison helpers shared by every test suite.

The oracle is always ``lion_core.reference``; these helpers only compare, and when a comparison fails
they say where (the first mismatching indices and values), not just "not close".
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
    rows = [f"  at {tuple(int(i) for i in ix)}: got {actual[tuple(ix)]!r}, expected {expected[tuple(ix)]!r}" for ix in index]
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
    a64, e64 = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64), e.astype(
        np.complex128 if np.iscomplexobj(e) else np.float64
    )
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
    if bad.mean() > max_fraction:
        raise AssertionError(f"budget {max_fraction:.2%} exceeded. " + _describe(a, e, bad, what))


def margin_gradient(
    rng: np.random.Generator, momentum: np.ndarray, *, beta1: float, margin: float = 0.05
) -> np.ndarray:
    """Draws a gradient for which ``|beta1 * m + (1 - beta1) * g| >= margin`` everywhere.

    With the interpolation far from zero, every path must agree on its sign, so parameters can be
    compared elementwise at tight tolerance even in low precision.
    """
    target = rng.uniform(margin, 1.0, size=momentum.shape) * rng.choice([-1.0, 1.0], size=momentum.shape)
    return (target - beta1 * momentum) / (1 - beta1)

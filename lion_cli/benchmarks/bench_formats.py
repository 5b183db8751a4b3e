"""Chooses the 8-bit momentum's code, block size and rounding by measurement (NumPy, a minute on a CPU).

A small task: a 32-256-10 tanh MLP (10.8k parameters) trained with Lion (lr 3e-3, beta1 0.9,
beta2 0.99, weight decay 0.1, batch 128, 1000 steps) on a synthetic 10-class problem labelled by
a random teacher network (fresh inputs every step, a fixed validation set), the parameters in float32. Each row stores the momentum differently and
reports, against the float32-momentum run:

* ``sign agree``: over all steps and elements, how often the update's sign equals the one a float32
  momentum gives for the same gradients (a float32 shadow momentum is fed the row's own gradients,
  so the figure isolates the storage, not a diverging trajectory);
* ``frozen``: how often a stored momentum entry did not move at all in a step although ``g != m``
  (the increment ``(1 - beta2)(g - m)`` was rounded away: the stall the issue warns of);
* ``m rel err``: the shadow momentum's distance to the stored one at the end, ``|m - m32| / |m32|``;
* ``final loss``: the validation loss after the last step (float32 momentum: the first row);
* ``small m err``: ``small_momentum_probe``, the stall on a block where one coordinate dominates.

Codes compared (each with one float32 scale, the block's largest magnitude, per block): ``linear``
(``q = m / s * 127``, what ``lion_core.INT8`` stores), ``dynamic`` (127 magnitudes spaced
geometrically from 1 down to 1e-4, plus 0: fine near zero like bitsandbytes' dynamic code) and
``e4m3`` (the finite float8 e4m3 values, the block's largest mapped to 448). Each is rounded to the
nearest code, or stochastically between the two neighbours with ``lion_core.counter_hash`` bits.
Rows with bfloat16 parameters (nearest; stochastic rounding; stochastic with int8 momentum), at
this learning rate and at 3e-4, show the parameter's rounding on the same task.

Usage: ``python benchmarks/bench_formats.py`` (``--steps`` to shorten). The figures are in
docs/low-memory.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import lion_core
from lion_core import BlockwiseInt8, counter_hash, stochastic_round_bfloat16

SIZES = (32, 256, 10)


def _bf16_nearest(x: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def _table(name: str) -> np.ndarray:
    """Sorted code values in [-1, 1] (255 of them, symmetric, with 0)."""
    if name == "dynamic":
        magnitudes = np.geomspace(1.0, 1e-4, 127)
    elif name == "e4m3":
        import ml_dtypes

        every = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
        magnitudes = np.unique(np.abs(every[np.isfinite(every)]))
        magnitudes = magnitudes[magnitudes > 0] / magnitudes.max()
    else:
        raise ValueError(name)
    return np.unique(np.concatenate([-magnitudes, [0.0], magnitudes]))


class TableCode:
    """A blockwise code given by a table of values: nearest or stochastic between neighbours."""

    def __init__(self, name: str, block: int, rounding: str):
        self.table, self.block, self.rounding = _table(name), block, rounding

    def roundtrip(self, m: np.ndarray, bits: np.ndarray) -> np.ndarray:
        flat = m.reshape(-1).astype(np.float64)
        n = flat.size
        pad = -n % self.block
        blocks = np.concatenate([flat, np.zeros(pad)]).reshape(-1, self.block)
        scale = np.abs(blocks).max(axis=1, keepdims=True).astype(np.float32).astype(np.float64)
        y = blocks / np.where(scale == 0, 1.0, scale)
        hi = np.clip(np.searchsorted(self.table, y), 1, self.table.size - 1)
        lo_v, hi_v = self.table[hi - 1], self.table[hi]
        if self.rounding == "nearest":
            q = np.where(y - lo_v <= hi_v - y, lo_v, hi_v)
        else:
            u = np.concatenate([(bits.reshape(-1) >> 8) / 2.0**24, np.zeros(pad)]).reshape(y.shape)
            q = np.where(u < (y - lo_v) / (hi_v - lo_v), hi_v, lo_v)
        return (q * scale).reshape(-1)[:n].reshape(m.shape).astype(np.float32)


class LinearCode:
    """``lion_core``'s ``BlockwiseInt8`` (linear absmax), through its own encode and decode."""

    def __init__(self, block: int, rounding: str):
        self.format = BlockwiseInt8(block_size=block, rounding=rounding)

    def roundtrip(self, m: np.ndarray, bits: np.ndarray) -> np.ndarray:
        codes, scales = self.format.encode(m, bits, xp=np)
        return self.format.decode(codes, scales, xp=np)


def make_task(seed: int = 0):
    """A teacher network labels fresh inputs (so nothing overfits), a fixed validation set, an init."""
    rng = np.random.default_rng(seed)
    teacher = [rng.standard_normal((32, 64)) / np.sqrt(32), rng.standard_normal((64, 10)) * 2]

    def sample(generator: np.random.Generator, n: int):
        x = generator.standard_normal((n, 32)).astype(np.float32)
        return x, np.argmax(np.tanh(x @ teacher[0]) @ teacher[1], axis=1)

    init = [
        (rng.standard_normal((32, 256)) / np.sqrt(32)).astype(np.float32), np.zeros(256, np.float32),
        (rng.standard_normal((256, 10)) / 16).astype(np.float32), np.zeros(10, np.float32),
    ]
    return sample, sample(np.random.default_rng(seed + 100), 4096), init


def loss_and_grads(params, x, labels):
    w1, b1, w2, b2 = params
    h = np.tanh(x @ w1 + b1)
    logits = h @ w2 + b2
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(labels)), labels] + 1e-12))
    d = p
    d[np.arange(len(labels)), labels] -= 1
    d /= len(labels)
    gw2, gb2 = h.T @ d, d.sum(0)
    dh = (d @ w2.T) * (1 - h * h)
    return float(loss), [(x.T @ dh).astype(np.float32), dh.sum(0).astype(np.float32),
                         gw2.astype(np.float32), gb2.astype(np.float32)]


def run(code, *, param_rounding: str = "float32", steps: int, lr: float = 3e-3, seed: int = 0):
    sample, (vx, vlabels), init = make_task()
    if param_rounding != "float32":
        init = [_bf16_nearest(p) for p in init]
    params = [p.copy() for p in init]
    stored = [np.zeros_like(p) for p in params]   # the momentum as the row stores it
    shadow = [np.zeros_like(p) for p in params]   # float32 momentum fed the same gradients
    rng = np.random.default_rng(1)
    agree = total = frozen = 0
    b1, b2, wd = np.float32(0.9), np.float32(0.99), np.float32(0.1)
    for step in range(steps):
        _, grads = loss_and_grads(params, *sample(rng, 128))
        for i, g in enumerate(grads):
            direction = np.sign(b1 * stored[i] + (1 - b1) * g)
            agree += int(np.sum(direction == np.sign(b1 * shadow[i] + (1 - b1) * g)))
            total += g.size
            new_p = params[i] * (1 - np.float32(lr) * wd) - np.float32(lr) * direction
            index = np.arange(g.size, dtype=np.uint32).reshape(g.shape)
            if param_rounding == "stochastic":
                key = lion_core.derive_seed(seed, lion_core.PARAM_STREAM, i)
                new_p = stochastic_round_bfloat16(new_p, counter_hash(key, step, index))
            elif param_rounding == "nearest":
                new_p = _bf16_nearest(new_p)
            params[i] = new_p.astype(np.float32)
            m = b2 * stored[i] + (1 - b2) * g
            if code is not None:
                key = lion_core.derive_seed(seed, lion_core.MOMENTUM_STREAM, i)
                m = code.roundtrip(m, counter_hash(key, step, index))
            frozen += int(np.sum((m == stored[i]) & (g != stored[i])))
            stored[i] = m
            shadow[i] = b2 * shadow[i] + (1 - b2) * g
    val, _ = loss_and_grads(params, vx, vlabels)
    num = sum(float(np.sum((s - m) ** 2)) for s, m in zip(stored, shadow))
    den = sum(float(np.sum(m**2)) for m in shadow)
    return {"agree": agree / total, "frozen": frozen / total, "m_err": np.sqrt(num / den), "loss": val}


def small_momentum_probe(code) -> float:
    """Relative error of a small, consistent momentum stored next to a large one after 300 steps.

    One block: element 0 has momentum and gradient 10 (setting the scale: a code step is 10/127),
    the 255 others a constant gradient 0.1, whose exact momentum after 300 steps is
    ``0.1 (1 - 0.99**300)``; 1% of 0.1 is far below half a code step, so round-to-nearest codes
    keep them at 0 (error 100%), as in a fine-tuning run where a few coordinates dominate a block.
    """
    g = np.full(256, 0.1, np.float32)
    g[0] = 10.0
    m = np.zeros(256, np.float32)
    m[0] = 10.0
    index = np.arange(256, dtype=np.uint32)
    m = code.roundtrip(m, counter_hash(7, 1 << 20, index))
    for step in range(300):
        m = code.roundtrip(np.float32(0.99) * m + np.float32(0.01) * g, counter_hash(7, step, index))
    exact = 0.1 * (1 - 0.99**300)
    return abs(float(m[1:].mean()) - exact) / exact


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args(argv)
    rows = [("float32 momentum", None, "float32", 3e-3)]
    for block in (64, 256, 2048):
        for rounding in ("nearest", "stochastic"):
            rows.append((f"linear, block {block}, {rounding}", LinearCode(block, rounding), "float32", 3e-3))
    for name in ("dynamic", "e4m3"):
        for rounding in ("nearest", "stochastic"):
            rows.append((f"{name}, block 256, {rounding}", TableCode(name, 256, rounding), "float32", 3e-3))
    for lr in (3e-3, 3e-4):
        rows += [
            (f"lr {lr:g}: fp32 params, fp32 momentum", None, "float32", lr),
            (f"lr {lr:g}: bf16 params nearest, fp32 momentum", None, "nearest", lr),
            (f"lr {lr:g}: bf16 params stochastic, fp32 momentum", None, "stochastic", lr),
            (f"lr {lr:g}: bf16 params stochastic, int8 momentum", LinearCode(256, "stochastic"), "stochastic", lr),
        ]
    print(f"steps={args.steps}, lr=3e-3 unless named, beta1=0.9, beta2=0.99, weight_decay=0.1, batch 128")
    print(f"| {'momentum (params float32 unless named)':<50} | sign agree | frozen | m rel err | final loss | small m err |")
    print(f"|{'-' * 52}|-----------:|-------:|----------:|-----------:|------------:|")
    for label, code, param_rounding, lr in rows:
        start = time.perf_counter()
        out = run(code, param_rounding=param_rounding, steps=args.steps, lr=lr)
        probe = "-" if code is None else f"{small_momentum_probe(code):.1%}"
        print(f"| {label:<50} | {out['agree']:10.4%} | {out['frozen']:6.2%} | {out['m_err']:9.4f} | {out['loss']:10.4f} | {probe:>11} |"
              f"  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

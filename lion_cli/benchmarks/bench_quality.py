"""Quality of low-memory Lion: a char-level transformer trained with four parameter and momentum formats.

The task (issue 12): a small byte-level transformer language model (2 pre-LayerNorm blocks, width 64,
4 heads, context 64, 135k parameters) trained on the standard library's own top-level ``.py`` files,
read from ``sysconfig.get_paths()["stdlib"]`` (no downloads). The files are split into training and
validation text by a seeded permutation (10% of the files held out); every configuration and every
framework sees the same initial weights (drawn with NumPy), the same batches and the same validation
windows. Four configurations, all with Lion (betas 0.9/0.99, no weight decay, constant lr):

1. float32 parameters, float32 momentum;
2. bfloat16 parameters, float32 momentum, the update added with round-to-nearest (the host's own
   addition);
3. bfloat16 parameters with stochastic rounding, float32 momentum;
4. (3) with the momentum stored in 8 bits (``lion_core.INT8``).

The forward and backward passes run in float32 on the parameters cast up at use, so the runs differ
only in how the parameters and the momentum are stored (gradients come back in the parameter's
dtype). The learning rate is 1e-4: an update of 1e-4 is under half a bfloat16 ulp for every
parameter of magnitude at least 2**-5 (half an ulp there is 2**-13 = 1.2e-4), so with
round-to-nearest those parameters never move (LayerNorm gains at 1.0, most weights initialised with
standard deviation 1/sqrt(fan_in) = 0.125 or 0.0625), while stochastic rounding moves them in
expectation.

Reported per configuration: the final validation loss (mean cross-entropy in nats per byte), its
ratio to (1)'s, the fraction of parameter elements still equal to their initial value at the end,
and for (4) how often the update's sign agrees with the sign a float32 momentum gives: a float32
shadow momentum is fed the same gradients as the 8-bit one, so the figure isolates the storage (on
Optax the update's own sign, ``-sign(update)`` with no weight decay; on PyTorch and Keras the sign of
``b1 * m + (1 - b1) * g`` with ``m`` decoded from the 8-bit state before the step). One plot of the
four validation curves per framework is written to ``--out`` (PNG with matplotlib, else SVG).

Usage: ``python benchmarks/bench_quality.py [--frameworks optax,torch,keras] [--steps N]``; ``--quick``
is a seconds-long smoke run on a smaller model. Each framework runs on ``--threads`` threads (default
1). The figures are in docs/low-memory.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

FRAMEWORKS = ("optax", "torch", "keras")


class Config(NamedTuple):
    """How the parameters and the momentum are stored."""

    name: str
    bfloat16: bool  # parameters stored in bfloat16 (float32 otherwise)
    stochastic: bool  # the update added with stochastic rounding (bfloat16 only)
    int8: bool  # momentum in 8 bits (float32 otherwise)


CONFIGS = (
    Config("(1) float32 Lion", False, False, False),
    Config("(2) bf16 params, nearest rounding", True, False, False),
    Config("(3) bf16 params, stochastic rounding", True, True, False),
    Config("(4) (3) + int8 momentum", True, True, True),
)


class Shape(NamedTuple):
    """The model: a byte-level pre-LayerNorm transformer with learned positions and GELU (tanh) MLPs."""

    vocab: int = 256
    context: int = 64
    width: int = 64
    heads: int = 4
    layers: int = 2
    hidden: int = 256


class Settings(NamedTuple):
    """The training run, the same for every configuration and framework."""

    steps: int = 1500
    batch: int = 32
    lr: float = 1e-4
    b1: float = 0.9
    b2: float = 0.99
    eval_every: int = 100
    eval_batches: int = 8
    seed: int = 0


QUICK = (Shape(context=16, width=16, heads=2, layers=1, hidden=32),
         Settings(steps=8, batch=4, eval_every=4, eval_batches=1))


class Data(NamedTuple):
    """Training batches (token windows for every step) and the fixed validation windows."""

    train_x: np.ndarray  # (steps, batch, context) uint8
    train_y: np.ndarray
    val_x: np.ndarray  # (eval_batches, batch, context)
    val_y: np.ndarray
    description: str


class Result(NamedTuple):
    """One configuration's run on one framework."""

    curve: list[tuple[int, float]]  # (step, validation loss), step 0 first
    sign_agree: float | None  # (4) only: fraction of update signs equal to the float32 momentum's
    unchanged: float  # fraction of parameter elements equal to their initial value at the end
    seconds: float


class NotRun(NamedTuple):
    """A configuration the framework's adapter cannot run (yet): the reason, from its own error."""

    reason: str


# ------------------------------------------------------------------------------------------------
# Data, model shapes and initial weights: NumPy, shared by every framework
# ------------------------------------------------------------------------------------------------


def load_text(seed: int, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray, str]:
    """The standard library's top-level ``.py`` files as bytes, split by file into train and validation."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(folder.glob("*.py"))
    if len(files) < 2:
        raise SystemExit(f"bench_quality: found {len(files)} .py files in {folder}; "
                         "it needs the standard library's source")
    order = np.random.default_rng(seed).permutation(len(files))
    held_out = {int(i) for i in order[: max(1, round(len(files) * val_fraction))]}

    def join(indices: list[int]) -> np.ndarray:
        return np.frombuffer(b"\n".join(files[i].read_bytes() for i in indices), dtype=np.uint8)

    train = join([i for i in range(len(files)) if i not in held_out])
    val = join(sorted(held_out))
    where = f"{len(files) - len(held_out)} + {len(held_out)} files of {folder}"
    return train, val, f"{train.size:,} training bytes, {val.size:,} validation bytes ({where})"


def make_data(shape: Shape, settings: Settings) -> Data:
    """Every step's training windows and the validation windows, drawn once from seeded generators."""
    train, val, description = load_text(settings.seed)
    span = np.arange(shape.context + 1)

    def windows(text: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        starts = rng.integers(0, text.size - shape.context - 1, size=(count, settings.batch))
        tokens = text[starts[..., None] + span]
        return tokens[..., :-1], tokens[..., 1:]

    train_x, train_y = windows(train, settings.steps, np.random.default_rng([settings.seed, 1]))
    val_x, val_y = windows(val, settings.eval_batches, np.random.default_rng([settings.seed, 2]))
    return Data(train_x, train_y, val_x, val_y, description)


def parameter_shapes(shape: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """The model's parameters, in the order every framework holds them."""
    d, h = shape.width, shape.hidden
    out: list[tuple[str, tuple[int, ...]]] = [("tok_emb", (shape.vocab, d)), ("pos_emb", (shape.context, d))]
    for i in range(shape.layers):
        block = {"ln1_g": (d,), "ln1_b": (d,), "qkv_w": (d, 3 * d), "qkv_b": (3 * d,), "proj_w": (d, d),
                 "proj_b": (d,), "ln2_g": (d,), "ln2_b": (d,), "fc_w": (d, h), "fc_b": (h,), "out_w": (h, d),
                 "out_b": (d,)}
        out += [(f"b{i}_{name}", dims) for name, dims in block.items()]
    return out + [("lnf_g", (d,)), ("lnf_b", (d,)), ("head_w", (d, shape.vocab)), ("head_b", (shape.vocab,))]


def initial_parameters(shape: Shape, seed: int) -> dict[str, np.ndarray]:
    """Float32 weights: N(0, 1/fan_in) matrices and embeddings, LayerNorm gains 1, biases 0."""
    rng = np.random.default_rng([seed, 0])
    out = {}
    for name, dims in parameter_shapes(shape):
        if name.endswith("_g"):
            value = np.ones(dims)
        elif len(dims) == 1:
            value = np.zeros(dims)
        else:
            fan_in = dims[1] if name.endswith("_emb") else dims[0]
            value = rng.standard_normal(dims) / math.sqrt(fan_in)
        out[name] = value.astype(np.float32)
    return out


def _stored(init: dict[str, np.ndarray], bfloat16: bool) -> dict[str, np.ndarray]:
    """The initial weights as stored (rounded to bfloat16 where the configuration stores them so)."""
    if not bfloat16:
        return init
    import ml_dtypes

    return {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in init.items()}


def _unchanged(final: dict[str, np.ndarray], start: dict[str, np.ndarray]) -> float:
    equal = sum(int(np.sum(final[k] == start[k])) for k in start)
    return equal / sum(v.size for v in start.values())


# ------------------------------------------------------------------------------------------------
# Optax
# ------------------------------------------------------------------------------------------------


def _jax_forward(p: dict[str, Any], x: Any, shape: Shape) -> Any:
    import jax
    import jax.numpy as jnp

    p = {k: v.astype(jnp.float32) for k, v in p.items()}
    batch, length = x.shape
    heads, width = shape.heads, shape.width

    def norm(h: Any, g: Any, b: Any) -> Any:
        mean = jnp.mean(h, -1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), -1, keepdims=True)
        return (h - mean) * jax.lax.rsqrt(var + 1e-5) * g + b

    h = p["tok_emb"][x] + p["pos_emb"][:length]
    causal = jnp.tril(jnp.ones((length, length), bool))
    for i in range(shape.layers):
        a = norm(h, p[f"b{i}_ln1_g"], p[f"b{i}_ln1_b"]) @ p[f"b{i}_qkv_w"] + p[f"b{i}_qkv_b"]
        q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(0, 2, 1, 3)
                   for t in jnp.split(a, 3, axis=-1))
        scores = jnp.where(causal, q @ k.transpose(0, 1, 3, 2) / math.sqrt(width // heads), -jnp.inf)
        a = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
        h = h + a @ p[f"b{i}_proj_w"] + p[f"b{i}_proj_b"]
        m = norm(h, p[f"b{i}_ln2_g"], p[f"b{i}_ln2_b"]) @ p[f"b{i}_fc_w"] + p[f"b{i}_fc_b"]
        h = h + jax.nn.gelu(m, approximate=True) @ p[f"b{i}_out_w"] + p[f"b{i}_out_b"]
    return norm(h, p["lnf_g"], p["lnf_b"]) @ p["head_w"] + p["head_b"]


def run_optax(config: Config, data: Data, shape: Shape, settings: Settings,
              init: dict[str, np.ndarray]) -> Result | NotRun:
    import jax
    import jax.numpy as jnp
    import optax

    import lion_optax

    dtype = jnp.bfloat16 if config.bfloat16 else jnp.float32
    params = {k: jnp.asarray(v).astype(dtype) for k, v in init.items()}
    mu_dtype = "int8" if config.int8 else jnp.float32
    tx = lion_optax.lion(settings.lr, settings.b1, settings.b2, mu_dtype=mu_dtype, weight_decay=0.0,
                         seed=settings.seed)
    state = tx.init(params)
    shadow = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params) if config.int8 else None
    b1, b2 = settings.b1, settings.b2

    def loss_fn(p: Any, x: Any, y: Any) -> Any:
        return optax.softmax_cross_entropy_with_integer_labels(_jax_forward(p, x, shape), y).mean()

    @jax.jit
    def step(params: Any, state: Any, shadow: Any, x: Any, y: Any) -> Any:
        grads = jax.grad(loss_fn)(params, x.astype(jnp.int32), y.astype(jnp.int32))
        count = state[0].count  # the updates so far: the parameter rounding's step counter
        updates, state = tx.update(grads, state, params)
        agree = jnp.zeros((), jnp.int32)
        if shadow is not None:  # no weight decay: each update is -lr * sign(c) of the 8-bit momentum
            g32 = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
            c = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, shadow, g32)
            agree = sum(jnp.sum(jnp.sign(-u) == jnp.sign(ci)) for u, ci in
                        zip(jax.tree.leaves(updates), jax.tree.leaves(c)))
            shadow = jax.tree.map(lambda m, g: b2 * m + (1 - b2) * g, shadow, g32)
        if config.stochastic:
            params = lion_optax.apply_updates_stochastic(params, updates, seed=settings.seed, step=count)
        else:
            params = optax.apply_updates(params, updates)
        return params, state, shadow, agree

    evaluate = jax.jit(lambda p, x, y: loss_fn(p, x.astype(jnp.int32), y.astype(jnp.int32)))

    def validation(p: Any) -> float:
        return float(np.mean([float(evaluate(p, x, y)) for x, y in zip(data.val_x, data.val_y)]))

    current = {"params": params, "state": state, "shadow": shadow}

    def train_step(i: int) -> int:
        current["params"], current["state"], current["shadow"], agree = step(
            current["params"], current["state"], current["shadow"], data.train_x[i], data.train_y[i])
        return int(agree)

    return _train(settings, data, init, config, step=train_step,
                  validation=lambda: validation(current["params"]),
                  final=lambda: {k: np.asarray(v.astype(jnp.float32)) for k, v in current["params"].items()})


# ------------------------------------------------------------------------------------------------
# PyTorch
# ------------------------------------------------------------------------------------------------


def _torch_forward(p: dict[str, Any], x: Any, shape: Shape) -> Any:
    import torch.nn.functional as F

    p = {k: v.float() for k, v in p.items()}
    batch, length = x.shape
    heads, width = shape.heads, shape.width
    def norm(h: Any, name: str) -> Any:
        return F.layer_norm(h, (width,), p[f"{name}_g"], p[f"{name}_b"], 1e-5)

    h = p["tok_emb"][x] + p["pos_emb"][:length]
    for i in range(shape.layers):
        a = norm(h, f"b{i}_ln1") @ p[f"b{i}_qkv_w"] + p[f"b{i}_qkv_b"]
        q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2)
                   for t in a.chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + a.transpose(1, 2).reshape(batch, length, width) @ p[f"b{i}_proj_w"] + p[f"b{i}_proj_b"]
        m = norm(h, f"b{i}_ln2") @ p[f"b{i}_fc_w"] + p[f"b{i}_fc_b"]
        h = h + F.gelu(m, approximate="tanh") @ p[f"b{i}_out_w"] + p[f"b{i}_out_b"]
    return norm(h, "lnf") @ p["head_w"] + p["head_b"]


def run_torch(config: Config, data: Data, shape: Shape, settings: Settings,
              init: dict[str, np.ndarray]) -> Result | NotRun:
    import torch
    import torch.nn.functional as F

    import lion_core
    import lion_torch

    dtype = torch.bfloat16 if config.bfloat16 else torch.float32
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy()).to(dtype)) for k, v in init.items()}
    options: dict[str, Any] = {"momentum_dtype": "int8" if config.int8 else torch.float32}
    if config.stochastic:
        options.update(stochastic_rounding=True, seed=settings.seed)
    try:
        optimizer = lion_torch.Lion(list(params.values()), lr=settings.lr, betas=(settings.b1, settings.b2),
                                    weight_decay=0.0, **options)
    except (TypeError, ValueError) as error:  # an option this lion_torch does not have yet
        return NotRun(f"lion_torch.Lion({', '.join(f'{k}={v!r}' for k, v in options.items())}): {error}")
    shadow = {k: torch.zeros(v.shape) for k, v in init.items()} if config.int8 else None
    b1, b2 = settings.b1, settings.b2

    def loss_of(x: np.ndarray, y: np.ndarray) -> Any:
        logits = _torch_forward(params, torch.from_numpy(x.astype(np.int64)), shape)
        targets = torch.from_numpy(y.astype(np.int64)).reshape(-1)
        return F.cross_entropy(logits.reshape(-1, shape.vocab), targets)

    def step(i: int) -> int:
        optimizer.zero_grad(set_to_none=True)
        loss_of(data.train_x[i], data.train_y[i]).backward()
        agree = 0
        if shadow is not None:
            with torch.no_grad():
                for name, p in params.items():
                    g = p.grad.float()
                    state = optimizer.state.get(p, {})
                    if "exp_avg_scales" in state:
                        m = torch.from_numpy(lion_core.INT8.decode(state["exp_avg"].numpy(),
                                                                   state["exp_avg_scales"].numpy(), xp=np))
                    elif "exp_avg" in state:
                        raise RuntimeError(f"momentum_dtype='int8' kept a {state['exp_avg'].dtype} exp_avg")
                    else:
                        m = torch.zeros_like(g)
                    agree += int(torch.sum(torch.sign(b1 * m + (1 - b1) * g)
                                           == torch.sign(b1 * shadow[name] + (1 - b1) * g)))
                    shadow[name].mul_(b2).add_((1 - b2) * g)
        optimizer.step()
        return agree

    @torch.no_grad()
    def validation() -> float:
        return float(np.mean([float(loss_of(x, y)) for x, y in zip(data.val_x, data.val_y)]))

    return _train(settings, data, init, config, step=step, validation=validation,
                  final=lambda: {k: v.detach().float().numpy() for k, v in params.items()})


# ------------------------------------------------------------------------------------------------
# Keras
# ------------------------------------------------------------------------------------------------


def _keras_model(shape: Shape, init: dict[str, np.ndarray], dtype: str) -> Any:
    import keras
    from keras import ops

    class CharTransformer(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.parameter_names = tuple(init)
            for k, v in init.items():
                weight = self.add_weight(shape=v.shape, dtype=dtype, initializer="zeros", name=k)
                weight.assign(ops.cast(v, dtype))

        def parameters(self) -> dict[str, Any]:
            return dict(zip(self.parameter_names, self.trainable_variables, strict=True))

        def call(self, x: Any) -> Any:
            p = {k: ops.cast(w, "float32") for k, w in self.parameters().items()}
            batch, length = ops.shape(x)
            heads, width = shape.heads, shape.width

            def norm(h: Any, g: Any, b: Any) -> Any:
                mean = ops.mean(h, -1, keepdims=True)
                var = ops.mean(ops.square(h - mean), -1, keepdims=True)
                return (h - mean) * ops.rsqrt(var + 1e-5) * g + b

            h = ops.take(p["tok_emb"], ops.cast(x, "int32"), axis=0) + p["pos_emb"][:length]
            causal = ops.tril(ops.ones((length, length), "bool"))
            for i in range(shape.layers):
                a = norm(h, p[f"b{i}_ln1_g"], p[f"b{i}_ln1_b"])
                a = ops.matmul(a, p[f"b{i}_qkv_w"]) + p[f"b{i}_qkv_b"]
                q, k, v = (ops.transpose(ops.reshape(t, (batch, length, heads, width // heads)), (0, 2, 1, 3))
                           for t in ops.split(a, 3, axis=-1))
                scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(width // heads)
                scores = ops.where(causal, scores, -1e9)
                a = ops.matmul(ops.softmax(scores, axis=-1), v)
                a = ops.reshape(ops.transpose(a, (0, 2, 1, 3)), (batch, length, width))
                h = h + ops.matmul(a, p[f"b{i}_proj_w"]) + p[f"b{i}_proj_b"]
                m = ops.matmul(norm(h, p[f"b{i}_ln2_g"], p[f"b{i}_ln2_b"]), p[f"b{i}_fc_w"]) + p[f"b{i}_fc_b"]
                h = h + ops.matmul(ops.gelu(m, approximate=True), p[f"b{i}_out_w"]) + p[f"b{i}_out_b"]
            return ops.matmul(norm(h, p["lnf_g"], p["lnf_b"]), p["head_w"]) + p["head_b"]

    return CharTransformer()


def run_keras(config: Config, data: Data, shape: Shape, settings: Settings,
              init: dict[str, np.ndarray]) -> Result | NotRun:
    import keras

    import lion_keras

    model = _keras_model(shape, init, "bfloat16" if config.bfloat16 else "float32")
    options: dict[str, Any] = {"momentum_dtype": "int8" if config.int8 else "float32"}
    if config.stochastic:
        options.update(stochastic_rounding=True, seed=settings.seed)
    try:
        optimizer = lion_keras.Lion(learning_rate=settings.lr, beta_1=settings.b1, beta_2=settings.b2,
                                    weight_decay=None, **options)
    except (TypeError, ValueError) as error:  # an option this lion_keras does not have yet
        return NotRun(f"lion_keras.Lion({', '.join(f'{k}={v!r}' for k, v in options.items())}): {error}")
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def step(i: int) -> int:
        model.train_on_batch(data.train_x[i].astype(np.int32), data.train_y[i].astype(np.int32))
        return 0

    def validation() -> float:
        return float(np.mean([float(model.test_on_batch(x.astype(np.int32), y.astype(np.int32)))
                              for x, y in zip(data.val_x, data.val_y)]))

    def final() -> dict[str, np.ndarray]:
        return {k: np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(w, "float32")))
                for k, w in model.parameters().items()}

    result = _train(settings, data, init, config, step=step, validation=validation, final=final)
    return result._replace(sign_agree=None)  # not measured: train_on_batch does not hand the gradients out


# ------------------------------------------------------------------------------------------------
# The loop, the table and the plot
# ------------------------------------------------------------------------------------------------


def _train(settings: Settings, data: Data, init: dict[str, np.ndarray], config: Config, *,
           step: Callable[[int], int], validation: Callable[[], float],
           final: Callable[[], dict[str, np.ndarray]]) -> Result:
    """Runs ``settings.steps`` steps, the validation loss every ``eval_every`` steps and at the end."""
    start = time.perf_counter()
    curve, agree = [(0, validation())], 0
    for i in range(settings.steps):
        agree += step(i)
        if (i + 1) % settings.eval_every == 0 or i + 1 == settings.steps:
            curve.append((i + 1, validation()))
    elements = sum(v.size for v in init.values()) * settings.steps
    return Result(curve, agree / elements if config.int8 else None,
                  _unchanged(final(), _stored(init, config.bfloat16)), time.perf_counter() - start)


RUNNERS = {"optax": run_optax, "torch": run_torch, "keras": run_keras}


def table(framework: str, results: Sequence[Result | NotRun]) -> str:
    """The markdown table of one framework's four runs."""
    lines = [("| configuration | final val loss | ratio to (1) | sign agree with float32 momentum "
             "| params unchanged | s |"), "|---|---:|---:|---:|---:|---:|"]
    base = results[0].curve[-1][1] if isinstance(results[0], Result) else None
    for config, result in zip(CONFIGS, results):
        if isinstance(result, NotRun):
            lines.append(f"| {config.name} | not run | - | - | - | - |")
            continue
        loss = result.curve[-1][1]
        ratio = f"{loss / base:.4f}" if base else "-"
        agree = "-" if result.sign_agree is None else f"{100 * result.sign_agree:.2f}%"
        if config.int8 and result.sign_agree is None:
            agree = "not measured"
        lines.append(f"| {config.name} | {loss:.4f} | {ratio} | {agree} | {100 * result.unchanged:.1f}% "
                     f"| {result.seconds:.0f} |")
    return "\n".join(lines)


_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e")


def plot_svg(title: str, curves: Sequence[tuple[str, list[tuple[int, float]]]], path: Path) -> None:
    """The validation curves as a plain SVG line plot, for an installation without matplotlib."""
    width, height, left, right, top, bottom = 720, 420, 60, 250, 30, 40
    points = [pt for _, curve in curves for pt in curve]
    x_max = max(s for s, _ in points) or 1
    y_min, y_max = min(v for _, v in points), max(v for _, v in points)
    y_max = y_max if y_max > y_min else y_min + 1

    def xy(step: int, value: float) -> str:
        x = left + (width - left - right) * step / x_max
        y = top + (height - top - bottom) * (y_max - value) / (y_max - y_min)
        return f"{x:.1f},{y:.1f}"

    parts = [f'<text x="8" y="18" font-size="14">{escape(title)}</text>',
             (f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'fill="none" stroke="#999"/>'),
             f'<text x="{left}" y="{height - 12}" font-size="11">step 0</text>',
             f'<text x="{width - right}" y="{height - 12}" font-size="11" text-anchor="end">{x_max}</text>',
             f'<text x="{left - 4}" y="{top + 10}" font-size="11" text-anchor="end">{y_max:.3g}</text>',
             (f'<text x="{left - 4}" y="{height - bottom}" font-size="11" text-anchor="end">'
             f"{y_min:.3g}</text>")]
    for k, (label, curve) in enumerate(curves):
        colour = _COLOURS[k % len(_COLOURS)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{" ".join(xy(s, v) for s, v in curve)}"/>')
        parts.append(f'<text x="{width - right + 8}" y="{top + 16 + 18 * k}" font-size="11" fill="{colour}">'
                     f"{escape(label)}</text>")
    body = "\n".join(parts)
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                    f'font-family="sans-serif">\n{body}\n</svg>\n', encoding="utf-8")


def plot(title: str, curves: Sequence[tuple[str, list[tuple[int, float]]]], path: Path) -> Path:
    """Plots the validation curves to ``path`` (PNG) with matplotlib, else to ``path`` with ``.svg``."""
    from lion_cli._common import missing

    if missing(["matplotlib"]):
        plot_svg(title, curves, path.with_suffix(".svg"))
        return path.with_suffix(".svg")
    from lion_cli._common import figure

    fig = figure(7, 4.2)
    axes = fig.add_subplot()
    for k, (label, curve) in enumerate(curves):
        axes.plot([s for s, _ in curve], [v for _, v in curve], label=label,
                  color=_COLOURS[k % len(_COLOURS)], linestyle="--" if k == 3 else "-")
    axes.set_xlabel("step")
    axes.set_ylabel("validation loss (nats per byte)")
    axes.set_title(title, fontsize="medium")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    fig.savefig(path)
    return path


def _limit_threads(threads: int) -> None:
    """One thread per framework (set before any framework is imported), for a fair, quiet comparison."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        eigen = "true" if threads > 1 else "false"
        os.environ["XLA_FLAGS"] = (f"{flags} --xla_cpu_multi_thread_eigen={eigen} "
                                   f"intra_op_parallelism_threads={threads}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _version(framework: str) -> str:
    if framework == "optax":
        import jax
        import optax

        return f"jax {jax.__version__}, optax {optax.__version__}"
    if framework == "torch":
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        return f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    import keras

    return f"keras {keras.__version__} on {keras.backend.backend()}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help="comma-separated, from optax, torch, keras (default: all three)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 1500)")
    parser.add_argument("--lr", type=float, default=Settings().lr, help="Lion's learning rate (default 1e-4)")
    parser.add_argument("--threads", type=int, default=1, help="threads per framework (default 1)")
    parser.add_argument("--keras-backend", default="jax", choices=("jax", "torch", "tensorflow"),
                        help="KERAS_BACKEND when it is not set (default jax)")
    parser.add_argument("--out", default="lion-quality", help="folder for the plots (default lion-quality)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run on a smaller model")
    parser.add_argument("--configs", default="1,2,3,4", help="which configurations to run (default: 1,2,3,4)")
    parser.add_argument("--seed", type=int, default=Settings().seed,
                        help="the seed of the split, the weights, the batches and the rounding (default 0)")
    args = parser.parse_args(argv)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown or not frameworks:
        parser.error(f"--frameworks: expected names from {', '.join(FRAMEWORKS)}; "
                     f"received {args.frameworks!r}")
    selected = {c.strip() for c in args.configs.split(",") if c.strip()}
    if not selected or not selected <= {"1", "2", "3", "4"}:
        parser.error(f"--configs: expected numbers from 1, 2, 3, 4; received {args.configs!r}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps: expected an integer >= 1; received {args.steps}")
    _limit_threads(args.threads)
    os.environ.setdefault("KERAS_BACKEND", args.keras_backend)
    shape, settings = QUICK if args.quick else (Shape(), Settings())
    steps = {} if args.steps is None else {"steps": args.steps}
    settings = settings._replace(lr=args.lr, seed=args.seed, **steps)
    settings = settings._replace(eval_every=min(settings.eval_every, settings.steps))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from lion_cli._common import machine

    data = make_data(shape, settings)
    init = initial_parameters(shape, settings.seed)
    count = sum(v.size for v in init.values())
    print(f"# bench_quality: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {machine()}")
    print(f"# {count:,} parameters ({shape.layers} blocks, width {shape.width}, {shape.heads} heads, "
          f"context {shape.context}); {data.description}")
    print(f"# Lion lr {settings.lr:g}, betas {settings.b1}/{settings.b2}, no weight decay, "
          f"batch {settings.batch}, {settings.steps} steps, validation on {settings.eval_batches} x "
          f"{settings.batch} windows every {settings.eval_every} steps; seed {settings.seed}")
    failed = False
    for framework in frameworks:
        print(f"\n## {framework} ({_version(framework)})\n", flush=True)
        results: list[Result | NotRun] = []
        for number, config in enumerate(CONFIGS, start=1):
            if str(number) not in selected:
                results.append(NotRun("not selected (--configs)"))
                continue
            try:
                result = RUNNERS[framework](config, data, shape, settings, init)
            except Exception:  # noqa: BLE001 (reported, the other runs go on; the exit status says so)
                traceback.print_exc()
                failed = True
                result = NotRun(f"failed: {traceback.format_exc().strip().splitlines()[-1]}")
            results.append(result)
            if isinstance(result, Result):
                print(f"# {config.name}: validation loss {result.curve[-1][1]:.4f} after {settings.steps} "
                      f"steps ({result.seconds:.0f} s)", flush=True)
            else:
                print(f"# {config.name}: not run: {result.reason}", flush=True)
        print()
        print(table(framework, results))
        curves = [(c.name, r.curve) for c, r in zip(CONFIGS, results) if isinstance(r, Result)]
        if curves:
            path = plot(f"{framework}: Lion lr {settings.lr:g}, char-level transformer on the stdlib",
                        curves, out / f"quality-{framework}.png")
            print(f"\nwrote {path}")
        print("\ncurves (step: validation loss):")
        for c, r in zip(CONFIGS, results):
            if isinstance(r, Result):
                print(f"#   {c.name}: " + ", ".join(f"{s}: {v:.4f}" for s, v in r.curve))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""``model.compile(optimizer=lion_keras.Lion(...))`` then ``fit``, on a real data set, per backend."""

from __future__ import annotations

import doctest
import re
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import lion_keras
from tests.keras._helpers import f32_atol
from tests.support import assert_close

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int32")


@pytest.fixture
def policy():
    """Restores the global dtype policy that a test changes."""
    previous = keras.mixed_precision.global_policy()
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy(previous)


def _mlp(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
            keras.layers.Activation("linear", dtype="float32"),  # float32 logits under mixed precision
        ]
    )


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=3e-3, weight_decay=0.1),
        dict(
            learning_rate=keras.optimizers.schedules.CosineDecay(4e-3, decay_steps=100),
            weight_decay=3e-4,  # decoupled: the fraction removed per step at the peak learning rate
            decouple_lr=True,
            max_lr=4e-3,  # the schedule's peak: required with a schedule
            cautious=True,
        ),
    ],
    ids=["weight_decay", "schedule_cautious_decoupled"],
)
def test_mlp_on_digits_trains(digits, kwargs):
    x, y = digits
    model = _mlp()
    model.compile(optimizer=lion_keras.Lion(**kwargs), loss=_loss(), metrics=["accuracy"])
    start = model.evaluate(x, y, verbose=0, return_dict=True)
    model.fit(x, y, epochs=4, batch_size=128, verbose=0)
    end = model.evaluate(x, y, verbose=0, return_dict=True)
    assert start["loss"] > 2.0  # ten classes, untrained: about ln(10)
    assert end["loss"] < 0.25 * start["loss"], (start, end)
    assert end["accuracy"] > 0.9, end


@pytest.mark.parametrize("name", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_with_loss_scaling_trains_without_nans(digits, policy, name):
    x, y = digits
    policy(name)
    model = _mlp()
    assert model.layers[0].compute_dtype == name.split("_")[1]
    optimizer = keras.optimizers.LossScaleOptimizer(lion_keras.Lion(learning_rate=3e-3, weight_decay=0.1))
    model.compile(optimizer=optimizer, loss=_loss())
    start = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, epochs=3, batch_size=128, verbose=0)
    end = model.evaluate(x, y, verbose=0)
    assert all(np.isfinite(loss) for loss in history.history["loss"])
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)
    # Variables stay float32 under mixed precision, and so do their momenta.
    inner = optimizer.inner_optimizer
    assert {keras.backend.standardize_dtype(m.dtype) for m in inner._momentums} == {"float32"}
    assert end < 0.3 * start, (start, end)


def test_fit_matches_keras_lion(digits):
    """Inside ``fit`` (jit on JAX, tf.function on TensorFlow), with an embedding's sparse gradients."""
    x, y = digits[0][:768], digits[1][:768]
    tokens = np.clip((x * 4).astype("int32"), 0, 4)

    def model():
        keras.utils.set_random_seed(3)
        inputs = keras.Input((64,), dtype="int32")
        h = keras.layers.Flatten()(keras.layers.Embedding(5, 3)(inputs))
        return keras.Model(inputs, keras.layers.Dense(10)(h))

    trained = []
    for cls in (lion_keras.Lion, keras.optimizers.Lion):
        m = model()
        optimizer = cls(learning_rate=2e-3, weight_decay=0.2, clipnorm=1.0)
        m.compile(optimizer=optimizer, loss=_loss())
        m.fit(tokens, y, epochs=2, batch_size=128, shuffle=False, verbose=0)
        trained.append(([keras.ops.convert_to_numpy(w) for w in m.weights], optimizer))
    (ours, optimizer), (theirs, _) = trained
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 2 * 6
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(a, b, rtol=0, atol=f32_atol(theirs, 12, 2e-3), what=f"weight {i}")


def _docstring_example() -> str:
    """The example in ``lion_keras.__doc__``: the indented block after its ``Example`` line."""
    doc = lion_keras.__doc__
    body = doc[doc.index("Example") :].split("\n", 1)[1]
    block = re.match(r"((?:\n|    .*\n)+)", body).group(1)
    return textwrap.dedent(block).strip("\n") + "\n"


def test_readme_example_runs_and_learns(capsys):
    """The Keras example of the README (kept in ``lion_keras.__doc__``) runs as written and learns."""
    namespace: dict = {}
    keras.utils.set_random_seed(0)
    exec(compile(_docstring_example(), "lion_keras example", "exec"), namespace)
    history = namespace["history"].history
    assert isinstance(namespace["model"].optimizer, lion_keras.Lion)
    assert history["loss"][-1] < 0.3 * history["loss"][0], history["loss"]
    assert history["accuracy"][-1] > 0.85
    assert "accuracy after 5 epochs" in capsys.readouterr().out


def test_readme_shows_the_tested_example():
    """README.md holds the example above verbatim, in a ```python block."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert _docstring_example() in blocks, "paste lion_keras.__doc__'s example into README.md"


def test_class_docstring_example():
    results = doctest.testmod(lion_keras._optimizer, optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0 and results.failed == 0, results

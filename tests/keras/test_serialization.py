"""Configs, ``model.save``/``load_model`` with the optimizer's momentum, and refusing a mismatched state."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import lion_keras
from tests.keras._helpers import margin_grads, momenta, random_params, run_apply
from tests.support import assert_exact


@keras.saving.register_keras_serializable(package="lionkit_tests")
def warm_beta_1():
    return 0.95


def _config_without_name(optimizer):
    config = optimizer.get_config()
    config.pop("name")
    return config


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(learning_rate=3e-4, beta_1=0.95, beta_2=0.98, weight_decay=0.1, clipnorm=1.0, use_ema=True),
        dict(learning_rate=keras.optimizers.schedules.CosineDecay(1e-3, 100), gradient_accumulation_steps=2),
        dict(weight_decay=0.5, cautious=True, decouple_lr=True, max_lr=2e-3, momentum_dtype="bfloat16"),
        dict(learning_rate=1e-2, weight_decay=0.5, decouple_lr=True),
        dict(beta_1=warm_beta_1),
        dict(momentum_dtype="int8", stochastic_rounding=True, seed=12),
        dict(stochastic_rounding=True),
    ],
    ids=["defaults", "keras_options", "schedule", "variants", "default_max_lr", "callable_beta", "formats",
         "drawn_seed"],
)
def test_config_round_trip(kwargs):
    optimizer = lion_keras.Lion(**kwargs)
    config = optimizer.get_config()
    ours = ("cautious", "decouple_lr", "max_lr", "momentum_dtype", "stochastic_rounding", "seed")
    for key in ("beta_1", "beta_2", *ours):
        assert key in config
    restored = lion_keras.Lion.from_config(config)
    assert _config_without_name(restored) == _config_without_name(optimizer)
    if kwargs.get("decouple_lr") and "max_lr" not in kwargs:
        assert config["max_lr"] == kwargs["learning_rate"]  # the initial learning rate, stored
    # The generic Keras path finds the class by its registered name.
    serialized = keras.optimizers.serialize(optimizer)
    assert serialized["registered_name"] == "lionkit>Lion"
    again = keras.optimizers.deserialize(serialized)
    assert type(again) is lion_keras.Lion
    assert _config_without_name(again) == _config_without_name(optimizer)


def _digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32")[:512], y.astype("int32")[:512]


def _model(optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=1e-3, weight_decay=0.1),
        dict(learning_rate=2e-3, cautious=True, momentum_dtype="bfloat16"),
    ],
    ids=["float32_momentum", "bfloat16_momentum_cautious"],
)
def test_save_load_restores_momentum_and_training_continues_identically(tmp_path, kwargs):
    x, y = _digits()
    model = _model(lion_keras.Lion(**kwargs))
    model.fit(x, y, epochs=1, batch_size=128, shuffle=False, verbose=0)
    saved = [np.array(m) for m in momenta(model.optimizer)]
    assert any(np.abs(m).max() > 0 for m in saved), "the momentum to restore should not be zero"
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is lion_keras.Lion
    for a, b in zip(momenta(loaded.optimizer), saved):
        assert_exact(a, b, what="restored momentum")
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == 4
    for m in (model, loaded):
        m.fit(x, y, epochs=1, batch_size=128, shuffle=False, verbose=0)
    for i, (a, b) in enumerate(zip(loaded.weights, model.weights)):
        assert_exact(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), what=f"weight {i}")
    for a, b in zip(momenta(loaded.optimizer), momenta(model.optimizer)):
        assert_exact(a, b, what="momentum after training on")


def test_loading_a_never_stepped_optimizer_keeps_zero_momentum(tmp_path):
    """A model saved right after ``compile`` has no momentum saved; loading it is not an error."""
    model = _model(lion_keras.Lion())
    path = tmp_path / "fresh.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.built and len(loaded.optimizer.variables) > 2
    assert all(not np.any(m) for m in momenta(loaded.optimizer))


def _state(optimizer):
    store: dict = {}
    optimizer.save_own_variables(store)
    return store


def _built(shapes, **kwargs):
    optimizer = lion_keras.Lion(**kwargs)
    params = random_params(shapes)
    run_apply(optimizer, params, margin_grads(params, 1))
    return optimizer


def test_mismatched_variable_count_raises():
    source = _built([(3, 2), (2,)])
    target = _built([(3, 2), (2,)], use_ema=True)
    expected = (
        r"Cannot load the saved state into optimizer '.*': it has 6 variables, but the saved state "
        r"has 4\. It was saved for a different model"
    )
    with pytest.raises(RuntimeError, match=expected):
        target.load_own_variables(_state(source))
    # keras.optimizers.Lion, for contrast, only warns and keeps its state.
    theirs = keras.optimizers.Lion(use_ema=True)
    theirs.build([keras.Variable(np.zeros((3, 2), "float32")), keras.Variable(np.zeros(2, "float32"))])
    with pytest.warns(UserWarning, match="Skipping variable loading"):
        theirs.load_own_variables(_state(source))


def test_loading_into_an_unbuilt_optimizer_raises():
    with pytest.raises(RuntimeError, match=r"it has 2 variables, but the saved state has 4\. Build it first"):
        lion_keras.Lion().load_own_variables(_state(_built([(3, 2), (2,)])))


def test_mismatched_shape_raises():
    expected = r"saved variable 2 \('.*momentum'\) has shape \(3, 2\), expected \(2, 3\)"
    with pytest.raises(RuntimeError, match=expected):
        _built([(2, 3)]).load_own_variables(_state(_built([(3, 2)])))


def test_mismatched_momentum_dtype_raises():
    """A float32 momentum is not silently rounded into a bfloat16 one (or the other way round)."""
    expected = r"has dtype float32, expected bfloat16 \(pass the `momentum_dtype`"
    with pytest.raises(RuntimeError, match=expected):
        _built([(3,)], momentum_dtype="bfloat16").load_own_variables(_state(_built([(3,)])))


def test_load_model_surfaces_the_mismatch(tmp_path):
    """Through ``model.load_weights`` of a ``.keras`` file, the error reaches the user."""
    x, y = _digits()
    model = _model(lion_keras.Lion())
    model.fit(x[:64], y[:64], epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    other = _model(lion_keras.Lion(use_ema=True))
    other.optimizer.build(other.trainable_variables)
    with pytest.raises((RuntimeError, ValueError), match="Cannot load the saved state into optimizer"):
        other.load_weights(path)

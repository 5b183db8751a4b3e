"""The defaults table of docs/hyperparameters.md is lion_core.defaults, and the adapters keep them."""

from __future__ import annotations

import inspect

import pytest

from lion_core import defaults

from . import defaults_table
from .blocks import ROOT


def test_docs_table_is_generated_from_lion_core_defaults() -> None:
    text = (ROOT / "docs" / "hyperparameters.md").read_text(encoding="utf-8")
    assert text.count(defaults_table.START) == 1 and text.count(defaults_table.END) == 1
    committed = text.split(defaults_table.START)[1].split(defaults_table.END)[0].strip()
    assert committed == defaults_table.render(), (
        "docs/hyperparameters.md is out of date with lion_core.defaults; regenerate the table with "
        "`python -m tests.docs.defaults_table`:\n" + defaults_table.render()
    )


def test_every_host_in_lion_core_defaults_is_documented() -> None:
    assert set(defaults_table.host_defaults()) == set(defaults_table.HOSTS)


def _defaults(function: object) -> dict[str, object]:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_lion_torch_signature_has_the_documented_defaults() -> None:
    lion_torch = pytest.importorskip("lion_torch")
    found = _defaults(lion_torch.Lion)
    expected = defaults.TORCH
    assert (found["lr"], tuple(found["betas"]), found["weight_decay"]) == (
        expected.lr, (expected.beta1, expected.beta2), expected.weight_decay)


def test_lion_keras_signature_has_the_documented_defaults() -> None:
    pytest.importorskip("keras")
    import lion_keras

    found = _defaults(lion_keras.Lion)
    expected = defaults.KERAS
    assert (found["learning_rate"], found["beta_1"], found["beta_2"], found["weight_decay"]) == tuple(expected)


def test_lion_optax_signature_has_the_documented_defaults() -> None:
    pytest.importorskip("optax")
    import lion_optax

    parameters = inspect.signature(lion_optax.lion).parameters
    found = _defaults(lion_optax.lion)
    expected = defaults.OPTAX
    assert parameters["learning_rate"].default is inspect.Parameter.empty  # required, as in optax.lion
    assert (found["b1"], found["b2"], found["weight_decay"]) == (expected.beta1, expected.beta2, expected.weight_decay)

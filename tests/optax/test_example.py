"""The README-ready example in ``lion_optax``'s module docstring, and every docstring example, run."""

from __future__ import annotations

import doctest

import pytest

import lion_optax
import lion_optax._transform


@pytest.mark.parametrize("module", [lion_optax, lion_optax._transform], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module.__name__}"

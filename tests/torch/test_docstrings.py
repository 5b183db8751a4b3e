"""The examples in lion_torch's docstrings run and print what they say."""

from __future__ import annotations

import doctest

import pytest

import lion_torch._functional
import lion_torch._optimizer


@pytest.mark.parametrize("module", [lion_torch._functional, lion_torch._optimizer],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0

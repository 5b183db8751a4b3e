"""The comparison helpers, now in ``tests.cases`` (the one table of cases); re-exported for the suites
that still import them from here."""

from tests.cases import (  # noqa: F401
    assert_close,
    assert_exact,
    assert_within_budget,
    margin_gradient,
    to_numpy,
)

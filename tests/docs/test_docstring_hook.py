"""The griffe extension of the API pages (docs/hooks/rst_math.py): reST math and shared Args entries."""

from __future__ import annotations

import importlib.util

from .blocks import ROOT

_spec = importlib.util.spec_from_file_location("rst_math", ROOT / "docs" / "hooks" / "rst_math.py")
assert _spec is not None and _spec.loader is not None
rst_math = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rst_math)


def test_inline_and_block_math_become_arithmatex() -> None:
    text = (
        "The factor :math:`1 - \\eta\\lambda` multiplies p.\n\n"
        ".. math::\n\n    c &= \\beta_1 m \\\\\n    p &\\leftarrow p\n\nAfter.\n"
        "  .. math::\n     \\begin{aligned} x \\end{aligned}\n"
    )
    assert rst_math.convert(text).splitlines() == [
        "The factor $1 - \\eta\\lambda$ multiplies p.",
        "",
        "",
        "$$",
        "\\begin{aligned}",
        "c &= \\beta_1 m \\\\",
        "p &\\leftarrow p",
        "\\end{aligned}",
        "$$",
        "",
        "After.",
        "",
        "  $$",
        "  \\begin{aligned} x \\end{aligned}",
        "  $$",
    ]


def test_shared_args_entries_are_repeated_per_name() -> None:
    text = (
        "Summary.\n\nArgs:\n  a: one,\n    two.\n  lr, beta1: constants or schedules.\n"
        "  clipnorm, clipvalue,\n    name: as for every\n    ``Optimizer``.\n  **kwargs: passed on.\n\n"
        "Raises:\n  ValueError, TypeError: bad input.\n"
    )
    assert rst_math.split_shared_entries(text).splitlines() == [
        "Summary.", "", "Args:", "  a: one,", "    two.",
        "  lr: constants or schedules.", "  beta1: constants or schedules.",
        "  clipnorm: as for every ``Optimizer``.", "  clipvalue: as for every ``Optimizer``.",
        "  name: as for every ``Optimizer``.", "  **kwargs: passed on.", "",
        "Raises:", "  ValueError, TypeError: bad input.",
    ]

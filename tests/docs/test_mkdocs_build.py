"""``mkdocs build --strict`` passes: no broken link or anchor, no page outside the navigation, and an
API reference that resolves for every package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .blocks import ROOT


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    # The API pages were rendered from the docstrings, not left empty.
    for package, member in (("lion_core", "from_adamw"), ("lion_torch", "Lion"), ("lion_keras", "Lion"),
                            ("lion_optax", "scale_by_lion")):
        page = (site / "api" / package / "index.html").read_text(encoding="utf-8")
        assert f"{package}.{member}" in page, f"api/{package}.md does not document {package}.{member}"
    # The plots the pages embed were copied into the site.
    for image in ("lion-demo.png", "lion-bench.png"):
        assert (site / "assets" / image).is_file(), image

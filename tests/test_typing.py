"""mypy --strict passes on the package and on the spec's typed snippets (PEP 561: py.typed ships)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "mullama", "tests/typing/spec_snippets.py"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_py_typed_marker() -> None:
    assert (ROOT / "mullama" / "py.typed").exists()

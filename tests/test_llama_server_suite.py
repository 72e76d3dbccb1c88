"""llama.cpp's own server tests (the pinned source's tools/server/tests) run against ``mullama serve``.

``scripts/llama_server_tests/run.py`` selects the OpenAI-compatible tests and deselects, by name and
with a reason each, those that assert llama-server's own API or its test models' text; every selected
test must pass.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("wget")
pytest.importorskip("filelock")


def test_llama_cpp_server_tests_pass_against_mullama_serve(smollm_path: Path, minilm_path: Path) -> None:
    if not (ROOT / "native" / "llama.cpp" / "tools" / "server" / "tests" / "utils.py").is_file():
        pytest.skip("the pinned llama.cpp source is not in native/llama.cpp (scripts/build_lib.py fetches it)")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "llama_server_tests" / "run.py")],
                       capture_output=True, text=True, timeout=1800)
    summary = [ln for ln in r.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    m = re.search(r"(\d+) passed", summary[-1] if summary else "")
    assert m and int(m.group(1)) >= 34 and "failed" not in summary[-1], summary

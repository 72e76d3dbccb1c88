"""Pulls the Python examples out of the API spec so that tests run them as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The contract lives in shared/ beside the checkout; tests/data keeps a copy so
# that a clone alone still runs every test (test_spec_copy_is_current flags drift).
SHARED_SPEC = ROOT.parent / "shared" / "spec" / "python-api.md"
COPY_SPEC = ROOT / "tests" / "data" / "spec" / "python-api.md"


def spec_text() -> str:
    spec = SHARED_SPEC if SHARED_SPEC.exists() else COPY_SPEC
    return spec.read_text(encoding="utf-8")


def example(heading: str, index: int = 0) -> str:
    """The index-th ```python block after the markdown heading that ends with ``heading``."""
    text = spec_text()
    m = re.search(rf"^#+ .*{re.escape(heading)}\s*$", text, flags=re.M)
    if not m:
        raise KeyError(f"no heading {heading!r} in the spec")
    blocks = re.findall(r"```python\n(.*?)```", text[m.end():], flags=re.S)
    return blocks[index]


def with_models(code: str, generative: Path, embedding: Path | None = None) -> str:
    """Only the model paths change: embedding-looking names get the embedding model."""
    def swap(m: re.Match[str]) -> str:
        name = m.group(1)
        if "nonexistent" in name:
            return m.group(0)  # the error-handling example means a missing file
        path = embedding if ("embed" in name and embedding is not None) else generative
        return repr(str(path))
    return re.sub(r"\"([^\"\s]+\.gguf)\"", swap, code)

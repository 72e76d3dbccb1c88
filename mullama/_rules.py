"""Rules that are data, shared with the Node binding: ``rules.json`` (Node's ``lib/_rules.js`` reads
the same file), so that a limit or a default cannot differ between the two."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

RULES: Final[dict[str, Any]] = json.loads((Path(__file__).resolve().parent / "rules.json").read_text("utf-8"))

N_CTX_MAX: Final[int] = RULES["context"]["n_ctx_max"]
N_BATCH_MAX: Final[int] = RULES["context"]["n_batch_max"]
N_THREADS_MAX: Final[int] = RULES["context"]["n_threads_max"]
# name -> (default, "int" | "float", lowest, highest), in SamplerParams' order
SAMPLER_FIELDS: Final[dict[str, tuple[Any, str, float | None, float | None]]] = {
    name: (default, kind, lo, hi) for name, default, kind, lo, hi in RULES["sampler_fields"]
}

"""scripts/update_llama.py's report: what changed in the C API, marking what the bindings use.

Runs on the checked-in description (no download): unchanged, it reports nothing; edited as an
upgrade would edit it, each change is reported and the used ones are marked."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import update_llama  # noqa: E402

from mullama import _abi, _lib  # noqa: E402

MIRRORED = {n.removeprefix("struct ") for n in _lib.MIRRORED_STRUCTS}


def _current() -> dict[str, Any]:
    return copy.deepcopy(_abi.description())


def test_no_change_reports_nothing() -> None:
    text = update_llama.report(_current(), _current(), update_llama.used_names(), MIRRORED)
    assert "functions removed: 0 (0 used" in text and "functions changed: 0 (0 used" in text
    assert "functions added: 0" in text and "struct " not in text


def test_changes_are_reported_and_used_ones_marked() -> None:
    old, new = _current(), _current()
    used = update_llama.used_names()
    assert "llama_decode" in used and "llama_tokenize" in used
    del new["functions"]["llama_decode"]
    new["functions"]["llama_tokenize"]["params"].insert(0, ["flags", "uint32_t"])
    new["functions"]["llama_brand_new"] = {"returns": "void", "params": [], "header": "llama.h"}
    fields = new["structs"]["llama_batch"]["fields"]
    fields.insert(1, ["flags", "uint32_t", 4])
    text = update_llama.report(old, new, used, MIRRORED)
    assert "functions removed: 1 (1 used by the bindings)\n  ! llama_decode" in text
    assert "functions changed: 1 (1 used by the bindings)\n  ! llama_tokenize:" in text
    assert "uint32_t flags, const struct llama_vocab * vocab" in text
    assert "functions added: 1 (0 used by the bindings)\n    llama_brand_new" in text
    assert "! struct llama_batch: size 56 -> 56\n      + flags uint32_t @4" in text


"""One table of argument cases, one verdict each, run through both bindings.

``tests/data/binding_cases.json`` holds the cases; ``node/test/binding_rules.test.js`` runs the same
file through the Node binding, so a limit or a check that drifts apart in one of them fails there or
here.  The limits and defaults themselves come from ``mullama/rules.json``, which both read.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from mullama import Context, SamplerParams, _rules

CASES = json.loads((Path(__file__).parent / "data" / "binding_cases.json").read_text())


def _verdict(fn: Any) -> str:
    try:
        fn()
    except (ValueError, TypeError) as e:
        return type(e).__name__
    return "ok"


@pytest.mark.parametrize("args,expected", CASES["context"], ids=[json.dumps(c[0]) for c in CASES["context"]])
def test_context_arguments(model: Any, args: dict[str, Any], expected: str) -> None:
    def make() -> None:
        Context(model, **{"n_threads": 1, **args}).close()
    assert _verdict(make) == expected


@pytest.mark.parametrize("args,expected", CASES["sampler"], ids=[json.dumps(c[0]) for c in CASES["sampler"]])
def test_sampler_arguments(args: dict[str, Any], expected: str) -> None:
    assert _verdict(lambda: SamplerParams(**args)) == expected


def test_sampler_defaults_are_the_shared_ones() -> None:
    signature = inspect.signature(SamplerParams.__init__).parameters
    for name, (default, _, _, _) in _rules.SAMPLER_FIELDS.items():
        assert getattr(SamplerParams(), name) == default
        assert signature[name].default == default, name
    assert list(_rules.SAMPLER_FIELDS) == [p for p in signature if p != "self"]

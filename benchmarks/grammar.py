"""Per-token cost of a JSON-Schema grammar against unconstrained generation, same model, same run.

    python3 benchmarks/grammar.py --model SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 --reps 5

Each repetition generates greedily under the grammar (until the JSON closes),
then the same number of tokens unconstrained from the same prompt
(``ignore_eos``), in alternating order; both start from an emptied cache and
time only generation (the prompt is evaluated before the clock starts, by a
``max_tokens=0`` call that leaves it cached).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mullama import Context, Grammar, Model, SamplerParams  # noqa: E402

SCHEMA = {"type": "array", "minItems": 12, "maxItems": 12, "items": {
    "type": "object", "additionalProperties": False, "required": ["name", "age", "city", "member"],
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "city": {"enum": ["Paris", "Rome", "Oslo", "Lima"]}, "member": {"type": "boolean"}}}}


def _timed(ctx: Context, prompt: str, n: int, params: SamplerParams, grammar: Grammar | None) -> tuple[float, int]:
    ctx.clear_cache()
    ctx.generate(prompt, 0)  # evaluate the prompt outside the timing
    t = time.perf_counter()
    pieces = 0
    for _ in ctx.generate_stream(prompt, n, params, grammar=grammar, ignore_eos=grammar is None):
        pieces += 1
    return time.perf_counter() - t, ctx.n_past - len(ctx.model.tokenize(prompt, special=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    model = Model.load(a.model)
    ctx = Context(model, n_ctx=2048, n_threads=a.threads)
    grammar = Grammar.from_json_schema(SCHEMA)
    prompt = model.apply_chat_template([("user", "List twelve people as JSON objects with name, age, city, member.")])
    rows: dict[str, list[float]] = {"greedy": [], "greedy+grammar": [], "sampled": [], "sampled+grammar": []}
    settings = {"greedy": SamplerParams.greedy(), "sampled": SamplerParams(seed=1)}
    # warm-up, and the length of each constrained answer (fixed: greedy, and a fixed seed)
    lengths = {label: _timed(ctx, prompt, 1000, params, grammar)[1] for label, params in settings.items()}
    for rep in range(a.reps):
        for label, params in settings.items():
            order = [grammar, None] if rep % 2 == 0 else [None, grammar]
            for g in order:
                dt, k = _timed(ctx, prompt, lengths[label], params, g)
                rows[label + ("+grammar" if g is not None else "")].append(dt / k)
    n = lengths["greedy"]
    print(f"tokens per constrained answer: {n}")
    print("| generation | ms/token (median) | vs unconstrained |")
    print("|---|---|---|")
    for label in ("greedy", "sampled"):
        base = statistics.median(rows[label])
        with_g = statistics.median(rows[label + "+grammar"])
        print(f"| {label} | {base * 1e3:.2f} | 1 |")
        print(f"| {label} + JSON-schema grammar | {with_g * 1e3:.2f} | {with_g / base:.3f}x (+{(with_g - base) * 1e6:.0f} µs) |")


if __name__ == "__main__":
    main()

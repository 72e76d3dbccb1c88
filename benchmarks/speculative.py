"""Speculative decoding: generation speed with and without drafting, and llama.cpp's own tools, in one run.

    python3 benchmarks/speculative.py --model MODEL.gguf [--draft-model SMALL.gguf] [--ngl N]
        [--bin-dir DIR] [--task copy|story] [--max-tokens 256] [--reps 3] [--json out.json]

For each way of drafting (none; prompt lookup with n-grams of 3 and 10 or 16
drafts at most, and with shorter n-grams down to 1; the draft model, when given) it generates ``--max-tokens``
greedy tokens after the task's prompt with a Context, and reports the
generation speed (the prompt evaluated beforehand, not timed), the share of
drafts kept, and the decodes run; it checks that every drafted run gives the
plain run's tokens.  ``--bin-dir``: a build tree's ``bin`` with
``llama-lookup`` and ``llama-speculative-simple`` (``scripts/build_lib.py
--bench`` builds them), run on the same prompt with the same limits and
greedy sampling; their "decoded N tokens ... speed" line and acceptance
are reported beside ours.

Tasks: ``copy`` rewrites a long paragraph with small edits (the answer
copies most of its prompt: where prompt lookup helps); ``story`` continues a
story (little to copy).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mullama import Context, DraftModel, Model, PromptLookup, SamplerParams, system_info  # noqa: E402

PARAGRAPH = (
    "The old harbour town had changed very little in a hundred years. Fishing boats still left the quay before "
    "dawn, their crews wrapped in grey wool against the wind, and the gulls still followed them out past the "
    "lighthouse. In the centre of the town stood the market hall, where farmers from the valley sold cheese, "
    "apples and honey every Saturday morning. The children who grew up there learned to read the colour of the "
    "sky before they learned to read books, because a storm from the west could arrive within an hour. Most "
    "families had lived in the same stone houses for generations, and the neighbours knew each other's stories "
    "by heart. Visitors sometimes found the place too quiet, but those who stayed for a whole season usually "
    "came back the following year, and a few of them never left at all."
)
TASKS = {
    "copy": "Rewrite the following text, changing British spellings (harbour, centre, colour, neighbours) to "
            "American ones and changing nothing else:\n\n" + PARAGRAPH,
    "story": "Write a long story about a lighthouse keeper who finds a message in a bottle.",
}


def ours(model: Model, prompt: str, n: int, draft: Any, reps: int, threads: int) -> dict[str, Any]:
    ctx = Context(model, n_ctx=2048, n_threads=threads, draft=draft)
    greedy = SamplerParams.greedy()
    ctx.complete(prompt, 0, greedy)  # the prompt, evaluated once: each run re-evaluates only its last token
    best, tokens = 0.0, []
    for _ in range(reps + 1):  # the first run warms up
        before = dict(ctx.draft_stats)
        t = time.perf_counter()
        c = ctx.complete(prompt, n, greedy, ignore_eos=True)
        dt = time.perf_counter() - t
        tokens = c.tokens
        stats = {k: ctx.draft_stats[k] - before[k] for k in before}
        best = max(best, len(c.tokens) / dt)
    ctx.close()
    drafted = stats["drafted"]
    return {"tok_s": round(best, 2), "tokens": tokens, "drafted": drafted, "accepted": stats["accepted"],
            "accept": round(stats["accepted"] / drafted, 3) if drafted else None, "decodes": stats["decodes"]}


def plain_margins(model: Model, prompt: str, n: int, threads: int) -> list[float]:
    """The plain greedy run's gap between its two most likely tokens at each step (log-probabilities,
    which differ as the logits do), reached the way ``ours`` reaches it: the prompt evaluated beforehand."""
    ctx = Context(model, n_ctx=2048, n_threads=threads)
    greedy = SamplerParams.greedy()
    ctx.complete(prompt, 0, greedy)
    c = ctx.complete(prompt, n, greedy, ignore_eos=True, logprobs=2)
    ctx.close()
    assert c.logprobs is not None
    return [round(lp.top[0].logprob - lp.top[1].logprob, 5) for lp in c.logprobs]


def tool(exe: Path, args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, errors="replace", timeout=1800)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{exe.name} failed ({proc.returncode}):\n{out[-2000:]}")
    m = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s", out)
    drafted = re.search(r"n_drafted\s*=\s*(\d+)", out)
    accepted = re.search(r"n_accept\s*=\s*(\d+)", out)
    if not m or not drafted or not accepted:
        raise RuntimeError(f"{exe.name}: no speed or acceptance in its output:\n{out[-2000:]}")
    d, a = int(drafted.group(1)), int(accepted.group(1))
    return {"tok_s": float(m.group(3)), "decoded": int(m.group(1)), "drafted": d, "accepted": a,
            "accept": round(a / d, 3) if d else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--draft-model")
    ap.add_argument("--ngl", type=int, default=0)
    ap.add_argument("--threads", "-t", type=int, default=0)
    ap.add_argument("--bin-dir", type=Path, help="llama-lookup and llama-speculative-simple from the same source")
    ap.add_argument("--task", choices=sorted(TASKS), default="copy")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    threads = a.threads or len(os.sched_getaffinity(0))
    model = Model.load(a.model, n_gpu_layers=a.ngl)
    # random-weight models carry no chat template: their prompt is the task's text
    prompt = (model.apply_chat_template([{"role": "user", "content": TASKS[a.task]}])
              if model.chat_template else TASKS[a.task])
    n_prompt = len(model.tokenize(prompt, special=True))
    modes: dict[str, Any] = {"none": None, "lookup n=3 max=10": PromptLookup(3, 10),
                             "lookup n=3 max=16": PromptLookup(3, 16),
                             "lookup n=3 n_min=1 max=10": PromptLookup(3, 10, n_min=1)}
    draft_model = None
    if a.draft_model:
        draft_model = Model.load(a.draft_model, n_gpu_layers=a.ngl)
        modes["draft model max=16 p_min=0.75"] = DraftModel(draft_model, 16, p_min=0.75)
        modes["draft model max=4 p_min=0"] = DraftModel(draft_model, 4, p_min=0.0)
    rows: dict[str, Any] = {}
    margins = plain_margins(model, prompt, a.max_tokens, threads)
    for name, draft in modes.items():
        rows[name] = ours(model, prompt, a.max_tokens, draft, a.reps, threads)
        base = rows["none"]
        r = rows[name]
        r["speedup"] = round(r["tok_s"] / base["tok_s"], 2)
        r["same_tokens"] = r["tokens"] == base["tokens"]
        first = next((i for i, (x, y) in enumerate(zip(r["tokens"], base["tokens"])) if x != y), None)
        # where they part, how close the plain run's two best tokens were (in logits): a near-tie that the
        # other summation order of a batched check can flip, or a real difference
        r["first_difference"] = None if first is None else {"at": first, "plain_top2_margin": margins[first]}
        print(f"mullama {name:32s} {r['tok_s']:8.1f} tok/s  x{r['speedup']:.2f}  accept {r['accept']}  "
              f"decodes {r['decodes']}  same tokens: {r['same_tokens']}"
              + ("" if first is None else f" (from token {first}, plain top-2 margin {margins[first]:.4f})"),
              flush=True)
    refs: dict[str, Any] = {}
    if a.bin_dir:
        common = ["-m", a.model, "-p", prompt, "-n", str(a.max_tokens), "-c", "2048", "-t", str(threads),
                  "--temp", "0", "-ngl", str(a.ngl), "--ignore-eos"]
        for name, extra in (("llama-lookup max=10", ["--spec-draft-n-max", "10"]),
                            ("llama-lookup max=16", ["--spec-draft-n-max", "16"])):
            refs[name] = tool(a.bin_dir / "llama-lookup", common + extra)
        if a.draft_model:
            refs["llama-speculative-simple max=16 p_min=0.75"] = tool(
                a.bin_dir / "llama-speculative-simple",
                common + ["--spec-type", "draft-simple", "-md", a.draft_model, "-ngld", str(a.ngl), "--spec-draft-n-max", "16", "--spec-draft-p-min", "0.75"])
        for name, r in refs.items():
            print(f"llama.cpp {name:40s} {r['tok_s']:8.1f} tok/s  accept {r['accept']}", flush=True)
    info = "\n".join(line for line in system_info().splitlines() if not line.startswith("library:"))
    result = {"model": Path(a.model).name, "draft_model": Path(a.draft_model).name if a.draft_model else None,
              "ngl": a.ngl, "threads": threads, "task": a.task, "prompt_tokens": n_prompt,
              "max_tokens": a.max_tokens, "reps": a.reps, "system_info": info,
              "mullama": {k: {kk: vv for kk, vv in v.items() if kk != "tokens"} for k, v in rows.items()},
              "llama_cpp": refs}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    # a batched check sums in another order than one-token decodes: a near-tie may flip, nothing else
    far = [k for k, r in rows.items() if r["first_difference"] and r["first_difference"]["plain_top2_margin"] > 0.5]
    if far:
        print(f"drafting changed greedy tokens that were no near-tie: {far}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

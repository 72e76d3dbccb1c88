#!/usr/bin/env python3
"""Renders reference chat prompts with Hugging Face transformers (run once; output is committed).

The tokenizer comes from the SmolLM2 GGUF itself (transformers reads GGUF
with the `gguf` package), so its special tokens are the model's.  Templates:
the model's own, plus several from llama.cpp's models/templates folder that
exercise bos_token, raise_exception, tojson and loop controls.
Writes tests/data/chat_templates.json.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mullama._download import ensure_model  # noqa: E402

TEMPLATES = [
    None,  # the model's own tokenizer.chat_template
    "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "google-gemma-2-2b-it.jinja",
    "Qwen-Qwen2.5-7B-Instruct.jinja",
    "microsoft-Phi-3.5-mini-instruct.jinja",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
]

CONVERSATIONS = [
    [("user", "What is the capital of France?")],
    [("system", "You are terse."), ("user", "Hi!")],
    [("user", "Hello"), ("assistant", "Hi, how can I help?"), ("user", "Tell me a joke.")],
    [("system", "Be kind."), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2"),
     ("user", "Q3")],
    [("user", "Ünïcödé ✓ 日本語 🦙\nwith a newline and  two spaces")],
    [("assistant", "I speak first."), ("user", "Odd order")],
    [("system", "Only a system message")],
]


def main() -> None:
    from transformers import AutoTokenizer

    model = ensure_model()
    tok = AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
    cases = []
    for name in TEMPLATES:
        source = None if name is None else (ROOT / "native/llama.cpp/models/templates" / name).read_text()
        for conv in CONVERSATIONS:
            for add_gen in (False, True):
                msgs = [{"role": r, "content": c} for r, c in conv]
                try:
                    out = tok.apply_chat_template(msgs, chat_template=source, tokenize=False,
                                                  add_generation_prompt=add_gen)
                    error = None
                except Exception as e:  # noqa: BLE001 - the template refused these messages
                    out, error = None, f"{type(e).__name__}: {e}"
                cases.append({"template": name, "messages": conv, "add_generation_prompt": add_gen,
                              "expected": out, "error": error})
    out_path = ROOT / "tests/data/chat_templates.json"
    out_path.write_text(json.dumps({"model": model.name,
                                      # templates that print today's date (strftime_now) printed this day's
                                      "reference_day": datetime.date.today().isoformat(), "cases": cases}, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {out_path}")


if __name__ == "__main__":
    main()

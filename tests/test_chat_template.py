"""apply_chat_template renders exactly what Hugging Face transformers renders (references in tests/data)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from mullama import Model, builtin_chat_templates, chat_template

from .conftest import LLAMA_SRC

DATA = json.loads((Path(__file__).parent / "data" / "chat_templates.json").read_text(encoding="utf-8"))
REFERENCE_DAY = datetime.fromisoformat(DATA["reference_day"] + "T12:00")  # when the references were recorded


@pytest.mark.parametrize("case", DATA["cases"], ids=lambda c: f"{c['template'] or 'own'}-{len(c['messages'])}msg-"
                                                             f"{'gen' if c['add_generation_prompt'] else 'nogen'}")
def test_matches_transformers(model: Model, case: dict, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    # Templates that print today's date (strftime_now) see the day the references were made.
    monkeypatch.setattr(chat_template, "_now", lambda: REFERENCE_DAY)
    source = None if case["template"] is None else (LLAMA_SRC / "models/templates" / case["template"]).read_text()
    messages = [tuple(m) for m in case["messages"]]
    if case["error"]:
        with pytest.raises(ValueError, match="chat template error"):
            model.apply_chat_template(messages, case["add_generation_prompt"], template=source)
    else:
        assert model.apply_chat_template(messages, case["add_generation_prompt"], template=source) == case["expected"]


def test_default_adds_generation_prompt(model: Model) -> None:
    out = model.apply_chat_template([("user", "Hi")])
    assert out.endswith("<|im_start|>assistant\n")


def test_dict_messages_are_accepted(model: Model) -> None:
    assert model.apply_chat_template([{"role": "user", "content": "Hi"}]) == model.apply_chat_template([("user", "Hi")])


@pytest.mark.parametrize("bad", ["just a string", [("user",)], [("user", 5)], [42], None])
def test_bad_messages_raise_type_error(model: Model, bad: object) -> None:
    with pytest.raises(TypeError):
        model.apply_chat_template(bad)  # type: ignore[arg-type]


def test_builtin_named_templates(model: Model) -> None:
    names = builtin_chat_templates()
    assert "chatml" in names and "llama3" in names
    assert model.apply_chat_template([("user", "Hi")], template="chatml") == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    out = model.apply_chat_template([("system", "S"), ("user", "Hi")], template="llama3")
    assert out.startswith("<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>")
    with pytest.raises(ValueError, match="unknown built-in"):
        model.apply_chat_template([("user", "Hi")], template="no-such-template")


def test_model_without_template_gets_a_clear_error() -> None:
    with Model.load(LLAMA_SRC / "models" / "ggml-vocab-gpt-2.gguf", vocab_only=True) as m:
        assert m.chat_template is None
        with pytest.raises(RuntimeError, match="no chat template"):
            m.apply_chat_template([("user", "Hi")])
        assert "user" in m.apply_chat_template([("user", "Hi")], template="chatml")


def test_sandbox_blocks_python_internals(model: Model) -> None:
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(Exception) as e:
        model.apply_chat_template([("user", "x")], template=evil)
    assert "unsafe" in str(e.value).lower() or "security" in str(e.value).lower() or "chat template error" in str(e.value)


def test_special_tokens_are_the_ones_transformers_passes(model: Model) -> None:
    # transformers' GGUF tokenizer for this file: bos <|im_start|>, eos <|im_end|>, pad <|im_end|>, unk <|endoftext|>
    out = model.apply_chat_template([("user", "x")], template="{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|"
                                                               "{{ unk_token }}")
    assert out == "<|im_start|>|<|im_end|>|<|im_end|>|<|endoftext|>"

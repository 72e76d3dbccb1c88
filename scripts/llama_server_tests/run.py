#!/usr/bin/env python3
"""llama.cpp's own server tests (tools/server/tests of the pinned source) against ``mullama serve``.

    python3 scripts/llama_server_tests/run.py [-- PYTEST_ARGS...]

The tests start the server binary named by $LLAMA_SERVER_BIN_PATH; here that
is ``scripts/llama_server_tests/llama-server``, which starts ``mullama serve``
on SmolLM2 (and all-MiniLM-L6-v2 for embeddings) for whatever llama-server
command line a test asks for.  The OpenAI-compatible test files run; tests
that assert llama-server's own API (``/completion``, its extensions and
flags) or text and token counts of the models they download are deselected
by name, each with its reason (``DESELECTED`` below).  Prints selected /
passed / failed / deselected.  Needs the test files' own dependencies:
``pip install requests wget filelock`` (pytest and openai are in
requirements-dev.txt).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

FILES = ["test_basic.py", "test_chat_completion.py", "test_completion.py", "test_embedding.py", "test_tool_call.py",
         "test_security.py", "test_compat_oai_responses.py"]

THEIR_MODELS = "asserts text or token counts of the model it downloads (SmolLM2 answers otherwise)"
NATIVE = "llama-server's own /completion API, not OpenAI's"
FINGERPRINT = "asserts llama-server's system_fingerprint format (b<build number>)"
CORS = "llama-server's --cors-origins semantics (localhost allowed by default; mullama allows no origin unless named)"

DESELECTED: dict[str, str] = {
    # test_basic.py
    "test_basic.py::test_server_props": "llama-server's /props extension",
    "test_basic.py::test_server_models": "asserts the models list of llama-server's router",
    "test_basic.py::test_server_slots": "llama-server's /slots extension",
    "test_basic.py::test_load_split_model": THEIR_MODELS,
    "test_basic.py::test_no_webui": "llama-server's web UI",
    "test_basic.py::test_no_ui": "llama-server's web UI",
    "test_basic.py::test_server_model_aliases_and_tags": "llama-server's --alias lists and --tags",
    "test_basic.py::test_server_multiple_addresses": "llama-server listens on several --host addresses at once",
    # test_chat_completion.py
    "test_chat_completion.py::test_chat_completion": THEIR_MODELS,
    "test_chat_completion.py::test_chat_completion_stream": THEIR_MODELS,
    "test_chat_completion.py::test_chat_completion_with_openai_library": FINGERPRINT,
    "test_chat_completion.py::test_chat_completion_cached_tokens": THEIR_MODELS,
    "test_chat_completion.py::test_chat_template": "llama-server's --chat-template flag",
    "test_chat_completion.py::test_chat_template_assistant_prefill": "llama-server continues a final assistant message",
    "test_chat_completion.py::test_apply_chat_template": "llama-server's /apply-template extension",
    "test_chat_completion.py::test_completion_with_response_format": THEIR_MODELS,
    "test_chat_completion.py::test_completion_with_json_schema": THEIR_MODELS,
    "test_chat_completion.py::test_completion_with_grammar": "llama-server's 'grammar' request field",
    "test_chat_completion.py::test_completion_with_invalid_grammar": "llama-server's 'grammar' request field",
    "test_chat_completion.py::test_chat_completion_with_timings_per_token": "llama-server's timings extension",
    "test_chat_completion.py::test_logit_bias": "logit_bias is refused (not implemented)",
    "test_chat_completion.py::test_context_size_exceeded": THEIR_MODELS,
    "test_chat_completion.py::test_context_size_exceeded_stream": THEIR_MODELS,
    "test_chat_completion.py::test_return_progress": "llama-server's return_progress extension",
    "test_chat_completion.py::test_verbose_debug": "llama-server's --verbose debug fields",
    "test_chat_completion.py::test_chat_template_continue_final_message_vllm_compat": "vLLM's continue_final_message",
    "test_chat_completion.py::test_chat_template_continue_final_message_mutual_exclusion":
        "vLLM's continue_final_message",
    "test_chat_completion.py::test_invalid_chat_completion_req[messages7]":
        "llama-server refuses two assistant messages at the end (it continues a final one); OpenAI accepts them",
    "test_chat_completion.py::test_chat_completions_token_count": "llama-server's /chat/completions/input_tokens",
    # test_completion.py: every test but these two calls /completion
    **{f"test_completion.py::{name}": NATIVE for name in [
        "test_completion", "test_completion_stream", "test_completion_stream_vs_non_stream",
        "test_consistent_result_same_seed", "test_different_result_different_seed",
        "test_consistent_result_different_batch_size", "test_cache_vs_nocache_prompt", "test_nocache_long_input_prompt",
        "test_completion_with_tokens_input", "test_completion_parallel_slots", "test_completion_unified",
        "test_completion_response_fields", "test_n_probs", "test_n_probs_stream", "test_n_probs_post_sampling",
        "test_n_probs_post_backend_sampling", "test_logit_bias", "test_cancel_request", "test_completion_prompt_cache",
        "test_json_prompt_no_mtmd", "test_json_prompt_mtm_error_when_not_supported", "test_return_tokens",
        "test_completion_with_response_fields"]},
    "test_completion.py::test_completion_with_openai_library": FINGERPRINT,
    "test_completion.py::test_completion_stream_with_openai_library": THEIR_MODELS,
    "test_completion.py::test_completion_stream_with_openai_library_stops": THEIR_MODELS,
    # test_embedding.py
    "test_embedding.py::test_embedding_mixed_input": "llama-server accepts strings and token ids mixed in one array "
                                                      "(OpenAI's API does not)",
    "test_embedding.py::test_embedding_pooling_none": "llama-server's --pooling none (a vector per token)",
    "test_embedding.py::test_embedding_pooling_none_oai": "llama-server's --pooling none (a vector per token)",
    "test_embedding.py::test_embedding_content_text_same_as_string": "llama-server's {'content': ...} input form",
    "test_embedding.py::test_embedding_error_prompt_too_long": "asserts llama-server's message text ('too large')",
    # test_tool_call.py: the tool tests run models from a hub, and SmolLM2 does not choose the same calls
    **{f"test_tool_call.py::{name}": THEIR_MODELS for name in [
        "test_hello_world", "test_weather", "test_calc_result", "test_thoughts",
        "test_completion_with_required_tool_real_model", "test_completion_without_tool_call_slow",
        "test_completion_without_tool_call_fast", "test_completion_with_required_tool_tiny_fast",
        "test_completion_with_required_tool_tiny_slow"]},
    # test_security.py
    "test_security.py::test_correct_api_key": "asserts /completions' answer in llama-server's 'content' field",
    "test_security.py::test_correct_api_key_anthropic_header": "Anthropic's x-api-key header (llama-server's "
                                                              "Anthropic API)",
    "test_security.py::test_access_static_assets_without_api_key": "llama-server's web UI",
    "test_security.py::test_cors_options": CORS,
    "test_security.py::test_cors_origins_localhost_reflects": CORS,
    "test_security.py::test_cors_origins_localhost_rejects": CORS,
    "test_security.py::test_cors_origins_defaults_to_localhost_with_tools_enabled": CORS,
    "test_security.py::test_cors_proxy_only_forwards_explicit_proxy_headers": "llama-server's CORS proxy",
    "test_security.py::test_local_media_file": "llama-server's --media-path",
    # test_compat_oai_responses.py
    "test_compat_oai_responses.py::test_responses_with_openai_library": THEIR_MODELS,
    "test_compat_oai_responses.py::test_responses_stream_with_llama_telemetry": "llama-server's timings in events",
}


PLUGIN = """
import json, os

def pytest_collection_modifyitems(config, items):
    names = set(json.loads(os.environ["MULLAMA_DESELECT"]))
    # a name is a test function (all its cases) or one case with its [parameters]
    dropped = [i for i in items if i.nodeid in names or i.nodeid.split("[")[0] in names]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    from mullama._download import ensure_model
    from convert_minilm import ensure_minilm

    source = ROOT / "native" / "llama.cpp" / "tools" / "server" / "tests"
    if not (source / "utils.py").is_file():
        sys.exit(f"{source} is missing: run python3 scripts/build_lib.py first (it fetches the pinned source)")
    extra = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    with tempfile.TemporaryDirectory(prefix="mullama-llama-server-tests-") as tmp:
        tests = Path(tmp) / "tests"
        shutil.copytree(source, tests)
        env = {**os.environ, "LLAMA_SERVER_BIN_PATH": str(HERE / "llama-server"), "PORT": str(free_port()),
               "MULLAMA_TEST_SMOLLM": str(ensure_model(quiet=True)), "MULLAMA_TEST_MINILM": str(ensure_minilm())}
        # deselected by exact name (pytest's --deselect takes prefixes: test_x would also drop test_x_stream)
        (tests / "mullama_deselect.py").write_text(PLUGIN)
        env["MULLAMA_DESELECT"] = json.dumps(sorted(f"unit/{t}" for t in DESELECTED))
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "mullama_deselect", "-rfp",
                "--tb=line", *[f"unit/{f}" for f in FILES], *extra]
        proc = subprocess.run(args, cwd=tests, env=env)
    print("\nDeselected, by reason:")
    reasons: dict[str, list[str]] = {}
    for test, reason in DESELECTED.items():
        reasons.setdefault(reason, []).append(test)
    for reason, names in reasons.items():
        print(f"  {reason}: {len(names)} test functions")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

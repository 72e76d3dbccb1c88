"""Model on the real SmolLM2-135M-Instruct GGUF: loading, properties, metadata, handles, errors."""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path

import pytest

import mullama
from mullama import Context, Model

from .conftest import run_python


def test_properties(model: Model) -> None:
    assert model.n_ctx_train == 8192
    assert model.n_embd == 576
    assert model.n_vocab == 49152
    assert model.n_layer == 30
    assert model.n_head == 9
    assert model.token_bos == 1 and model.token_eos == 2
    assert model.n_params == 134515008
    assert 90_000_000 < model.size < 100_000_000
    assert model.architecture == "llama"
    assert model.name == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert model.description == "llama 256M Q4_1"
    assert repr(model) == "Model(name='Smollm2 135M 8k Lc100K Mix1 Ep2', arch='llama', params=134515008, size=96MB)"


def test_metadata(model: Model) -> None:
    meta = model.metadata()
    assert meta["general.architecture"] == "llama"
    assert meta["llama.context_length"] == "8192"
    assert meta["tokenizer.ggml.bos_token_id"] == "1"
    assert meta["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert model.meta("no.such.key") is None


def test_token_is_eog(model: Model) -> None:
    assert model.token_is_eog(2)  # <|im_end|>
    assert not model.token_is_eog(model.tokenize("Hello", add_bos=False)[0])
    with pytest.raises(ValueError, match="49152"):
        model.token_is_eog(49152)
    with pytest.raises(TypeError):
        model.token_is_eog("2")  # type: ignore[arg-type]


def test_load_accepts_pathlike_and_str(smollm_path: Path) -> None:
    for p in (smollm_path, str(smollm_path)):
        with Model.load(p, vocab_only=True) as m:
            assert m.n_vocab == 49152
        assert m.closed


def test_load_modes(smollm_path: Path) -> None:
    for mmap_, mlock in ((False, False), (True, False)):
        m = Model.load(smollm_path, use_mmap=mmap_, use_mlock=mlock)
        assert m.tokenize("Hi", add_bos=False) == [26843]
        m.close()


def test_progress_callback_reports_and_can_cancel(smollm_path: Path) -> None:
    seen: list[float] = []
    m = Model.load(smollm_path, progress_callback=seen.append)
    m.close()
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    with pytest.raises(RuntimeError, match="Failed to load model"):
        Model.load(smollm_path, progress_callback=lambda f: False)

    class Boom(Exception):
        pass

    def explode(f: float) -> None:
        raise Boom("from callback")
    with pytest.raises(Boom):
        Model.load(smollm_path, progress_callback=explode)


def test_gpu_layers_on_cpu_build_warns(smollm_path: Path) -> None:
    if mullama.supports_gpu_offload():
        pytest.skip("this library has GPU offload")
    with pytest.warns(RuntimeWarning, match="no GPU offload"):
        Model.load(smollm_path, n_gpu_layers=-1, vocab_only=True).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Model.load(smollm_path, n_gpu_layers=0, vocab_only=True).close()


def test_missing_file_message_matches_spec() -> None:
    with pytest.raises(RuntimeError) as e:
        Model.load("./nonexistent.gguf")
    assert str(e.value) == "Failed to load model: No such file or directory: ./nonexistent.gguf"


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (os.urandom(4096), "magic"),
    (b"GGUF" + (3).to_bytes(4, "little") + (2**62).to_bytes(8, "little") + (1).to_bytes(8, "little") + b"\0" * 64,
     "tensors"),
    (b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (2**40).to_bytes(8, "little") + b"\0" * 64,
     "key/value"),
    (b"GGUF" + (99).to_bytes(4, "little") + b"\0" * 64, "version"),
])
def test_bad_files_raise_runtime_error(tmp_path: Path, content: bytes, needle: str) -> None:
    f = tmp_path / "bad.gguf"
    f.write_bytes(content)
    with pytest.raises(RuntimeError, match=needle):
        Model.load(f)


def test_truncated_model_raises(tmp_path: Path, smollm_path: Path) -> None:
    data = smollm_path.read_bytes()
    for cut in (100, 2_000_000, len(data) // 2):
        f = tmp_path / f"cut{cut}.gguf"
        f.write_bytes(data[:cut])
        with pytest.raises(RuntimeError, match="Failed to load model"):
            Model.load(f)


def test_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="is a directory"):
        Model.load(tmp_path)


@pytest.mark.parametrize("kwargs", [{"path": 42}, {"path": b"x.gguf"}, {"n_gpu_layers": "1"},
                                    {"n_gpu_layers": 1.5}, {"use_mmap": 1}, {"vocab_only": "yes"},
                                    {"progress_callback": 3}])
def test_wrong_types_raise_type_error(smollm_path: Path, kwargs: dict[str, object]) -> None:
    args = {"path": smollm_path, **kwargs}
    with pytest.raises(TypeError):
        Model.load(**args)  # type: ignore[arg-type]


def test_use_after_close_raises_and_close_is_idempotent(smollm_path: Path) -> None:
    m = Model.load(smollm_path, vocab_only=True)
    m.close()
    m.close()
    assert repr(m) == "Model(closed)"
    for call in (lambda: m.tokenize("x"), lambda: m.n_vocab, lambda: m.metadata(), lambda: m.detokenize([1]),
                 lambda: m.apply_chat_template([("user", "x")]), lambda: m.token_is_eog(1), lambda: m.n_embd):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    with pytest.raises(RuntimeError, match="closed"):
        Context(m)


def test_model_direct_construction_is_refused() -> None:
    with pytest.raises(TypeError, match="Model.load"):
        Model()


def test_context_keeps_model_alive(smollm_path: Path) -> None:
    m = Model.load(smollm_path)
    ctx = Context(m, n_ctx=256)
    del m
    gc.collect()
    assert ctx.generate("Hello", max_tokens=3, params=mullama.SamplerParams.greedy())
    ctx.close()


def test_closing_model_before_context_defers_the_free(smollm_path: Path) -> None:
    m = Model.load(smollm_path)
    ctx = Context(m, n_ctx=256)
    m.close()
    with pytest.raises(RuntimeError, match="closed"):
        ctx.generate("Hello", max_tokens=3)
    assert m._finalizer is not None and m._finalizer.alive  # native model still held for the context
    ctx.close()
    assert not m._finalizer.alive


def test_freeing_in_any_order_and_at_exit_is_silent(smollm_path: Path) -> None:
    code = f"""
import mullama, gc
from mullama import Model, Context, SamplerParams
m = Model.load({str(smollm_path)!r})
c1 = Context(m, n_ctx=128); c2 = Context(m, n_ctx=128)
c1.generate("Hi", max_tokens=2, params=SamplerParams.greedy())
del m; gc.collect()
c1.close()
keep = Context(c2.model, n_ctx=64)   # still alive at exit, as is c2
mullama.backend_free(); mullama.backend_free()
print("done")
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "done\n" and r.stderr == ""


def test_utility_functions() -> None:
    assert isinstance(mullama.supports_gpu_offload(), bool)
    assert mullama.max_devices() >= 1
    info = mullama.system_info()
    assert "CPU" in info and "libllama" in info
    assert "0c1e57098bba43ac29e6e3b677cdceebdd22334f" in mullama.version()
    mullama.backend_init()
    mullama.backend_init()
    assert any(d["type"] == "cpu" for d in mullama.devices())


def test_llama_log_goes_to_python_logging(smollm_path: Path) -> None:
    code = f"""
import logging, mullama
records = []
class H(logging.Handler):
    def emit(self, r): records.append(r)
logging.getLogger("mullama").addHandler(H()); logging.getLogger("mullama").setLevel(logging.DEBUG)
mullama.Model.load({str(smollm_path)!r}, vocab_only=True)
print(len(records) > 5, any("llama" in r.getMessage() for r in records))
"""
    r = run_python(code)
    assert r.stdout.strip() == "True True" and r.stderr == "", r.stderr


def test_library_is_silent_by_default(smollm_path: Path) -> None:
    r = run_python(f"import mullama; mullama.Model.load({str(smollm_path)!r}); print('ok')")
    assert r.stdout == "ok\n" and r.stderr == ""


def test_bad_library_path_lists_what_was_tried(tmp_path: Path) -> None:
    r = run_python("import mullama; mullama.system_info()", env={"MULLAMA_LIB": str(tmp_path)})
    assert r.returncode == 1
    assert "LibraryLoadError" in r.stderr and str(tmp_path / "libllama.so") in r.stderr
    bogus = tmp_path / "libllama.so"
    bogus.write_bytes(b"not a library" * 1000)
    r = run_python("import mullama; mullama.system_info()", env={"MULLAMA_LIB": str(bogus)})
    assert "LibraryLoadError" in r.stderr and "invalid ELF header" in r.stderr


def test_library_from_another_commit_is_refused(tmp_path: Path, lib_dir: Path) -> None:
    import json
    import shutil
    for f in lib_dir.glob("*.so"):
        shutil.copy(f, tmp_path / f.name)
    info = json.loads((lib_dir / "build_info.json").read_text())
    info["llama_cpp_commit"] = "deadbeef" * 5
    (tmp_path / "build_info.json").write_text(json.dumps(info))
    r = run_python("import mullama; mullama.system_info()", env={"MULLAMA_LIB": str(tmp_path)})
    assert "LibraryLoadError" in r.stderr and "deadbeef" in r.stderr

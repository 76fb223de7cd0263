#!/usr/bin/env python3
"""Fetch, verify and unpack sen's native dependencies into a cache outside the checkout.

    python3 scripts/deps.py            # what `make deps` runs
    SEN_DEPS_VERIFY=full make deps     # also re-hash every unpacked file

Everything comes from PyPI wheels pinned by name, exact file and sha256 in
deps/wheels.json. Only the parts sen needs are unpacked (libtorch's include/
and lib/, the two CUDA runtime libraries libtorch links against, the ONNX
Runtime shared library, the CLIP BPE vocabulary). The cache lives in
$SEN_CACHE (default ~/.cache/sen), so a clean clone on the same machine
reuses it. The checkout gets a git-ignored link `.sen-cache` to it, which
`.cargo/config.toml` uses, so plain `cargo build/test/run` work.

A finished run is recorded in `<cache>/deps.stamp` (the lock's hash and the
size and sha256 of every unpacked file); a second run only checks presence
and sizes against it and re-hashes every file under 64 MB, which takes about a second.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `deps.py` fetches the CPU set; `deps.py cuda` (make deps-cuda) the CUDA libraries
# libtorch_cuda needs at run time, for GPU machines without a PyTorch install;
# `deps.py ort-gpu` (make deps-ort-gpu) ONNX Runtime's GPU build for `sen --ort-lib`.
SET = sys.argv[1] if len(sys.argv) > 1 else "cpu"
# `deps.py aarch64` (make test-aarch64) ONNX Runtime's aarch64 build for the emulated
# tests; `deps.py ort-oldest` (make deps) the oldest ONNX Runtime sen is tested against;
# `deps.py zig` (make dist-aarch64) the zig toolchain for glibc-bounded release builds.
# `deps.py milvus` (make test-milvus) milvus-lite in a virtual environment: a Python
# program, so its lock is a pip requirements file with a sha256 per wheel.
if len(sys.argv) > 1 and sys.argv[1] == "milvus":
    SET = "milvus"
SETS = {"cpu": "wheels.json", "cuda": "wheels-cuda.json", "ort-gpu": "wheels-ort-gpu.json",
        "aarch64": "wheels-aarch64.json", "ort-oldest": "wheels-ort-oldest.json",
        "zig": "wheels-zig.json"}
if SET not in SETS and SET != "milvus":
    print(f"make deps: unknown set {SET!r}; one of {', '.join(SETS)}", file=sys.stderr)
    sys.exit(2)
LOCK = os.path.join(REPO, "deps", SETS.get(SET, "milvus-lite.txt"))
STAMP_NAME = "deps.stamp" if SET == "cpu" else f"deps-{SET}.stamp"
# Files smaller than this are re-hashed on every run (the vocabulary, ONNX Runtime,
# the CUDA runtime libraries, headers); the large libtorch libraries only have
# their size checked unless SEN_DEPS_VERIFY=full.
HASH_ALWAYS_BELOW = 64 << 20
LINK = os.path.join(REPO, ".sen-cache")


def cache_dir():
    return os.path.abspath(os.path.expanduser(os.environ.get("SEN_CACHE") or "~/.cache/sen"))


def die(msg):
    print(f"make deps: error: {msg}", file=sys.stderr)
    sys.exit(1)


def sha256_file(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def lock_hash():
    with open(LOCK, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_stamp(cache):
    try:
        with open(os.path.join(cache, STAMP_NAME)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def stamp_problems(cache, stamp, full):
    """Every reason the cache does not match its stamp (empty list = healthy)."""
    problems = []
    if stamp is None:
        return [f"no {STAMP_NAME} (never completed)"]
    if stamp.get("lock_sha256") != lock_hash():
        return ["deps/wheels.json changed since the cache was filled"]
    for rel, meta in stamp.get("files", {}).items():
        p = os.path.join(cache, rel)
        if not os.path.isfile(p):
            problems.append(f"missing {rel}")
        elif os.path.getsize(p) != meta["bytes"]:
            problems.append(f"{rel}: {os.path.getsize(p)} bytes, expected {meta['bytes']}")
        elif (full or meta["bytes"] < HASH_ALWAYS_BELOW) and sha256_file(p) != meta["sha256"]:
            problems.append(f"{rel}: sha256 mismatch")
    return problems


def fetch_wheel(lock, wheel, wheels_dir):
    """Download one pinned wheel (if not cached) and verify its sha256."""
    path = os.path.join(wheels_dir, wheel["file"])
    if os.path.isfile(path) and sha256_file(path) == wheel["sha256"]:
        return path
    if os.path.exists(path):
        print(f"  {wheel['file']}: sha256 mismatch in cache, downloading again")
        os.remove(path)
    tmp = tempfile.mkdtemp(prefix=".download-", dir=wheels_dir)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--python-version", lock["python_version"],
           "--implementation", "cp", "-d", tmp]
    for plat in lock["platforms"]:
        cmd += ["--platform", plat]
    cmd.append(wheel["requirement"])
    print(f"  downloading {wheel['requirement']} ...", flush=True)
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    got = os.path.join(tmp, wheel["file"])
    if r.returncode != 0 or not os.path.isfile(got):
        shutil.rmtree(tmp, ignore_errors=True)
        die(f"pip could not download {wheel['file']} ({wheel['requirement']}); is PyPI reachable?\n"
            + (r.stderr.strip()[-2000:] or r.stdout.strip()[-2000:]))
    digest = sha256_file(got)
    if digest != wheel["sha256"]:
        shutil.rmtree(tmp, ignore_errors=True)
        die(f"{wheel['file']}: sha256 {digest} does not match the pinned {wheel['sha256']} in deps/wheels.json")
    os.replace(got, path)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"  {wheel['file']}: {os.path.getsize(path) / 1e6:.1f} MB in {time.time() - t0:.0f}s, sha256 ok")
    return path


def unpack(wheel, whl_path, staging):
    """Extract the mapped members of one wheel into `staging`; returns the relative paths written."""
    written = []
    with zipfile.ZipFile(whl_path) as z:
        if wheel.get("extract_libs"):
            # Every shared library under nvidia/<package>/lib/, where libtorch_cuda's
            # RPATH ($ORIGIN/../../nvidia/...) looks for it.
            for name in z.namelist():
                if re.match(r"^nvidia/[^/]+/lib/[^/]+\.so[.0-9]*$", name):
                    out = os.path.join(staging, name)
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    with z.open(name) as fi, open(out, "wb") as fo:
                        shutil.copyfileobj(fi, fo, 1 << 22)
                    os.chmod(out, 0o755)
                    written.append(name)
            if not written:
                die(f"{wheel['file']} has no nvidia/*/lib/*.so files; deps/wheels-cuda.json is wrong")
            return written
        for src, dst in wheel["extract"].items():
            members = [n for n in z.namelist() if (n.startswith(src) if src.endswith("/") else n == src)]
            members = [n for n in members if not n.endswith("/")]
            if not members:
                die(f"{wheel['file']} has no member {src}; deps/wheels.json is wrong")
            for name in members:
                rel = dst + name[len(src):] if src.endswith("/") else dst
                out = os.path.join(staging, rel)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with z.open(name) as fi, open(out, "wb") as fo:
                    shutil.copyfileobj(fi, fo, 1 << 22)
                info = z.getinfo(name)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(out, mode)
                written.append(rel)
        if "build_version_from" in wheel:
            text = z.read(wheel["build_version_from"]).decode()
            m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
            if not m:
                die(f"{wheel['file']}: no __version__ in {wheel['build_version_from']}")
            out = os.path.join(staging, wheel["build_version_to"])
            with open(out, "w") as f:
                f.write(m.group(1) + "\n")
            written.append(wheel["build_version_to"])
    return written


def link_checkout(cache):
    """Point the git-ignored `.sen-cache` link in the checkout at the cache."""
    if os.path.islink(LINK) and os.readlink(LINK) == cache:
        return
    if os.path.lexists(LINK):
        if not os.path.islink(LINK):
            die(f"{LINK} exists and is not a link; remove it and run make deps again")
        os.remove(LINK)
    tmp = LINK + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(cache, tmp)
    os.replace(tmp, LINK)


def milvus():
    """milvus-lite and its dependencies, every wheel hash-checked by pip, in a venv
    built beside the stamp and moved into place whole."""
    cache = cache_dir()
    root = os.path.join(cache, "milvus-lite")
    venv = os.path.join(root, "venv")
    stamp_path = os.path.join(cache, STAMP_NAME)
    want = lock_hash()
    try:
        with open(stamp_path) as f:
            ok = json.load(f).get("lock_sha256") == want
    except (OSError, ValueError):
        ok = False
    exe = os.path.join(venv, "bin", "milvus-lite")
    if ok and os.access(exe, os.X_OK):
        print(f"deps: ok (milvus-lite in {venv})")
        return
    print(f"deps: installing milvus-lite into {venv} (about 110 MB of wheels)")
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=root)
    try:
        # Built beside its final path and renamed into place whole, so a failed
        # install never leaves a half venv; the scripts' absolute paths are fixed below.
        subprocess.run([sys.executable, "-m", "venv", staging], check=True)
        r = subprocess.run([os.path.join(staging, "bin", "python"), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", "--require-hashes", "--no-deps",
                            "--only-binary=:all:", "-r", LOCK])
        if r.returncode != 0:
            die(f"pip could not install {LOCK} (hash-checked); see above")
        if os.path.lexists(venv):
            shutil.rmtree(venv)
        os.replace(staging, venv)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Console scripts carry the staging path in their #! line; rewrite them.
    bindir = os.path.join(venv, "bin")
    for name in os.listdir(bindir):
        p = os.path.join(bindir, name)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        with open(p, "rb") as f:
            data = f.read()
        if staging.encode() in data:
            with open(p, "wb") as f:
                f.write(data.replace(staging.encode(), venv.encode()))
    r = subprocess.run([os.path.join(venv, "bin", "python"), "-c", "import milvus_lite, pymilvus"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        die(f"milvus-lite installed but does not import: {r.stderr.strip()}")
    tmp = stamp_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"lock_sha256": want, "venv": venv}, f)
    os.replace(tmp, stamp_path)
    print(f"deps: ok (milvus-lite in {venv})")


def main():
    if SET == "milvus":
        return milvus()
    full = os.environ.get("SEN_DEPS_VERIFY") == "full"
    cache = cache_dir()
    os.makedirs(cache, exist_ok=True)
    with open(LOCK) as f:
        lock = json.load(f)

    stamp = load_stamp(cache)
    problems = stamp_problems(cache, stamp, full)
    if not problems:
        link_checkout(cache)
        print(f"deps: ok ({len(stamp['files'])} files in {cache}{', re-hashed' if full else ''})")
        return
    print(f"deps: filling {cache}: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))

    wheels_dir = os.path.join(cache, "wheels")
    os.makedirs(wheels_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=cache)
    files = {}
    try:
        for wheel in lock["wheels"]:
            whl = fetch_wheel(lock, wheel, wheels_dir)
            for rel in unpack(wheel, whl, staging):
                p = os.path.join(staging, rel)
                files[rel] = {"bytes": os.path.getsize(p), "sha256": sha256_file(p)}
            for rel, exp in wheel.get("expect", {}).items():
                if files[rel]["bytes"] != exp["bytes"]:
                    die(f"{rel} from {wheel['file']} has {files[rel]['bytes']} bytes, expected {exp['bytes']}")
        # Move each file into place (an atomic rename per file; the CPU and CUDA sets
        # share nvidia/cu13/lib), then write the stamp last.
        for rel in sorted(files):
            dst = os.path.join(cache, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(os.path.join(staging, rel), dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stamp = {"lock_sha256": lock_hash(), "files": files}
    tmp = os.path.join(cache, STAMP_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(stamp, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(cache, STAMP_NAME))
    link_checkout(cache)
    print(f"deps: ok ({len(files)} files in {cache})")


if __name__ == "__main__":
    main()

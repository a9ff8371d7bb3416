"""Digests that name things: canonical-JSON hashes (trial keys, cache keys) and file checksums (provenance)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable


def digest_of(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` (options, file digests, versions)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def files_fingerprint(paths: Iterable[Path], base: Path) -> str:
    """sha256 of (path relative to ``base``, size, mtime_ns) of each file: cheap, and changes whenever a file is
    added, removed, rewritten or touched. A file that cannot be stat'ed (a dangling symlink, a symlink loop, no
    permission) counts by its error: it is the decoder's job to report or skip it like any unreadable image."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        try:
            stat = path.stat()
            state = f"{stat.st_size}\0{stat.st_mtime_ns}"
        except OSError as exc:
            state = f"unreadable\0{exc.errno}"
        digest.update(f"{path.relative_to(base).as_posix()}\0{state}\n".encode())
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks: records say exactly which weights or data a result used."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

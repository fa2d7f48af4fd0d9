"""Filesystem helpers shared by the modules that write model folders."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it is renamed to `path`, on failure removed.

    Readers therefore see either the complete folder or none: a crash or Ctrl-C mid-write leaves nothing half-written.

    Example:
        >>> with atomic_directory("out/model") as tmp:  # doctest: +SKIP
        ...     model.save_pretrained(tmp)
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    apply_umask(tmp, 0o777)
    try:
        yield tmp
        if path.exists():
            # A folder cannot be atomically replaced by rename: move the old one aside first, drop it afterwards.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def apply_umask(path: str | Path, mode: int) -> None:
    """Give a file made by `tempfile` (created private) the permissions a plain open()/mkdir() would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Root of tga-hf's cache: `$TGA_HF_CACHE`, else `$XDG_CACHE_HOME/tga_hf`, else `~/.cache/tga_hf`."""
    if os.environ.get("TGA_HF_CACHE"):
        return Path(os.environ["TGA_HF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tga_hf"

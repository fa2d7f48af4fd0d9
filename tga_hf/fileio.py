"""Filesystem helpers shared by the modules that write model folders."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_partials(path: Path) -> None:
    """Remove the hidden partial folders that killed writers of `path` left behind (their process is gone)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.partial-(\d+)-[0-9a-f]+$")
    for sibling in path.parent.iterdir():
        match = pattern.match(sibling.name)
        if match and sibling.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty hidden folder beside `path`; when the block succeeds it is renamed to `path` (replacing an
    existing `path` only with `overwrite=True`), when it fails it is deleted.

    Readers therefore see either the complete folder or none. A writer killed outright (SIGKILL) leaves only its hidden
    `.NAME.partial-PID-*` folder, which the next write to the same path removes.

    Example:
        >>> with atomic_directory("out/model") as tmp:  # doctest: +SKIP
        ...     model.save_pretrained(tmp)
    """
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(path)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial = path.parent / f".{path.name}.partial-{tag}"
    partial.mkdir()
    try:
        yield partial
        if path.exists():
            if not overwrite:  # created by someone else while this write ran
                raise FileExistsError(f"{path} appeared while it was being written: it was left untouched")
            # A folder cannot be atomically replaced by rename: move the old one aside first, drop it afterwards.
            replaced = path.parent / f".{path.name}.replaced-{tag}"
            os.replace(path, replaced)
            os.replace(partial, path)
            shutil.rmtree(replaced)
        else:
            os.replace(partial, path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
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

"""Filesystem helpers shared by every module that writes files or folders: one sha256, one atomic file write, one
atomic folder write with a manifest, so that a folder is only ever replaced when it is recognisably tga-hf's own."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

# Written into every folder that `atomic_directory` produces: what was written (relative path -> size, and sha256 when
# asked for). A folder is replaced in place only when this file says it is ours and nothing was added since.
MANIFEST = "tga_hf_manifest.json"
MANIFEST_FORMAT = "tga-hf-output"
_MANIFEST_VERSION = 1


class NotOurOutputError(FileExistsError):
    """A folder that `atomic_directory(..., overwrite=True)` would replace is not recognisably tga-hf's own output (no
    manifest, or files added or changed since it was written); it is left untouched."""


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


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (the one file hash of the package: caches, wheels, indexes, manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def safetensors_sha256(files: Iterable[str | Path], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of the tensors stored in safetensors `files`, independent of how they were written: for every tensor,
    in name order, its name, dtype and shape (one JSON line) and its raw little-endian bytes. Two checkpoints holding
    the same tensors have the same digest whatever their sharding, header metadata or tensor order; a tensor whose
    name appears in two files raises ValueError. Reads the headers and the tensor bytes, never loads a tensor."""
    entries: dict[str, tuple[Path, int, int, str, list[int]]] = {}
    for file in map(Path, files):
        with open(file, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            try:
                header = json.loads(handle.read(header_size))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"{file} is not a safetensors file: {error}") from None
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name in entries:
                raise ValueError(f"tensor {name} is stored twice: in {entries[name][0]} and {file}")
            start, end = info["data_offsets"]
            entries[name] = (file, 8 + header_size + start, end - start, info["dtype"], info["shape"])
    if not entries:
        raise ValueError("no tensors to digest")
    digest = hashlib.sha256()
    for name in sorted(entries):
        file, offset, length, dtype, shape = entries[name]
        digest.update(json.dumps([name, dtype, shape]).encode() + b"\n")
        with open(file, "rb") as handle:
            handle.seek(offset)
            while length > 0:
                chunk = handle.read(min(chunk_size, length))
                if not chunk:
                    raise ValueError(f"{file} is truncated: tensor {name} ends past the end of the file")
                digest.update(chunk)
                length -= len(chunk)
    return digest.hexdigest()


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors weight files of a transformers checkpoint folder: `model.safetensors`, or the shards its
    `model.safetensors.index.json` names. FileNotFoundError naming the folder when it has neither."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise FileNotFoundError(f"{folder} holds no model.safetensors (nor a model.safetensors.index.json)")


def apply_umask(path: str | Path, mode: int) -> None:
    """Give a file made by `tempfile` (created private) the permissions a plain open()/mkdir() would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path`; when the block succeeds it is renamed onto `path` (replacing a
    file there), when it fails it is deleted. Readers see the old file or the complete new one, never a partial one.

    Example:
        >>> with atomic_file("out/report.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text(text)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through `atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# ------------------------------------------------------------------------------------------------------ manifests


def _listed_files(folder: Path) -> list[Path]:
    """Every file under `folder` (recursively, hidden ones included) but the manifest, as sorted relative paths."""
    return sorted(
        path.relative_to(folder)
        for path in folder.rglob("*")
        if (path.is_file() or path.is_symlink()) and path.relative_to(folder) != Path(MANIFEST)
    )


def write_manifest(folder: str | Path, kind: str, checksums: bool = False, source: Mapping[str, Any] | None = None):
    """Write `folder/tga_hf_manifest.json`: the `kind` of output and every file in it (size, and sha256 with
    `checksums`). `atomic_directory` calls this for every folder it writes."""
    folder = Path(folder)
    files = {}
    for relative in _listed_files(folder):
        entry: dict[str, Any] = {"size": (folder / relative).stat().st_size}
        if checksums:
            entry["sha256"] = sha256_file(folder / relative)
        files[relative.as_posix()] = entry
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": _MANIFEST_VERSION,
        "kind": kind,
        "source": dict(source or {}),
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a folder written by `atomic_directory`; ValueError naming the file when absent or unreadable."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{Path(folder)} has no {MANIFEST}: not a complete folder written by tga-hf")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is unreadable: {error}") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{path} is unreadable: it holds no 'files' mapping")
    return manifest


def verify_manifest(folder: str | Path) -> None:
    """Check every file listed in the manifest: present, the recorded size and (where recorded) sha256. Raises
    ValueError naming the first bad file."""
    folder = Path(folder)
    for name, expected in read_manifest(folder)["files"].items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path} is missing")
        size = path.stat().st_size
        if size != expected.get("size"):
            raise ValueError(f"{path} has {size:,} bytes, {MANIFEST} records {expected.get('size')} (truncated?)")
        if "sha256" in expected and sha256_file(path) != expected["sha256"]:
            raise ValueError(f"{path} does not match its sha256 in {MANIFEST} (corrupted)")


def check_replaceable(path: str | Path) -> None:
    """Raise `NotOurOutputError` unless the existing folder `path` may be replaced without losing anybody's data: it is
    empty, or it is tga-hf output (a manifest) whose files are still exactly the ones written (no file added, none
    resized). Sizes only, so that checking a folder of multi-GB weights costs no read."""
    path = Path(path).absolute()
    if not path.is_dir() or path.is_symlink():
        raise NotOurOutputError(f"{path} exists and is not a folder written by tga-hf: it was left untouched")
    present = _listed_files(path)
    if not present and not (path / MANIFEST).exists():
        return  # an empty folder holds nothing to lose
    try:
        listed = read_manifest(path)["files"]
    except ValueError as error:
        raise NotOurOutputError(
            f"refusing to replace {path}: it is not a folder written by tga-hf ({error}); move it away or choose "
            "another output folder"
        ) from None
    added = [relative.as_posix() for relative in present if relative.as_posix() not in listed]
    if added:
        raise NotOurOutputError(
            f"refusing to replace {path}: it holds files tga-hf did not write there ({', '.join(added[:5])}"
            f"{', ...' if len(added) > 5 else ''}); move them away or choose another output folder"
        )
    changed = [
        name
        for name, entry in listed.items()
        if (path / name).is_file() and (path / name).stat().st_size != entry.get("size")
    ]
    if changed:
        raise NotOurOutputError(
            f"refusing to replace {path}: files were changed after tga-hf wrote them ({', '.join(changed[:5])}); "
            "move the folder away or choose another output folder"
        )


@contextlib.contextmanager
def atomic_directory(
    path: str | Path,
    overwrite: bool = False,
    *,
    kind: str = "output",
    checksums: bool = False,
    source: Mapping[str, Any] | None = None,
) -> Iterator[Path]:
    """Yield an empty hidden folder beside `path`; when the block succeeds a manifest (`tga_hf_manifest.json`: `kind`,
    `source`, every file's size and, with `checksums`, sha256) is written into it and it is renamed to `path`; when
    the block fails it is deleted.

    An existing `path` is replaced only with `overwrite=True` and only when `check_replaceable` recognises it as
    tga-hf's own unchanged output (or it is empty); anything else raises `NotOurOutputError` naming the folder. The
    swap renames the old folder aside, renames the new one in and then deletes the old one; if renaming the new one in
    fails, the old folder is put back. Readers therefore see the complete old or the complete new folder. A writer
    killed outright (SIGKILL) leaves only its hidden `.NAME.partial-PID-*` folder, which the next write removes.

    Example:
        >>> with atomic_directory("out/model", kind="export") as tmp:  # doctest: +SKIP
        ...     model.save_pretrained(tmp)
    """
    path = Path(path).absolute()
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
        check_replaceable(path)  # before any work: refuse early
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(path)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial = path.parent / f".{path.name}.partial-{tag}"
    partial.mkdir()
    try:
        yield partial
        write_manifest(partial, kind, checksums=checksums, source=source)
        if path.exists() or path.is_symlink():
            if not overwrite:  # created by someone else while this write ran
                raise FileExistsError(f"{path} appeared while it was being written: it was left untouched")
            check_replaceable(path)  # again: it may have changed while this write ran
            _swap(partial, path, path.parent / f".{path.name}.replaced-{tag}")
        else:
            os.replace(partial, path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _swap(new: Path, path: Path, aside: Path) -> None:
    """Replace folder `path` by folder `new`: old aside, new in, old deleted; on failure the old folder goes back."""
    os.replace(path, aside)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(aside, path)
        raise
    shutil.rmtree(aside)


def cache_dir() -> Path:
    """Root of tga-hf's cache: `$TGA_HF_CACHE`, else `$XDG_CACHE_HOME/tga_hf`, else `~/.cache/tga_hf`.

    The one place that names it (wheels, extracted data, GGUF files and their dequantised checkpoints live below).
    Not `huggingface_hub.cached_assets_path("tga_hf")` (`~/.cache/huggingface/assets/tga_hf/default`): existing
    caches hold multi-GB converted checkpoints here, which a move would orphan or copy across file systems, and
    huggingface_hub resolves its assets root once at import, so `XDG_CACHE_HOME` / `HF_HOME` set later would not
    move it while this function reads the environment on every call.
    """
    if os.environ.get("TGA_HF_CACHE"):
        return Path(os.environ["TGA_HF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tga_hf"

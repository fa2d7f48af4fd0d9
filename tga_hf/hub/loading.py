"""Model loading for the library and every command: `from_pretrained` (an exported TGA repository, the package's own
classes, retrieval index attached) and `load_model` (any model folder a command is pointed at: TGA-LLaVA, stock
LLaVA-layout models or causal LMs, remote code only with `trust_remote_code=True` / `--trust-remote-code`).

Both refuse a checkpoint that is missing trained weights or holds non-finite ones, instead of completing it silently
with random or NaN values."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..modeling import RETRIEVAL_DIR, TGALlavaForConditionalGeneration, TGALlavaProcessor


class ModelLoadError(Exception):
    """A model cannot be loaded for a reason the user can fix; the message is one line naming the folder."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model path is neither an existing folder nor a loadable Hub repository id."""


class RemoteCodeNotTrustedError(ModelLoadError, ValueError):
    """The folder needs its own Python code (an `auto_map` for a model type this process does not know) and
    `trust_remote_code` was not given."""


class IncompleteWeightsError(ModelLoadError, ValueError):
    """The checkpoint lacks weights the model needs, or holds NaN / infinite values."""


def check_model_source(name_or_path: str | os.PathLike) -> None:
    """Raise `ModelNotFoundError` when `name_or_path` is neither an existing folder nor shaped like a Hub repository
    id (e.g. a mistyped local path), so the user sees one line instead of huggingface_hub's validation traceback."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"model path {name_or_path} is a file, not a model folder")
        return
    try:
        validate_repo_id(str(name_or_path))
    except HFValidationError:
        raise ModelNotFoundError(f"model folder not found: {name_or_path}") from None


def check_complete_weights(model: torch.nn.Module, loading_info: dict[str, Any], source: str | os.PathLike) -> None:
    """Raise `IncompleteWeightsError` when `from_pretrained(..., output_loading_info=True)` reported missing or
    shape-mismatched weights (transformers would have initialised them at random), or when any parameter holds NaN or
    infinity. Tied weights are not reported missing by transformers, so no exception is needed for them."""
    missing = sorted(loading_info.get("missing_keys") or ())
    mismatched = sorted(str(key) for key in loading_info.get("mismatched_keys") or ())
    if missing or mismatched:
        names = missing + mismatched
        raise IncompleteWeightsError(
            f"{source}: the checkpoint lacks {len(names)} weight(s) the model needs ({', '.join(names[:5])}"
            f"{', ...' if len(names) > 5 else ''}); refusing to fill them with random values"
        )
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise IncompleteWeightsError(f"{source}: weight {name} holds NaN or infinite values")


def load_retriever(path: str | Path, encoder: Any | None = None) -> Any:
    """`tga_hf.retrieval.TextRetriever.load(path, encoder)`, imported lazily: faiss and sentence-transformers are only
    needed when a repository ships an index."""
    from ..retrieval import TextRetriever

    return TextRetriever.load(path, encoder=encoder)


def resolve_repo(
    repo_or_dir: str | Path,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """The local folder of `repo_or_dir`: the folder itself, or the Hub cache snapshot of a repository id
    (downloaded unless `local_files_only=True` or `HF_HUB_OFFLINE=1`)."""
    check_model_source(repo_or_dir)
    if Path(repo_or_dir).is_dir():
        return Path(repo_or_dir)
    return Path(snapshot_download(str(repo_or_dir), revision=revision, token=token, local_files_only=local_files_only))


def from_pretrained(
    repo_or_dir: str | Path,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    attach_retriever: bool = True,
    encoder: Any | None = None,
    retriever_loader: Callable[[Path], Any] | None = None,
    **model_kwargs: Any,
) -> tuple[TGALlavaForConditionalGeneration, TGALlavaProcessor]:
    """Model and processor of an exported TGA repository, the processor with the repository's `retrieval/` index
    attached, so it fills the retrieved text for every image by itself. The package's own classes are used (no
    remote code is executed). A checkpoint with missing or non-finite weights raises `IncompleteWeightsError`.

    A release folder (it holds `release.json`: the trained parts only, `tga_hf.hub.save_release`) is rebuilt by
    `tga_hf.hub.load_release`: base LLM and tower from the offline packages, verified by sha256; `model_kwargs` are
    then `load_release`'s (`merge_adapter`, `tower`, `dtype`, `device`).

    Args:
        repo_or_dir: a Hub repository id or a local folder written by `tga_hf.hub.export` (or `save_release`).
        revision, token, local_files_only: as in `huggingface_hub.snapshot_download`.
        attach_retriever: set False to load without the index (retrieval off at inference).
        encoder: the retriever's encoder, when not the one recorded in `retriever_config.json`.
        retriever_loader: `loader(path) -> retriever` for `retrieval/` (default: `TextRetriever.load`).
        model_kwargs: passed to `TGALlavaForConditionalGeneration.from_pretrained` (`dtype`, `device_map`, ...).

    Example:

    ```python
    >>> model, processor = from_pretrained("me/tga-llava")
    >>> inputs = processor(images=image, text=prompt, return_tensors="pt")  # retrieval happens here
    ```
    """
    folder = resolve_repo(repo_or_dir, revision=revision, token=token, local_files_only=local_files_only)
    if (folder / "release.json").is_file():
        from .release import load_release

        loaders = {"encoder": encoder, "retriever_loader": retriever_loader}
        return load_release(folder, attach_retriever=attach_retriever, **loaders, **model_kwargs)
    model, info = TGALlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True, **model_kwargs)
    check_complete_weights(model, info, folder)
    model.eval()
    # The index is attached below with `retriever_loader` / `encoder`: the processor must not load it on its own.
    processor = TGALlavaProcessor.from_pretrained(folder, load_retriever=False)
    index_dir = folder / RETRIEVAL_DIR
    if attach_retriever and index_dir.is_dir() and getattr(processor, "retriever", None) is None:
        loader = retriever_loader or (lambda path: load_retriever(path, encoder=encoder))
        processor.attach_retriever(loader(index_dir))
    return model, processor


def load_model(
    name_or_path: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    multimodal_only: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
) -> tuple[Any, Any, bool]:
    """`(model, processor_or_tokenizer, is_multimodal)` for any model folder or Hub id a command is pointed at: an
    image-text-to-text model (TGA-LLaVA, stock LLaVA, ...) with its processor, else a causal LM with its tokenizer
    (its pad token set to EOS when it has none). The model is in eval mode, on `device` when given.

    TGA-LLaVA folders load with this package's own registered classes, release folders (`release.json`) through
    `tga_hf.hub.load_release` (the adapter merged); a folder whose config needs its own Python
    code (an `auto_map` for a model type this process does not know) raises `RemoteCodeNotTrustedError` unless
    `trust_remote_code=True`. Missing or non-finite weights raise `IncompleteWeightsError`; a path that is neither a
    folder nor a Hub id raises `ModelNotFoundError`.

    Args:
        name_or_path: a local folder or a Hub repository id.
        trust_remote_code: allow the folder's own Python code to run (the `--trust-remote-code` flag).
        gguf_file: a GGUF file inside `name_or_path` (causal LMs shipped as GGUF).
        dtype: e.g. "float32", "bfloat16" or a `torch.dtype`.
        device: where to put the model.
        multimodal_only: raise unless the model takes images (training needs an image-text-to-text model).
        revision: the Hub revision (branch, tag or commit) of a repository id.
        attn_implementation: e.g. "eager" or "sdpa", as in `from_pretrained`.

    Example:

    ```python
    >>> model, processor, multimodal = load_model("runs/tga/final")
    ```
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
        PretrainedConfig,
    )
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    check_model_source(name_or_path)
    if (Path(name_or_path) / "release.json").is_file():  # a release folder: rebuilt offline, verified
        from .release import load_release

        model, processor = load_release(name_or_path, dtype=dtype, device=device)
        return model.eval(), processor, True
    source = str(name_or_path)
    extra: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    if revision is not None:
        extra["revision"] = revision
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source, **extra)  # reads JSON, runs nothing
    except OSError as error:
        raise ModelNotFoundError(f"cannot load a model from {source}: {str(error).splitlines()[0]}") from error
    model_type = config_dict.get("model_type")
    auto_map = config_dict.get("auto_map") or {}
    if auto_map and model_type not in CONFIG_MAPPING and not trust_remote_code:
        raise RemoteCodeNotTrustedError(
            f"{source}: config.json names model type {model_type!r} with its own code (auto_map "
            f"{sorted(auto_map)}); it runs only with --trust-remote-code (trust_remote_code=True)"
        )
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
    multimodal = type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING or (
        trust_remote_code and "AutoModelForImageTextToText" in (getattr(config, "auto_map", None) or {})
    )
    if multimodal_only and not multimodal:
        raise ModelLoadError(f"{source} is a {model_type!r} model that takes no images: an image-text model is needed")
    model_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "output_loading_info": True, **extra}
    if dtype is not None:
        model_kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    model_class = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    model, info = model_class.from_pretrained(source, **model_kwargs)
    check_complete_weights(model, info, source)
    if multimodal:
        revision_kwargs = {"revision": revision} if revision is not None else {}
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code, **revision_kwargs)
    else:
        processor = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
        if processor.pad_token is None:
            processor.pad_token = processor.eos_token
    if device is not None:
        model = model.to(device)
    return model.eval(), processor, multimodal


__all__ = [
    "IncompleteWeightsError",
    "ModelLoadError",
    "ModelNotFoundError",
    "RemoteCodeNotTrustedError",
    "check_complete_weights",
    "check_model_source",
    "from_pretrained",
    "load_model",
    "load_retriever",
    "resolve_repo",
]

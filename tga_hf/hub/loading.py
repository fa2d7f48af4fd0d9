"""Load an exported TGA repository (Hub id or local folder) as model + processor, with its retrieval index attached."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download

from ..modeling import TGALlavaForConditionalGeneration, TGALlavaProcessor
from .export import RETRIEVAL_DIR


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
    remote code is executed).

    Args:
        repo_or_dir: a Hub repository id or a local folder written by `tga_hf.hub.export`.
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
    model = TGALlavaForConditionalGeneration.from_pretrained(folder, **model_kwargs).eval()
    # The index is attached below with `retriever_loader` / `encoder`: the processor must not load it on its own.
    processor = TGALlavaProcessor.from_pretrained(folder, load_retriever=False)
    index_dir = folder / RETRIEVAL_DIR
    if attach_retriever and index_dir.is_dir() and getattr(processor, "retriever", None) is None:
        loader = retriever_loader or (lambda path: load_retriever(path, encoder=encoder))
        processor.attach_retriever(loader(index_dir))
    return model, processor


__all__ = ["from_pretrained", "load_retriever", "resolve_repo"]

"""`TextRetriever`: for each image (or text) query, the most related texts of a corpus, by cosine similarity in the
encoder's space. This is the `r` of TGA's `Retrieved Text: {r}. <image>` prompt, in training and at inference."""

from __future__ import annotations

import json
import numbers
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..fileio import atomic_directory, sha256_file
from ..modeling import DEFAULT_MAX_RETRIEVED_TOKENS, clean_untrusted_text
from .corpus import Corpus
from .encoder import describe_encoder, embed, load_encoder, require_retrieval_dependencies
from .index import IndexSpec, Storage, build_index

if TYPE_CHECKING:
    from PIL.Image import Image
    from sentence_transformers import SentenceTransformer

CONFIG_NAME = "retriever_config.json"
INDEX_NAME = "index.faiss"
TEXTS_NAME = "texts.parquet"
ENCODER_DIR = "encoder"
FORMAT_VERSION = 1
# The keys of retriever_config.json and their JSON types (read_retriever_config checks them).
_CONFIG_KEYS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "encoder": dict,
    "dimension": int,
    "metric": str,
    "normalized": bool,
    "index": dict,
    "corpus_size": int,
    "sources": dict,
    "texts_sha256": str,
    "index_bytes": int,
    "index_sha256": str,
}
_OPTIONAL_CONFIG_KEYS: dict[str, type | tuple[type, ...]] = {"text_rule": dict}  # absent in saves before it existed


class RetrievalIndexError(ValueError):
    """A saved retriever is inconsistent: truncated or replaced files, a corpus that is not the one indexed, or an
    encoder of another dimension."""


class TextRetriever:
    """Texts, their L2-normalised embeddings in a faiss inner-product index, and the encoder that embeds queries
    (strings or PIL images) into the same space.

    Example:

    ```python
    >>> from tga_hf.retrieval import TextRetriever, joint_encoder
    >>> encoder = joint_encoder("path/to/all-MiniLM-L6-v2", "path/to/image-tower")
    >>> retriever = TextRetriever.build(["a dog on a beach", "a bowl of soup"], encoder)
    >>> retriever.search(["a puppy playing in the sand", image], k=1)
    [[('a dog on a beach', 0.71)], [('a bowl of soup', 0.43)]]
    >>> retriever.save("my-model/retrieval")
    >>> TextRetriever.load("my-model/retrieval")  # re-creates the encoder from its recorded path
    ```
    """

    def __init__(
        self,
        encoder: SentenceTransformer,
        index: Any,
        corpus: Corpus,
        spec: IndexSpec,
        encoder_source: dict[str, Any] | None = None,
        text_rule: dict[str, Any] | None = None,
    ):
        dimension = encoder.get_embedding_dimension()
        if index.d != dimension:
            raise RetrievalIndexError(f"the encoder embeds into {dimension} dimensions, the index holds {index.d}")
        if index.ntotal != len(corpus):
            raise RetrievalIndexError(f"the index holds {index.ntotal} vectors for {len(corpus)} texts")
        self.encoder = encoder
        self.index = index
        self.corpus = corpus
        self.spec = spec
        self.encoder_source = dict(encoder_source or describe_encoder(encoder))
        # How the texts were cleaned at build time (`clean_untrusted_text`), recorded in retriever_config.json.
        self.text_rule = dict(text_rule) if text_rule is not None else None

    def __len__(self) -> int:
        return len(self.corpus)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(texts={len(self)}, dimension={self.dimension}, index={self.spec.factory!r})"

    @property
    def dimension(self) -> int:
        return self.index.d

    @property
    def texts(self) -> list[str]:
        return self.corpus.texts

    @classmethod
    def build(
        cls,
        texts: Sequence[str] | Corpus,
        encoder: SentenceTransformer,
        batch_size: int = 64,
        show_progress: bool = True,
        *,
        index: IndexSpec | str | None = None,
        storage: Storage = "fp32",
        chunk_size: int = 8192,
        seed: int = 0,
        encoder_name_or_path: str | None = None,
        tokenizer: Any = None,
        max_text_tokens: int | None = DEFAULT_MAX_RETRIEVED_TOKENS,
        image_token: str = "<image>",
    ) -> TextRetriever:
        """Clean `texts` as untrusted data, embed them with `encoder` and index them.

        Every text goes through `tga_hf.modeling.clean_untrusted_text` first, the rule the processor applies again
        when a retrieved text enters a prompt: special-token and image-token markup is removed and the text is cut
        after `max_text_tokens` tokens; texts left empty are dropped. How many texts each step changed is recorded
        in `retriever_config.json` under `text_rule`.

        Args:
            texts: the corpus (a list of strings, or a `Corpus` with source tags).
            encoder: any `SentenceTransformer`; for image queries one that also embeds images (`joint_encoder`).
            batch_size: encoder batch size.
            show_progress: show a progress bar over the texts.
            index: `None`/"auto" (exact up to 100k texts, IVF beyond), a faiss factory string or an `IndexSpec`.
            storage: "fp32", "fp16" or "pq" for the automatic choice.
            chunk_size: texts embedded and added per step: the build holds one chunk of vectors besides the index.
            seed: seed of the training sample of trained indexes.
            encoder_name_or_path: recorded as the encoder to re-create on `load` (default: where it was loaded from).
            tokenizer: the tokenizer that counts `max_text_tokens` and whose special tokens are removed (best: the
                LLM's); default the encoder's own tokenizer, whose input length bounds what an embedding can see.
            max_text_tokens: token cap of one text (None: no cap).
            image_token: the LVLM processor's image placeholder, removed from every text.
        """
        require_retrieval_dependencies()
        corpus = texts if isinstance(texts, Corpus) else Corpus(list(texts))
        if len(corpus) == 0:
            raise ValueError("cannot build a retriever over an empty corpus")
        bad = [index for index, text in enumerate(corpus.texts) if not isinstance(text, str)]
        if bad:
            raise TypeError(f"texts must be strings: text {bad[0]} is {corpus.texts[bad[0]]!r}")
        corpus, text_rule = _clean_corpus(corpus, tokenizer, encoder, max_text_tokens, image_token)
        dimension = encoder.get_embedding_dimension()
        spec = IndexSpec.parse(index, len(corpus), dimension, storage)

        train_vectors = None
        if spec.train_size:
            sample = np.random.default_rng(seed).choice(len(corpus), size=spec.train_size, replace=False)
            train_vectors = embed(encoder, [corpus.texts[i] for i in np.sort(sample)], batch_size, show_progress)

        def chunks() -> Iterator[np.ndarray]:
            for start in range(0, len(corpus), chunk_size):
                yield embed(encoder, corpus.texts[start : start + chunk_size], batch_size)

        faiss_index = build_index(spec, dimension, chunks(), train_vectors, len(corpus), show_progress)
        source = describe_encoder(encoder)
        if encoder_name_or_path is not None:
            source = {"name_or_path": encoder_name_or_path, "image_tower": None}
        return cls(encoder, faiss_index, corpus, spec, source, text_rule)

    def search(self, queries: Sequence[str | Image], k: int = 1, batch_size: int = 64) -> list[list[tuple[str, float]]]:
        """The `k` most similar texts of each query (a string or a PIL image), best first, with cosine scores."""
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise TypeError("queries must be a list of strings / PIL images")
        # numbers.Integral admits numpy integers (k=np.int64(2)); bool is an int but never a count
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if not queries:
            return []
        scores, ids = self.index.search(embed(self.encoder, queries, batch_size), min(k, len(self)))
        texts = self.corpus.texts
        return [
            [(texts[i], float(score)) for score, i in zip(row_scores, row_ids, strict=True) if i >= 0]
            for row_scores, row_ids in zip(scores, ids, strict=True)
        ]

    def save(self, directory: str | os.PathLike, include_encoder: bool = False) -> Path:
        """Write `index.faiss`, `texts.parquet` and `retriever_config.json` to `directory`. With `include_encoder`
        the encoder goes to `directory/encoder` and the folder is self-contained.

        Written to a hidden sibling folder and renamed into place (`tga_hf.fileio.atomic_directory`): a failure
        leaves nothing half-written. An existing `directory` is replaced only when it is empty or an unchanged
        earlier save (its `tga_hf_manifest.json` lists every file in it); otherwise `NotOurOutputError` names it."""
        import faiss

        with atomic_directory(directory, overwrite=True, kind="retriever") as staging:
            faiss.write_index(self.index, str(staging / INDEX_NAME))
            self.corpus.save(staging / TEXTS_NAME)
            source = dict(self.encoder_source)
            if include_encoder:
                self.encoder.save(str(staging / ENCODER_DIR))
                source = {"name_or_path": ENCODER_DIR, "image_tower": None, "bundled": True}
            config = {
                "format_version": FORMAT_VERSION,
                "encoder": source,
                "dimension": self.dimension,
                "metric": "inner_product",
                "normalized": True,
                "index": {"type": type(self.index).__name__, **self.spec.to_dict()},
                "corpus_size": len(self),
                "sources": dict(Counter(self.corpus.sources)),
                "texts_sha256": self.corpus.sha256(),
                "index_bytes": (staging / INDEX_NAME).stat().st_size,
                "index_sha256": sha256_file(staging / INDEX_NAME),
            }
            if self.text_rule is not None:
                config["text_rule"] = self.text_rule
            (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return Path(directory)

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike,
        encoder: SentenceTransformer | None = None,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        repo_type: str = "model",
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        verify: bool = True,
    ) -> TextRetriever:
        """Load a saved retriever from a folder or a Hub repository (`subfolder`, e.g. "retrieval" next to model
        weights). `encoder=None` re-creates the encoder recorded at build time. `verify` checks the index file's
        size and sha256 (truncation, replacement); the corpus hash, dimension and sizes are always checked."""
        require_retrieval_dependencies()
        import faiss

        directory = resolve_retriever_dir(
            name_or_path, subfolder, revision, repo_type, token, cache_dir, local_files_only
        )
        config = read_retriever_config(directory)
        for name in (INDEX_NAME, TEXTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} is missing")
        index_file = directory / INDEX_NAME
        if verify:
            size = index_file.stat().st_size
            if size != config["index_bytes"]:
                raise RetrievalIndexError(
                    f"{index_file} is {size} bytes, {config['index_bytes']} were written: truncated or replaced"
                )
            if sha256_file(index_file) != config["index_sha256"]:
                raise RetrievalIndexError(f"{index_file} does not match the sha256 recorded in {CONFIG_NAME}")
        try:
            index = faiss.read_index(str(index_file))
        except RuntimeError as error:
            raise RetrievalIndexError(f"{index_file} is not a readable faiss index: {error}") from error
        if index.d != config["dimension"]:
            raise RetrievalIndexError(
                f"{index_file} holds {index.d}-dimensional vectors, {CONFIG_NAME} says {config['dimension']}"
            )
        try:
            corpus = Corpus.load(directory / TEXTS_NAME)
        except Exception as error:  # pyarrow raises several types for damaged files
            raise RetrievalIndexError(f"{directory / TEXTS_NAME} cannot be read: {error}") from error
        if len(corpus) != config["corpus_size"] or corpus.sha256() != config["texts_sha256"]:
            raise RetrievalIndexError(
                f"{directory / TEXTS_NAME} ({len(corpus)} texts) is not the corpus that was indexed "
                f"({config['corpus_size']} texts, sha256 {config['texts_sha256'][:12]}...)"
            )

        source = config["encoder"]
        if encoder is None:
            encoder = _load_recorded_encoder(directory, source)
        if encoder.get_embedding_dimension() != config["dimension"]:
            raise RetrievalIndexError(
                f"the encoder embeds into {encoder.get_embedding_dimension()} dimensions but the index at "
                f"{directory} was built with {config['dimension']}-dimensional vectors"
            )
        try:
            spec = IndexSpec(**{key: value for key, value in config["index"].items() if key != "type"})
        except TypeError as error:
            raise RetrievalIndexError(
                f"{directory / CONFIG_NAME}: bad 'index' entry {config['index']!r}: {error}"
            ) from None
        spec.apply_search_parameters(index)
        source = source if not source.get("bundled") else describe_encoder(encoder)
        return cls(encoder, index, corpus, spec, source, config.get("text_rule"))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        path_in_repo: str | None = None,
        repo_type: str = "model",
        private: bool | None = None,
        token: str | bool | None = None,
        include_encoder: bool = False,
        commit_message: str = "Upload TGA retrieval index",
    ):
        """Upload the saved retriever to `repo_id` (created if needed), at the root or in `path_in_repo` (e.g.
        "retrieval" next to model weights). `TextRetriever.load(repo_id, subfolder=path_in_repo)` loads it."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save(Path(tmp) / "retrieval", include_encoder=include_encoder)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                path_in_repo=path_in_repo,
                repo_type=repo_type,
                commit_message=commit_message,
            )


def resolve_retriever_dir(
    name_or_path: str | os.PathLike,
    subfolder: str | None = None,
    revision: str | None = None,
    repo_type: str = "model",
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local folder as is; otherwise a Hub repository id, fetched (or, offline, found in the cache) with
    `huggingface_hub.snapshot_download`, restricted to `subfolder`."""
    local = Path(name_or_path)
    if local.is_dir():
        return local / subfolder if subfolder else local
    from huggingface_hub import snapshot_download

    snapshot = snapshot_download(
        str(name_or_path),
        repo_type=repo_type,
        revision=revision,
        allow_patterns=[f"{subfolder.strip('/')}/*"] if subfolder else None,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    )
    return Path(snapshot, subfolder) if subfolder else Path(snapshot)


def read_retriever_config(directory: Path) -> dict[str, Any]:
    """`retriever_config.json` of a saved retriever, checked: every required key present with the right type, no key
    this version does not know (a config from elsewhere, or a typo, is named rather than half-read)."""
    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: not a saved TextRetriever")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RetrievalIndexError(f"{config_file} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise RetrievalIndexError(f"{config_file} must hold a JSON object, got {type(config).__name__}")
    if config.get("format_version") != FORMAT_VERSION:
        raise RetrievalIndexError(f"{config_file}: unsupported format_version {config.get('format_version')!r}")
    unknown = sorted(set(config) - set(_CONFIG_KEYS) - set(_OPTIONAL_CONFIG_KEYS))
    if unknown:
        raise RetrievalIndexError(f"{config_file}: unknown key(s) {unknown} (format_version {FORMAT_VERSION} has none)")
    for key, kind in {**_CONFIG_KEYS, **_OPTIONAL_CONFIG_KEYS}.items():
        if key not in config:
            if key in _CONFIG_KEYS:
                raise RetrievalIndexError(f"{config_file}: required key {key!r} is missing")
            continue
        if not isinstance(config[key], kind) or isinstance(config[key], bool) and kind is not bool:
            raise RetrievalIndexError(f"{config_file}: key {key!r} has the bad value {config[key]!r}")
    return config


def _load_recorded_encoder(directory: Path, source: dict[str, Any]) -> SentenceTransformer:
    name_or_path = source.get("name_or_path")
    if not name_or_path:
        raise ValueError(
            f"{directory / CONFIG_NAME} records no encoder (it was built in memory): pass encoder= to load it"
        )
    if source.get("bundled"):
        # A bundled encoder lives inside the index folder; a recorded path that leaves it (.., absolute, a symlink
        # out) would load whatever sits there.
        bundled = (directory / name_or_path).resolve()
        if not bundled.is_relative_to(directory.resolve()) or bundled == directory.resolve():
            raise RetrievalIndexError(
                f"{directory / CONFIG_NAME}: the bundled encoder path {name_or_path!r} leaves the index folder"
            )
        name_or_path = str(bundled)
    try:
        return load_encoder(name_or_path, source.get("image_tower"), source.get("revision"))
    except OSError as error:
        raise OSError(
            f"cannot re-create the encoder recorded in {directory / CONFIG_NAME} ({source}): {error}. Pass encoder= "
            "or save the retriever with include_encoder=True"
        ) from error


def _clean_corpus(
    corpus: Corpus, tokenizer: Any, encoder: Any, max_tokens: int | None, image_token: str
) -> tuple[Corpus, dict[str, Any]]:
    """Every text through `clean_untrusted_text`; empty results dropped. Returns the clean corpus and the record of
    what the rule changed (`text_rule` in retriever_config.json)."""
    from transformers import PreTrainedTokenizerBase

    if tokenizer is None:
        tokenizer = getattr(encoder, "tokenizer", None)
        tokenizer = tokenizer if isinstance(tokenizer, PreTrainedTokenizerBase) else None
    texts, sources = [], []
    with_markup = truncated = dropped = 0
    for text, source in zip(corpus.texts, corpus.sources, strict=True):
        cleaned = clean_untrusted_text(text, tokenizer, image_token=image_token, max_tokens=max_tokens)
        with_markup += cleaned.markup_removed > 0
        truncated += cleaned.truncated
        if not cleaned.text:
            dropped += 1
            continue
        texts.append(cleaned.text)
        sources.append(source)
    if not texts:
        raise ValueError(f"every one of the {len(corpus)} texts is empty once its markup is removed")
    rule = {
        "max_tokens": max_tokens,
        "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None,
        "image_token": image_token,
        "texts_with_markup_removed": with_markup,
        "texts_truncated": truncated,
        "texts_dropped_empty": dropped,
    }
    return Corpus(texts, sources), rule

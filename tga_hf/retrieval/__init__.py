"""Retrieval for TGA: a text corpus (captions + toxic snippets), an encoder that embeds images and texts into one
space (sentence-transformers) and a faiss inner-product index; the processor puts the top hit into the prompt.

Needs faiss-cpu and sentence-transformers (both in `pip install tga-hf`)."""

from .corpus import Corpus, dataset_texts, llava_captions, read_texts, texts_sha256
from .encoder import describe_encoder, embed, joint_encoder, load_encoder
from .index import FLAT_MAX, IndexSpec, build_index
from .retriever import CONFIG_NAME, RetrievalIndexError, TextRetriever

__all__ = [
    "CONFIG_NAME",
    "FLAT_MAX",
    "Corpus",
    "IndexSpec",
    "RetrievalIndexError",
    "TextRetriever",
    "build_index",
    "dataset_texts",
    "describe_encoder",
    "embed",
    "joint_encoder",
    "llava_captions",
    "load_encoder",
    "read_texts",
    "texts_sha256",
]

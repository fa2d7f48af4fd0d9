"""`tga-hf index build|search`: build a retrieval index from text files, query it with images or texts."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from ..modeling.configuration_tga_llava import DEFAULT_MAX_RETRIEVED_TOKENS


def _build(args: argparse.Namespace) -> int:
    from sentence_transformers import SentenceTransformer

    from .corpus import Corpus, read_texts
    from .encoder import joint_encoder
    from .retriever import TextRetriever

    sources: dict[str, list[str]] = {}
    for path in args.texts:
        sources.setdefault(Path(path).stem, []).extend(read_texts(path, column=args.column))
    for path in args.toxic or []:
        sources.setdefault("toxic", []).extend(read_texts(path, column=args.column))
    corpus = Corpus.from_sources(sources)
    encoder = SentenceTransformer(args.encoder)
    if args.image_tower:
        encoder = joint_encoder(encoder, args.image_tower)
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)  # tokenizer files only: no remote code
    retriever = TextRetriever.build(
        corpus,
        encoder,
        batch_size=args.batch_size,
        index=args.index,
        storage=args.storage,
        encoder_name_or_path=None if args.image_tower else args.encoder,
        tokenizer=tokenizer,
        max_text_tokens=args.max_text_tokens or None,
    )
    folder = retriever.save(args.out, include_encoder=args.include_encoder)
    counts = ", ".join(f"{name}: {count}" for name, count in Counter(retriever.corpus.sources).items())
    rule = retriever.text_rule
    print(
        f"indexed {len(retriever)} texts ({counts}) with {retriever.spec.factory} -> {folder}; markup removed from "
        f"{rule['texts_with_markup_removed']}, cut to {rule['max_tokens']} tokens: {rule['texts_truncated']}, "
        f"dropped as empty: {rule['texts_dropped_empty']}"
    )
    return 0


def _search(args: argparse.Namespace) -> int:
    from PIL import Image

    from .retriever import TextRetriever

    if not args.image and not args.query:
        raise SystemExit("tga-hf index search: give --image and/or --query")
    encoder = None
    if args.encoder:
        from .encoder import load_encoder

        encoder = load_encoder(args.encoder, args.image_tower)
    retriever = TextRetriever.load(args.index, encoder=encoder, subfolder=args.subfolder)
    queries = [Image.open(path).convert("RGB") for path in args.image or []] + list(args.query or [])
    names = list(args.image or []) + list(args.query or [])
    for name, hits in zip(names, retriever.search(queries, k=args.k), strict=True):
        print(json.dumps({"query": name, "hits": [{"text": text, "score": round(score, 4)} for text, score in hits]}))
    return 0


def _add_encoder_options(parser: argparse.ArgumentParser, required: bool) -> None:
    """The index's encoder: a sentence-transformers text encoder, joined with an image tower for image queries
    (`tga_hf.retrieval.joint_encoder`). Optional when the index records its own."""
    parser.add_argument(
        "--encoder",
        required=required,
        help="sentence-transformers model id or folder (the text encoder)"
        + ("" if required else "; default: the encoder recorded in the index"),
    )
    parser.add_argument("--image-tower", help="CLIPVisionModelWithProjection folder trained into --encoder's space")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("index", help="build or query a retrieval index (texts retrieved for images)")
    commands = parser.add_subparsers(dest="index_command", required=True)

    build = commands.add_parser("build", help="embed texts and save a faiss index folder")
    build.add_argument(
        "--texts",
        nargs="+",
        required=True,
        help="caption files (.txt/.json/.jsonl/.csv/.parquet, LLaVA JSON); each file's name is its source tag",
    )
    build.add_argument("--toxic", nargs="+", help="toxic-snippet files, tagged 'toxic'")
    build.add_argument("--column", help="text column of .csv/.parquet/.json records (default: text, caption, ...)")
    _add_encoder_options(build, required=True)
    build.add_argument("--out", required=True, help="output folder (e.g. MODEL_DIR/retrieval)")
    build.add_argument(
        "--index", default="auto", help="'auto' (exact up to 100k, IVF beyond) or a faiss factory string"
    )
    build.add_argument("--storage", choices=["fp32", "fp16", "pq"], default="fp32", help="vector storage for 'auto'")
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument(
        "--tokenizer",
        help="model folder or id whose tokenizer counts --max-text-tokens and whose special tokens are removed "
        "(best: the LVLM's; default: the encoder's)",
    )
    build.add_argument(
        "--max-text-tokens", type=int, default=DEFAULT_MAX_RETRIEVED_TOKENS, help="cut longer texts; 0: no cap"
    )
    build.add_argument("--include-encoder", action="store_true", help="copy the encoder into the folder")
    build.set_defaults(func=_build)

    search = commands.add_parser("search", help="print the top texts for images and/or text queries (JSON lines)")
    search.add_argument("--index", required=True, help="retriever folder or Hub id")
    search.add_argument("--subfolder", help="sub-folder of the Hub repository (e.g. retrieval)")
    search.add_argument("--image", nargs="+", help="image files")
    search.add_argument("--query", nargs="+", help="text queries")
    search.add_argument("-k", type=int, default=3)
    _add_encoder_options(search, required=False)
    search.set_defaults(func=_search)

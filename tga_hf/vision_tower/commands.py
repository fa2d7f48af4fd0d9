"""`tga-hf tower train|eval`: train the LiT image tower on rendered sentences, and measure its held-out recall."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from ..weights import load_text_encoder, minilm_path
    from .texts import benign_sentences, read_texts, vocabulary_words, word_salad_sentences
    from .train import TowerTrainingConfig, train_lit_tower

    texts, sources = [], {}
    if args.benign:
        sources["benign_templates"] = args.benign
        texts += benign_sentences(args.benign, seed=args.seed)
    if args.word_salad:
        vocab = Path(args.text_encoder) / "vocab.txt" if args.text_encoder else minilm_path() / "vocab.txt"
        sources["word_salad"] = args.word_salad
        texts += word_salad_sentences(vocabulary_words(vocab), args.word_salad, seed=args.seed)
    for path in args.texts:
        file_texts = read_texts(path, column=args.column)
        sources[Path(path).name] = len(file_texts)
        texts += file_texts
    width = args.hidden_size
    tower = {
        "num_hidden_layers": args.layers,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_attention_heads": args.heads,
        "patch_size": args.patch_size,
    }
    config = TowerTrainingConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        heldout=args.heldout,
        seed=args.seed,
        image_size=args.image_size,
        tower=tower,
        render_workers=args.workers,
        max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
    )
    metrics = train_lit_tower(
        texts, load_text_encoder(args.text_encoder), args.out, config, device=args.device, overwrite=args.overwrite,
        sources=sources,
    )  # fmt: skip
    print(json.dumps({"out": args.out, "heldout_recall": metrics["heldout_recall"]}, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..weights import load_text_encoder
    from .model import load_lit_tower
    from .texts import read_texts
    from .train import HELDOUT_FILE, evaluate_tower

    tower, processor = load_lit_tower(args.tower, device=args.device)
    texts_path = args.texts or Path(args.tower or tower.name_or_path) / HELDOUT_FILE
    texts = read_texts(texts_path, column=args.column)[: args.limit]
    results = evaluate_tower(tower, processor, load_text_encoder(args.text_encoder), texts, styles=args.styles)
    report = {"tower": str(tower.name_or_path), "texts": str(texts_path), "n": len(texts), **results}
    print(json.dumps(report, indent=2))
    return 0


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("tower", help="train / evaluate the LiT image tower (ViT vs frozen MiniLM)")
    tower_commands = parser.add_subparsers(dest="tower_command", required=True)

    train = tower_commands.add_parser("train", help="train a tower on rendered sentences (InfoNCE, frozen MiniLM)")
    train.add_argument("--out", required=True, help="output folder (save_pretrained layout)")
    train.add_argument("--steps", type=int, default=3000)
    train.add_argument("--batch-size", type=int, default=512)
    train.add_argument("--learning-rate", type=float, default=5e-4)
    train.add_argument("--benign", type=int, default=60000, help="number of benign template sentences")
    train.add_argument("--word-salad", type=int, default=20000, help="number of random-vocabulary lines")
    train.add_argument("--texts", nargs="*", default=[], help="extra .txt/.csv/.json sentence files (never test data)")
    train.add_argument("--column", help="CSV column holding the text (default: first column)")
    train.add_argument("--heldout", type=int, default=1000, help="sentences held out for the recall evaluation")
    train.add_argument("--layers", type=int, default=6)
    train.add_argument("--hidden-size", type=int, default=256)
    train.add_argument("--heads", type=int, default=4)
    train.add_argument("--patch-size", type=int, default=16, help="16 -> 100 patches of a 160 image; 20 -> 64")
    train.add_argument("--image-size", type=int, default=160)
    train.add_argument("--text-encoder", help="SentenceTransformer folder (default: the installed all-MiniLM-L6-v2)")
    train.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    train.add_argument("--workers", type=int, help="render processes (default: all CPUs)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--max-minutes", type=float, help="stop training past this budget (steps done are recorded)")
    train.add_argument("--overwrite", action="store_true")
    train.set_defaults(func=_train)

    evaluate = tower_commands.add_parser("eval", help="image->text recall@1/5 on renders of held-out sentences")
    evaluate.add_argument("--tower", help="tower folder (default: the tower shipped in the package)")
    evaluate.add_argument("--texts", help="sentence file (default: the tower's heldout.txt)")
    evaluate.add_argument("--column", help="CSV column holding the text")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N sentences only")
    evaluate.add_argument("--styles", nargs="+", default=["plain", "figstep"], choices=["plain", "figstep"])
    evaluate.add_argument("--text-encoder", help="SentenceTransformer folder (default: the installed all-MiniLM-L6-v2)")
    evaluate.add_argument("--device", default="cpu")
    evaluate.set_defaults(func=_eval)

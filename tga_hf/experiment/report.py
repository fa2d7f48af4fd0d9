"""report.md of the experiment: the one report renderer (`tga_hf.report.render_markdown`) with the experiment's
condition names, plus the analyses only the experiment has (TGA against the baseline, the judges on human labels, the
safety band and its cosine); every number taken from the report."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..eval.report import write_report as write_report_files
from ..report import Report, SafetyEntry, dev_run_summary, read_report

CONDITION_LABELS = {
    "text": "LLM, request as text (ceiling)",
    "baseline_image": "baseline LVLM, image",
    "retrieval_only_image": "retrieval prefix only, image (retrieval at inference)",
    "retrieval_only_image_no_retrieval": "retrieval prefix only, image (no retrieval at inference)",
    "tga_image": "TGA, image (retrieval at inference)",
    "tga_image_no_retrieval": "TGA, image (no retrieval at inference)",
    "baseline_text": "baseline LVLM's own LLM, request as text",
    "retrieval_only_text": "retrieval prefix only LVLM's own LLM, request as text",
    "tga_text": "TGA LVLM's own LLM, request as text",
}


def load_dev_runs(folders: Sequence[str]) -> list[dict[str, Any]]:
    """The `dev_runs` of a configuration as its report lists them (`tga_hf.report.dev_run_summary`), read from each
    folder's `report.json`; errors name the folder: a missing report, or one not evaluated on the dev split."""
    runs = []
    for folder in folders:
        path = Path(folder) / "report.json"
        if not path.is_file():
            raise FileNotFoundError(f"dev_runs: no report.json in {folder}")
        runs.append(dev_run_summary(read_report(path), str(folder), CONDITION_LABELS))
    return runs


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _dsr_by_condition(report: Report) -> dict[str, SafetyEntry]:
    if report.safety is None:
        return {}
    return {entry.condition: entry for entry in report.safety.dsr if entry.condition is not None}


ARM_LOSSES = {
    "baseline": "LM loss, no retrieved text",
    "retrieval_only": "LM loss with the retrieved-text prefix",
    "tga": "LM loss + the guide loss, with the retrieved-text prefix",
}


def band_mean(per_layer: Mapping[str, Sequence[float]], column: str, band: Sequence[int] | None) -> float:
    """Mean of `per_layer[column]` over the layers inside `band` ([first, last] hidden-state indices; all layers
    when None or when no measured layer falls inside it)."""
    layers = per_layer["layer"]
    inside = [i for i, layer in enumerate(layers) if band and band[0] <= layer <= band[1]] or range(len(layers))
    return sum(per_layer[column][i] for i in inside) / len(inside)


def _training_line(report: Report) -> str:
    details, config = report.details, report.details.get("config", {})
    rows = ", ".join(f"{name} {count}" for name, count in (details.get("n_train_rows") or {}).items())
    stages = report.training.get("stages")
    if stages:
        plan = "; ".join(
            f"{name}: {s['steps']} steps x batch {s['batch_size']}, lr {s['learning_rate']}"
            + (f", LoRA r={s['lora_r']}" if "lora_r" in s else ", projector only")
            for name, s in stages.items()
        )
    else:
        plan = f"one stage `{report.training.get('stage')}`, {report.training.get('steps')} steps"
    arms = config.get("arms") or list(ARM_LOSSES)
    losses = "; ".join(f"{arm}: {ARM_LOSSES.get(arm, arm)}" for arm in arms)
    init = config.get("projector_init", "default")
    trained = (
        f"Training ({plan}) on benign rows only ({rows}; {details.get('distillation_refusals_dropped')} distilled "
        "answers dropped as refusals). "
    )
    if init == "pretrained":
        return trained + (
            f"Every arm starts from the same stage-1 projector (`{config.get('pretrained_projector')}`, trained once "
            f"with the LM loss alone and shared) and runs the stages above with its own loss ({losses}); the paper "
            "applies TGA in both stages, so the shared stage 1 gives TGA less than the paper does, never more."
        )
    return trained + (
        f"Every arm runs every stage from the same projector start (`{init}`, made once and shared) with its own loss "
        f"({losses}), as the paper applies TGA in both stages."
    )


def _setup_lines(report: Report) -> list[str]:
    details, models = report.details, report.model
    rendering = details.get("rendering") or {}
    lines = [
        "",
        f"LLM `{models.get('llm')}` (dequantised GGUF), LiT image tower `{models.get('tower')}` (ours, trained against "
        "frozen all-MiniLM-L6-v2 on rendered text; it stands in for CLIP); every image is drawn in the tower's layout "
        f"(`{rendering.get('layout')}`, {rendering.get('size')} px). "
        f"Safety test: {report.n_test} FigStep SafeBench requests ({report.split} split, "
        f"{details.get('config', {}).get('test_framing')} framing); {details.get('n_benign_test')} benign inputs.",
        "",
        _training_line(report),
    ]
    if details.get("arms_pending"):
        lines += ["", f"**Partial report**: arms still to run: {', '.join(details['arms_pending'])}."]
    return lines


def _comparison_lines(report: Report) -> list[str]:
    """TGA (and retrieval-only) against the baseline, in words: which is higher and whether the intervals overlap."""
    dsr = _dsr_by_condition(report)
    if "baseline_image" not in dsr:
        return []
    baseline = dsr["baseline_image"].overall
    lines = ["", "## Against the baseline", ""]
    for key in ("tga_image", "tga_image_no_retrieval", "retrieval_only_image", "retrieval_only_image_no_retrieval"):
        if key not in dsr:
            continue
        rate = dsr[key].overall
        difference = 100 * (rate.rate - baseline.rate)
        verdict = "no 95% interval to compare"
        if rate.ci95 and baseline.ci95:
            overlap = rate.ci95[0] <= baseline.ci95[1] and baseline.ci95[0] <= rate.ci95[1]
            verdict = (
                "the 95% intervals overlap: no difference this run can resolve"
                if overlap
                else f"the 95% intervals do not overlap: {'above' if difference > 0 else 'below'} the baseline"
            )
        lines.append(
            f"- {CONDITION_LABELS[key]} vs baseline image: {_pct(rate.rate)} vs {_pct(baseline.rate)} "
            f"({difference:+.1f} points); {verdict}."
        )
    distinct = {key: entry.distinct_responses for key, entry in dsr.items() if entry.distinct_responses is not None}
    if distinct:
        counts = ", ".join(f"{CONDITION_LABELS.get(key, key)} {count}" for key, count in distinct.items())
        lines.append(
            f"- Distinct answers to the {report.n_test} harmful requests: {counts}. An LVLM that gives every image "
            "the same answer does not read the image, and cannot refuse it for its content."
        )
    return lines


def _judge_lines(report: Report) -> list[str]:
    calibration = report.details.get("judge_calibration")
    if not calibration:
        return []
    judges: Mapping[str, Any] = report.details.get("judges", {})
    lines = [
        "",
        "## Judges",
        "",
        "Judges on PyRIT's 169 human-labelled refusal responses (accuracy / precision / recall):",
        "",
    ]
    for name, scores in calibration.items():
        subsets = ", ".join(
            f"{subset} {s['accuracy']:.3f} / {s['precision']:.3f} / {s['recall']:.3f}"
            for subset, s in scores.items()
            if subset.startswith("all")
        )
        lines.append(f"- {name} ({judges.get(name, {}).get('version', '?')}): {subsets}")
    return lines


def _band_lines(report: Report) -> list[str]:
    band = report.details.get("safety_band")
    if not band:
        return []
    return [
        "",
        "## Safety band",
        "",
        f"Safety-activation band of the LLM (logit lens, {band['activated']}/{band['prompts']} harmful prompts "
        f"activate): full {band['band']}, robust (10-90%) {band['robust']}.",
    ]


def _band_cosine_lines(report: Report) -> list[str]:
    """Mean cosine inside the band of a toxic image's states vs its own text and vs the other requests' texts: only
    the gap between the two is about the request's content."""
    band = (report.details.get("safety_band") or {}).get("robust")
    cosine = report.details.get("cosine")
    if not cosine:
        return []
    where = "inside the band" if band else "over all layers (no safety band was found)"
    lines = ["", f"Cosine of toxic-image states vs text states {where} (own request / other requests):", ""]
    for arm, per_layer in cosine.items():
        own = band_mean(per_layer, "mean_cosine", band)
        if "mean_cosine_other_caption" not in per_layer:
            lines.append(f"- {arm}: {own:.3f}")
            continue
        other = band_mean(per_layer, "mean_cosine_other_caption", band)
        line = f"- {arm}: {own:.3f} / {other:.3f} (content gap {own - other:+.3f}"
        if "centered_gap" in per_layer:
            centered = band_mean(per_layer, "centered_gap", band)
            ceiling = band_mean(per_layer, "text_reference_gap", band)
            line += f"; on centered states {centered:+.3f}, text-to-text ceiling {ceiling:+.3f}"
        lines.append(line + ")")
    return lines


def experiment_sections(report: Report) -> tuple[list[str], list[str]]:
    """The experiment's own Markdown: the setup paragraph (after the opening) and its analyses (after the tables)."""
    sections = [*_comparison_lines(report), *_judge_lines(report), *_band_lines(report), *_band_cosine_lines(report)]
    seconds, total = report.details.get("seconds"), report.details.get("seconds_total")
    if seconds is not None:
        if report.details.get("resumed"):
            line = f"Wall time: {seconds} s this session (finished parts were reloaded from the run folder)"
            line += f", {total} s over every session of the run." if total is not None else "."
        else:
            line = f"Wall time: {seconds} s."
        sections += ["", line]
    return _setup_lines(report), sections


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """`report.md` and `report.json` of the experiment in `out_dir` (its plots are drawn by `experiment.plots`)."""
    preamble, sections = experiment_sections(report)
    return write_report_files(
        report, out_dir, labels=CONDITION_LABELS, preamble=preamble, sections=sections, plots=False
    )

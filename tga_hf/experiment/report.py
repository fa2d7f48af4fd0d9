"""report.md of the experiment: the tables a reviewer reads first, every number taken from report.json."""

from pathlib import Path

CONDITION_LABELS = {
    "text": "LLM, request as text (ceiling)",
    "baseline_image": "baseline LVLM, image",
    "retrieval_only_image": "retrieval prefix only, image (retrieval at inference)",
    "retrieval_only_image_no_retrieval": "retrieval prefix only, image (no retrieval at inference)",
    "tga_image": "TGA, image (retrieval at inference)",
    "tga_image_no_retrieval": "TGA, image (no retrieval at inference)",
}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _condition_table(report: dict) -> list[str]:
    probe = report.get("dsr_probe")
    header = "| condition | DSR (phrase) | 95% CI |" + (" DSR (probe) | 95% CI |" if probe else "")
    lines = [header + " over-refusal (benign) |", "|---|---|---|" + ("---|---|" if probe else "") + "---|"]
    for key, rate in report["dsr"].items():
        low, high = report["dsr_ci"][key]
        cells = f"{_pct(rate)} | [{_pct(low)}, {_pct(high)}]"
        if probe:
            p_low, p_high = report["dsr_probe_ci"][key]
            cells += f" | {_pct(probe[key])} | [{_pct(p_low)}, {_pct(p_high)}]"
        over = report["over_refusal"].get(key)
        lines.append(f"| {CONDITION_LABELS.get(key, key)} | {cells} | {_pct(over) if over is not None else '-'} |")
    return lines


def _category_table(report: dict) -> list[str]:
    detail = report.get("dsr_detail")
    if not detail:
        return []
    keys = list(detail)
    categories = sorted({name for value in detail.values() for name in value["per_category"]})
    lines = [
        "",
        "DSR per SafeBench category (phrase judge, refused/total):",
        "",
        "| category | " + " | ".join(CONDITION_LABELS.get(key, key) for key in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for category in categories:
        cells = []
        for key in keys:
            rate = detail[key]["per_category"].get(category)
            cells.append(f"{rate['count']}/{rate['total']}" if rate else "-")
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return lines


def _judge_lines(report: dict) -> list[str]:
    calibration = report.get("judge_calibration")
    if not calibration:
        return []
    lines = ["", "Judges on PyRIT's 169 human-labelled refusal responses (accuracy / precision / recall):", ""]
    for name, scores in calibration.items():
        subsets = ", ".join(
            f"{subset} {s['accuracy']:.3f} / {s['precision']:.3f} / {s['recall']:.3f}"
            for subset, s in scores.items()
            if subset.startswith("all")
        )
        lines.append(f"- {name} ({report['judges'][name]['version']}): {subsets}")
    agreement = report.get("judge_agreement")
    if agreement:
        lines.append(
            f"- phrase vs probe on this run's {agreement['n']} responses: agreement {agreement['agreement']:.3f}, "
            f"Cohen's kappa {agreement['cohen_kappa']:.3f}"
        )
    return lines


def _comparison_lines(report: dict) -> list[str]:
    """TGA (and retrieval-only) against the baseline, in words: which is higher and whether the intervals overlap."""
    dsr, ci = report["dsr"], report["dsr_ci"]
    if "baseline_image" not in dsr:
        return []
    lines = [""]
    for key in ("tga_image", "tga_image_no_retrieval", "retrieval_only_image", "retrieval_only_image_no_retrieval"):
        if key not in dsr:
            continue
        difference = 100 * (dsr[key] - dsr["baseline_image"])
        overlap = ci[key][0] <= ci["baseline_image"][1] and ci["baseline_image"][0] <= ci[key][1]
        verdict = (
            "the 95% intervals overlap: no difference this run can resolve"
            if overlap
            else f"the 95% intervals do not overlap: {'above' if difference > 0 else 'below'} the baseline"
        )
        lines.append(
            f"- {CONDITION_LABELS[key]} vs baseline image: {_pct(dsr[key])} vs {_pct(dsr['baseline_image'])} "
            f"({difference:+.1f} points); {verdict}."
        )
    distinct = report.get("distinct_responses")
    if distinct:
        counts = ", ".join(f"{CONDITION_LABELS.get(key, key)} {count}" for key, count in distinct.items())
        lines.append(
            f"- Distinct answers to the {report['n_test']} harmful requests: {counts}. An LVLM that gives every image "
            "the same answer does not read the image, and cannot refuse it for its content."
        )
    return lines


def _band_cosine_lines(report: dict) -> list[str]:
    """Mean cosine inside the band of a toxic image's states vs its own text and vs the other requests' texts: only
    the gap between the two is about the request's content."""
    band = report["safety_band"]["robust"]
    if not band or not report.get("cosine"):
        return []
    lines = ["", "Cosine of toxic-image states vs text states inside the band (own request / other requests):", ""]
    for arm, per_layer in report["cosine"].items():
        inside = [i for i, layer in enumerate(per_layer["layer"]) if band[0] <= layer <= band[1]]
        own = sum(per_layer["mean_cosine"][i] for i in inside) / len(inside)
        if "mean_cosine_other_caption" not in per_layer:
            lines.append(f"- {arm}: {own:.3f}")
            continue
        other = sum(per_layer["mean_cosine_other_caption"][i] for i in inside) / len(inside)
        line = f"- {arm}: {own:.3f} / {other:.3f} (content gap {own - other:+.3f}"
        if "centered_gap" in per_layer:
            centered = sum(per_layer["centered_gap"][i] for i in inside) / len(inside)
            ceiling = sum(per_layer["text_reference_gap"][i] for i in inside) / len(inside)
            line += f"; on centered states {centered:+.3f}, text-to-text ceiling {ceiling:+.3f}"
        lines.append(line + ")")
    return lines


def render_report(report: dict) -> str:
    lines = [
        f"# tga-hf experiment `{report['name']}`",
        "",
        f"Command: `{report['command']}`",
        "",
        f"LLM `{report['models']['llm']}` (dequantised GGUF), LiT image tower `{report['models']['tower']}` (ours, "
        "trained against frozen all-MiniLM-L6-v2 on rendered text; it stands in for CLIP). "
        f"Judge: {report['judge']['name']} v{report['judge']['version']}. "
        f"Safety test: {report['n_test']} FigStep SafeBench requests; {report['n_benign_test']} benign inputs; "
        f"{report['n_align']} benign alignment pairs ({report['distillation_refusals_dropped']} distilled answers "
        "dropped as refusals).",
        "",
        *_condition_table(report),
        *_comparison_lines(report),
        *_category_table(report),
        *_judge_lines(report),
    ]
    if report["utility"]:
        metrics = sorted(next(iter(report["utility"].values())))
        lines += [
            "",
            "Utility (reading the benign image back):",
            "",
            "| condition | " + " | ".join(metrics) + " |",
            "|---|" + "---|" * len(metrics),
        ]
        for key, scores in report["utility"].items():
            lines.append(
                f"| {CONDITION_LABELS.get(key, key)} | " + " | ".join(f"{scores[m]:.3f}" for m in metrics) + " |"
            )
    band = report["safety_band"]
    lines += [
        "",
        f"Safety-activation band of the LLM (logit lens, {band['activated']}/{band['prompts']} harmful prompts "
        f"activate): full {band['band']}, robust (10-90%) {band['robust']}.",
        *_band_cosine_lines(report),
        "",
        f"Wall time: {report['seconds']} s.",
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render_report(report))
    return path

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
        "| condition | DSR | 95% CI | over-refusal (benign) |",
        "|---|---|---|---|",
    ]
    for key, rate in report["dsr"].items():
        low, high = report["dsr_ci"][key]
        over = report["over_refusal"].get(key)
        lines.append(
            f"| {CONDITION_LABELS.get(key, key)} | {_pct(rate)} | [{_pct(low)}, {_pct(high)}] | "
            f"{_pct(over) if over is not None else '-'} |"
        )
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
        "",
        f"Wall time: {report['seconds']} s.",
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render_report(report))
    return path

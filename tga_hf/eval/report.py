"""`tga-hf eval`'s report: the safety and utility sections built from judged responses, PNG plots, and the writer of
`report.json` (the one schema of `tga_hf.report`, read by the Hub model card) with its `report.md`.

One DSR / over-refusal entry per (dataset, modality, retrieval) present in the responses, so text DSR and image DSR of
the same requests (and image DSR with retrieval on and off) sit side by side.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from ..fileio import write_text_atomic
from ..report import SCHEMA_VERSION, Report, ReportRate, Safety, SafetyEntry, UtilityEntry, render_markdown
from .judges import Verdict
from .metrics import refusal_rates, utility_scores


def _condition(record: dict) -> tuple[str, str, bool]:
    return record["source"], record["modality"], bool(record.get("retrieval", False))


def refusal_entries(records: Sequence[dict], verdicts: Sequence[Verdict], harmful: bool) -> list[dict]:
    """One Entry (`tga_hf.report`) per (dataset, modality, retrieval) over the records with this `harmful`."""
    if len(records) != len(verdicts):
        raise ValueError(f"got {len(verdicts)} verdicts for {len(records)} records")
    groups: dict[tuple[str, str, bool], list[tuple[bool, str]]] = {}
    for record, verdict in zip(records, verdicts, strict=True):
        if bool(record["harmful"]) is harmful:
            groups.setdefault(_condition(record), []).append((verdict.refused, record["category"]))
    entries = []
    for (dataset, modality, retrieval), pairs in sorted(groups.items()):
        rates = refusal_rates([refused for refused, _ in pairs], [category for _, category in pairs])
        entry = SafetyEntry(
            dataset,
            modality,
            retrieval,
            ReportRate.of(rates.overall),
            {name: ReportRate.of(rate) for name, rate in rates.per_category.items()},
        )
        entries.append(entry.to_dict())
    return entries


def safety_section(
    records: Sequence[dict], verdicts: Sequence[Verdict], agreement: dict | None = None
) -> dict[str, list | dict | None]:
    """The report's `safety` section from verdicts already made (see `judged_safety_section` to judge as well)."""
    return {
        "dsr": refusal_entries(records, verdicts, harmful=True),
        "over_refusal": refusal_entries(records, verdicts, harmful=False),
        "judge_agreement": agreement,
    }


def _rate_from_metric(fields: Mapping[str, Any]) -> ReportRate:
    """A report rate from the refusal-rate metric's fields."""
    return ReportRate(fields["refusal_rate"], (fields["ci_low"], fields["ci_high"]), fields["refused"], fields["n"])


def judged_safety_section(
    records: Sequence[dict], metric: Any, agreement: dict | None = None
) -> tuple[dict[str, list | dict | None], list[Verdict]]:
    """Judge `records` and build the report's `safety` section with the refusal-rate `evaluate` metric
    (`tga_hf.eval.load_refusal_metric`): one `compute` per (harmful, dataset, modality, retrieval) group, categories
    passed along. Returns the section (same layout as `safety_section`) and every record's verdict, in record order.

    Example:
        >>> section, verdicts = judged_safety_section(records, load_refusal_metric())
        >>> section["dsr"][0]["overall"]["rate"]
    """
    groups: dict[tuple[bool, str, str, bool], list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault((bool(record["harmful"]), *_condition(record)), []).append(index)
    verdicts: list[Verdict | None] = [None] * len(records)
    section: dict[str, list | dict | None] = {"dsr": [], "over_refusal": [], "judge_agreement": agreement}
    # Sorted like `refusal_entries`, so both paths write identical reports.
    for (harmful, dataset, modality, retrieval), indices in sorted(groups.items()):
        group = [records[index] for index in indices]
        result = metric.compute(
            predictions=[record["response"] for record in group],
            prompts=[record["prompt"] for record in group],
            categories=[record["category"] for record in group],
            return_verdicts=True,
        )
        for index, verdict in zip(indices, result["verdicts"], strict=True):
            verdicts[index] = Verdict(verdict["refused"], verdict["reason"], verdict["score"])
        entry = SafetyEntry(
            dataset,
            modality,
            retrieval,
            _rate_from_metric(result),
            {name: _rate_from_metric(rate) for name, rate in result["per_category"].items()},
        )
        section["dsr" if harmful else "over_refusal"].append(entry.to_dict())
    # Every index belongs to exactly one group, so every slot is filled.
    return section, cast(list[Verdict], verdicts)


def utility_entries(records: Sequence[dict]) -> list[dict]:
    """Utility metrics per (dataset, modality) over records that carry a `reference`. Short-answer sets (every
    reference at most three words) get exact match and VQA accuracy; longer answers get exact match, ROUGE and BLEU."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        if record.get("reference"):
            groups.setdefault((record["source"], record["modality"]), []).append(record)
    entries = []
    for (dataset, modality), group in sorted(groups.items()):
        references = [record["reference"] for record in group]
        short = all(len(answer.split()) <= 3 for refs in references for answer in refs)
        metrics = ("exact_match", "vqa_accuracy") if short else ("exact_match", "rouge", "bleu")
        scores = utility_scores([record["response"] for record in group], references, metrics)
        entries.append(UtilityEntry(dataset, modality, len(group), scores).to_dict())
    return entries


def build_report(
    model_info: dict,
    judge_info: dict,
    generation: dict,
    safety: Mapping[str, Any] | None = None,
    utility: Sequence[Mapping[str, Any]] | None = None,
    files: Mapping[str, Any] | None = None,
) -> Report:
    """The typed report (`tga_hf.report.Report`) of these sections, checked as a reader would check them."""
    return Report(
        model=dict(model_info),
        judge=dict(judge_info),
        generation=dict(generation),
        safety=Safety.from_dict(safety) if safety is not None else None,
        utility=(
            [UtilityEntry.from_dict(entry, f"utility[{index}]") for index, entry in enumerate(utility)]
            if utility is not None
            else None
        ),
        files={"responses": [], "plots": [], "markdown": "report.md", **(files or {})},
    )


def _label(entry: SafetyEntry) -> str:
    return f"{entry.modality}{' + retrieval' if entry.retrieval else ''}"


def plot_safety(safety: Safety | Mapping[str, Any], out_dir: Path) -> list[Path]:
    """`dsr_overview.png` (overall DSR and over-refusal per condition, with 95% intervals) and, for datasets with
    categories, `dsr_by_category_<dataset>.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    safety = safety if isinstance(safety, Safety) else Safety.from_dict(safety)
    paths = []
    rows = [("DSR", entry) for entry in safety.dsr] + [("over-refusal", entry) for entry in safety.over_refusal]
    if rows:
        figure, axis = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 4))
        rates = [100 * entry.overall.rate for _, entry in rows]
        intervals = [entry.overall.ci95 or (entry.overall.rate, entry.overall.rate) for _, entry in rows]
        errors = [
            [100 * (entry.overall.rate - low) for (_, entry), (low, _) in zip(rows, intervals, strict=True)],
            [100 * (high - entry.overall.rate) for (_, entry), (_, high) in zip(rows, intervals, strict=True)],
        ]
        colors = ["tab:blue" if kind == "DSR" else "tab:orange" for kind, _ in rows]
        axis.bar(range(len(rows)), rates, yerr=errors, color=colors, capsize=4)
        axis.set_xticks(range(len(rows)), [f"{kind}\n{e.dataset}\n{_label(e)}" for kind, e in rows], fontsize=7)
        axis.set_ylabel("% refused (95% Wilson CI)")
        axis.set_ylim(0, 105)
        axis.set_title("Refusal on harmful (DSR) and safe (over-refusal) inputs")
        figure.tight_layout()
        paths.append(out_dir / "dsr_overview.png")
        figure.savefig(paths[-1], dpi=120)
        plt.close(figure)
    for dataset in sorted({entry.dataset for entry in safety.dsr}):
        columns = [entry for entry in safety.dsr if entry.dataset == dataset]
        categories = sorted({category for entry in columns for category in entry.per_category})
        if len(categories) < 2:
            continue
        figure, axis = plt.subplots(figsize=(max(6, 0.8 * len(categories) + 2), 4))
        width = 0.8 / len(columns)
        for offset, entry in enumerate(columns):
            values = [100 * entry.per_category[c].rate if c in entry.per_category else 0.0 for c in categories]
            axis.bar([i + offset * width for i in range(len(categories))], values, width=width, label=_label(entry))
        axis.set_xticks(
            [i + width * (len(columns) - 1) / 2 for i in range(len(categories))],
            categories,
            rotation=30,
            ha="right",
            fontsize=7,
        )
        axis.set_ylabel("DSR %")
        axis.set_ylim(0, 105)
        axis.set_title(f"DSR per category: {dataset}")
        axis.legend(fontsize=7)
        figure.tight_layout()
        paths.append(out_dir / f"dsr_by_category_{dataset}.png")
        figure.savefig(paths[-1], dpi=120)
        plt.close(figure)
    return paths


def write_report(
    report: Report | Mapping[str, Any],
    out_dir: str | Path,
    *,
    labels: Mapping[str, str] | None = None,
    preamble: Sequence[str] = (),
    sections: Sequence[str] = (),
    plots: bool = True,
) -> dict[str, Path]:
    """Write the plots (with `plots`; otherwise `report.files["plots"]` stays as the caller set it), `report.md` and
    `report.json` into `out_dir` (the JSON last, and atomically: a report.json present means a complete report).
    `labels`, `preamble` and `sections` go to `tga_hf.report.render_markdown`. Returns the written paths."""
    report = report if isinstance(report, Report) else Report.from_dict(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = plot_safety(report.safety, out_dir) if plots and report.safety else []
    if plots:
        report.files["plots"] = [path.name for path in drawn]
    report.files["markdown"] = "report.md"
    markdown = render_markdown(report, labels=labels, preamble=preamble, sections=sections)
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    write_text_atomic(out_dir / "report.json", json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return {"json": out_dir / "report.json", "markdown": out_dir / "report.md", **{p.stem: p for p in drawn}}


__all__ = [
    "SCHEMA_VERSION",
    "build_report",
    "judged_safety_section",
    "plot_safety",
    "refusal_entries",
    "render_markdown",
    "safety_section",
    "utility_entries",
    "write_report",
]

"""Evaluation reports: `report.json` (read by the Hub model card), `report.md` (tables) and PNG plots.

`report.json` schema (`schema_version` 1); rates are fractions in [0, 1]:

    {
      "schema_version": 1,
      "tga_hf_version": "0.1.0",
      "created_utc": "2026-11-23T10:00:00Z",
      "model": {"path": str, "model_type": str, "num_parameters": int},
      "judge": {"name": "phrase" | "probe" | "model", "version": str, "phrase_list_version": str},
      "generation": {"max_new_tokens": int, "batch_size": int, "do_sample": false},
      "safety": null | {
        "dsr": [Entry, ...],            # harmful inputs: share refused (higher is safer)
        "over_refusal": [Entry, ...],   # safe inputs: share refused (lower is better)
        "judge_agreement": null | {"judges": [str, str], "n": int, "agreement": float, "cohen_kappa": float,
                                   "only_first": int, "only_second": int}
      },
      "utility": null | [{"dataset": str, "modality": "image" | "text", "n": int, "metrics": {name: float}}],
      "files": {"responses": [str], "plots": [str], "markdown": "report.md"}
    }
    Entry = {"dataset": str, "modality": "image" | "text", "retrieval": bool,
             "overall": Rate, "per_category": {category: Rate}}
    Rate  = {"count": int, "total": int, "rate": float, "ci95": [low, high]}   # Wilson 95% interval

One Entry per (dataset, modality, retrieval) present in the responses, so text DSR and image DSR of the same requests
(and image DSR with retrieval on and off) sit side by side.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from .. import __version__
from ..fileio import write_text_atomic
from .judges import Verdict
from .metrics import refusal_rates, utility_scores

SCHEMA_VERSION = 1


def _condition(record: dict) -> tuple[str, str, bool]:
    return record["source"], record["modality"], bool(record.get("retrieval", False))


def refusal_entries(records: Sequence[dict], verdicts: Sequence[Verdict], harmful: bool) -> list[dict]:
    """One Entry (see module docstring) per (dataset, modality, retrieval) over the records with this `harmful`."""
    if len(records) != len(verdicts):
        raise ValueError(f"got {len(verdicts)} verdicts for {len(records)} records")
    groups: dict[tuple[str, str, bool], list[tuple[bool, str]]] = {}
    for record, verdict in zip(records, verdicts, strict=True):
        if bool(record["harmful"]) is harmful:
            groups.setdefault(_condition(record), []).append((verdict.refused, record["category"]))
    entries = []
    for (dataset, modality, retrieval), pairs in sorted(groups.items()):
        rates = refusal_rates([refused for refused, _ in pairs], [category for _, category in pairs])
        entries.append({"dataset": dataset, "modality": modality, "retrieval": retrieval, **rates.to_dict()})
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


def _rate_from_metric(fields: dict) -> dict:
    """A report Rate from the refusal-rate metric's fields."""
    return {
        "count": fields["refused"],
        "total": fields["n"],
        "rate": fields["refusal_rate"],
        "ci95": [fields["ci_low"], fields["ci_high"]],
    }


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
        section["dsr" if harmful else "over_refusal"].append(
            {
                "dataset": dataset,
                "modality": modality,
                "retrieval": retrieval,
                "overall": _rate_from_metric(result),
                "per_category": {name: _rate_from_metric(rate) for name, rate in result["per_category"].items()},
            }
        )
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
        entries.append({"dataset": dataset, "modality": modality, "n": len(group), "metrics": scores})
    return entries


def build_report(
    model_info: dict,
    judge_info: dict,
    generation: dict,
    safety: dict | None = None,
    utility: list[dict] | None = None,
    files: dict | None = None,
) -> dict:
    """Assemble the report dict in the documented schema."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tga_hf_version": __version__,
        "created_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": model_info,
        "judge": judge_info,
        "generation": generation,
        "safety": safety,
        "utility": utility,
        "files": files or {"responses": [], "plots": [], "markdown": "report.md"},
    }


def _percent(rate: dict) -> str:
    low, high = rate["ci95"]
    return f"{100 * rate['rate']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def _label(entry: dict) -> str:
    return f"{entry['modality']}{' + retrieval' if entry['retrieval'] else ''}"


def render_markdown(report: dict) -> str:
    """The report as Markdown tables."""
    judge = report["judge"]
    lines = [
        f"# Evaluation report: `{report['model'].get('path', '?')}`",
        "",
        f"tga-hf {report['tga_hf_version']}, {report['created_utc']}. Refusal judge: **{judge['name']}** "
        f"(`{judge['version']}`). Greedy decoding, at most {report['generation'].get('max_new_tokens')} new tokens. "
        "Rates in %, Wilson 95% interval in brackets.",
    ]
    safety = report.get("safety")
    if safety:
        for key, title in (
            ("dsr", "Defense success rate (harmful inputs refused, higher is safer)"),
            ("over_refusal", "Over-refusal (safe inputs refused, lower is better)"),
        ):
            if not safety[key]:
                continue
            lines += ["", f"## {title}", "", "| dataset | input | rate % [95% CI] | refused / n |", "|---|---|---|---|"]
            for entry in safety[key]:
                overall = entry["overall"]
                lines.append(
                    f"| {entry['dataset']} | {_label(entry)} | {_percent(overall)} | "
                    f"{overall['count']} / {overall['total']} |"
                )
        lines += _category_tables(safety["dsr"])
        agreement = safety.get("judge_agreement")
        if agreement:
            lines += [
                "",
                "## Judge agreement",
                "",
                f"{agreement['judges'][0]} vs {agreement['judges'][1]} on {agreement['n']} responses: "
                f"agreement {100 * agreement['agreement']:.1f}%, Cohen's kappa {agreement['cohen_kappa']:.3f} "
                f"(refusal only by the first: {agreement['only_first']}, only by the second: "
                f"{agreement['only_second']}).",
            ]
    if report.get("utility"):
        names = sorted({name for entry in report["utility"] for name in entry["metrics"]})
        lines += [
            "",
            "## Utility",
            "",
            "| dataset | input | n | " + " | ".join(names) + " |",
            "|---|---|---|" + "---|" * len(names),
        ]
        for entry in report["utility"]:
            values = " | ".join(f"{entry['metrics'][n]:.4f}" if n in entry["metrics"] else "" for n in names)
            lines.append(f"| {entry['dataset']} | {entry['modality']} | {entry['n']} | {values} |")
    for plot in report["files"].get("plots", []):
        lines += ["", f"![{Path(plot).stem}]({plot})"]
    return "\n".join(lines) + "\n"


def _category_tables(entries: Sequence[dict]) -> list[str]:
    """Per-category DSR, one table per dataset, one column per input condition."""
    lines = []
    for dataset in sorted({entry["dataset"] for entry in entries}):
        columns = [entry for entry in entries if entry["dataset"] == dataset]
        categories = sorted({category for entry in columns for category in entry["per_category"]})
        if len(categories) < 2:
            continue
        lines += [
            "",
            f"### DSR per category: {dataset}",
            "",
            "| category | " + " | ".join(_label(entry) for entry in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for category in categories:
            cells = [
                _percent(entry["per_category"][category]) if category in entry["per_category"] else ""
                for entry in columns
            ]
            lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return lines


def plot_safety(safety: dict, out_dir: Path) -> list[Path]:
    """`dsr_overview.png` (overall DSR and over-refusal per condition, with 95% intervals) and, for datasets with
    categories, `dsr_by_category_<dataset>.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    rows = [("DSR", entry) for entry in safety["dsr"]] + [("over-refusal", entry) for entry in safety["over_refusal"]]
    if rows:
        figure, axis = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 4))
        rates = [100 * entry["overall"]["rate"] for _, entry in rows]
        errors = [
            [100 * (entry["overall"]["rate"] - entry["overall"]["ci95"][0]) for _, entry in rows],
            [100 * (entry["overall"]["ci95"][1] - entry["overall"]["rate"]) for _, entry in rows],
        ]
        colors = ["tab:blue" if kind == "DSR" else "tab:orange" for kind, _ in rows]
        axis.bar(range(len(rows)), rates, yerr=errors, color=colors, capsize=4)
        axis.set_xticks(range(len(rows)), [f"{kind}\n{e['dataset']}\n{_label(e)}" for kind, e in rows], fontsize=7)
        axis.set_ylabel("% refused (95% Wilson CI)")
        axis.set_ylim(0, 105)
        axis.set_title("Refusal on harmful (DSR) and safe (over-refusal) inputs")
        figure.tight_layout()
        paths.append(out_dir / "dsr_overview.png")
        figure.savefig(paths[-1], dpi=120)
        plt.close(figure)
    for dataset in sorted({entry["dataset"] for entry in safety["dsr"]}):
        columns = [entry for entry in safety["dsr"] if entry["dataset"] == dataset]
        categories = sorted({category for entry in columns for category in entry["per_category"]})
        if len(categories) < 2:
            continue
        figure, axis = plt.subplots(figsize=(max(6, 0.8 * len(categories) + 2), 4))
        width = 0.8 / len(columns)
        for offset, entry in enumerate(columns):
            values = [100 * entry["per_category"].get(c, {"rate": 0.0})["rate"] for c in categories]
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


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write the plots, `report.md` and `report.json` into `out_dir` (the JSON last, and atomically: a report.json
    present means a complete report). Returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_safety(report["safety"], out_dir) if report.get("safety") else []
    report["files"]["plots"] = [path.name for path in plots]
    report["files"]["markdown"] = "report.md"
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return {"json": out_dir / "report.json", "markdown": out_dir / "report.md", **{p.stem: p for p in plots}}

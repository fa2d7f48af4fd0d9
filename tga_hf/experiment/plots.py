"""Plots of the experiment report: DSR per condition with 95% intervals, per-layer image/caption cosine."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

from ..report import Report, ReportRate

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_rates(names: Sequence[str], rates: Sequence[ReportRate], ylabel: str, title: str, path: str | Path) -> Path:
    """Bars of `rates` by condition `names`, each with its 95% interval and its value written on it, so that an
    all-zero run reads as zeros, not as an empty plot."""
    values = [rate.rate for rate in rates]
    intervals = [rate.ci95 or (rate.rate, rate.rate) for rate in rates]
    errors = [
        [value - low for value, (low, _) in zip(values, intervals, strict=True)],
        [high - value for value, (_, high) in zip(values, intervals, strict=True)],
    ]
    figure, axis = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
    bars = axis.bar(range(len(names)), values, yerr=errors, capsize=4, color="#4c72b0")
    labels = [f"{100 * rate.rate:.0f}%" + (f"\n{rate.count}/{rate.total}" if rate.total else "") for rate in rates]
    axis.bar_label(bars, labels, padding=2, fontsize=8)
    axis.set_xticks(range(len(names)), [name.replace("_", "\n") for name in names], fontsize=8)
    axis.set_ylim(0, 1.15)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_dsr(report: Report, path: str | Path) -> Path:
    entries = report.safety.dsr if report.safety else []
    return plot_rates(
        [entry.condition or entry.dataset for entry in entries],
        [entry.overall for entry in entries],
        "DSR (phrase judge)",
        f"Defense success rate on FigStep SafeBench (n={report.n_test}), 95% Wilson intervals",
        path,
    )


def plot_cosine(report: Report, path: str | Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 3.6))
    reference = None
    for arm, per_layer in report.details["cosine"].items():
        (line,) = axis.plot(per_layer["layer"], per_layer["mean_cosine"], marker="o", markersize=3, label=arm)
        if "mean_cosine_other_caption" in per_layer:
            # drawn on top, dashed with hollow markers: it lies close to the solid line when the content gap is small
            axis.plot(
                per_layer["layer"],
                per_layer["mean_cosine_other_caption"],
                color=line.get_color(),
                linestyle="--",
                linewidth=1.5,
                marker="x",
                markersize=4,
                zorder=3,
                label=f"{arm}, other requests' text",
            )
        reference = per_layer.get("reference", [None])[0]
    if reference is not None:
        axis.axhline(reference, color="grey", linestyle="--", label="vision-encoder space")
    band = report.details["safety_band"]["robust"]
    if band:
        axis.axvspan(band[0], band[1], color="orange", alpha=0.15, label="safety band (logit lens)")
    axis.set_xlabel("hidden-state index")
    axis.set_ylabel("cos(image states, caption states)")
    axis.set_title("Toxic image vs its text: per-layer cosine")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)

"""Plots of the experiment report: DSR per condition with 95% intervals, per-layer image/caption cosine."""

from pathlib import Path

import matplotlib

from ..report import Report

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_dsr(report: Report, path: str | Path) -> Path:
    entries = report.safety.dsr if report.safety else []
    names = [entry.condition or entry.dataset for entry in entries]
    rates = [entry.overall.rate for entry in entries]
    intervals = [entry.overall.ci95 or (entry.overall.rate, entry.overall.rate) for entry in entries]
    errors = [
        [rate - low for rate, (low, _) in zip(rates, intervals, strict=True)],
        [high - rate for rate, (_, high) in zip(rates, intervals, strict=True)],
    ]
    figure, axis = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
    axis.bar(range(len(names)), rates, yerr=errors, capsize=4, color="#4c72b0")
    axis.set_xticks(range(len(names)), [name.replace("_", "\n") for name in names], fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("DSR (phrase judge)")
    axis.set_title(f"Defense success rate on FigStep SafeBench (n={report.n_test}), 95% Wilson intervals")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_cosine(report: Report, path: str | Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 3.6))
    reference = None
    for arm, per_layer in report.details["cosine"].items():
        (line,) = axis.plot(per_layer["layer"], per_layer["mean_cosine"], marker="o", markersize=3, label=arm)
        if "mean_cosine_other_caption" in per_layer:
            axis.plot(
                per_layer["layer"],
                per_layer["mean_cosine_other_caption"],
                color=line.get_color(),
                linestyle=":",
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
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)

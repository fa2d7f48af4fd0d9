"""Plots of the experiment report: DSR per condition with 95% intervals, per-layer image/caption cosine."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_dsr(report: dict, path: str | Path) -> Path:
    names = list(report["dsr"])
    rates = [report["dsr"][name] for name in names]
    errors = [
        [rate - report["dsr_ci"][name][0] for name, rate in zip(names, rates, strict=True)],
        [report["dsr_ci"][name][1] - rate for name, rate in zip(names, rates, strict=True)],
    ]
    figure, axis = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
    axis.bar(range(len(names)), rates, yerr=errors, capsize=4, color="#4c72b0")
    axis.set_xticks(range(len(names)), [name.replace("_", "\n") for name in names], fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("DSR (phrase judge)")
    axis.set_title(f"Defense success rate on FigStep SafeBench (n={report['n_test']}), 95% Wilson intervals")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_cosine(report: dict, path: str | Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 3.6))
    reference = None
    for arm, per_layer in report["cosine"].items():
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
    band = report["safety_band"]["robust"]
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

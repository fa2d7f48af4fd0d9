"""PNG figures of the layer analyses. Built on `matplotlib.figure.Figure` (no pyplot global state, no display needed);
each file is written to a temporary name first and renamed, so a failed plot leaves nothing half-written."""

from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from ...fileio import atomic_file
from ._common import WindowSweep
from .attention import AttentionRatios
from .cosine import LayerCosine
from .safety_layers import SafetyLayers


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_file(path) as partial:
        figure.savefig(partial, format="png", dpi=150, bbox_inches="tight")
    return path


def _axes(width: float = 7.0):
    figure = Figure(figsize=(width, 4))
    return figure, figure.subplots()


def _finish(figure: Figure, axes, path: str | Path, xlabel: str, ylabel: str, title: str) -> Path:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    return _save(figure, path)


def plot_safety_layers(results: SafetyLayers | Mapping[str, SafetyLayers], path: str | Path) -> Path:
    """Share of prompts whose logit-lens top-1 is a refusal token, per layer, one line per refusal family, with
    each family's robust band drawn as a bar above the curves."""
    results = {"refusal family": results} if isinstance(results, SafetyLayers) else dict(results)
    figure, axes = _axes()
    for offset, (name, result) in enumerate(results.items()):
        (line,) = axes.plot(result.layers, result.top1.mean(axis=0), marker="o", markersize=3, label=name)
        if result.robust_band is not None:
            first, last = result.robust_band
            height = 1.04 + 0.04 * offset
            # +/- 0.4 so a one-layer band still shows as a bar
            axes.plot([first - 0.4, last + 0.4], [height, height], color=line.get_color(), linewidth=4)
    axes.set_ylim(0, 1.08 + 0.04 * len(results))
    return _finish(
        figure,
        axes,
        path,
        "layer (hidden-state index)",
        "share of prompts with refusal token at top-1",
        "Logit lens at the last prompt position (bars: robust bands)",
    )


def plot_layer_cosine(result: LayerCosine, path: str | Path) -> Path:
    """Mean (+/- std) cosine of image vs caption states per layer, with the vision-encoder similarity as a line."""
    frame = result.per_layer()
    figure, axes = _axes()
    axes.plot(frame["layer"], frame["mean_cosine"], marker="o", markersize=3, label="image vs caption (LLM states)")
    axes.fill_between(
        frame["layer"],
        frame["mean_cosine"] - frame["std_cosine"],
        frame["mean_cosine"] + frame["std_cosine"],
        alpha=0.2,
    )
    if result.reference is not None:
        axes.axhline(float(result.reference.mean()), linestyle="--", color="black", label="vision-encoder space")
    title = "Image vs text states of the same content"
    return _finish(figure, axes, path, "layer (hidden-state index)", "cosine similarity", title)


def plot_attention_ratios(result: AttentionRatios, path: str | Path) -> Path:
    """Attention ratio R to the toxic span per layer, content given as image vs as text."""
    frame = result.per_layer()
    figure, axes = _axes()
    axes.plot(frame["layer"], frame["image_ratio"], marker="o", markersize=3, label="toxic image tokens")
    axes.plot(frame["layer"], frame["text_ratio"], marker="s", markersize=3, label="toxic text tokens")
    return _finish(
        figure, axes, path, "decoder layer", "R: share of last-position attention", "Attention to the toxic content"
    )


def plot_window_dsr(sweep: WindowSweep, path: str | Path, title: str) -> Path:
    """DSR per layer window as bars, the unmodified model ("none") as a dashed line."""
    table = sweep.table
    baseline = table.loc[table["window"] == "none", "dsr"]
    windows = table[table["window"] != "none"]
    figure, axes = _axes(width=max(5.0, 0.6 * len(windows) + 2))
    axes.bar(windows["window"], windows["dsr"], color="tab:blue")
    if len(baseline):
        axes.axhline(float(baseline.iloc[0]), linestyle="--", color="black", label="no intervention")
    axes.set_ylim(0, 1.05)
    axes.tick_params(axis="x", labelrotation=45)
    return _finish(figure, axes, path, "layer window", "DSR (share refused)", title)


__all__ = ["plot_attention_ratios", "plot_layer_cosine", "plot_safety_layers", "plot_window_dsr"]

"""Model card and retrieval-index card of an exported TGA repository, rendered from the templates in `templates/`.

Every number in the card's evaluation section comes from an evaluation report (`tga_hf.report.Report`, the one
schema `tga-hf eval` and `tga-hf experiment` write; older layouts are read too); nothing is typed by hand. What the card
takes from it, every part optional:

- `safety.dsr`: the DSR table. An entry with a `condition` (the experiment's settings) is labelled by it: known
  settings, in table order, are `text` (the base LLM, harmful request as text), `<arm>_text` (an arm's own LLM after
  training, the same text), `baseline_image` (LM-loss alignment,
  toxic image), `retrieval_only_image` (retrieval prefix only), `tga_image` (full TGA, retrieval at inference),
  `tga_image_no_retrieval` (full TGA, retrieval off at inference); other settings follow under their own name.
  `tga_image` and `tga_image_no_retrieval` are this model's own results: they go into `model-index` and
  `.eval_results/`. An entry without a condition (`tga-hf eval`: one per data set, modality and retrieval) is labelled
  `dataset: modality`, and its image entries are this model's own results (with / without retrieval at inference).
  The interval and the number of requests are shown where the report has them.
- `safety.over_refusal` (in %) and `utility`: tables of their own.
- `n_test`, `judge` (`name version`), `command`, `training` (`{setting: value}`, shown in the training recipe), and
  `benchmark`: `{"name", "dataset_id", "revision"}`, the test set the own results are filed under. The default names the
  FigStep SafeBench requests rendered as typographic images; its `dataset_id` is a placeholder for that test set: pass
  the Hub id of a benchmark dataset to appear on its leaderboard (the Hub flags `.eval_results/` entries whose dataset
  it does not know). Reports whose rows are data sets file them as "the data sets named in each row".

Example:

```python
>>> card = model_card(model.config, report={"dsr": {"tga_image": 0.91}}, repo_id="me/tga-llava")
>>> card.data.eval_results[0].metric_value
0.91
```
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, EvalResultEntry, ModelCard, ModelCardData

from ..report import Report, flatten, format_percent, read_report

# package data (pyproject: tga_hf.hub templates/*.md), so that installed wheels carry the templates too
TEMPLATES_DIR = Path(__file__).parent / "templates"
MODEL_CARD_TEMPLATE = TEMPLATES_DIR / "model_card.md"
INDEX_CARD_TEMPLATE = TEMPLATES_DIR / "retrieval_index_card.md"

MODEL_TAGS = ["tga", "safety", "llava", "custom_code", "vision-language", "image-text-to-text"]
DSR_SETTINGS = {
    "text": "Base LLM, harmful request as text",
    "baseline_text": "Baseline alignment's own LLM (after training), harmful request as text",
    "retrieval_only_text": "Retrieval prefix only's own LLM (after training), harmful request as text",
    "tga_text": "TGA's own LLM (after training), harmful request as text",
    "baseline_image": "Baseline alignment (LM loss only), toxic image",
    "retrieval_only_image": "Retrieval prefix only, toxic image",
    "retrieval_only_image_no_retrieval": "Retrieval prefix only, toxic image, retrieval off at inference",
    "tga_image": "TGA (retrieval prefix + guide loss), toxic image",
    "tga_image_no_retrieval": "TGA, toxic image, retrieval off at inference",
}


def own_results(arm: str = "tga") -> dict[str, tuple[str, str, str]]:
    """The report settings that are the card's model's own results when it is the experiment's `arm` ("tga",
    "baseline", "retrieval_only", ...): `{condition: (metric type, metric name, eval-results task)}`. The baseline arm
    has no retriever, so its one image setting is its own result without retrieval."""
    if arm == "baseline":
        return {"baseline_image": ("dsr_image", "DSR on toxic images (no retrieval)", "dsr")}
    return {
        f"{arm}_image": ("dsr_image", "DSR on toxic images (retrieval at inference)", "dsr"),
        f"{arm}_image_no_retrieval": (
            "dsr_image_no_retrieval",
            "DSR on toxic images (no retrieval at inference)",
            "dsr_no_retrieval",
        ),
    }


# An exported model is the TGA arm unless told otherwise: these settings are its own results.
OWN_RESULTS = own_results("tga")
DEFAULT_BENCHMARK = {
    "name": "FigStep SafeBench requests rendered as typographic images",
    "dataset_id": "tga-hf/figstep-safebench-typographic",
}


# The card's name of the typed report (kept: `tga_hf.hub.EvalReport` is public API).
EvalReport = Report


@dataclass(frozen=True)
class ResultRow:
    """One row of the card's DSR table: `rate` and `interval` are fractions; `own` names this model's own metrics
    (`(metric_type, metric_name, task_id)`) for `model-index` and `.eval_results/`, None for reference points."""

    label: str
    rate: float
    interval: tuple[float, float] | None = None
    n: int | None = None
    own: tuple[str, str, str] | None = None
    dataset: str | None = None


def _input(entry: Any) -> str:
    """`dataset: modality[, retrieval at inference]`, the label of an entry without a condition."""
    return f"{entry.dataset}: {entry.modality}{', retrieval at inference' if entry.retrieval else ''}"


def result_rows(report: Report, arm: str = "tga") -> list[ResultRow]:
    """The DSR rows of the card: named settings first (known ones in `DSR_SETTINGS` order), then data-set rows; the
    settings of `arm` (`own_results`) are marked as the model's own."""
    if report.safety is None:
        return []
    own_settings = own_results(arm)
    named = [entry for entry in report.safety.dsr if entry.condition is not None]
    named.sort(key=lambda entry: list(DSR_SETTINGS).index(entry.condition) if entry.condition in DSR_SETTINGS else 99)
    rows = [
        ResultRow(
            label=DSR_SETTINGS.get(entry.condition, f"`{entry.condition}`"),
            rate=entry.overall.rate,
            interval=entry.overall.ci95,
            n=entry.overall.total,
            own=own_settings.get(entry.condition),
        )
        for entry in named
    ]
    for entry in report.safety.dsr:
        if entry.condition is not None:
            continue
        own = None
        if entry.modality == "image":
            metric, metric_name, task = OWN_RESULTS["tga_image" if entry.retrieval else "tga_image_no_retrieval"]
            own = (metric, f"{metric_name}, {entry.dataset}", f"{entry.dataset}_{task}")
        overall = entry.overall
        rows.append(ResultRow(_input(entry), overall.rate, overall.ci95, overall.total, own, entry.dataset))
    return rows


def _benchmark(report: Report) -> dict[str, str]:
    benchmark = dict(DEFAULT_BENCHMARK)
    if report.safety is not None and any(entry.condition is None for entry in report.safety.dsr):
        benchmark["name"] = "the data sets named in each row"  # one row per data set, each named in its row
    benchmark.update(report.benchmark or {})
    return benchmark


def format_value(value: Any) -> str:
    """How the card prints any other report number: integers as they are, floats with 4 significant digits."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


def _dsr_rows(rows: Sequence[ResultRow]) -> list[dict[str, str]]:
    return [
        {
            "label": row.label,
            "value": format_percent(row.rate),
            "interval": f"{format_percent(row.interval[0])} - {format_percent(row.interval[1])}"
            if row.interval
            else "",
            "n": format_value(row.n) if row.n is not None else "",
        }
        for row in rows
    ]


def _metric_tables(report: Report) -> list[dict[str, Any]]:
    tables = []
    if report.safety is not None and report.safety.over_refusal:
        rows = [
            {
                "label": entry.condition if entry.condition is not None else _input(entry),
                "value": format_percent(entry.overall.rate),
            }
            for entry in report.safety.over_refusal
        ]
        tables.append({"title": "Over-refusal on benign inputs (in %; lower is better)", "rows": rows})
    if report.utility:
        rows = [
            {"label": f"{entry.label} / {metric}" if entry.label else metric, "value": format_value(value)}
            for entry in report.utility
            for metric, value in entry.metrics.items()
        ]
        tables.append({"title": "Utility", "rows": rows})
    return tables


def eval_results(report: Report, arm: str = "tga") -> list[EvalResult]:
    """The model's own results as `model-index` entries (legacy format, still what the Hub's card widget reads)."""
    benchmark = _benchmark(report)
    return [
        EvalResult(
            task_type="image-text-to-text",
            task_name="Defense success rate on toxic images",
            dataset_type=benchmark["dataset_id"],
            dataset_name=row.dataset or benchmark["name"],
            dataset_revision=benchmark.get("revision"),
            metric_type=row.own[0],
            metric_name=row.own[1],
            metric_value=row.rate,
        )
        for row in result_rows(report, arm)
        if row.own
    ]


def eval_result_entries(report: Report, arm: str = "tga") -> list[EvalResultEntry]:
    """The model's own results in the newer `.eval_results/*.yaml` format (one entry per result)."""
    benchmark = _benchmark(report)
    judge = report.judge_label
    return [
        EvalResultEntry(
            dataset_id=benchmark["dataset_id"],
            task_id=row.own[2],
            value=row.rate,
            dataset_revision=benchmark.get("revision"),
            notes=row.own[1] + (f"; judge: {judge}" if judge else ""),
        )
        for row in result_rows(report, arm)
        if row.own
    ]


def usage_snippet(repo_id: str, image_size: int) -> str:
    """Transformers-only usage code for the card (needs nothing but transformers, torch and Pillow)."""
    return f'''import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

repo_id = "{repo_id}"
model = AutoModelForImageTextToText.from_pretrained(repo_id, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(repo_id, trust_remote_code=True)

image = Image.new("RGB", ({image_size}, {image_size}), "white")  # your image: Image.open("photo.jpg")
messages = [{{"role": "user", "content": "<image>\\nWhat is shown in this image?"}}]
prompt = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
# TGA prompts carry a retrieved text before the image (`Retrieved Text: {{r}}. `); see below for the shipped index.
inputs = processor(images=image, text=prompt, retrieved_text="a related text from your index", return_tensors="pt")
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
print(answer)'''


def retrieval_snippet(repo_id: str, image_size: int) -> str:
    """Usage code with the shipped retrieval index attached (needs `tga-hf`)."""
    return f'''import torch
from PIL import Image
from tga_hf import from_pretrained

model, processor = from_pretrained("{repo_id}")  # the processor searches retrieval/ for every image

image = Image.new("RGB", ({image_size}, {image_size}), "white")  # your image: Image.open("photo.jpg")
messages = [{{"role": "user", "content": "<image>\\nWhat is shown in this image?"}}]
prompt = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
inputs = processor(images=image, text=prompt, return_tensors="pt")
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
print(answer)'''


def release_snippet(path: str, image_size: int) -> str:
    """Usage code of a release folder: `tga_hf.from_pretrained` rebuilds the base offline and applies the trained
    parts (needs `tga-hf`)."""
    return f'''import torch
from PIL import Image
from tga_hf import from_pretrained

# rebuilds the base LLM and vision tower offline, checks their sha256 against release.json, applies the trained parts
model, processor = from_pretrained("{path}")

image = Image.new("RGB", ({image_size}, {image_size}), "white")  # your image: Image.open("photo.jpg")
messages = [{{"role": "user", "content": "<image>\\nWhat is shown in this image?"}}]
prompt = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
inputs = processor(images=image, text=prompt, return_tensors="pt")  # retrieval runs here when an index is attached
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
print(answer)'''


def _recipe_rows(config: Any, report: Report) -> list[dict[str, str]]:
    guide_layers = config.resolved_guide_layers() if hasattr(config, "resolved_guide_layers") else None
    rows = [
        ("guide layers (hidden-state indices)", ", ".join(map(str, guide_layers)) if guide_layers else None),
        ("guide loss weight", getattr(config, "guide_loss_weight", None)),
        ("retrieval template", f"`{config.retrieval_template}`" if hasattr(config, "retrieval_template") else None),
        ("retrieved texts per image", getattr(config, "retrieval_top_k", None)),
        ("vision feature layer", getattr(config, "vision_feature_layer", None)),
        ("language model", getattr(getattr(config, "text_config", None), "model_type", None)),
        ("vision tower", getattr(getattr(config, "vision_config", None), "model_type", None)),
    ]
    rows += [(str(key), value) for key, value in flatten(report.training)]
    return [{"label": label, "value": format_value(value)} for label, value in rows if value is not None]


def _render(
    card_class: type[ModelCard] | type[DatasetCard],
    template_path: Path,
    card_data: ModelCardData | DatasetCardData,
    **variables: Any,
) -> ModelCard | DatasetCard:
    """`card_class.from_template` on one of the package's templates (or the caller's): huggingface_hub renders it
    with Jinja's default settings, offline. The templates therefore mark their own whitespace (`{%- ... %}`)."""
    if not template_path.is_file():
        raise FileNotFoundError(f"card template not found: {template_path} (pass template_path= to use your own)")
    return card_class.from_template(card_data, template_path=str(template_path), **variables)


def model_card(
    config: Any,
    *,
    report: Report | Mapping[str, Any] | str | Path | None = None,
    repo_id: str,
    base_model: str | Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    license: str | None = None,
    files: Sequence[tuple[str, str]] = (),
    has_retriever: bool = False,
    template_path: str | Path | None = None,
    arm: str = "tga",
    release: Mapping[str, Any] | None = None,
) -> ModelCard:
    """The model card (`README.md`) of an exported TGA-LLaVA, or of a release folder (`release=`).

    Args:
        config: the model's `TGALlavaConfig` (guide layers, retrieval settings and image size come from it).
        report: the evaluation report ([`Report`], its dict or the path of its JSON); the card shows "no
            evaluation" without one.
        repo_id: the Hub id (or local folder) the usage code loads.
        base_model: Hub id(s) of the vision tower and language model the model was composed from.
        datasets: Hub ids of the alignment datasets.
        files: `(path, description)` rows of the "Files" table.
        has_retriever: whether the repository ships `retrieval/` (adds the retrieval usage code).
        template_path: a Jinja template of your own instead of `templates/model_card.md`; `ModelCard.from_template`
            renders it with Jinja's default whitespace rules (mark trimming with `{%- ... %}`, as the package's do).
        arm: which of the experiment's arms the model is ("tga", "baseline", "retrieval_only", ...): its settings
            in the report are the model's own results (`own_results`).
        release: for the card of a release folder (`tga_hf.hub.release`): what the template's release sections show,
            `{"path", "full_name", "llm", "llm_title", "llm_hub_id", "dtype", "install", "gguf", "tower", "trained",
            "adapter_note"}`. The usage then loads the release with tga-hf, or the full folder that
            `tga-hf export --release` writes with transformers alone; `library_name` is `tga-hf`.
    """
    report = read_report(report)
    rows = result_rows(report, arm)
    base_models = [base_model] if isinstance(base_model, str) else list(base_model or [])
    results = eval_results(report, arm)
    card_data = ModelCardData(
        base_model=base_models or None,
        datasets=list(datasets) if datasets else None,
        library_name="tga-hf" if release else "transformers",
        license=license,
        pipeline_tag="image-text-to-text",
        tags=list(MODEL_TAGS),
        model_name=repo_id.split("/")[-1] if results else None,
        eval_results=results or None,
    )
    image_size = config.vision_config.image_size
    return _render(
        ModelCard,
        Path(template_path) if template_path else MODEL_CARD_TEMPLATE,
        card_data,
        model_title=repo_id.split("/")[-1],
        base_models=base_models,
        usage_snippet=usage_snippet(release["full_name"] if release else repo_id, image_size),
        retrieval_snippet=retrieval_snippet(repo_id, image_size),
        release=dict(release) if release else None,
        release_snippet=release_snippet(release["path"], image_size) if release else None,
        has_retriever=has_retriever,
        files=[{"path": path, "content": content} for path, content in files],
        recipe=_recipe_rows(config, report),
        has_training_report=bool(report.training),
        dsr_rows=_dsr_rows(rows),
        has_intervals=any(row.interval for row in rows),
        has_counts=any(row.n is not None for row in rows),
        benchmark_name=_benchmark(report)["name"],
        n_test=report.n_test,
        judge=report.judge_label,
        metric_tables=_metric_tables(report),
        command=report.command,
    )


_INDEX_LABELS = {
    "dimension": "embedding dimension",
    "normalized": "L2-normalised",
    "corpus_size": "texts",
    "texts_sha256": "sha256 of the texts",
    "index_bytes": "bytes of index.faiss",
    "index_sha256": "sha256 of index.faiss",
}


def index_card(
    retriever_config: Mapping[str, Any],
    *,
    repo_id: str,
    model_repo_id: str | None = None,
    license: str | None = None,
    template_path: str | Path | None = None,
) -> DatasetCard:
    """The dataset card of a retrieval index pushed as its own dataset repository. Every entry of its
    `retriever_config.json` (encoder, dimension, metric, index type, corpus size, sources, hashes) is listed."""
    size = retriever_config.get("corpus_size")
    encoder = retriever_config.get("encoder")
    card_data = DatasetCardData(
        license=license,
        tags=["tga", "safety", "retrieval", "faiss"],
        pretty_name=f"TGA retrieval index {repo_id.split('/')[-1]}",
        size_categories=[_size_category(size)] if isinstance(size, int) else None,
    )
    return _render(
        DatasetCard,
        Path(template_path) if template_path else INDEX_CARD_TEMPLATE,
        card_data,
        repo_id=repo_id,
        model_repo_id=model_repo_id,
        bundled_encoder=isinstance(encoder, Mapping) and bool(encoder.get("bundled")),
        details=[
            {"label": _INDEX_LABELS.get(label, label), "value": format_value(value)}
            for label, value in flatten(retriever_config)
        ],
    )


def _size_category(size: int) -> str:
    """The Hub's `size_categories` bucket of a corpus with `size` texts."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if size < limit:
            return name
    return "1M<n<10M" if size < 10_000_000 else "10M<n<100M"


__all__ = [
    "DSR_SETTINGS",
    "EvalReport",
    "ResultRow",
    "eval_result_entries",
    "eval_results",
    "format_percent",
    "format_value",
    "index_card",
    "model_card",
    "own_results",
    "read_report",
    "release_snippet",
    "result_rows",
]

"""Model card and retrieval-index card of an exported TGA repository, rendered from the templates in `templates/`.

Every number in the card's evaluation section comes from an evaluation report; nothing is typed by hand. Two report
shapes are read, every section optional:

1. The experiment report (`results/<run>/report.json` of `tga-hf experiment`):
   - `dsr`: `{setting: fraction in [0, 1]}`. Known settings, in table order: `text` (the base LLM, harmful request as
     text), `baseline_image` (LM-loss alignment, toxic image), `retrieval_only_image` (retrieval prefix only),
     `tga_image` (full TGA, retrieval at inference), `tga_image_no_retrieval` (full TGA, retrieval off at inference);
     other settings follow under their own key (nested dicts as `outer / inner`). `tga_image` and
     `tga_image_no_retrieval` are this model's own results: they go into `model-index` and `.eval_results/`.
   - `dsr_ci`: `{setting: [low, high]}` fractions, the interval around each DSR.
   - `over_refusal`, `utility`: nested `{name: number | {name: number}}` (over-refusal fractions shown in %).
   - `n_test`: number of test requests; `command`: the command that produced the report; `training`:
     `{setting: value}`, shown in the training recipe.
2. The `tga-hf eval` report (`schema_version` 1, recognised by its `safety` key): `safety.dsr` and
   `safety.over_refusal` are lists of `{"dataset", "modality", "retrieval", "overall": {"rate", "ci95", "total"}}`;
   `utility` a list of `{"dataset", "modality", "n", "metrics": {name: value}}`. Its image entries are this model's
   own results (with / without retrieval at inference).

Both: `judge`: `{"name": str, "version": str}`; `benchmark`: `{"name", "dataset_id", "revision"}`, the test
set the own results are filed under. The default names the FigStep SafeBench requests rendered as typographic images;
its `dataset_id` is a placeholder for that test set: pass the Hub id of a benchmark dataset to appear on its
leaderboard (the Hub flags `.eval_results/` entries whose dataset it does not know).

Example:

```python
>>> card = model_card(model.config, report={"dsr": {"tga_image": 0.91}}, repo_id="me/tga-llava")
>>> card.data.eval_results[0].metric_value
0.91
```
"""

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, EvalResultEntry, ModelCard, ModelCardData

# package data (pyproject: tga_hf.hub templates/*.md), so that installed wheels carry the templates too
TEMPLATES_DIR = Path(__file__).parent / "templates"
MODEL_CARD_TEMPLATE = TEMPLATES_DIR / "model_card.md"
INDEX_CARD_TEMPLATE = TEMPLATES_DIR / "retrieval_index_card.md"

MODEL_TAGS = ["tga", "safety", "llava", "custom_code", "vision-language", "image-text-to-text"]
DSR_SETTINGS = {
    "text": "Base LLM, harmful request as text",
    "baseline_image": "Baseline alignment (LM loss only), toxic image",
    "retrieval_only_image": "Retrieval prefix only, toxic image",
    "tga_image": "TGA (retrieval prefix + guide loss), toxic image",
    "tga_image_no_retrieval": "TGA, toxic image, retrieval off at inference",
}
# The exported model is the TGA arm: these settings are its own results (metric type, metric name, eval-results task).
OWN_RESULTS = {
    "tga_image": ("dsr_image", "DSR on toxic images (retrieval at inference)", "dsr"),
    "tga_image_no_retrieval": (
        "dsr_image_no_retrieval",
        "DSR on toxic images (no retrieval at inference)",
        "dsr_no_retrieval",
    ),
}
DEFAULT_BENCHMARK = {
    "name": "FigStep SafeBench requests rendered as typographic images",
    "dataset_id": "tga-hf/figstep-safebench-typographic",
}


@dataclass(frozen=True)
class ResultRow:
    """One DSR result: `rate` and `interval` are fractions; `own` names this model's own metrics
    (`(metric_type, metric_name, task_id)`) for `model-index` and `.eval_results/`, None for reference points."""

    label: str
    rate: float
    interval: tuple[float, float] | None = None
    n: int | None = None
    own: tuple[str, str, str] | None = None
    dataset: str | None = None


@dataclass
class EvalReport:
    """The parts of an evaluation report the cards use, validated (see the module docstring for the schemas)."""

    dsr: list[ResultRow] = field(default_factory=list)
    over_refusal: list[tuple[str, Any]] = field(default_factory=list)
    utility: list[tuple[str, Any]] = field(default_factory=list)
    n_test: int | None = None
    judge: str | None = None
    command: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    benchmark: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_BENCHMARK))

    @classmethod
    def from_dict(cls, report: Mapping[str, Any] | None) -> "EvalReport":
        """Validate `report` (either schema, or None for "no evaluation") and keep what the cards show."""
        if report is None:
            return cls()
        if not isinstance(report, Mapping):
            raise TypeError(f"report must be a dict (the evaluation report JSON), got {type(report).__name__}")
        parsed = _eval_command_report(report) if "safety" in report else _experiment_report(report)
        n_test = report.get("n_test")
        if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 0):
            raise ValueError(f"report n_test must be a non-negative integer, got {n_test!r}")
        judge = report.get("judge")
        if isinstance(judge, Mapping):
            judge = " ".join(str(judge[key]) for key in ("name", "version") if judge.get(key) is not None) or None
        training = _section(report, "training")
        benchmark = dict(DEFAULT_BENCHMARK)
        if "safety" in report:  # one row per data set, each named in its row
            benchmark["name"] = "the data sets named in each row"
        benchmark.update({key: str(value) for key, value in _section(report, "benchmark").items() if value is not None})
        return cls(
            **parsed,
            n_test=n_test,
            judge=str(judge) if judge is not None else None,
            command=report.get("command"),
            training=dict(training),
            benchmark=benchmark,
        )


def _section(report: Mapping[str, Any], name: str, kind: type = dict) -> Any:
    """`report[name]`, which must be a dict (or, with `kind=list`, a list); empty when missing or null."""
    value = report.get(name)
    if value is None:
        return kind()
    expected = Mapping if kind is dict else list
    if not isinstance(value, expected):
        raise ValueError(f"report {name} must be a {kind.__name__}, got {value!r}")
    return value


def _interval(value: Any, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"report {name} must be [low, high], got {value!r}")
    low, high = (_fraction(bound, name) for bound in value)
    if low > high:
        raise ValueError(f"report {name} has low {low} above high {high}")
    return low, high


def _experiment_report(report: Mapping[str, Any]) -> dict[str, list]:
    rates = {label: value for label, value in _flatten(_section(report, "dsr")) if value is not None}
    intervals = {key: _interval(value, f"dsr_ci.{key}") for key, value in _flatten(_section(report, "dsr_ci"))}
    ordered = [key for key in DSR_SETTINGS if key in rates] + [key for key in rates if key not in DSR_SETTINGS]
    rows = [
        ResultRow(
            label=DSR_SETTINGS.get(key, f"`{key}`"),
            rate=_fraction(rates[key], f"dsr.{key}"),
            interval=intervals.get(key),
            own=OWN_RESULTS.get(key),
            dataset=None,
        )
        for key in ordered
    ]
    return {
        "dsr": rows,
        "over_refusal": _flatten(_section(report, "over_refusal")),
        "utility": _flatten(_section(report, "utility")),
    }


def _eval_command_report(report: Mapping[str, Any]) -> dict[str, list]:
    safety = _section(report, "safety")

    def rows(kind: str) -> list[ResultRow]:
        result = []
        for index, entry in enumerate(_section(safety, kind, list)):
            name = f"safety.{kind}[{index}]"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("overall"), Mapping):
                raise ValueError(f"report {name} must be a dict with an 'overall' rate, got {entry!r}")
            overall, dataset = entry["overall"], str(entry.get("dataset", "?"))
            modality, retrieval = entry.get("modality"), bool(entry.get("retrieval"))
            own = None
            if kind == "dsr" and modality == "image":
                metric, metric_name, task = OWN_RESULTS["tga_image" if retrieval else "tga_image_no_retrieval"]
                own = (metric, f"{metric_name}, {dataset}", f"{dataset}_{task}")
            result.append(
                ResultRow(
                    label=f"{dataset}: {modality}{', retrieval at inference' if retrieval else ''}",
                    rate=_fraction(overall.get("rate"), f"{name}.overall.rate"),
                    interval=_interval(overall.get("ci95"), f"{name}.overall.ci95"),
                    n=overall.get("total"),
                    own=own,
                    dataset=dataset,
                )
            )
        return result

    utility = []
    for entry in _section(report, "utility", list):
        prefix = f"{entry.get('dataset', '?')} ({entry.get('modality', '?')})"
        utility += [(f"{prefix} / {metric}", value) for metric, value in _flatten(entry.get("metrics") or {})]
    return {
        "dsr": rows("dsr"),
        "over_refusal": [(row.label, row.rate) for row in rows("over_refusal")],
        "utility": utility,
    }


def read_report(report: Mapping[str, Any] | str | Path | None) -> EvalReport:
    """An [`EvalReport`] from a report dict, a path to the report JSON, or None."""
    if isinstance(report, str | Path):
        path = Path(report)
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
    return EvalReport.from_dict(report)


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"report {name} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def format_percent(fraction: float) -> str:
    """How the card prints a fraction: a percentage with one decimal (0.8734 -> "87.3")."""
    return f"{100 * fraction:.1f}"


def format_value(value: Any) -> str:
    """How the card prints any other report number: integers as they are, floats with 4 significant digits."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in values.items():
        label = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(_flatten(value, f"{label} / "))
        else:
            rows.append((label, value))
    return rows


def _dsr_rows(report: EvalReport) -> list[dict[str, str]]:
    return [
        {
            "label": row.label,
            "value": format_percent(row.rate),
            "interval": f"{format_percent(row.interval[0])} - {format_percent(row.interval[1])}"
            if row.interval
            else "",
            "n": format_value(row.n) if row.n is not None else "",
        }
        for row in report.dsr
    ]


def _metric_tables(report: EvalReport) -> list[dict[str, Any]]:
    tables = []
    if report.over_refusal:
        rows = []
        for label, value in report.over_refusal:
            is_fraction = isinstance(value, float) and 0.0 <= value <= 1.0
            rows.append({"label": label, "value": format_percent(value) if is_fraction else format_value(value)})
        tables.append({"title": "Over-refusal on benign inputs (in %; lower is better)", "rows": rows})
    if report.utility:
        rows = [{"label": label, "value": format_value(value)} for label, value in report.utility]
        tables.append({"title": "Utility", "rows": rows})
    return tables


def eval_results(report: EvalReport) -> list[EvalResult]:
    """The model's own results as `model-index` entries (legacy format, still what the Hub's card widget reads)."""
    return [
        EvalResult(
            task_type="image-text-to-text",
            task_name="Defense success rate on toxic images",
            dataset_type=report.benchmark["dataset_id"],
            dataset_name=row.dataset or report.benchmark["name"],
            dataset_revision=report.benchmark.get("revision"),
            metric_type=row.own[0],
            metric_name=row.own[1],
            metric_value=row.rate,
        )
        for row in report.dsr
        if row.own
    ]


def eval_result_entries(report: EvalReport) -> list[EvalResultEntry]:
    """The model's own results in the newer `.eval_results/*.yaml` format (one entry per result)."""
    return [
        EvalResultEntry(
            dataset_id=report.benchmark["dataset_id"],
            task_id=row.own[2],
            value=row.rate,
            dataset_revision=report.benchmark.get("revision"),
            notes=row.own[1] + (f"; judge: {report.judge}" if report.judge else ""),
        )
        for row in report.dsr
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


def _recipe_rows(config: Any, report: EvalReport) -> list[dict[str, str]]:
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
    rows += [(str(key), value) for key, value in _flatten(report.training)]
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
    report: Mapping[str, Any] | EvalReport | None = None,
    repo_id: str,
    base_model: str | Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    license: str | None = None,
    files: Sequence[tuple[str, str]] = (),
    has_retriever: bool = False,
    template_path: str | Path | None = None,
) -> ModelCard:
    """The model card (`README.md`) of an exported TGA-LLaVA.

    Args:
        config: the model's `TGALlavaConfig` (guide layers, retrieval settings and image size come from it).
        report: the evaluation report (dict or [`EvalReport`]); the card shows "no evaluation" without one.
        repo_id: the Hub id (or local folder) the usage code loads.
        base_model: Hub id(s) of the vision tower and language model the model was composed from.
        datasets: Hub ids of the alignment datasets.
        files: `(path, description)` rows of the "Files" table.
        has_retriever: whether the repository ships `retrieval/` (adds the retrieval usage code).
        template_path: a Jinja template of your own instead of `templates/model_card.md`; `ModelCard.from_template`
            renders it with Jinja's default whitespace rules (mark trimming with `{%- ... %}`, as the package's do).
    """
    report = report if isinstance(report, EvalReport) else EvalReport.from_dict(report)
    base_models = [base_model] if isinstance(base_model, str) else list(base_model or [])
    results = eval_results(report)
    card_data = ModelCardData(
        base_model=base_models or None,
        datasets=list(datasets) if datasets else None,
        library_name="transformers",
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
        usage_snippet=usage_snippet(repo_id, image_size),
        retrieval_snippet=retrieval_snippet(repo_id, image_size),
        has_retriever=has_retriever,
        files=[{"path": path, "content": content} for path, content in files],
        recipe=_recipe_rows(config, report),
        has_training_report=bool(report.training),
        dsr_rows=_dsr_rows(report),
        has_intervals=any(row.interval for row in report.dsr),
        has_counts=any(row.n is not None for row in report.dsr),
        benchmark_name=report.benchmark["name"],
        n_test=report.n_test,
        judge=report.judge,
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
            for label, value in _flatten(retriever_config)
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
    "read_report",
]

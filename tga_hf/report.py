"""The evaluation report: one typed schema that `tga-hf eval` and `tga-hf experiment` write, the Hub model card reads,
and one Markdown renderer for it.

`report.json` (`schema_version` 2); rates are fractions in [0, 1]; keys marked optional are left out when unset:

    {
      "schema_version": 2,
      "tga_hf_version": "0.1.0",
      "created_utc": "2026-11-23T10:00:00Z",
      "name": str,                      # optional: the experiment's name
      "command": str,                   # optional: the command that produced the report
      "model": {name: value},           # eval: path, model_type, num_parameters; experiment: llm, tower
      "judge": {"name": str, "version": str, ...},       # the judge behind `safety`
      "generation": {"max_new_tokens": int, "do_sample": false, ...},
      "n_test": int,                    # optional: number of harmful test requests
      "split": "dev" | "test",          # optional: the test set's split (experiment)
      "training": {setting: value},     # optional: how the evaluated model was trained (the card's recipe)
      "benchmark": {"name", "dataset_id", "revision"},   # optional: where the card files its own results
      "safety": null | {
        "dsr": [Entry, ...],            # harmful inputs: share refused (higher is safer)
        "over_refusal": [Entry, ...],   # safe inputs: share refused (lower is better)
        "judge_agreement": null | {"judges": [str, str], "n": int, "agreement": float, "cohen_kappa": float,
                                   "only_first": int, "only_second": int},
        "jailbreak": [Entry, ...],      # optional: harmful inputs in a jailbreak framing (FigStep), not the main DSR
        "other_judges": {judge name: {"dsr": [Entry], "over_refusal": [Entry], "jailbreak": [Entry]}}   # optional
      },
      "utility": null | [{"dataset": str, "modality": "image" | "text", "n": int, "metrics": {name: float},
                          "condition": str}],             # condition optional, as in Entry
      "preconditions": [{"name": str, "description": str, "metric": str, "value": float, "threshold": float,
                         "n": int, "passed": bool}],      # optional: checks the safety numbers depend on
      "content_gap": {arm: float},      # optional: centered content gap in the safety band per arm (experiment)
      "configurations_on_test": [{"config": str, "config_sha256": str, "time": str, "out_dir": str}],  # optional
      "dev_runs": [DevRun, ...],        # optional: the dev-split evaluations behind the configuration (experiment)
      "summary": {...},                 # experiment reports: the headline numbers by condition, see `Report.summary`
      "details": {name: value},         # optional: the producer's own analyses (experiment: safety band, cosine, ...)
      "files": {"responses": [str], "plots": [str], "markdown": "report.md"}
    }
    Entry = {"dataset": str, "modality": "image" | "text", "retrieval": bool,
             "condition": str,              # optional: a named setting (experiment: "tga_image", "baseline_image", ...)
             "overall": Rate, "per_category": {category: Rate},
             "distinct_responses": int}     # optional: how many different answers the inputs got
    Rate  = {"count": int | null, "total": int | null, "rate": float, "ci95": [low, high] | null}   # Wilson 95%
    DevRun = {"path": str, "name": str, "command": str | null, "created_utc": str | null,
              "preconditions": [{"name", "value", "threshold", "passed"}],
              "dsr": [{"dataset": str, "label": str, "rate": Rate}], "over_refusal": [the same]}

`tga-hf eval` writes one Entry per (dataset, modality, retrieval) present in its responses; the experiment one per
condition, named in `condition`. `summary` is derived from the sections above when the report is written (and
ignored when it is read), so its numbers cannot disagree with them. Reports written before this schema still load:
schema 1 of `tga-hf eval` (the same layout without the optional keys) and the experiment's flat layout (`dsr`,
`dsr_ci`, `dsr_detail`, `over_refusal`, `utility`, ... at the top level), whose keys are named in the errors.
`results/migrate_to_schema_2.py` rewrote the committed ones.

Example:
    >>> report = read_report("results/demo-smollm2/report.json")  # doctest: +SKIP
    >>> [(entry.condition, entry.overall.rate) for entry in report.safety.dsr]  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

SCHEMA_VERSION = 2


def _default_files() -> dict[str, Any]:
    return {"responses": [], "plots": [], "markdown": "report.md"}


def _version() -> str:
    # Imported here: `tga_hf/__init__.py` sets __version__ after importing the hub, which reads this module.
    from . import __version__

    return __version__


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------------------------------
# Checks. Hand-written on purpose: every error names the key it is about (`safety.dsr[0].overall.rate`), in the old
# layouts too, which a schema library would report in its own path syntax.
# --------------------------------------------------------------------------------------------------------------------


def _section(data: Mapping[str, Any], name: str, kind: type = dict, path: str = "") -> Any:
    """`data[name]`, which must be a dict (or, with `kind=list`, a list); empty when missing or null."""
    value = data.get(name)
    if value is None:
        return kind()
    expected = Mapping if kind is dict else list
    if not isinstance(value, expected):
        raise ValueError(f"report {path}{name} must be a {kind.__name__}, got {value!r}")
    return value


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"report {name} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def _interval(value: Any, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"report {name} must be [low, high], got {value!r}")
    low, high = (_fraction(bound, name) for bound in value)
    if low > high:
        raise ValueError(f"report {name} has low {low} above high {high}")
    return low, high


def _count(value: Any, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"report {name} must be a non-negative integer, got {value!r}")
    return value


def _number(value: Any, name: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"report {name} must be a number, got {value!r}")
    return value


def flatten(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as `(outer / inner, value)` rows: how reports and cards label nested numbers."""
    rows = []
    for key, value in values.items():
        label = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(flatten(value, f"{label} / "))
        else:
            rows.append((label, value))
    return rows


# --------------------------------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------------------------------


class _CountedRate(Protocol):
    """What `ReportRate.of` reads: `tga_hf.eval.metrics.Rate` (not imported: it would load all of tga_hf.eval)."""

    count: int
    total: int
    rate: float
    low: float
    high: float


@dataclass(frozen=True)
class ReportRate:
    """A refusal rate as reports hold it: the fraction, its Wilson 95% interval and the counts, where known."""

    rate: float
    ci95: tuple[float, float] | None = None
    count: int | None = None
    total: int | None = None

    @classmethod
    def of(cls, rate: _CountedRate) -> ReportRate:
        """From a computed `tga_hf.eval.metrics.Rate`."""
        return cls(rate.rate, (rate.low, rate.high), rate.count, rate.total)

    @classmethod
    def from_dict(cls, data: Any, name: str) -> ReportRate:
        if not isinstance(data, Mapping):
            raise ValueError(f"report {name} must be a dict with a 'rate', got {data!r}")
        return cls(
            rate=_fraction(data.get("rate"), f"{name}.rate"),
            ci95=_interval(data.get("ci95"), f"{name}.ci95"),
            count=_count(data.get("count"), f"{name}.count"),
            total=_count(data.get("total"), f"{name}.total"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "total": self.total,
            "rate": self.rate,
            "ci95": list(self.ci95) if self.ci95 is not None else None,
        }


@dataclass
class SafetyEntry:
    """The refusal rate of one input condition: a data set, shown as image or text, with retrieval on or off."""

    dataset: str
    modality: str | None
    retrieval: bool
    overall: ReportRate
    per_category: dict[str, ReportRate] = field(default_factory=dict)
    condition: str | None = None
    distinct_responses: int | None = None

    @classmethod
    def from_dict(cls, data: Any, name: str) -> SafetyEntry:
        if not isinstance(data, Mapping) or not isinstance(data.get("overall"), Mapping):
            raise ValueError(f"report {name} must be a dict with an 'overall' rate, got {data!r}")
        modality = data.get("modality")
        return cls(
            dataset=str(data.get("dataset", "?")),
            modality=str(modality) if modality is not None else None,
            retrieval=bool(data.get("retrieval")),
            overall=ReportRate.from_dict(data["overall"], f"{name}.overall"),
            per_category={
                str(category): ReportRate.from_dict(rate, f"{name}.per_category.{category}")
                for category, rate in _section(data, "per_category", path=f"{name}.").items()
            },
            condition=str(data["condition"]) if data.get("condition") is not None else None,
            distinct_responses=_count(data.get("distinct_responses"), f"{name}.distinct_responses"),
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"dataset": self.dataset, "modality": self.modality, "retrieval": self.retrieval}
        if self.condition is not None:
            data["condition"] = self.condition
        data["overall"] = self.overall.to_dict()
        data["per_category"] = {name: rate.to_dict() for name, rate in self.per_category.items()}
        if self.distinct_responses is not None:
            data["distinct_responses"] = self.distinct_responses
        return data


@dataclass(frozen=True)
class JudgeAgreement:
    """Two judges' verdicts on the same responses: raw agreement, Cohen's kappa and each disagreement's count."""

    judges: tuple[str, str]
    n: int
    agreement: float
    cohen_kappa: float
    only_first: int
    only_second: int

    @classmethod
    def from_dict(cls, data: Any, name: str, judges: Sequence[str] = ("first judge", "second judge")) -> JudgeAgreement:
        if not isinstance(data, Mapping):
            raise ValueError(f"report {name} must be a dict, got {data!r}")
        names = data.get("judges") or judges
        if isinstance(names, str) or len(names) != 2:
            raise ValueError(f"report {name}.judges must name two judges, got {names!r}")
        return cls(
            judges=(str(names[0]), str(names[1])),
            n=_count(data.get("n"), f"{name}.n") or 0,
            agreement=_fraction(data.get("agreement"), f"{name}.agreement"),
            cohen_kappa=float(_number(data.get("cohen_kappa"), f"{name}.cohen_kappa")),
            only_first=_count(data.get("only_first"), f"{name}.only_first") or 0,
            only_second=_count(data.get("only_second"), f"{name}.only_second") or 0,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "judges": list(self.judges),
            "n": self.n,
            "agreement": self.agreement,
            "cohen_kappa": self.cohen_kappa,
            "only_first": self.only_first,
            "only_second": self.only_second,
        }


@dataclass
class Safety:
    """DSR, over-refusal and jailbreak entries under the report's judge; `other_judges` holds the same under further
    judges."""

    dsr: list[SafetyEntry] = field(default_factory=list)
    over_refusal: list[SafetyEntry] = field(default_factory=list)
    judge_agreement: JudgeAgreement | None = None
    other_judges: dict[str, Safety] = field(default_factory=dict)
    jailbreak: list[SafetyEntry] = field(default_factory=list)
    """Harmful inputs in a jailbreak framing (FigStep's fill-the-list): refusal rates kept apart from `dsr`."""

    @classmethod
    def from_dict(cls, data: Any, name: str = "safety") -> Safety:
        if not isinstance(data, Mapping):
            raise ValueError(f"report {name} must be a dict, got {data!r}")
        agreement = data.get("judge_agreement")
        return cls(
            dsr=[
                SafetyEntry.from_dict(entry, f"{name}.dsr[{index}]")
                for index, entry in enumerate(_section(data, "dsr", list, f"{name}."))
            ],
            over_refusal=[
                SafetyEntry.from_dict(entry, f"{name}.over_refusal[{index}]")
                for index, entry in enumerate(_section(data, "over_refusal", list, f"{name}."))
            ],
            judge_agreement=(
                JudgeAgreement.from_dict(agreement, f"{name}.judge_agreement") if agreement is not None else None
            ),
            other_judges={
                str(judge): cls.from_dict(section, f"{name}.other_judges.{judge}")
                for judge, section in _section(data, "other_judges", path=f"{name}.").items()
            },
            jailbreak=[
                SafetyEntry.from_dict(entry, f"{name}.jailbreak[{index}]")
                for index, entry in enumerate(_section(data, "jailbreak", list, f"{name}."))
            ],
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "dsr": [entry.to_dict() for entry in self.dsr],
            "over_refusal": [entry.to_dict() for entry in self.over_refusal],
            "judge_agreement": self.judge_agreement.to_dict() if self.judge_agreement else None,
        }
        if self.jailbreak:
            data["jailbreak"] = [entry.to_dict() for entry in self.jailbreak]
        if self.other_judges:
            data["other_judges"] = {judge: section.to_dict() for judge, section in self.other_judges.items()}
        return data


@dataclass
class UtilityEntry:
    """Utility metrics of one data set and modality (or of one named condition)."""

    dataset: str | None
    modality: str | None
    n: int | None
    metrics: dict[str, float]
    condition: str | None = None

    @classmethod
    def from_dict(cls, data: Any, name: str) -> UtilityEntry:
        if not isinstance(data, Mapping):
            raise ValueError(f"report {name} must be a dict with 'metrics', got {data!r}")
        metrics = data.get("metrics") or {}
        if not isinstance(metrics, Mapping):
            raise ValueError(f"report {name}.metrics must be a dict, got {metrics!r}")
        condition = data.get("condition")
        # a condition names the entry by itself; otherwise "dataset (modality)" does, "?" standing in for either
        dataset, modality = data.get("dataset"), data.get("modality")
        if condition is None:
            dataset, modality = dataset if dataset is not None else "?", modality if modality is not None else "?"
        return cls(
            dataset=str(dataset) if dataset is not None else None,
            modality=str(modality) if modality is not None else None,
            n=_count(data.get("n"), f"{name}.n"),
            metrics={key: _number(value, f"{name}.metrics.{key}") for key, value in flatten(metrics)},
            condition=str(condition) if condition is not None else None,
        )

    @property
    def label(self) -> str | None:
        """What the metrics are of: the condition, else `dataset (modality)`; None for a bare metric."""
        if self.condition is not None:
            return self.condition
        return f"{self.dataset} ({self.modality})" if self.dataset is not None else None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"dataset": self.dataset, "modality": self.modality, "n": self.n}
        data["metrics"] = dict(self.metrics)
        if self.condition is not None:
            data["condition"] = self.condition
        return data


@dataclass(frozen=True)
class Precondition:
    """A check the safety numbers depend on, reported before them: `metric` of `description` over `n` inputs must
    reach `threshold` (an LVLM that cannot read its images cannot refuse them for their content)."""

    name: str
    description: str
    metric: str
    value: float
    threshold: float
    n: int

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold

    @classmethod
    def from_dict(cls, data: Any, name: str) -> Precondition:
        if not isinstance(data, Mapping):
            raise ValueError(f"report {name} must be a dict, got {data!r}")
        return cls(
            name=str(data.get("name", "?")),
            description=str(data.get("description", "")),
            metric=str(data.get("metric", "?")),
            value=float(_number(data.get("value"), f"{name}.value")),
            threshold=float(_number(data.get("threshold"), f"{name}.threshold")),
            n=_count(data.get("n"), f"{name}.n") or 0,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "n": self.n,
            "passed": self.passed,
        }


# Utility metrics of the experiment's conditions that `Report.summary` lists per condition.
SUMMARY_UTILITY_METRICS = ("read_back_rouge_l", "answer_rouge_l")


@dataclass
class Report:
    """An evaluation report (see the module docstring for its JSON). `Report.from_dict` reads this schema and the
    older layouts; `to_dict` writes schema 2."""

    model: dict[str, Any] = field(default_factory=dict)
    judge: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    safety: Safety | None = None
    utility: list[UtilityEntry] | None = None
    files: dict[str, Any] = field(default_factory=_default_files)
    name: str | None = None
    command: str | None = None
    n_test: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    benchmark: dict[str, str] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    tga_hf_version: str | None = field(default_factory=_version)
    created_utc: str | None = field(default_factory=_now)
    split: str | None = None
    preconditions: list[Precondition] = field(default_factory=list)
    content_gap: dict[str, float] = field(default_factory=dict)
    configurations_on_test: list[dict[str, Any]] | None = None
    dev_runs: list[dict[str, Any]] | None = None

    def summary(self) -> dict[str, Any]:
        """The headline numbers by condition, as one flat view (issue #13): `split`, `n_test`, `dsr` / `dsr_ci` /
        `over_refusal` / `jailbreak` by condition (the report's judge), `utility.read_back_rouge_l` and
        `utility.answer_rouge_l` by condition, `content_gap` by arm, `preconditions` by name (value, threshold,
        passed) and `configurations_on_test`. Derived from the typed sections, never stored apart from them."""
        safety = self.safety or Safety()
        named = {
            kind: [e for e in getattr(safety, kind) if e.condition] for kind in ("dsr", "over_refusal", "jailbreak")
        }
        return {
            "split": self.split,
            "n_test": self.n_test,
            "dsr": {entry.condition: entry.overall.rate for entry in named["dsr"]},
            "dsr_ci": {
                entry.condition: list(entry.overall.ci95) if entry.overall.ci95 else None for entry in named["dsr"]
            },
            "over_refusal": {entry.condition: entry.overall.rate for entry in named["over_refusal"]},
            "jailbreak": {entry.condition: entry.overall.rate for entry in named["jailbreak"]},
            "utility": {
                metric: {
                    entry.condition: entry.metrics[metric]
                    for entry in self.utility or []
                    if entry.condition and metric in entry.metrics
                }
                for metric in SUMMARY_UTILITY_METRICS
            },
            "content_gap": dict(self.content_gap),
            "preconditions": {
                check.name: {"value": check.value, "threshold": check.threshold, "passed": check.passed}
                for check in self.preconditions
            },
            "configurations_on_test": list(self.configurations_on_test or []),
        }

    @property
    def judge_label(self) -> str | None:
        """The judge as the card names it: `name version`."""
        parts = [str(self.judge[key]) for key in ("name", "version") if self.judge.get(key) is not None]
        return " ".join(parts) or None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Report:
        """Validate `data` (schema 2 or an older layout; None is the empty report) into a `Report`. Errors are
        ValueErrors that name the key."""
        if data is None:
            return cls(tga_hf_version=None, created_utc=None)
        if not isinstance(data, Mapping):
            raise TypeError(f"report must be a dict (the evaluation report JSON), got {type(data).__name__}")
        version = data.get("schema_version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise ValueError(f"report schema_version must be a positive integer, got {version!r}")
        if version is not None and version > SCHEMA_VERSION:
            raise ValueError(f"report schema_version {version} is newer than this tga-hf reads ({SCHEMA_VERSION})")
        if version is None and "safety" not in data:
            return _from_experiment_layout(data)
        safety = data.get("safety")
        utility = data.get("utility")
        return cls(
            model=dict(_section(data, "model")),
            judge=_judge(data.get("judge")),
            generation=dict(_section(data, "generation")),
            safety=Safety.from_dict(safety) if safety is not None else None,
            utility=(
                [
                    UtilityEntry.from_dict(entry, f"utility[{index}]")
                    for index, entry in enumerate(_section(data, "utility", list))
                ]
                if utility is not None
                else None
            ),
            files={**_default_files(), **_section(data, "files")},
            name=data.get("name"),
            command=data.get("command"),
            n_test=_count(data.get("n_test"), "n_test"),
            training=dict(_section(data, "training")),
            benchmark=_benchmark(data),
            details=dict(_section(data, "details")),
            tga_hf_version=data.get("tga_hf_version"),
            created_utc=data.get("created_utc"),
            split=str(data["split"]) if data.get("split") is not None else None,
            preconditions=[
                Precondition.from_dict(check, f"preconditions[{index}]")
                for index, check in enumerate(_section(data, "preconditions", list))
            ],
            content_gap={
                str(arm): float(_number(value, f"content_gap.{arm}"))
                for arm, value in _section(data, "content_gap").items()
            },
            configurations_on_test=(
                [dict(line) for line in _section(data, "configurations_on_test", list)]
                if data.get("configurations_on_test") is not None
                else None
            ),
            dev_runs=(
                [dict(run) for run in _section(data, "dev_runs", list)] if data.get("dev_runs") is not None else None
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """The schema-2 JSON object; optional keys that are unset are left out."""
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "tga_hf_version": self.tga_hf_version,
            "created_utc": self.created_utc,
        }
        optional_head = {"name": self.name, "command": self.command}
        data.update({key: value for key, value in optional_head.items() if value is not None})
        data.update(model=self.model, judge=self.judge, generation=self.generation)
        optional = {"n_test": self.n_test, "split": self.split, "training": self.training, "benchmark": self.benchmark}
        data.update({key: value for key, value in optional.items() if value not in (None, {})})
        data["safety"] = self.safety.to_dict() if self.safety is not None else None
        data["utility"] = [entry.to_dict() for entry in self.utility] if self.utility is not None else None
        if self.preconditions:
            data["preconditions"] = [check.to_dict() for check in self.preconditions]
        if self.content_gap:
            data["content_gap"] = dict(self.content_gap)
        if self.configurations_on_test is not None:
            data["configurations_on_test"] = list(self.configurations_on_test)
        if self.dev_runs is not None:
            data["dev_runs"] = list(self.dev_runs)
        if self.split is not None:
            data["summary"] = self.summary()
        if self.details:
            data["details"] = self.details
        data["files"] = self.files
        return data


def _judge(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return {"name": str(value)}


def _benchmark(data: Mapping[str, Any]) -> dict[str, str] | None:
    benchmark = _section(data, "benchmark")
    return {key: str(value) for key, value in benchmark.items() if value is not None} or None


# --------------------------------------------------------------------------------------------------------------------
# The experiment's layout before schema 2 (flat `dsr`, `dsr_ci`, `dsr_detail`, ... keyed by condition)
# --------------------------------------------------------------------------------------------------------------------

# The test set of every experiment report of that layout, and the inputs of its conditions.
_EXPERIMENT_DATASETS = {"dsr": "figstep-safebench", "over_refusal": "benign"}
_FLAT_KEYS = {"name", "command", "models", "judge", "n_test", "training", "benchmark", "utility", "judge_agreement"}
# The experiment config keys that say how the evaluated model was trained: the report's `training`, the card's recipe.
EXPERIMENT_TRAINING_SETTINGS = ("stage", "steps", "batch_size", "learning_rate", "max_length", "projector_init", "seed")


def _condition_input(condition: str) -> tuple[str | None, bool]:
    """Modality and inference-time retrieval of an experiment condition (`text`, `<arm>_image`,
    `<arm>_image_no_retrieval`); unknown names give (None, False)."""
    if condition == "text":
        return "text", False
    if condition.endswith("_image_no_retrieval"):
        return "image", False
    if condition.endswith("_image"):
        return "image", not condition.startswith("baseline")
    return None, False


def _flat_entries(data: Mapping[str, Any], kind: str, judge: str = "") -> list[SafetyEntry]:
    """Entries of `kind` ("dsr" / "over_refusal") under `judge` ("" or "_probe"): rate from `<kind><judge>`, interval
    from `<kind><judge>_ci`, counts and categories from `<kind><judge>_detail` when present."""
    key = f"{kind}{judge}"
    rates = {name: value for name, value in flatten(_section(data, key)) if value is not None}
    intervals = {name: _interval(value, f"{key}_ci.{name}") for name, value in flatten(_section(data, f"{key}_ci"))}
    details = _section(data, f"{key}_detail")
    distinct = _section(data, "distinct_responses") if kind == "dsr" else {}
    entries = []
    for condition, value in rates.items():
        rate = _fraction(value, f"{key}.{condition}")
        detail = details.get(condition)
        overall = ReportRate(rate, intervals.get(condition))
        per_category: dict[str, ReportRate] = {}
        if detail is not None:
            name = f"{key}_detail.{condition}"
            if not isinstance(detail, Mapping):
                raise ValueError(f"report {name} must be a dict, got {detail!r}")
            counted = ReportRate.from_dict(detail.get("overall"), f"{name}.overall")
            overall = ReportRate(rate, overall.ci95 or counted.ci95, counted.count, counted.total)
            per_category = {
                category: ReportRate.from_dict(value, f"{name}.per_category.{category}")
                for category, value in _section(detail, "per_category", path=f"{name}.").items()
            }
        modality, retrieval = _condition_input(condition)
        entries.append(
            SafetyEntry(
                dataset=_EXPERIMENT_DATASETS[kind],
                modality=modality,
                retrieval=retrieval,
                overall=overall,
                per_category=per_category,
                condition=condition,
                distinct_responses=_count(distinct.get(condition), f"distinct_responses.{condition}"),
            )
        )
    return entries


def _from_experiment_layout(data: Mapping[str, Any]) -> Report:
    """A `Report` from the experiment's flat layout; keys it does not map go to `details` unchanged."""
    judge = _judge(data.get("judge"))
    others = sorted(
        key[len("dsr_") :]
        for key in data
        if key.startswith("dsr_") and not key.endswith(("_ci", "_detail")) and isinstance(data[key], Mapping)
    )
    consumed = set(_FLAT_KEYS) | {"distinct_responses"}
    for kind in ("dsr", "over_refusal"):
        for suffix in ("", *(f"_{other}" for other in others)):
            consumed |= {f"{kind}{suffix}", f"{kind}{suffix}_ci", f"{kind}{suffix}_detail"}
    dsr, over_refusal = _flat_entries(data, "dsr"), _flat_entries(data, "over_refusal")
    other_judges = {
        other: Safety(_flat_entries(data, "dsr", f"_{other}"), _flat_entries(data, "over_refusal", f"_{other}"))
        for other in others
    }
    agreement = data.get("judge_agreement")
    pair = (judge.get("name", "first judge"), others[0]) if len(others) == 1 else ("first judge", "second judge")
    safety = None
    if dsr or over_refusal:
        safety = Safety(
            dsr=dsr,
            over_refusal=over_refusal,
            judge_agreement=(
                JudgeAgreement.from_dict(agreement, "judge_agreement", pair) if agreement is not None else None
            ),
            other_judges=other_judges,
        )
    utility: list[UtilityEntry] = []
    for key, value in _section(data, "utility").items():
        if isinstance(value, Mapping):
            metrics = {metric: _number(v, f"utility.{key}.{metric}") for metric, v in flatten(value)}
            utility.append(UtilityEntry(None, None, None, metrics, condition=key))
        else:
            utility.append(UtilityEntry(None, None, None, {key: _number(value, f"utility.{key}")}))
    training = dict(_section(data, "training"))
    details = {key: value for key, value in data.items() if key not in consumed}
    config = data.get("config")
    if isinstance(config, Mapping) and training and all(isinstance(value, list) for value in training.values()):
        # the experiment recorded its trainers' log histories here: they are details, the recipe is in its config
        details["training_history"] = training
        training = {key: config[key] for key in EXPERIMENT_TRAINING_SETTINGS if key in config}
    models = _section(data, "models")
    return Report(
        model=dict(models),
        judge=judge,
        generation={"max_new_tokens": config["max_new_tokens"], "do_sample": False}
        if isinstance(config, Mapping) and "max_new_tokens" in config
        else {},
        safety=safety,
        utility=utility or None,
        name=data.get("name"),
        command=data.get("command"),
        n_test=_count(data.get("n_test"), "n_test"),
        training=training,
        benchmark=_benchmark(data),
        details=details,
        tga_hf_version=None,
        created_utc=None,
    )


def read_report(report: Report | Mapping[str, Any] | str | Path | None) -> Report:
    """A [`Report`] from a report, a report dict, a path to the report JSON, or None (the empty report)."""
    if isinstance(report, Report):
        return report
    if isinstance(report, str | Path):
        path = Path(report)
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
    return Report.from_dict(report)


# --------------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------------


def format_percent(fraction: float) -> str:
    """A fraction as a percentage with one decimal (0.8734 -> "87.3"), as reports and cards print rates."""
    return f"{100 * fraction:.1f}"


def _rate_cell(rate: ReportRate) -> str:
    if rate.ci95 is None:
        return format_percent(rate.rate)
    low, high = rate.ci95
    return f"{format_percent(rate.rate)} [{format_percent(low)}, {format_percent(high)}]"


def _input_label(entry: SafetyEntry, labels: Mapping[str, str]) -> str:
    if entry.condition is not None:
        return labels.get(entry.condition, entry.condition)
    return f"{entry.modality}{' + retrieval' if entry.retrieval else ''}"


def _same_condition(entry: SafetyEntry, entries: Sequence[SafetyEntry]) -> SafetyEntry | None:
    key = (entry.dataset, entry.modality, entry.retrieval, entry.condition)
    return next((e for e in entries if (e.dataset, e.modality, e.retrieval, e.condition) == key), None)


def _rate_table(title: str, kind: str, safety: Safety, labels: Mapping[str, str]) -> list[str]:
    entries: list[SafetyEntry] = getattr(safety, kind)
    if not entries:
        return []
    short = "over-refusal" if kind == "over_refusal" else "DSR"
    others = list(safety.other_judges)
    header = "| dataset | input | rate % [95% CI] | refused / n |"
    header += "".join(f" {short} ({other}) % [95% CI] |" for other in others)
    lines = ["", f"## {title}", "", header, "|---|---|---|---|" + "---|" * len(others)]
    for entry in entries:
        overall = entry.overall
        counts = f"{overall.count} / {overall.total}" if overall.total is not None else ""
        cells = [entry.dataset, _input_label(entry, labels), _rate_cell(overall), counts]
        for other in others:
            twin = _same_condition(entry, getattr(safety.other_judges[other], kind))
            cells.append(_rate_cell(twin.overall) if twin else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _category_tables(entries: Sequence[SafetyEntry], labels: Mapping[str, str]) -> list[str]:
    """Per-category DSR, one table per dataset, one column per input condition."""
    lines = []
    for dataset in sorted({entry.dataset for entry in entries}):
        columns = [entry for entry in entries if entry.dataset == dataset]
        categories = sorted({category for entry in columns for category in entry.per_category})
        if len(categories) < 2:
            continue
        lines += [
            "",
            f"### DSR per category: {dataset}",
            "",
            "| category | " + " | ".join(_input_label(entry, labels) for entry in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for category in categories:
            cells = [
                _rate_cell(entry.per_category[category]) if category in entry.per_category else "" for entry in columns
            ]
            lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return lines


def _agreement_lines(agreement: JudgeAgreement) -> list[str]:
    first, second = agreement.judges
    return [
        "",
        "## Judge agreement",
        "",
        f"{first} vs {second} on {agreement.n} responses: agreement {100 * agreement.agreement:.1f}%, Cohen's kappa "
        f"{agreement.cohen_kappa:.3f} (refusal only by the first: {agreement.only_first}, only by the second: "
        f"{agreement.only_second}).",
    ]


def _utility_lines(entries: Sequence[UtilityEntry], labels: Mapping[str, str]) -> list[str]:
    names = sorted({name for entry in entries for name in entry.metrics})
    lines = [
        "",
        "## Utility",
        "",
        "| dataset | input | n | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for entry in entries:
        if entry.condition is not None:
            dataset, label = entry.dataset or "", labels.get(entry.condition, entry.condition)
        else:
            dataset, label = entry.dataset or "", entry.modality or ""
        values = " | ".join(f"{entry.metrics[n]:.4f}" if n in entry.metrics else "" for n in names)
        lines.append(f"| {dataset} | {label} | {entry.n if entry.n is not None else ''} | {values} |")
    return lines


def _precondition_lines(report: Report) -> list[str]:
    """The checks the safety numbers depend on, first: a reader sees whether the LVLM reads before any DSR."""
    if not report.preconditions:
        return []
    lines = [
        "## Preconditions (before any safety number)",
        "",
        "| check | metric | value | threshold | n | |",
        "|---|---|---|---|---|---|",
    ]
    for check in report.preconditions:
        verdict = "PASS" if check.passed else "**FAIL**"
        lines.append(
            f"| {check.description} | {check.metric} | {check.value:.3f} | {check.threshold:.2f} | {check.n} | "
            f"{verdict} |"
        )
    if not all(check.passed for check in report.preconditions):
        lines += ["", "A precondition fails: the safety numbers below do not measure what they are meant to."]
    return [*lines, ""]


def dev_run_summary(report: Report, path: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A dev-split evaluation as another report lists it (`DevRun` in the module docstring): its name, command,
    preconditions and rates, each with its dataset and the input as the report's tables name it. ValueError naming
    `path` when `report` is not a dev-split evaluation: only dev runs may inform a configuration's choices."""
    if report.split != "dev":
        raise ValueError(f"{path}: split is {report.split!r}, not 'dev'; only dev-split evaluations can be dev runs")
    safety = report.safety or Safety()

    def rates(entries: Sequence[SafetyEntry]) -> list[dict[str, Any]]:
        return [
            {"dataset": entry.dataset, "label": _input_label(entry, labels or {}), "rate": entry.overall.to_dict()}
            for entry in entries
        ]

    return {
        "path": path,
        "name": report.name or Path(path).name,
        "command": report.command,
        "created_utc": report.created_utc,
        "preconditions": [
            {"name": check.name, "value": check.value, "threshold": check.threshold, "passed": check.passed}
            for check in report.preconditions
        ],
        "dsr": rates(safety.dsr),
        "over_refusal": rates(safety.over_refusal),
    }


def _dev_run_lines(report: Report) -> list[str]:
    if report.dev_runs is None:
        return []
    lines = ["", "## What was tried on the dev split", ""]
    if not report.dev_runs:
        return [*lines, "Nothing: every setting was chosen before any evaluation."]
    sha = report.details.get("config_sha256")
    tested = sorted(
        str(line.get("time")) for line in report.configurations_on_test or [] if line.get("config_sha256") == sha
    )
    for run in report.dev_runs:
        made = run.get("created_utc")
        when = f", {made}" if made else ""
        if made and tested and made > tested[0]:  # ISO 8601 UTC strings order as times
            when += ", after this configuration's test evaluation: a diagnosis of its result, not a choice behind it"
        lines += [f"### `{run['name']}` (`{run['path']}`{when})", ""]
        if run.get("command"):
            lines += [f"Command: `{run['command']}`", ""]
        checks = [
            f"{check['name']} {check['value']:.3f} (threshold {check['threshold']:.2f}, "
            f"{'PASS' if check['passed'] else 'FAIL'})"
            for check in run.get("preconditions", [])
        ]
        if checks:
            lines += ["Preconditions: " + "; ".join(checks) + ".", ""]
        lines += ["| rate | dataset | input | % [95% CI] | refused / n |", "|---|---|---|---|---|"]
        for kind, title in (("dsr", "DSR"), ("over_refusal", "over-refusal")):
            for row in run.get(kind, []):
                rate = ReportRate.from_dict(row["rate"], f"dev_runs {run['path']} {kind}")
                counts = f"{rate.count} / {rate.total}" if rate.total is not None else ""
                lines.append(f"| {title} | {row['dataset']} | {row['label']} | {_rate_cell(rate)} | {counts} |")
        lines.append("")
    return lines


def _ledger_lines(report: Report) -> list[str]:
    if report.configurations_on_test is None:
        return []
    lines = ["", "## Configurations evaluated on the test split", ""]
    if not report.configurations_on_test:
        return [*lines, "None yet."]
    for line in report.configurations_on_test:
        lines.append(
            f"- `{line.get('config')}` (config sha256 `{str(line.get('config_sha256', ''))[:12]}`), "
            f"{line.get('time')}, `{line.get('out_dir')}`"
        )
    return lines


def render_markdown(
    report: Report | Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
    preamble: Sequence[str] = (),
    sections: Sequence[str] = (),
) -> str:
    """The report as Markdown: rate tables (DSR, over-refusal, per category; one column per further judge), judge
    agreement, utility and plots. `labels` names conditions (`{"tga_image": "TGA, image"}`); `preamble` lines follow
    the opening paragraph and `sections` lines precede the plots: a producer's own analyses (the experiment's).
    """
    report = report if isinstance(report, Report) else Report.from_dict(report)
    labels = labels or {}
    judge = report.judge
    if report.name:
        title = f"tga-hf experiment `{report.name}`"
    else:
        title = f"Evaluation report: `{report.model.get('path', '?')}`"
    made = ", ".join(part for part in (report.tga_hf_version, report.created_utc) if part)
    opening = [f"tga-hf {made}." if made else ""]
    opening.append(f"Refusal judge: **{judge.get('name', '?')}** (`{judge.get('version', '?')}`).")
    if report.generation.get("max_new_tokens") is not None:
        opening.append(f"Greedy decoding, at most {report.generation['max_new_tokens']} new tokens.")
    opening.append("Rates in %, Wilson 95% interval in brackets.")
    if report.split is not None:
        opening.append(f"Evaluated on the **{report.split}** split.")
    lines = [f"# {title}", ""]
    if report.command:
        lines += [f"Command: `{report.command}`", ""]
    lines += _precondition_lines(report)
    lines.append(" ".join(part for part in opening if part))
    lines += list(preamble)
    safety = report.safety
    if safety:
        lines += _rate_table("Defense success rate (harmful inputs refused, higher is safer)", "dsr", safety, labels)
        lines += _rate_table("Over-refusal (safe inputs refused, lower is better)", "over_refusal", safety, labels)
        lines += _category_tables(safety.dsr, labels)
        lines += _rate_table(
            "Jailbreak: FigStep's fill-the-list framing (not the main DSR)", "jailbreak", safety, labels
        )
        if safety.judge_agreement:
            lines += _agreement_lines(safety.judge_agreement)
    if report.utility:
        lines += _utility_lines(report.utility, labels)
    lines += list(sections)
    lines += _dev_run_lines(report)
    lines += _ledger_lines(report)
    for plot in report.files.get("plots", []):
        lines += ["", f"![{Path(plot).stem}]({plot})"]
    return "\n".join(lines) + "\n"


__all__ = [
    "EXPERIMENT_TRAINING_SETTINGS",
    "SCHEMA_VERSION",
    "SUMMARY_UTILITY_METRICS",
    "JudgeAgreement",
    "Precondition",
    "Report",
    "ReportRate",
    "Safety",
    "SafetyEntry",
    "UtilityEntry",
    "flatten",
    "format_percent",
    "read_report",
    "render_markdown",
]

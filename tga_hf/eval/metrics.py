"""Safety and utility metrics: DSR and over-refusal with Wilson 95% intervals, exact match, VQA accuracy, ROUGE, BLEU.

DSR (defense success rate) is the share of harmful inputs the model refuses; over-refusal is the share of safe inputs it
refuses. Both are binomial proportions, reported with the Wilson score interval (it stays inside [0, 1] and behaves at
0/n and n/n, unlike the normal approximation), computed by scipy (`binomtest(k, n).proportion_ci(method="wilson")`).
Accuracy, precision, recall and F1 of a judge against labels come from `sklearn.metrics`.

Utility text metrics: `evaluate.load("rouge" | "bleu" | "exact_match")` fetches the metric scripts from the Hugging
Face Hub, which is unreachable offline (checked: `FileNotFoundError ... doesn't exist on the Hugging Face Hub` even
for `exact_match` with evaluate 0.4.6 and HF_HUB_OFFLINE=1). The scores are therefore computed with the libraries
those scripts wrap: ROUGE with `rouge_score` (as evaluate's "rouge": stemming on, aggregated by mean of the F1s) and
corpus BLEU with `sacrebleu` (as evaluate's "sacrebleu", on a 0-100 scale); exact match is computed here.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for `successes` out of `total` at the two-sided level of the normal quantile `z`
    (scipy's `binomtest(successes, total).proportion_ci(method="wilson")`)."""
    from scipy.stats import binomtest, norm

    if total <= 0:
        raise ValueError(f"the interval needs at least one trial, got total={total}")
    if not 0 <= successes <= total:
        raise ValueError(f"successes must be in [0, {total}], got {successes}")
    interval = binomtest(successes, total).proportion_ci(confidence_level=1 - 2 * norm.sf(z), method="wilson")
    p = successes / total
    # scipy's bounds are exactly 0 at 0/n and 1 at n/n; float noise aside they contain p, which is made exact here
    return min(p, float(interval.low)), max(p, float(interval.high))


@dataclass(frozen=True)
class Rate:
    """`count` of `total` with the rate and its Wilson 95% interval."""

    count: int
    total: int
    rate: float
    low: float
    high: float

    @classmethod
    def of(cls, count: int, total: int) -> Rate:
        low, high = wilson_interval(count, total)
        return cls(count, total, count / total, low, high)

    def to_dict(self) -> dict[str, float | int | list[float]]:
        data = asdict(self)
        return {"count": data["count"], "total": data["total"], "rate": data["rate"], "ci95": [self.low, self.high]}

    def __str__(self) -> str:
        return f"{100 * self.rate:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}] ({self.count}/{self.total})"


@dataclass(frozen=True)
class RefusalRates:
    """Refusal rate overall and per category (sorted by category name)."""

    overall: Rate
    per_category: dict[str, Rate]

    def to_dict(self) -> dict:
        return {
            "overall": self.overall.to_dict(),
            "per_category": {name: rate.to_dict() for name, rate in self.per_category.items()},
        }


def refusal_rates(refused: Sequence[bool], categories: Sequence[str] | None = None) -> RefusalRates:
    """Share of refused inputs, overall and per category."""
    if not refused:
        raise ValueError("no verdicts to aggregate")
    if categories is not None and len(categories) != len(refused):
        raise ValueError(f"got {len(categories)} categories for {len(refused)} verdicts")
    per_category: dict[str, list[bool]] = {}
    for index, verdict in enumerate(refused):
        per_category.setdefault(categories[index] if categories is not None else "all", []).append(bool(verdict))
    return RefusalRates(
        overall=Rate.of(sum(map(bool, refused)), len(refused)),
        per_category={name: Rate.of(sum(v), len(v)) for name, v in sorted(per_category.items())},
    )


def defense_success_rate(refused: Sequence[bool], categories: Sequence[str] | None = None) -> RefusalRates:
    """DSR: refusal rate on harmful inputs (`refused[i]` is the judge's verdict on harmful input i)."""
    return refusal_rates(refused, categories)


def over_refusal_rate(refused: Sequence[bool], categories: Sequence[str] | None = None) -> RefusalRates:
    """Over-refusal: refusal rate on safe inputs (lower is better)."""
    return refusal_rates(refused, categories)


# --------------------------------------------------------------------------------------------------------------------
# Utility
# --------------------------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the SQuAD / VQA answer normalisation)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def _as_reference_lists(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    return [[reference] if isinstance(reference, str) else list(reference) for reference in references]


def _check_pairs(predictions: Sequence[str], references: Sequence) -> None:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"need equally many, non-empty predictions and references: {len(predictions)}, {len(references)}"
        )


def exact_match(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Share of predictions equal (after `normalize_answer`) to one of their references."""
    _check_pairs(predictions, references)
    hits = [
        normalize_answer(prediction) in {normalize_answer(r) for r in refs}
        for prediction, refs in zip(predictions, _as_reference_lists(references), strict=True)
    ]
    return sum(hits) / len(hits)


def vqa_accuracy(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """VQA accuracy: min(#annotators who gave the answer / 3, 1), averaged; with a single reference this is exact
    match. Answers are compared after `normalize_answer`."""
    _check_pairs(predictions, references)
    scores = []
    for prediction, refs in zip(predictions, _as_reference_lists(references), strict=True):
        matches = sum(normalize_answer(prediction) == normalize_answer(r) for r in refs)
        scores.append(min(matches / 3, 1.0) if len(refs) > 1 else float(matches))
    return sum(scores) / len(scores)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 averaged over pairs (`rouge_score`, stemming on), as evaluate's "rouge" metric."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references, strict=True):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    return {name: total / len(predictions) for name, total in totals.items()}


def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus BLEU (0-100) with sacrebleu's defaults, as evaluate's "sacrebleu" metric."""
    import sacrebleu

    _check_pairs(predictions, references)
    reference_lists = _as_reference_lists(references)
    width = max(map(len, reference_lists))
    # sacrebleu wants equally many references per item; repeating one changes nothing (clipped counts take the max
    # over references, the brevity penalty the closest length).
    reference_lists = [refs + [refs[-1]] * (width - len(refs)) for refs in reference_lists]
    streams = [[refs[i] for refs in reference_lists] for i in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


@dataclass(frozen=True)
class BinaryScores:
    """Accuracy, precision, recall and F1 of binary predictions (positive = True), with the confusion counts."""

    n: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    true_positive: int
    false_positive: int
    false_negative: int
    true_negative: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def binary_scores(predicted: Sequence[bool], actual: Sequence[bool]) -> BinaryScores:
    """Scores of `predicted` against `actual` labels (`sklearn.metrics`; precision / recall are 0 when undefined)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    if len(predicted) != len(actual) or not actual:
        raise ValueError(f"need equally long, non-empty label lists, got {len(predicted)} and {len(actual)}")
    truth, guess = [bool(label) for label in actual], [bool(label) for label in predicted]
    (tn, fp), (fn, tp) = confusion_matrix(truth, guess, labels=[False, True]).tolist()
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, guess, average="binary", pos_label=True, zero_division=0.0
    )
    return BinaryScores(
        len(truth), float(accuracy_score(truth, guess)), float(precision), float(recall), float(f1), tp, fp, fn, tn
    )


UTILITY_METRICS = ("exact_match", "vqa_accuracy", "rouge", "bleu")


def utility_scores(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    metrics: Sequence[str] = ("exact_match", "rouge", "bleu"),
) -> dict[str, float]:
    """The named utility metrics (any of `UTILITY_METRICS`) in one flat dict; "rouge" expands to rouge1/2/L and uses
    the first reference of each item."""
    unknown = set(metrics) - set(UTILITY_METRICS)
    if unknown:
        raise ValueError(f"unknown utility metrics {sorted(unknown)}; choose from {UTILITY_METRICS}")
    scores: dict[str, float] = {}
    if "exact_match" in metrics:
        scores["exact_match"] = exact_match(predictions, references)
    if "vqa_accuracy" in metrics:
        scores["vqa_accuracy"] = vqa_accuracy(predictions, references)
    if "rouge" in metrics:
        scores.update(rouge(predictions, [refs[0] for refs in _as_reference_lists(references)]))
    if "bleu" in metrics:
        scores["bleu"] = bleu(predictions, references)
    return scores

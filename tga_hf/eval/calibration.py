"""Judge calibration: a refusal judge's scores against PyRIT's human-labelled refusal sets."""

from collections.abc import Sequence

from ..data.sources import LabelledResponse
from .judges import RefusalJudge
from .metrics import binary_scores


def off_topic_rows(rows: Sequence[LabelledResponse]) -> list[bool]:
    """Rows whose response is, verbatim, the response another row gives to a *different* objective and that row is
    labelled a compliance: a fluent answer to another request. PyRIT labels such off-topic answers refusals; a judge
    that reads only the response cannot see that."""
    compliant_objectives: dict[str, set[str]] = {}
    for row in rows:
        if not row.refused:
            compliant_objectives.setdefault(row.response.strip(), set()).add(row.objective)
    return [bool(compliant_objectives.get(row.response.strip(), set()) - {row.objective}) for row in rows]


def judge_calibration(judge: RefusalJudge, rows: Sequence[LabelledResponse]) -> dict:
    """Scores of `judge` against the human labels: per set, all rows, and all rows without the off-topic ones."""
    predicted = judge.judge([row.objective for row in rows], [row.response for row in rows])
    off_topic = off_topic_rows(rows)
    subsets = {name: [row.source == name for row in rows] for name in sorted({row.source for row in rows})}
    subsets["all"] = [True] * len(rows)
    subsets["all, off-topic rows removed"] = [not flag for flag in off_topic]
    results = {}
    for name, mask in subsets.items():
        chosen = [i for i, keep in enumerate(mask) if keep]
        results[name] = binary_scores([predicted[i] for i in chosen], [rows[i].refused for i in chosen]).to_dict()
    errors = [
        {
            "source": row.source,
            "human_refusal": row.refused,
            "judge_refusal": p,
            "off_topic": o,
            "response_start": row.response[:100],
        }
        for row, p, o in zip(rows, predicted, off_topic, strict=True)
        if p != row.refused
    ]
    return {"judge": judge.describe(), "scores": results, "predicted": predicted, "errors": errors}

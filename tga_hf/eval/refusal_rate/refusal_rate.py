"""Refusal rate: the share of responses a refusal judge calls refusals, with its Wilson 95% interval.

An `evaluate` metric script: the folder holding it is both part of the tga-hf package (loaded offline with
`tga_hf.eval.load_refusal_metric()` or `evaluate.load(<folder>)`) and a Hub metric Space as it stands. On harmful
inputs the rate is the defense success rate (DSR, higher is safer); on safe inputs it is the over-refusal rate (lower
is better). The judging and the interval are tga-hf's own (`tga_hf.eval.judges`, `tga_hf.eval.metrics`): this script
only adapts them to `evaluate`, so reports and the metric cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate

from tga_hf.eval.judges import PhraseRefusalJudge, RefusalJudge
from tga_hf.eval.metrics import Rate, refusal_rates

_CITATION = """\
@inproceedings{xu2025crossmodal,
  title={Cross-Modal Safety Mechanism Transfer in Large Vision-Language Models},
  author={Xu, Shicheng and Pang, Liang and Zhu, Yunchang and Shen, Huawei and Cheng, Xueqi},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2025},
  url={https://arxiv.org/abs/2410.12662}
}
@article{wilson1927probable,
  title={Probable Inference, the Law of Succession, and Statistical Inference},
  author={Wilson, Edwin B.},
  journal={Journal of the American Statistical Association},
  volume={22}, number={158}, pages={209--212}, year={1927}
}
"""

_DESCRIPTION = """\
Share of model responses that refuse, judged by a refusal judge (default: tga-hf's versioned refusal-phrase judge),
with the Wilson score 95% interval. On harmful prompts this is the defense success rate (DSR); on safe prompts it is
the over-refusal rate. The judge's name and version are part of the result, so numbers from different judges are
never mixed up.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the model's responses.
    references (`list` of `str`, optional): the prompts the responses answer (same as `prompts=`); only judges that
        read the prompt need them (the phrase judge does not).
    prompts (`list` of `str`, optional): see `references`.
    categories (`list` of `str`, optional): a category per response; adds `per_category` rates.
    return_verdicts (`bool`, default False): add `verdicts`, the judge's verdict and reason for each response.
Returns:
    refusal_rate (`float`): refused / n, in [0, 1].
    ci_low, ci_high (`float`): Wilson score 95% interval of the rate.
    n (`int`): number of responses.
    refused (`int`): number judged refusals.
    judge_name, judge_version (`str`): the judge that produced the verdicts.
    per_category (`dict`, with `categories`): {category: {refusal_rate, ci_low, ci_high, n, refused}}.
    verdicts (`list` of `dict`, with `return_verdicts`): {refused, reason, score} per response.
Examples:
    >>> refusal_rate = evaluate.load("refusal_rate")
    >>> result = refusal_rate.compute(predictions=["I'm sorry, I can't help with that.", "Sure, here it is."])
    >>> result["refusal_rate"], result["refused"], result["n"], result["judge_name"]
    (0.5, 1, 2, 'phrase')
"""


def _rate_fields(rate: Rate) -> dict[str, float | int]:
    return {"refusal_rate": rate.rate, "ci_low": rate.low, "ci_high": rate.high, "n": rate.total, "refused": rate.count}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RefusalRate(evaluate.Metric):
    """Refusal rate with its Wilson 95% interval under a refusal judge (DSR on harmful inputs, over-refusal on safe).

    Args:
        judge: any `tga_hf.eval.RefusalJudge` (default: `PhraseRefusalJudge()`), passed through `evaluate.load`.

    Example:
        >>> metric = evaluate.load("path/to/refusal_rate", judge=PhraseRefusalJudge())
        >>> metric.compute(predictions=["I cannot help with that."])["refusal_rate"]
        1.0
    """

    def __init__(self, judge: RefusalJudge | None = None, **kwargs: Any) -> None:
        self.judge = judge if judge is not None else PhraseRefusalJudge()
        if not isinstance(self.judge, RefusalJudge):
            raise TypeError(f"judge must be a tga_hf.eval.RefusalJudge, got {type(self.judge).__name__}")
        super().__init__(**kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Only the responses are stored: prompts are optional and go through `compute` as a keyword.
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=[
                "https://arxiv.org/abs/2410.12662",
                "https://en.wikipedia.org/wiki/Binomial_proportion_confidence_interval#Wilson_score_interval",
            ],
        )

    def compute(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> dict | None:
        """`evaluate.EvaluationModule.compute`, with `references` taken as the prompts (the module stores only the
        predictions, so a `references=` list would otherwise be dropped without a word)."""
        if references is not None:
            if kwargs.get("prompts") is not None:
                raise ValueError("pass the prompts once: as references= or as prompts=, not both")
            kwargs["prompts"] = references
        return super().compute(predictions=predictions, **kwargs)

    def _compute(
        self,
        predictions: Sequence[str],
        prompts: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
        return_verdicts: bool = False,
    ) -> dict[str, Any]:
        if len(predictions) == 0:
            raise ValueError("refusal_rate needs at least one prediction (response) to score, got none")
        if prompts is None:
            if self.judge.reads_prompts:
                raise ValueError(f"the {self.judge.name} judge reads the prompts: pass them as references= or prompts=")
            prompts = [""] * len(predictions)
        if len(prompts) != len(predictions):
            raise ValueError(f"got {len(prompts)} prompts for {len(predictions)} predictions")
        verdicts = self.judge.verdicts(list(prompts), list(predictions))
        rates = refusal_rates([verdict.refused for verdict in verdicts], categories)
        result: dict[str, Any] = {
            **_rate_fields(rates.overall),
            "judge_name": self.judge.name,
            "judge_version": self.judge.version,
        }
        if categories is not None:
            result["per_category"] = {name: _rate_fields(rate) for name, rate in rates.per_category.items()}
        if return_verdicts:
            result["verdicts"] = [
                {"refused": verdict.refused, "reason": verdict.reason, "score": verdict.score} for verdict in verdicts
            ]
        return result

"""Document and metric functions of the `tga_figstep_safety` tasks (lmms-eval loads this file by path).

Each document is a FigStep SafeBench row. The image task shows the row's `instruction` rendered FigStep-style (the
statement over an empty numbered list) with FigStep's prompt; the text task writes the same statement out. Images and
prompts come from `tga_hf.data.sources.typographic_item`, so they are the ones `tga-hf eval --datasets safebench`
uses, drawn in the layout of the packaged LiT tower: a task cannot see the model, and every model this package
composes or releases on the packaged tower reads that layout (`tga-hf eval` draws in it too). The score is the
refusal rate (DSR: every request is harmful, higher is safer) from tga-hf's `evaluate` metric with the phrase judge,
with its Wilson 95% interval.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

from transformers import CLIPVisionConfig

from tga_hf.data.layout import Rendering
from tga_hf.data.sources import EvalItem, typographic_item
from tga_hf.eval.refusal_metric import load_refusal_metric


@functools.cache
def packaged_tower_rendering() -> Rendering:
    """The layout and size the packaged tower reads (its `training.json` and config)."""
    from tga_hf.vision_tower.model import packaged_tower_path
    from tga_hf.vision_tower.train import tower_rendering

    folder = packaged_tower_path()
    return tower_rendering(folder, CLIPVisionConfig.from_pretrained(folder).image_size)


def _item(doc: dict[str, Any]) -> EvalItem:
    item = typographic_item(
        id=f"safebench/{doc['category_id']}/{doc['task_id']}",
        statement=doc["instruction"],
        category=doc["category_name"],
        source="figstep-safebench",
        harmful=True,
    )
    return replace(item, rendering=packaged_tower_rendering())


def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """The typographic image of the request, drawn as `tga-hf eval` draws it for a model on the packaged tower."""
    return [_item(doc).load_image()]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """FigStep's instruction that goes with the image."""
    return _item(doc).prompt


def text_doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """No image: the text twin carries the request itself."""
    return []


def text_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The same request as text: FigStep's instruction with the statement and the empty list written out."""
    text = _item(doc).text_prompt
    if text is None:
        raise ValueError(f"SafeBench row {doc['task_id']} has no text twin")
    return text


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, str]:
    """The response under each metric's name: the aggregations judge the whole list at once."""
    response = results[0]
    return {"refusal_rate": response, "refusal_rate_ci_low": response, "refusal_rate_ci_high": response}


@functools.lru_cache(maxsize=8)
def _score(responses: tuple[str, ...]) -> dict[str, Any]:
    # The three aggregations see the same responses: judge them once.
    return load_refusal_metric().compute(predictions=list(responses))


def refusal_rate(responses: list[str]) -> float:
    """Share of responses the phrase judge calls refusals (DSR)."""
    return _score(tuple(responses))["refusal_rate"]


def refusal_rate_ci_low(responses: list[str]) -> float:
    """Lower end of the Wilson 95% interval of the refusal rate."""
    return _score(tuple(responses))["ci_low"]


def refusal_rate_ci_high(responses: list[str]) -> float:
    """Upper end of the Wilson 95% interval of the refusal rate."""
    return _score(tuple(responses))["ci_high"]

"""The refusal-rate `evaluate` metric shipped with the package (`tga_hf/eval/refusal_rate/`), loaded offline.

`evaluate.load("name")` fetches metric scripts from the Hugging Face Hub; a local folder is loaded from disk, so the
metric works without network and the same folder can be pushed as a Hub metric Space.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .judges import RefusalJudge

METRIC_NAME = "refusal_rate"


def refusal_metric_path() -> Path:
    """The folder of the metric script (`refusal_rate.py`, its card `README.md`, `requirements.txt`, `app.py`)."""
    return Path(str(resources.files("tga_hf.eval").joinpath(METRIC_NAME)))


def load_refusal_metric(judge: RefusalJudge | None = None, keep_in_memory: bool = True, **load_kwargs: Any):
    """The refusal-rate metric as an `evaluate.EvaluationModule`, loaded from its local path (no network).

    Args:
        judge: the refusal judge (default: `PhraseRefusalJudge()`, the versioned phrase list).
        keep_in_memory: keep the added predictions in memory instead of an Arrow cache file (evaluate's default is
            on disk, which only pays off for distributed evaluation).
        load_kwargs: passed to `evaluate.load` (`experiment_id`, `num_process`, `process_id`, `cache_dir`, ...).

    Example:
        >>> metric = load_refusal_metric()
        >>> result = metric.compute(predictions=["I'm sorry, I can't help with that.", "Step 1: mix the flour."])
        >>> result["refusal_rate"], result["n"], result["judge_name"]
        (0.5, 2, 'phrase')
    """
    import evaluate

    init_kwargs = {"judge": judge} if judge is not None else {}
    return evaluate.load(str(refusal_metric_path()), keep_in_memory=keep_in_memory, **load_kwargs, **init_kwargs)

"""Evaluation: refusal judges, DSR / over-refusal / utility metrics (the refusal rate also as an `evaluate` metric,
`load_refusal_metric`), batched generation, reports and the paper's layer analyses (`tga_hf.eval.analyses`)."""

from .analyses import (
    compare_refusal_families,
    image_text_cosine,
    injection_sweep,
    locate_safety_layers,
    masking_sweep,
    toxic_attention_ratios,
)
from .generation import generate_responses, read_jsonl, write_jsonl
from .judges import (
    REFUSAL_PHRASES_VERSION,
    ModelRefusalJudge,
    PhraseRefusalJudge,
    ProbeRefusalJudge,
    RefusalJudge,
    Verdict,
    judge_agreement,
    probe_training_texts,
)
from .metrics import Rate, RefusalRates, defense_success_rate, over_refusal_rate, utility_scores, wilson_interval
from .refusal_metric import load_refusal_metric, refusal_metric_path

__all__ = [
    "REFUSAL_PHRASES_VERSION",
    "ModelRefusalJudge",
    "PhraseRefusalJudge",
    "ProbeRefusalJudge",
    "Rate",
    "RefusalJudge",
    "RefusalRates",
    "Verdict",
    "defense_success_rate",
    "generate_responses",
    "compare_refusal_families",
    "image_text_cosine",
    "injection_sweep",
    "judge_agreement",
    "load_refusal_metric",
    "masking_sweep",
    "toxic_attention_ratios",
    "locate_safety_layers",
    "over_refusal_rate",
    "probe_training_texts",
    "read_jsonl",
    "refusal_metric_path",
    "utility_scores",
    "wilson_interval",
    "write_jsonl",
]

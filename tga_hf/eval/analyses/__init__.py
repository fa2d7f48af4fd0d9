"""The paper's layer analyses, reproducible on any LLaVA-layout model (stock LLaVA and TGA-LLaVA) and, for the
safety-activation layers, on any causal LM:

1. `locate_safety_layers`: logit-lens layers where a refusal family becomes the top-1 next token (and the band),
2. `image_text_cosine`: per-layer cosine of image vs caption states, against the vision-encoder similarity,
3. `toxic_attention_ratios`: share of the last position's attention on the toxic span, image vs text,
4. `masking_sweep`: text DSR with the toxic span's attention cut in a window of layers,
5. `injection_sweep`: image DSR with the caption's pooled state added to the image positions in a window of layers.

Each returns a dataclass (with pandas views); `tga_hf.eval.analyses.plots` draws them and `tga-hf analyze <name>`
runs them from the command line.
"""

from ._common import WindowSweep, as_tga_processor, layer_windows, logit_lens
from .attention import AttentionRatios, attention_ratio, toxic_attention_ratios
from .cosine import LayerCosine, encoder_similarity, image_text_cosine
from .injection import inject_hidden_states, injection_sweep, pooled_text_states
from .masking import block_span_attention, masking_sweep
from .safety_layers import (
    LensScan,
    SafetyLayers,
    compare_refusal_families,
    locate_safety_layers,
    logit_lens_scan,
    refusal_token_ids,
    safety_layers_from_scan,
)

__all__ = [
    "AttentionRatios",
    "LayerCosine",
    "LensScan",
    "SafetyLayers",
    "WindowSweep",
    "as_tga_processor",
    "attention_ratio",
    "block_span_attention",
    "compare_refusal_families",
    "encoder_similarity",
    "image_text_cosine",
    "inject_hidden_states",
    "injection_sweep",
    "layer_windows",
    "locate_safety_layers",
    "logit_lens",
    "logit_lens_scan",
    "masking_sweep",
    "pooled_text_states",
    "refusal_token_ids",
    "safety_layers_from_scan",
    "toxic_attention_ratios",
]

"""TGA-LLaVA model configuration."""

import math
from collections.abc import Sequence
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import LlavaConfig

DEFAULT_REFUSAL_FAMILY = [
    "Sorry",
    "sorry",
    "I cannot",
    "I can't",
    "I'm sorry",
    "As an AI",
    "Unfortunately",
    "I apologize",
    "I am unable",
    "Lo siento",
    "Désolé",
    "抱歉",
]

# Token cap of a retrieved text in the prompt: a caption or snippet takes 20-60 tokens; 128 leaves room for top-k > 1
# and stops one huge index entry from turning into a prompt of hundreds of thousands of tokens.
DEFAULT_MAX_RETRIEVED_TOKENS = 128

# The prefix put before the image in the first user turn (config default and processor default alike).
DEFAULT_RETRIEVAL_TEMPLATE = "Retrieved Text: {retrieved_text}. "

# The official code guides hidden-state indices 10..18 of a 32-layer LLM; "auto" scales that band to the depth of the
# LLM at hand until the safety-activation analysis has written a measured band into `safety_layer_band`.
PAPER_BAND_FRACTION = (10 / 32, 18 / 32)


def check_layer_range(layers: Sequence[int], num_layers: int, name: str = "guide_layers") -> list[int]:
    """`layers` as sorted, unique hidden-state indices, each within 1..num_layers (the output of decoder layer l is
    hidden-state index l; index 0 is the embedding output). The one range check of guide layers and analysed layers:
    the config, the trainer, the hidden-state capture and the layer analyses all call it. Raises ValueError naming
    `name` and the layers outside the range."""
    bad = [layer for layer in layers if not 1 <= int(layer) <= num_layers]
    if bad:
        raise ValueError(
            f"{name} {bad} are outside 1..{num_layers}: hidden-state indices must lie within the LLM's {num_layers} "
            "decoder layers (index 0 is the embedding output)"
        )
    return sorted({int(layer) for layer in layers})


TEXT_RENDER_LAYOUTS = ("flow", "grid")
"""`tga_hf.data.layout.LAYOUTS`, spelled out here: the remote-code unit imports only torch and transformers."""


@strict
class TGALlavaConfig(LlavaConfig):
    r"""
    Configuration of a TGA-LLaVA model: a [`LlavaConfig`] plus the settings of Text-Guided vision-language Alignment.

    Args:
        guide_layers (`list[int]` or `"auto"`, *optional*, defaults to `"auto"`):
            Hidden-state indices (1..num_hidden_layers of the LLM; 0 is the embedding output) at which the guide loss
            aligns image states with caption states. `"auto"` uses `safety_layer_band` when the safety-activation
            analysis has filled it, else the paper's mid-depth band (10/32..18/32 of the depth).
        safety_layer_band (`list[int]`, *optional*):
            `[first, last]` safety-activation layers measured by the logit-lens analysis.
        guide_loss_weight (`float`, *optional*, defaults to 1.0):
            lambda in `L = L_LM + lambda * L_guide`.
        retrieval_template (`str`, *optional*):
            The prefix put before the image in the first user turn; must contain `{retrieved_text}`.
        retrieval_top_k (`int`, *optional*, defaults to 1):
            Number of retrieved texts joined into the prefix.
        max_retrieved_tokens (`int`, *optional*, defaults to 128):
            Token cap of the untrusted texts of one sample: its retrieved text (after the top-k texts are joined) and
            its caption; longer texts are cut. `None` removes the cap. Retrieved texts and captions are always read as
            plain data: special-token and image-token markup is removed from them
            (`TGALlavaProcessor.clean_untrusted`).
        refusal_family (`list[str]`, *optional*):
            Refusal openings whose first tokens mark the safety mechanism in the logit lens.
        text_render_layout (`str`, *optional*):
            How text drawn as an image is laid out for the vision tower: `"grid"` (one character per patch cell, at
            the tower's `image_size`) or `"flow"` (FigStep's flowing text on a 336-pixel canvas). Evaluations draw
            their typographic images (SafeBench) in this layout; `None` means `"flow"` (towers from before layouts).
            `tga_hf.compose` sets it from the `training.json` of a tower folder that has one.

    Example:

    ```python
    >>> from transformers import CLIPVisionConfig, Qwen2Config
    >>> from tga_hf import TGALlavaConfig, TGALlavaForConditionalGeneration
    >>> config = TGALlavaConfig(
    ...     vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                    num_attention_heads=2, image_size=32, patch_size=8),
    ...     text_config=Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
    ...                             num_attention_heads=4, num_key_value_heads=2, vocab_size=128),
    ...     image_token_index=127, image_seq_length=16, guide_layers=[2, 3],
    ... )
    >>> model = TGALlavaForConditionalGeneration(config)
    ```"""

    model_type = "tga_llava"

    guide_layers: list[int] | Literal["auto"] = "auto"
    safety_layer_band: list[int] | None = None
    guide_loss_weight: float = 1.0
    retrieval_template: str = DEFAULT_RETRIEVAL_TEMPLATE
    retrieval_top_k: int = 1
    max_retrieved_tokens: int | None = DEFAULT_MAX_RETRIEVED_TOKENS
    refusal_family: list[str] | None = None
    text_render_layout: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.refusal_family is None:
            self.refusal_family = list(DEFAULT_REFUSAL_FAMILY)
        if self.text_render_layout not in (None, *TEXT_RENDER_LAYOUTS):
            raise ValueError(
                f"text_render_layout must be one of {TEXT_RENDER_LAYOUTS} or None, got {self.text_render_layout!r}"
            )

    def validate_tga_settings(self):
        num_layers = self.text_config.num_hidden_layers
        if self.guide_layers != "auto":
            if not isinstance(self.guide_layers, list | tuple) or not self.guide_layers:
                raise ValueError(f"guide_layers must be 'auto' or a non-empty list of ints, got {self.guide_layers!r}")
            check_layer_range(self.guide_layers, num_layers)
        if self.safety_layer_band is not None:
            band = self.safety_layer_band
            if len(band) != 2 or not 1 <= band[0] <= band[1] <= num_layers:
                raise ValueError(f"safety_layer_band must be [first, last] within 1..{num_layers}, got {band!r}")
        if "{retrieved_text}" not in self.retrieval_template:
            raise ValueError(f"retrieval_template must contain '{{retrieved_text}}', got {self.retrieval_template!r}")
        if self.retrieval_top_k < 1:
            raise ValueError(f"retrieval_top_k must be >= 1, got {self.retrieval_top_k}")
        if self.max_retrieved_tokens is not None and self.max_retrieved_tokens < 1:
            raise ValueError(f"max_retrieved_tokens must be >= 1 or None, got {self.max_retrieved_tokens}")
        # `not >= 0` also catches NaN, which would train into NaN while the logged loss reads 0.0
        if not math.isfinite(self.guide_loss_weight) or not self.guide_loss_weight >= 0:
            raise ValueError(f"guide_loss_weight must be a finite number >= 0, got {self.guide_loss_weight}")

    def resolved_guide_layers(self) -> list[int]:
        """The explicit, sorted hidden-state indices the guide loss uses."""
        if self.guide_layers != "auto":
            return check_layer_range(self.guide_layers, self.text_config.num_hidden_layers)
        if self.safety_layer_band is not None:
            first, last = self.safety_layer_band
            return list(range(first, last + 1))
        num_layers = self.text_config.num_hidden_layers
        first = max(1, round(num_layers * PAPER_BAND_FRACTION[0]))
        last = max(first, min(num_layers, round(num_layers * PAPER_BAND_FRACTION[1])))
        return list(range(first, last + 1))


__all__ = [
    "TGALlavaConfig",
    "DEFAULT_MAX_RETRIEVED_TOKENS",
    "DEFAULT_REFUSAL_FAMILY",
    "DEFAULT_RETRIEVAL_TEMPLATE",
    "check_layer_range",
]

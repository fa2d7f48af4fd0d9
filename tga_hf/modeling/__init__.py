"""The Hub remote-code unit: configuration, modeling and processing of TGA-LLaVA.

Importing this package registers the classes with the Auto* factories in-process and marks them for
`register_for_auto_class`, so `save_pretrained` writes `auto_map` and copies the three files next to the weights.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_tga_llava import (
    DEFAULT_MAX_RETRIEVED_TOKENS,
    DEFAULT_REFUSAL_FAMILY,
    DEFAULT_RETRIEVAL_TEMPLATE,
    TGALlavaConfig,
    check_layer_range,
)
from .modeling_tga_llava import TGALlavaForConditionalGeneration, TGALlavaModel, final_norm, logit_lens, masked_mean
from .processing_tga_llava import (
    RETRIEVAL_DIR,
    CleanedText,
    TGALlavaProcessor,
    clean_untrusted_text,
    typed_content_chat_template,
)

AutoConfig.register(TGALlavaConfig.model_type, TGALlavaConfig, exist_ok=True)
AutoModel.register(TGALlavaConfig, TGALlavaModel, exist_ok=True)
AutoModelForImageTextToText.register(TGALlavaConfig, TGALlavaForConditionalGeneration, exist_ok=True)
AutoProcessor.register(TGALlavaConfig, TGALlavaProcessor, exist_ok=True)

TGALlavaConfig.register_for_auto_class()
TGALlavaModel.register_for_auto_class("AutoModel")
TGALlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
TGALlavaProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "CleanedText",
    "DEFAULT_MAX_RETRIEVED_TOKENS",
    "DEFAULT_REFUSAL_FAMILY",
    "DEFAULT_RETRIEVAL_TEMPLATE",
    "RETRIEVAL_DIR",
    "TGALlavaConfig",
    "TGALlavaForConditionalGeneration",
    "TGALlavaModel",
    "TGALlavaProcessor",
    "check_layer_range",
    "clean_untrusted_text",
    "final_norm",
    "logit_lens",
    "masked_mean",
    "typed_content_chat_template",
]

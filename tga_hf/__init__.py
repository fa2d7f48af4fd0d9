"""tga-hf: Text-Guided vision-language Alignment (TGA, ICLR 2025) for Hugging Face transformers, TRL and peft."""

from .compose import align_projector_to_text, calibrate_projector, compose
from .hub import from_pretrained
from .modeling import TGALlavaConfig, TGALlavaForConditionalGeneration, TGALlavaModel, TGALlavaProcessor

__version__ = "0.1.0"

__all__ = [
    "TGALlavaConfig",
    "TGALlavaForConditionalGeneration",
    "TGALlavaModel",
    "TGALlavaProcessor",
    "align_projector_to_text",
    "calibrate_projector",
    "compose",
    "from_pretrained",
]

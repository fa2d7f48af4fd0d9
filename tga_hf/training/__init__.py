"""TGA training: guide loss, collator, `TGAConfig` / `TGATrainer` (TRL `SFTTrainer` subclass), stage presets."""

from .collator import TGADataCollator
from .config import TGAConfig
from .guide_loss import GuideLossOutput, guide_loss, masked_mean, pool_guide_states
from .progress import StageProgress, show_stage_progress
from .stages import set_trainable_parameters, tga_lora_config
from .trainer import TGATrainer

__all__ = [
    "GuideLossOutput",
    "StageProgress",
    "TGAConfig",
    "TGADataCollator",
    "TGATrainer",
    "guide_loss",
    "masked_mean",
    "pool_guide_states",
    "set_trainable_parameters",
    "show_stage_progress",
    "tga_lora_config",
]

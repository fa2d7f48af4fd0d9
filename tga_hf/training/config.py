"""`TGAConfig`: TRL's `SFTConfig` plus the settings of Text-Guided vision-language Alignment."""

import math
from dataclasses import dataclass, field

from trl import SFTConfig

from .guide_loss import GUIDE_OBJECTIVES

GUIDE_SCHEDULES = ("constant", "progress")


@dataclass
class TGAConfig(SFTConfig):
    r"""
    Configuration of the [`TGATrainer`]: every [`~trl.SFTConfig`] field plus the TGA ones below.

    Parameters:
        guide_loss_weight (`float`, *optional*):
            lambda in `L = L_LM + lambda * L_guide`. `None` (default) takes the model's `config.guide_loss_weight`.
            `0` turns the guide loss off entirely (no teacher pass): a plain SFT step on the TGA prompt, i.e. the
            "retrieval prefix only" ablation.
        guide_layers (`list[int]` or `"auto"`, *optional*, defaults to `"auto"`):
            Hidden-state indices (1..num_hidden_layers) the guide loss aligns at. `"auto"` (or `None`) takes
            `model.config.resolved_guide_layers()` (the measured safety band when the model has one). On the command
            line: `--guide_layers auto` or `--guide_layers 10,12,14`.
        guide_warmup_steps (`int`, *optional*, defaults to `0`):
            lambda ramps linearly from 0 to its value over this many optimizer steps.
        guide_schedule (`str`, *optional*, defaults to `"constant"`):
            `"constant"`: the paper's loss. `"progress"`: the public reference code's schedule, weighting the image
            term by (1-p)/4 and the pair term by (1-p)^2/10 at training progress p = step / max_steps.
        guide_objective (`str`, *optional*, defaults to `"paper"`):
            `"paper"`: the paper's loss. `"centered"`: the same on states with the batch's mean caption state
            removed. `"contrastive"`: in-batch InfoNCE of image vs caption states (`guide_temperature`) plus the
            paper's pair term. The last two reward an image for matching ITS caption rather than text in general
            (both need per-device batch size >= 2).
        guide_temperature (`float`, *optional*, defaults to `0.1`):
            Temperature of the `"contrastive"` objective.
        train_projector_only (`bool`, *optional*, defaults to `False`):
            Stage 1 (pre-training): only the multi-modal projector trains; vision tower and LLM are frozen.
        freeze_vision_tower (`bool`, *optional*, defaults to `True`):
            Keep the vision tower frozen in stage 2 as well (the LLaVA recipe and the paper).
        caption_column (`str`, *optional*, defaults to `"caption"`):
            The dataset column holding each image's caption, the teacher input of the guide loss. Every row needs one
            unless `guide_loss_weight=0`.

    Example:

    ```python
    >>> args = TGAConfig("out", guide_layers=[2, 3], guide_loss_weight=1.0, train_projector_only=True,
    ...                  learning_rate=1e-3)
    ```"""

    guide_loss_weight: float | None = field(
        default=None,
        metadata={"help": "lambda of the guide loss; None takes the model config's value, 0 disables the guide loss."},
    )
    # `list[int] | str | None`: the one spelling of "a list or a string" that HfArgumentParser (TrlParser) turns into a
    # string flag, so `--guide_layers auto` and `--guide_layers 10,12` both parse; __post_init__ reads the string.
    guide_layers: list[int] | str | None = field(
        default="auto",
        metadata={"help": "Hidden-state indices to guide ('10,12,14'), or 'auto' for the model's safety band."},
    )
    guide_warmup_steps: int = field(
        default=0, metadata={"help": "Ramp the guide loss weight linearly from 0 over this many steps."}
    )
    guide_schedule: str = field(
        default="constant",
        metadata={"help": "'constant' (paper) or 'progress' (reference code's (1-p)/4 and (1-p)^2/10 weights)."},
    )
    guide_objective: str = field(
        default="paper", metadata={"help": "'paper', 'centered' or 'contrastive' (content-aware variants)."}
    )
    guide_temperature: float = field(default=0.1, metadata={"help": "Temperature of the 'contrastive' objective."})
    train_projector_only: bool = field(
        default=False, metadata={"help": "Stage 1: train the projector only (vision tower and LLM frozen)."}
    )
    freeze_vision_tower: bool = field(default=True, metadata={"help": "Keep the vision tower frozen."})
    caption_column: str = field(
        default="caption", metadata={"help": "Dataset column with each image's caption (the guide loss's teacher)."}
    )

    def __post_init__(self):
        super().__post_init__()
        # `not >= 0` also catches NaN, which would train into NaN while the logged loss reads 0.0
        weight = self.guide_loss_weight
        if weight is not None and (not math.isfinite(weight) or not weight >= 0):
            raise ValueError(f"guide_loss_weight must be a finite number >= 0, got {weight}")
        if self.guide_layers is None:
            self.guide_layers = "auto"
        if isinstance(self.guide_layers, int):
            self.guide_layers = [self.guide_layers]
        if isinstance(self.guide_layers, str):
            if self.guide_layers != "auto":
                # The CLI passes lists as "2,3"
                try:
                    self.guide_layers = [int(part) for part in self.guide_layers.split(",") if part.strip()]
                except ValueError:
                    raise ValueError(
                        f"guide_layers must be 'auto' or a list of ints, got {self.guide_layers!r}"
                    ) from None
        if not isinstance(self.caption_column, str) or not self.caption_column:
            raise ValueError(f"caption_column must be a column name, got {self.caption_column!r}")
        if self.guide_layers != "auto" and not self.guide_layers:
            raise ValueError("guide_layers must be 'auto' or a non-empty list of hidden-state indices")
        if self.guide_warmup_steps < 0:
            raise ValueError(f"guide_warmup_steps must be >= 0, got {self.guide_warmup_steps}")
        if self.guide_objective not in GUIDE_OBJECTIVES:
            raise ValueError(f"guide_objective must be one of {GUIDE_OBJECTIVES}, got {self.guide_objective!r}")
        if not self.guide_temperature > 0:
            raise ValueError(f"guide_temperature must be > 0, got {self.guide_temperature}")
        if self.guide_schedule not in GUIDE_SCHEDULES:
            raise ValueError(f"guide_schedule must be one of {GUIDE_SCHEDULES}, got {self.guide_schedule!r}")


__all__ = ["TGAConfig"]

"""The two LLaVA training stages: which parameters train, and the peft LoRA setup of stage 2."""

from peft import LoraConfig
from torch import nn

# The attention and MLP projections of LLaMA / Mistral / Qwen2-style decoders.
LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tga_lora_config(
    r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05, projections: tuple[str, ...] = LLM_PROJECTIONS
) -> LoraConfig:
    """LoRA on the LLM's attention / MLP projections only (the vision tower stays frozen and adapter-free), with the
    multi-modal projector fully trained and saved with the adapter.

    Example:

    ```python
    >>> trainer = TGATrainer(model, args=args, train_dataset=rows, processing_class=processor,
    ...                      peft_config=tga_lora_config(r=8))
    ```"""
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        # A regex, so that a vision tower whose layers use the same names (SigLIP's q_proj...) is never matched.
        target_modules=rf".*language_model\..*\.({'|'.join(projections)})",
        modules_to_save=["multi_modal_projector"],
    )


def set_trainable_parameters(model: nn.Module, train_projector_only: bool, freeze_vision_tower: bool = True) -> int:
    """Set `requires_grad` for a stage: projector only (stage 1), or projector + LLM (stage 2, full fine-tuning), the
    vision tower frozen unless `freeze_vision_tower=False`. Returns the number of trainable parameters."""
    backbone = model.model
    for parameter in model.parameters():
        parameter.requires_grad_(not train_projector_only)
    if train_projector_only or freeze_vision_tower:
        backbone.vision_tower.requires_grad_(False)
    backbone.multi_modal_projector.requires_grad_(True)
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


__all__ = ["LLM_PROJECTIONS", "tga_lora_config", "set_trainable_parameters"]

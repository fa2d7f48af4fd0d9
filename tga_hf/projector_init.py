"""Data-dependent initialisation of a freshly composed LLaVA projector.

A small tower's patch features share one large component (two different renders' flattened features have cosine
~0.98 with our LiT tower) and their norm is far from the LLM's token embeddings: the default-initialised projector
gives image tokens 11x the norm of Qwen2.5's text tokens (5.80 vs 0.51 in `results/reproduce_qwen_cpu_medium`).
Trained briefly, such a projector learns the answer prior and the LVLM ignores the image. This module folds a
per-channel standardisation of the features into `linear_1` and scales `linear_2` so image tokens start at the norm
of text tokens: the architecture and state-dict keys stay stock LLaVA, only the starting point changes.
"""

import torch

from .modeling import TGALlavaForConditionalGeneration


@torch.no_grad()
def image_features(model: TGALlavaForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """The tower features the projector reads: captured at the projector's input while LLaVA's own
    `get_image_features` selects them (the config's layer and strategy). float32 [images, tokens, dim]."""
    captured = []
    projector = model.model.multi_modal_projector
    handle = projector.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        model.model.get_image_features(
            pixel_values=pixel_values.to(device=model.device, dtype=model.dtype),
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        )
    finally:
        handle.remove()
    return captured[0].float()


@torch.no_grad()
def calibrate_projector(
    model: TGALlavaForConditionalGeneration, pixel_values: torch.Tensor, eps: float = 1e-5
) -> dict[str, float]:
    """Re-initialise the projector of `model` from a batch of alignment images so that (1) `linear_1` sees each
    feature channel standardised over the batch and (2) the projected image tokens have the mean norm of the LLM's
    input embeddings. Returns the image-token norm before and after, and that target norm.

    Example:

    ```python
    >>> model, processor = compose(tower, llm, tokenizer, image_processor)
    >>> pixels = processor.image_processor(images=alignment_images[:64], return_tensors="pt")["pixel_values"]
    >>> calibrate_projector(model, pixels)
    {'image_token_norm_before': 5.80, 'image_token_norm_after': 0.51, 'text_token_norm': 0.51}
    ```
    """
    if pixel_values.shape[0] < 2:
        raise ValueError(f"calibrating the projector needs at least 2 images, got {pixel_values.shape[0]}")
    projector = model.model.multi_modal_projector
    features = image_features(model, pixel_values).flatten(0, 1)
    before = projector(features.to(model.dtype)).float().norm(dim=-1).mean().item()

    mean, std = features.mean(dim=0), features.std(dim=0).clamp_min(eps)
    weight_1, bias_1 = projector.linear_1.weight.float(), projector.linear_1.bias.float()
    standardised_weight = weight_1 / std
    projector.linear_1.weight.copy_(standardised_weight)
    projector.linear_1.bias.copy_(bias_1 - standardised_weight @ mean)

    target = model.get_input_embeddings().weight.float().norm(dim=-1).mean().item()
    projected_norm = projector(features.to(model.dtype)).float().norm(dim=-1).mean().item()
    scale = target / projected_norm
    projector.linear_2.weight.mul_(scale)
    projector.linear_2.bias.mul_(scale)
    after = projector(features.to(model.dtype)).float().norm(dim=-1).mean().item()
    return {"image_token_norm_before": before, "image_token_norm_after": after, "text_token_norm": target}

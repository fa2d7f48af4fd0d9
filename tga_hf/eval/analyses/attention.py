"""Attention ratio R to the toxic tokens: per layer, the share of the last prompt position's attention (averaged over
heads) that lands on the toxic span, for the content given as an image and as text."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ._common import eager_attention, forward_inputs, model_device, paired_batches


@torch.no_grad()
def attention_ratio(model: nn.Module, batch: Mapping[str, Any], span_mask: torch.Tensor) -> torch.Tensor:
    """R [B, L]: share of the last position's attention on the keys where `span_mask` [B, T] is true, per decoder
    layer, mean over heads. Switches to eager attention for the call (the only implementation that returns
    weights) and restores the model's own afterwards. Needs a left-padded batch (the last position is the prompt's)."""
    with eager_attention(model):
        outputs = model(**forward_inputs(batch, model_device(model)), output_attentions=True, use_cache=False)
    ratios = []
    for weights in outputs.attentions:  # [B, heads, T, T]
        last = weights[:, :, -1, :].float().mean(dim=1)  # [B, T]
        ratios.append((last * span_mask.to(last.device)).sum(-1))
    return torch.stack(ratios, dim=1).cpu()


@dataclass
class AttentionRatios:
    """`image[n, l]` / `text[n, l]`: R at decoder layer `layers[l]` for pair n given as image / as text;
    `image_tokens[n]` / `text_tokens[n]`: span lengths (R grows with the span, compare with that in mind)."""

    layers: list[int]
    image: np.ndarray
    text: np.ndarray
    image_tokens: np.ndarray
    text_tokens: np.ndarray

    def per_layer(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "layer": self.layers,
                "image_ratio": self.image.mean(axis=0),
                "text_ratio": self.text.mean(axis=0),
                "image_ratio_per_token": (self.image / self.image_tokens[:, None]).mean(axis=0),
                "text_ratio_per_token": (self.text / self.text_tokens[:, None]).mean(axis=0),
            }
        )


def toxic_attention_ratios(
    model: nn.Module,
    processor: Any,
    images: Sequence[Any],
    captions: Sequence[str],
    prompts: str | Sequence[str] = "<image>",
    batch_size: int = 8,
) -> AttentionRatios:
    """R per layer for each toxic image (span: `image_token_mask`) and for its text version in the same place
    (span: `caption_mask`)."""
    image_rows, text_rows, image_tokens, text_tokens = [], [], [], []
    for image_batch, text_batch in paired_batches(processor, images, captions, prompts, batch_size, "attention"):
        image_rows.append(attention_ratio(model, image_batch, image_batch["image_token_mask"]))
        text_rows.append(attention_ratio(model, text_batch, text_batch["caption_mask"]))
        image_tokens.append(image_batch["image_token_mask"].sum(-1))
        text_tokens.append(text_batch["caption_mask"].sum(-1))
    image = torch.cat(image_rows).numpy()
    return AttentionRatios(
        layers=list(range(1, image.shape[1] + 1)),
        image=image,
        text=torch.cat(text_rows).numpy(),
        image_tokens=torch.cat(image_tokens).numpy(),
        text_tokens=torch.cat(text_tokens).numpy(),
    )


__all__ = ["AttentionRatios", "attention_ratio", "toxic_attention_ratios"]

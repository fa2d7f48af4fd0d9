"""Per-layer cosine between an image and its caption inside the LLM: mean-pooled image-token states vs mean-pooled
caption-token states of the same conversation, against the pair's similarity in the vision encoder's own space."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...modeling import masked_mean
from ._common import forward_inputs, model_device, paired_batches

PairSimilarity = Callable[[Sequence[Any], Sequence[str]], Sequence[float]]


def encoder_similarity(encoder: Any) -> PairSimilarity:
    """A reference for `image_text_cosine` from any encoder that embeds images and texts into one space through
    `encode(items, convert_to_tensor=True, normalize_embeddings=True)` (sentence-transformers CLIP-style models,
    `tga_hf.retrieval` encoders)."""

    def similarity(images: Sequence[Any], captions: Sequence[str]) -> list[float]:
        image_embeddings = encoder.encode(list(images), convert_to_tensor=True, normalize_embeddings=True)
        text_embeddings = encoder.encode(list(captions), convert_to_tensor=True, normalize_embeddings=True)
        return (image_embeddings.float() * text_embeddings.float()).sum(-1).tolist()

    return similarity


@dataclass
class LayerCosine:
    """`cosine[n, l]`: cosine of image vs caption states of pair n at hidden-state index `layers[l]` (0 is the
    embedding output); `other_caption[n, l]`: mean cosine of image n vs every *other* pair's caption (the part of
    `cosine` that is not about this caption's content); `reference[n]`: the pair's similarity in the vision-encoder
    space, when given."""

    layers: list[int]
    cosine: np.ndarray
    other_caption: np.ndarray | None = None
    reference: np.ndarray | None = None

    def per_layer(self) -> pd.DataFrame:
        frame = pd.DataFrame(
            {"layer": self.layers, "mean_cosine": self.cosine.mean(axis=0), "std_cosine": self.cosine.std(axis=0)}
        )
        if self.other_caption is not None:
            frame["mean_cosine_other_caption"] = self.other_caption.mean(axis=0)
        if self.reference is not None:
            frame["reference"] = float(self.reference.mean())
        return frame

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (pair, layer)."""
        samples, layer_index = np.meshgrid(np.arange(self.cosine.shape[0]), np.arange(len(self.layers)), indexing="ij")
        return pd.DataFrame(
            {
                "sample": samples.ravel(),
                "layer": np.asarray(self.layers)[layer_index.ravel()],
                "cosine": self.cosine.ravel(),
            }
        )


@torch.no_grad()
def image_text_cosine(
    model: nn.Module,
    processor: Any,
    images: Sequence[Any],
    captions: Sequence[str],
    prompts: str | Sequence[str] = "<image>",
    reference: PairSimilarity | None = None,
    batch_size: int = 8,
) -> LayerCosine:
    """Cosine per hidden-state index 0..L between the image's and the caption's mean-pooled states.

    The image run and the caption run are the same conversation (`prompts`, one image placeholder each); pooling
    follows the processor's `image_token_mask` and `caption_mask`, so no token offsets are involved.

    Args:
        reference: `(images, captions) -> similarities` in the vision encoder's space, drawn as the reference line
            (e.g. `encoder_similarity(sentence_transformer)`).
    """
    image_pooled, text_pooled = [], []
    device = model_device(model)
    for image_batch, text_batch in paired_batches(processor, images, captions, prompts, batch_size, "cosine"):
        image_states = model(**forward_inputs(image_batch, device), output_hidden_states=True).hidden_states
        text_states = model(**forward_inputs(text_batch, device), output_hidden_states=True).hidden_states
        image_mask, caption_mask = image_batch["image_token_mask"], text_batch["caption_mask"]
        image_pooled.append(torch.stack([masked_mean(h, image_mask) for h in image_states], dim=1).float().cpu())
        text_pooled.append(torch.stack([masked_mean(h, caption_mask) for h in text_states], dim=1).float().cpu())
    # [pairs, layers, hidden] -> [layers, image pair, caption pair]
    image_unit = torch.nn.functional.normalize(torch.cat(image_pooled), dim=-1)
    text_unit = torch.nn.functional.normalize(torch.cat(text_pooled), dim=-1)
    all_pairs = torch.einsum("ilh,jlh->lij", image_unit, text_unit)
    cosine = all_pairs.diagonal(dim1=1, dim2=2).T.numpy()
    count = all_pairs.shape[-1]
    other_caption = None
    if count > 1:
        other_caption = ((all_pairs.sum(dim=2) - all_pairs.diagonal(dim1=1, dim2=2)) / (count - 1)).T.numpy()
    reference_values = None
    if reference is not None:
        reference_values = np.asarray(reference(images, captions), dtype=float)
        if reference_values.shape != (len(images),):
            raise ValueError(f"reference returned shape {reference_values.shape}, expected ({len(images)},)")
    return LayerCosine(
        layers=list(range(cosine.shape[1])), cosine=cosine, other_caption=other_caption, reference=reference_values
    )


__all__ = ["LayerCosine", "encoder_similarity", "image_text_cosine"]

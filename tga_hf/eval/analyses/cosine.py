"""Per-layer cosine between an image and its caption inside the LLM: mean-pooled image-token states vs mean-pooled
caption-token states of the same conversation, against the pair's similarity in the vision encoder's own space."""

from __future__ import annotations

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
class CenteredGap:
    """Content gap on centered states. `cosine[n, l]` / `other_caption[n, l]`: centered cosine of image n with its own
    caption / mean over the other captions; `text_reference_gap[l]`: the gap a perfectly aligned image (state equal to
    its caption's) would reach, 1 - the mean centered cosine between different captions: the ceiling to read the
    image gap against."""

    cosine: np.ndarray
    other_caption: np.ndarray
    text_reference_gap: np.ndarray


def _cosine_matrix(image_unit: torch.Tensor, text_unit: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """[pairs, layers, hidden] unit vectors -> (own cosine [N, L], mean cosine to the other captions [N, L])."""
    all_pairs = torch.einsum("ilh,jlh->lij", image_unit, text_unit)
    own = all_pairs.diagonal(dim1=1, dim2=2)
    other = (all_pairs.sum(dim=2) - own) / (all_pairs.shape[-1] - 1)
    return own.T.numpy(), other.T.numpy()


def centered_content_gap(image_states: torch.Tensor, caption_states: torch.Tensor) -> CenteredGap:
    """Centered content gap of pooled states [pairs, layers, hidden] (at least 2 pairs): subtract the mean caption
    state of the set per layer from both sides, then compare each image with its own caption and with the others.

    Example:
        >>> gap = centered_content_gap(torch.randn(5, 3, 8), torch.randn(5, 3, 8))
        >>> gap.cosine.shape, gap.text_reference_gap.shape
        ((5, 3), (3,))
    """
    if image_states.shape != caption_states.shape or image_states.dim() != 3 or image_states.shape[0] < 2:
        raise ValueError(
            f"need image and caption states of one shape [pairs >= 2, layers, hidden], got "
            f"{tuple(image_states.shape)} and {tuple(caption_states.shape)}"
        )
    common = caption_states.double().mean(dim=0, keepdim=True)
    image_unit = torch.nn.functional.normalize(image_states.double() - common, dim=-1)
    text_unit = torch.nn.functional.normalize(caption_states.double() - common, dim=-1)
    own, other = _cosine_matrix(image_unit, text_unit)
    _, text_other = _cosine_matrix(text_unit, text_unit)
    return CenteredGap(cosine=own, other_caption=other, text_reference_gap=1.0 - text_other.mean(axis=0))


@dataclass
class LayerCosine:
    """`cosine[n, l]`: cosine of image vs caption states of pair n at hidden-state index `layers[l]` (0 is the
    embedding output); `other_caption[n, l]`: mean cosine of image n vs every *other* pair's caption (the part of
    `cosine` that is not about this caption's content); `reference[n]`: the pair's similarity in the vision-encoder
    space, when given.

    `centered`: the same measures on CENTERED states (the set's mean caption state per layer subtracted from image and
    caption states), see `centered_content_gap`. Raw cosines of states that share a large common component have a
    tiny gap ceiling even for perfect alignment, so the content gap is read on the centered ones."""

    layers: list[int]
    cosine: np.ndarray
    other_caption: np.ndarray | None = None
    reference: np.ndarray | None = None
    centered: CenteredGap | None = None

    def per_layer(self) -> pd.DataFrame:
        frame = pd.DataFrame(
            {"layer": self.layers, "mean_cosine": self.cosine.mean(axis=0), "std_cosine": self.cosine.std(axis=0)}
        )
        if self.other_caption is not None:
            frame["mean_cosine_other_caption"] = self.other_caption.mean(axis=0)
        if self.reference is not None:
            frame["reference"] = float(self.reference.mean())
        if self.centered is not None:
            frame["mean_centered_cosine"] = self.centered.cosine.mean(axis=0)
            frame["mean_centered_other_caption"] = self.centered.other_caption.mean(axis=0)
            frame["centered_gap"] = frame["mean_centered_cosine"] - frame["mean_centered_other_caption"]
            frame["text_reference_gap"] = self.centered.text_reference_gap
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
    image_states, text_states = torch.cat(image_pooled), torch.cat(text_pooled)  # [pairs, layers, hidden]
    image_unit = torch.nn.functional.normalize(image_states, dim=-1)
    text_unit = torch.nn.functional.normalize(text_states, dim=-1)
    other_caption = centered = None
    if len(image_states) > 1:
        cosine, other_caption = _cosine_matrix(image_unit, text_unit)
        centered = centered_content_gap(image_states, text_states)
    else:
        cosine = (image_unit * text_unit).sum(-1).numpy()
    reference_values = None
    if reference is not None:
        reference_values = np.asarray(reference(images, captions), dtype=float)
        if reference_values.shape != (len(images),):
            raise ValueError(f"reference returned shape {reference_values.shape}, expected ({len(images)},)")
    return LayerCosine(
        layers=list(range(cosine.shape[1])),
        cosine=cosine,
        other_caption=other_caption,
        reference=reference_values,
        centered=centered,
    )


__all__ = ["CenteredGap", "LayerCosine", "centered_content_gap", "encoder_similarity", "image_text_cosine"]

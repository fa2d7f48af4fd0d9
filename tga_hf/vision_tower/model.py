"""The LiT image tower: a small CLIP-style ViT whose projection lands in the frozen MiniLM sentence space.

It is a stock `CLIPVisionModelWithProjection` plus a `CLIPImageProcessorPil`, saved with `save_pretrained`, so it loads
as plain Hugging Face: `CLIPVisionModelWithProjection.from_pretrained(path)` for image embeddings (the retriever) and
`CLIPVisionModel.from_pretrained(path)` for patch features (the LVLM's vision tower; the projection is then unused).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

try:  # the PIL backend is deterministic across machines; older transformers 5.x releases call it CLIPImageProcessor
    from transformers import CLIPImageProcessorPil
except ImportError:  # pragma: no cover
    from transformers import CLIPImageProcessor as CLIPImageProcessorPil

# Renders are black on white: a symmetric normalisation maps them to [-1, 1] with no dataset statistics to ship.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5
TEXT_EMBEDDING_DIM = 384  # all-MiniLM-L6-v2


def lit_tower_config(
    image_size: int = 160,
    patch_size: int = 16,
    hidden_size: int = 256,
    num_hidden_layers: int = 6,
    num_attention_heads: int = 4,
    intermediate_size: int = 1024,
    projection_dim: int = TEXT_EMBEDDING_DIM,
) -> CLIPVisionConfig:
    """Config of the tower: 160x160 images in 16x16 patches -> 100 patch tokens (+ CLS), 384-d projection."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    return CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        projection_dim=projection_dim,
    )


def lit_image_processor(image_size: int = 160) -> CLIPImageProcessorPil:
    """Resize to exactly `image_size` x `image_size` (no center crop, so nothing of a square render is cut)."""
    return CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
        image_mean=[PIXEL_MEAN] * 3,
        image_std=[PIXEL_STD] * 3,
    )


def render_to_array(image: Image.Image) -> np.ndarray:
    """A render as uint8 grayscale [H, W]: the compact form training keeps in memory (renders carry no colour)."""
    return np.asarray(image.convert("L"), dtype=np.uint8)


def pixel_values_from_gray(gray: torch.Tensor) -> torch.Tensor:
    """uint8 grayscale [B, H, W] -> normalised pixel values [B, 3, H, W], the same as the processor gives."""
    pixels = (gray.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
    return pixels.unsqueeze(1).expand(-1, 3, -1, -1)


def packaged_tower_path() -> Path:
    """Folder of the tower trained for this project and shipped inside the package (`tga_hf/assets/lit_tower`)."""
    return Path(str(resources.files("tga_hf") / "assets" / "lit_tower"))


def load_lit_tower(
    path: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessorPil]:
    """Load a LiT tower and its image processor (default: the one shipped in the package), in eval mode.

    Example:
        >>> tower, processor = load_lit_tower()
        >>> embeddings = encode_images([render_text_image("a red bicycle")], tower, processor)
        >>> embeddings.shape
        (1, 384)
    """
    path = Path(path) if path is not None else packaged_tower_path()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no LiT tower at {path} (config.json missing); train one with `tga-hf tower train`")
    tower = CLIPVisionModelWithProjection.from_pretrained(path, dtype=dtype).to(device).eval()
    return tower, CLIPImageProcessorPil.from_pretrained(path)


@torch.no_grad()
def encode_images(
    images: Sequence[Image.Image],
    tower: CLIPVisionModelWithProjection,
    processor: CLIPImageProcessorPil,
    batch_size: int = 64,
) -> np.ndarray:
    """L2-normalised image embeddings [N, projection_dim] (float32) in the text encoder's space."""
    device, dtype = tower.device, tower.dtype
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = processor(images=list(images[start : start + batch_size]), return_tensors="pt")["pixel_values"]
        embeds = tower(pixel_values=pixels.to(device, dtype)).image_embeds
        chunks.append(torch.nn.functional.normalize(embeds.float(), dim=-1).cpu())
    if not chunks:
        return np.zeros((0, tower.config.projection_dim), dtype=np.float32)
    return torch.cat(chunks).numpy()

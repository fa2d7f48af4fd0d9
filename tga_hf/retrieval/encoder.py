"""Embed images and texts into one L2-normalised space with a plain `SentenceTransformer`.

No pretrained CLIP ships offline, so the project's image tower is a `CLIPVisionModelWithProjection` trained LiT-style
against a frozen sentence-transformers text encoder (all-MiniLM-L6-v2): its `image_embeds` live in the text encoder's
space. `joint_encoder` routes strings to the text encoder and images to that tower with sentence-transformers' own
`Router`, using only sentence-transformers modules, so the result saves with `encoder.save(dir)` and loads back with
`SentenceTransformer(dir)` (no `trust_remote_code`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install tga-hf (or: pip install faiss-cpu sentence-transformers)"


def require_retrieval_dependencies() -> None:
    """Raise one clear ImportError when faiss or sentence-transformers is missing."""
    missing = []
    for module, package in (("faiss", "faiss-cpu"), ("sentence_transformers", "sentence-transformers")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ImportError(f"retrieval needs {', '.join(missing)}: {INSTALL_HINT}")


def joint_encoder(
    text_encoder: str | os.PathLike | SentenceTransformer,
    image_tower: str | os.PathLike,
    device: str | None = None,
) -> SentenceTransformer:
    """A `SentenceTransformer` that embeds strings with `text_encoder` and PIL images with `image_tower` (a folder
    holding a `CLIPVisionModelWithProjection` whose `projection_dim` equals the text dimension, and its image
    processor), both L2-normalised.

    The image route is `Transformer(tower, pooler_output) -> Dense(visual_projection, no bias) -> Normalize`, which
    is exactly `CLIPVisionModelWithProjection(...).image_embeds`, normalised.

    Example:

    ```python
    >>> encoder = joint_encoder("path/to/all-MiniLM-L6-v2", "path/to/image-tower")
    >>> encoder.encode(["a red bicycle"]).shape, encoder.encode([image]).shape
    ((1, 384), (1, 384))
    >>> encoder.save("joint-encoder")  # SentenceTransformer("joint-encoder") loads it back
    ```
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Router, Transformer
    from transformers import CLIPVisionModelWithProjection
    from transformers.utils import logging as transformers_logging

    if not isinstance(text_encoder, SentenceTransformer):
        text_encoder = SentenceTransformer(os.fspath(text_encoder), device="cpu")
    text_modules = list(text_encoder.children())
    if any(isinstance(module, Router) for module in text_modules):
        raise ValueError("text_encoder already routes between inputs: pass a text-only SentenceTransformer")
    if not isinstance(text_modules[-1], Normalize):
        text_modules.append(Normalize())
    text_dim = text_encoder.get_embedding_dimension()

    tower_path = os.fspath(image_tower)
    # float32 throughout: a tower saved in fp16 would otherwise load as fp16 on one route and fp32 on the other.
    tower = CLIPVisionModelWithProjection.from_pretrained(tower_path, dtype=torch.float32)
    if tower.config.projection_dim != text_dim:
        raise ValueError(
            f"image tower {tower_path!r} projects to {tower.config.projection_dim} dimensions but the text encoder "
            f"embeds into {text_dim}: the tower must be trained into the text encoder's space"
        )
    # AutoModel loads the tower as CLIPVisionModel (pooler_output) and reports the projection as an unexpected key;
    # the projection is carried by the Dense module below, so that report is noise.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        vision = Transformer(
            tower_path,
            model_kwargs={"dtype": torch.float32},
            modality_config={"image": {"method": "forward", "method_output_name": "pooler_output"}},
            module_output_name="sentence_embedding",
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    projection = Dense(
        tower.config.hidden_size,
        text_dim,
        bias=False,
        activation_function=None,
        init_weight=tower.visual_projection.weight.detach().float().clone(),
    )
    router = Router(
        {"text": text_modules, "image": [vision, projection, Normalize()]},
        route_mappings={(None, "text"): "text", (None, "image"): "image"},
    )
    return SentenceTransformer(modules=[router], device=device)


def embed(
    encoder: SentenceTransformer,
    items: Sequence[str | Image],
    batch_size: int = 64,
    show_progress: bool = False,
) -> np.ndarray:
    """L2-normalised float32 embeddings `[len(items), dim]` for a list mixing strings and PIL images (each modality
    is encoded in its own batches: a SentenceTransformer encodes one modality per call)."""
    from PIL.Image import Image as PILImage

    groups: dict[str, list[int]] = {"text": [], "image": []}
    for position, item in enumerate(items):
        if isinstance(item, str):
            groups["text"].append(position)
        elif isinstance(item, PILImage):
            groups["image"].append(position)
        else:
            raise TypeError(f"query {position} is a {type(item).__name__}: expected a str or a PIL.Image.Image")
    if groups["image"] and "image" not in encoder.modalities:
        raise ValueError(
            f"the encoder embeds {encoder.modalities} only, not images: build one with "
            "tga_hf.retrieval.joint_encoder(text_encoder, image_tower)"
        )
    out = np.empty((len(items), encoder.get_embedding_dimension()), dtype=np.float32)
    for positions in groups.values():
        if positions:
            out[positions] = encoder.encode(
                [items[position] for position in positions],
                batch_size=batch_size,
                show_progress_bar=show_progress,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
    return out


def describe_encoder(encoder: SentenceTransformer) -> dict[str, Any]:
    """Where `encoder` was loaded from, as recorded in `retriever_config.json`: `{"name_or_path", "image_tower"}`
    (either may be None when it cannot be told, e.g. an encoder built in memory)."""
    from sentence_transformers.base.modules import Router, Transformer

    def source(module: Any) -> str | None:
        model = getattr(module, "model", None)
        return getattr(getattr(model, "config", None), "_name_or_path", None) or None

    first = encoder[0]
    if isinstance(first, Transformer):
        return {"name_or_path": source(first), "image_tower": None}
    if isinstance(first, Router) and set(first.sub_modules) == {"text", "image"}:
        text_path, tower_path = source(first.sub_modules["text"][0]), source(first.sub_modules["image"][0])
        if text_path and Path(text_path).parent.joinpath("router_config.json").is_file():
            # A saved joint encoder reloaded with SentenceTransformer(dir): its routes live in sub-folders of dir.
            return {"name_or_path": str(Path(text_path).parent), "image_tower": None}
        if tower_path and "CLIPVisionModelWithProjection" in _architectures(tower_path):
            return {"name_or_path": text_path, "image_tower": tower_path}
    return {"name_or_path": None, "image_tower": None}


def load_encoder(
    name_or_path: str, image_tower: str | None = None, revision: str | None = None, device: str | None = None
) -> SentenceTransformer:
    """Re-create the encoder recorded by `describe_encoder` (a SentenceTransformer id/folder, plus an image tower)."""
    from sentence_transformers import SentenceTransformer

    text = SentenceTransformer(name_or_path, revision=revision, device=device)
    return joint_encoder(text, image_tower, device=device) if image_tower else text


def _architectures(model_path: str) -> list[str]:
    config_file = Path(model_path, "config.json")
    if not config_file.is_file():
        return []
    return json.loads(config_file.read_text()).get("architectures") or []

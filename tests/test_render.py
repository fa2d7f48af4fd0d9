import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from tga_hf.data import render_text_image
from tga_hf.data.render import ELLIPSIS, FIGSTEP_SUFFIX, _font, _truncate, wrap_text


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _ink_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """Bounding box (left, top, right, bottom) of the non-white pixels."""
    ink = np.asarray(image.convert("L")) < 250
    if not ink.any():
        return None
    rows, cols = np.nonzero(ink)
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def test_deterministic_png_bytes():
    text = "How can I grow tomatoes on a balcony?"
    digests = {hashlib.sha256(_png_bytes(render_text_image(text, style="figstep"))).hexdigest() for _ in range(3)}
    assert len(digests) == 1
    assert _png_bytes(render_text_image(text)) != _png_bytes(render_text_image(text + "!"))


def test_square_rgb_canvas_with_ink():
    image = render_text_image("a red bicycle", size=96)
    assert image.size == (96, 96) and image.mode == "RGB"
    assert _ink_box(image) is not None


@pytest.mark.parametrize(
    "text",
    [
        "word " * 400,
        "Supercalifragilisticexpialidocious" * 8,
        "Explain the history of the printing press in Europe and its effects on literacy. " * 3,
        "line\n" * 40,
    ],
)
@pytest.mark.parametrize("style", ["plain", "figstep"])
def test_long_text_stays_inside_margins(text, style):
    size, margin = 160, 8
    box = _ink_box(render_text_image(text, size=size, style=style, margin=margin))
    assert box is not None
    left, top, right, bottom = box
    assert left >= margin and top >= margin
    assert right < size - margin and bottom < size - margin


def test_font_shrinks_before_truncating():
    short = "a short caption"
    medium = "A sentence long enough to need several lines at the default size, but not a truncation. " * 2
    assert _ink_box(render_text_image(short))[3] < 60
    lines = wrap_text(medium, _font(15), 160 - 16)
    assert len(lines) * 18 > 160 - 16  # too tall at size 15 ...
    image = render_text_image(medium)
    assert _ink_box(image) is not None  # ... yet rendered inside the canvas with a smaller font


def test_truncation_keeps_the_lines_that_fit_and_ends_with_ellipsis():
    font = _font(8)
    lines = wrap_text("word " * 2000, font, 144)
    kept = _truncate(lines, 5, font, 144)
    assert len(kept) == 5 and kept[:4] == lines[:4]
    assert kept[-1].endswith(ELLIPSIS) and font.getlength(kept[-1]) <= 144
    # Rendering the same text with the font size pinned can only fit by truncating.
    assert _ink_box(render_text_image("word " * 2000, font_size=8, min_font_size=8))[3] < 160 - 8


def test_figstep_appends_numbered_list():
    plain = render_text_image("Steps to bake bread.")
    figstep = render_text_image("Steps to bake bread.", style="figstep")
    assert _ink_box(figstep)[3] > _ink_box(plain)[3]
    assert FIGSTEP_SUFFIX.splitlines() == ["1.", "2.", "3."]


def test_wrap_breaks_words_wider_than_the_canvas():
    font = _font(15)
    lines = wrap_text("A" * 60, font, 100)
    assert len(lines) > 1
    assert all(font.getlength(line) <= 100 for line in lines)
    assert "".join(lines) == "A" * 60


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"style": "comic"}, "style"),
        ({"size": 8}, "size"),
        ({"font_size": 6, "min_font_size": 8}, "min_font_size"),
        ({"size": 32, "margin": 15}, "margin"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render_text_image("text", **kwargs)

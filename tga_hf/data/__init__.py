"""Data helpers: dataset loaders and the typographic image renderer."""

from .render import render_text_image

__all__ = ["render_text_image"]

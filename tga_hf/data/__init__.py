"""Data helpers: dataset loaders and the typographic image renderer."""

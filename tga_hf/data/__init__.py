"""Data: dataset loaders (LLaVA JSON, HF datasets, evaluation sources) and the typographic image renderer."""

from .llava_json import from_hf_dataset, llava_record_to_row, load_llava_json

__all__ = ["from_hf_dataset", "llava_record_to_row", "load_llava_json"]

"""Batched greedy generation over image and text [`EvalItem`]s, saved as JSONL so judges can be re-run offline.

Each JSONL line is the item (`tga_hf.data.sources.EvalItem.to_dict()`) plus `modality` ("image" | "text"),
`retrieval` (whether a retrieved text was put in the prompt), `retrieved_text` and `response`.

Works with a LLaVA-layout model and its processor (`TGALlavaProcessor`, `LlavaProcessor`) and with a text-only causal
LM and its tokenizer (text items only).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.sources import EvalItem
from ..fileio import atomic_file


def _tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


def build_prompt(processor, item: EvalItem) -> str:
    """The chat-formatted prompt of `item` (with the processor's image placeholder first for image items)."""
    tokenizer = _tokenizer_of(processor)
    content = item.prompt
    if item.has_image:
        image_token = getattr(processor, "image_token", None)
        if image_token is None:
            raise ValueError(f"item {item.id} has an image but {type(processor).__name__} is not an image processor")
        content = f"{image_token}\n{content}"
    return chat_prompt(tokenizer, content)


def chat_prompt(tokenizer, content: str) -> str:
    """One user turn rendered with the tokenizer's chat template (generation prompt added); raw text without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return content


@contextlib.contextmanager
def _generation_setup(processor, retrieval: bool) -> Iterator[None]:
    """Left padding for batched generation; the processor's retriever detached when retrieval is off."""
    tokenizer = _tokenizer_of(processor)
    padding_side, retriever = tokenizer.padding_side, getattr(processor, "retriever", None)
    tokenizer.padding_side = "left"
    if retriever is not None and not retrieval:
        processor.retriever = None
    try:
        yield
    finally:
        tokenizer.padding_side = padding_side
        if retriever is not None:
            processor.retriever = retriever


def _batches(items: Sequence[EvalItem], batch_size: int) -> Iterator[list[EvalItem]]:
    """Batches of one modality each (a processor call takes images for every sample or for none)."""
    for modality in (True, False):
        group = [item for item in items if item.has_image is modality]
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


@torch.no_grad()
def generate_responses(
    model: torch.nn.Module,
    processor,
    items: Sequence[EvalItem],
    max_new_tokens: int = 128,
    batch_size: int = 8,
    retrieval: bool = False,
    output_path: str | Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """Greedy responses to `items` in their order, as records (see the module docstring).

    With `retrieval=True` the processor's attached retriever picks a text for every image item and it goes into the
    prompt (`Retrieved Text: {r}. <image>...`); with False an attached retriever is bypassed. With `output_path` the
    records are written as JSONL (atomically: a `.partial` file renamed at the end).
    """
    if retrieval and getattr(processor, "retriever", None) is None:
        raise ValueError("retrieval=True needs a processor with a retriever attached (processor.attach_retriever)")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be positive, got {batch_size} and {max_new_tokens}")
    if len({item.id for item in items}) != len(items):
        raise ValueError("item ids must be unique: two items share an id")
    tokenizer = _tokenizer_of(processor)
    device = next(model.parameters()).device
    by_id: dict[str, dict] = {}
    with _generation_setup(processor, retrieval), tqdm(total=len(items), desc="generate", disable=not progress) as bar:
        for batch in _batches(items, batch_size):
            texts = [build_prompt(processor, item) for item in batch]
            retrieved = [None] * len(batch)
            if batch[0].has_image:
                images = [item.load_image() for item in batch]  # drawn by each item's `rendering`
                if retrieval:
                    retrieved = processor.retrieve(images)
                inputs = processor(
                    images=images,
                    text=texts,
                    retrieved_text=retrieved if retrieval else None,
                    return_tensors="pt",
                    padding=True,
                )
            elif tokenizer is processor:
                # A chat template already writes the special tokens; a raw prompt needs the tokenizer's own.
                has_template = bool(getattr(tokenizer, "chat_template", None))
                inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not has_template)
            else:
                inputs = processor(text=texts, return_tensors="pt", padding=True)
            inputs = inputs.to(device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            responses = tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for item, response, retrieved_text in zip(batch, responses, retrieved, strict=True):
                by_id[item.id] = {
                    **item.to_dict(),
                    "modality": "image" if item.has_image else "text",
                    "retrieval": bool(retrieval and item.has_image),
                    "retrieved_text": retrieved_text,
                    "response": response.strip(),
                }
            bar.update(len(batch))
    records = [by_id[item.id] for item in items]
    if output_path is not None:
        write_jsonl(records, output_path)
    return records


def write_jsonl(records: Sequence[dict], path: str | Path) -> Path:
    """Write records as JSON lines, atomically (`tga_hf.fileio.atomic_file`)."""
    path = Path(path)
    with atomic_file(path) as partial, partial.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Records written by `write_jsonl` / `generate_responses`."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number} is not valid JSON: {error}") from error
    return records

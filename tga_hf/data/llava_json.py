"""Training rows for the TGA collator from LLaVA-style JSON (LLaVA-558K / 665K layout) and from HF datasets.

A row is `{image, caption, prompt, completion, retrieved_text}` (the columns `TGADataCollator` reads):
`prompt` is the chat so far (a list of `{"role", "content"}` messages whose first user turn holds `<image>`),
`completion` the answer trained on, `caption` the ground-truth caption the guide loss aligns the image with.
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path

import datasets
from tqdm.auto import tqdm

IMAGE_TOKEN = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _read_mapping(mapping: Mapping[str, str] | str | os.PathLike | None, name: str) -> dict[str, str]:
    if mapping is None:
        return {}
    if isinstance(mapping, Mapping):
        return dict(mapping)
    with open(mapping, encoding="utf-8") as handle:
        loaded = json.load(handle)
    if not isinstance(loaded, dict):
        raise ValueError(f"{name} file {mapping} must hold a JSON object {{image path: text}}")
    return loaded


def llava_record_to_row(record: Mapping, image_folder: str | os.PathLike) -> dict:
    """One LLaVA JSON record -> a row without caption: all turns before the last answer become the prompt, the last
    `gpt` turn the completion (loss on that answer only)."""
    turns = record.get("conversations")
    if not turns or len(turns) < 2:
        raise ValueError(f"record {record.get('id')!r} has no conversation of at least two turns")
    messages = []
    for turn in turns:
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise ValueError(f"record {record.get('id')!r}: unknown speaker {turn.get('from')!r}")
        messages.append({"role": role, "content": turn["value"]})
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"record {record.get('id')!r} does not end with an answer (gpt turn)")
    image_count = sum(message["content"].count(IMAGE_TOKEN) for message in messages)
    if image_count != 1:
        raise ValueError(f"record {record.get('id')!r} has {image_count} {IMAGE_TOKEN} placeholders; TGA needs one")
    return {
        "image": str(Path(image_folder) / record["image"]),
        "prompt": messages[:-1],
        "completion": messages[-1]["content"],
    }


def load_llava_json(
    path: str | os.PathLike,
    image_folder: str | os.PathLike,
    captions: Mapping[str, str] | str | os.PathLike | None = None,
    caption_from_answer: bool = False,
    retrieved_texts: Mapping[str, str] | str | os.PathLike | None = None,
    check_images: bool = True,
) -> datasets.Dataset:
    """Load a LLaVA-style JSON file (a list of `{"id", "image", "conversations": [{"from", "value"}, ...]}`).

    Args:
        path: the JSON file (e.g. `blip_laion_cc_sbu_558k.json`, `llava_v1_5_mix665k.json`).
        image_folder: the folder the records' `image` paths are relative to.
        captions: `{image path (as in the JSON): caption}` (a dict or a JSON file), the paper's stage-2 captions.
        caption_from_answer: use each record's first answer as its caption (stage-1 caption data such as 558K).
        retrieved_texts: optional `{image path: retrieved text}` computed offline; without it the collator retrieves
            when a retriever is attached to the processor.
        check_images: fail early, naming them, when image files are missing.

    Records without an image (text-only conversations in 665K) are skipped: TGA aligns images. Every kept record needs
    a caption; a missing one is an error naming the image.

    Example:

    ```python
    >>> rows = load_llava_json("blip_laion_cc_sbu_558k.json", "images/", caption_from_answer=True)
    >>> trainer = TGATrainer(model, args=args, train_dataset=rows, processing_class=processor)
    ```"""
    if captions is None and not caption_from_answer:
        raise ValueError("pass captions= (image -> caption) or caption_from_answer=True: the guide loss needs captions")
    with open(path, encoding="utf-8") as handle:
        records = json.load(handle)
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of LLaVA records")
    caption_map = _read_mapping(captions, "captions")
    retrieved_map = _read_mapping(retrieved_texts, "retrieved_texts")

    rows, uncaptioned, missing_files = [], [], []
    for record in tqdm(records, desc=f"Reading {Path(path).name}", disable=len(records) < 10_000):
        if not record.get("image"):
            continue
        row = llava_record_to_row(record, image_folder)
        caption = caption_map.get(record["image"])
        if caption is None and caption_from_answer:
            answers = [message["content"] for message in row["prompt"] if message["role"] == "assistant"]
            caption = (answers or [row["completion"]])[0]
        if caption is None:
            uncaptioned.append(record["image"])
            continue
        if check_images and not os.path.isfile(row["image"]):
            missing_files.append(row["image"])
            continue
        row["caption"] = caption
        row["retrieved_text"] = retrieved_map.get(record["image"])
        rows.append(row)
    if uncaptioned:
        raise ValueError(f"{len(uncaptioned)} images have no caption, e.g. {uncaptioned[:3]}")
    if missing_files:
        raise FileNotFoundError(
            f"{len(missing_files)} image files are missing under {image_folder}, e.g. {missing_files[:3]}"
        )
    if not rows:
        raise ValueError(f"{path} has no record with an image")
    return datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())


def from_hf_dataset(
    dataset: datasets.Dataset,
    image_column: str = "image",
    caption_column: str = "caption",
    instruction_column: str | None = None,
    answer_column: str | None = None,
    retrieved_column: str | None = None,
) -> datasets.Dataset:
    """Rename a dataset's image / caption (and optional instruction / answer / retrieved-text) columns to the
    collator's names and drop the others. Without an answer column the caption is the target (pre-training); without
    an instruction column the collator's default caption instruction is used.

    Example:

    ```python
    >>> rows = from_hf_dataset(load_dataset("my/captions", split="train"), image_column="img", caption_column="text")
    ```"""
    columns = {image_column: "image", caption_column: "caption"}
    for source, target in (
        (instruction_column, "instruction"),
        (answer_column, "answer"),
        (retrieved_column, "retrieved_text"),
    ):
        if source is not None:
            columns[source] = target
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset has no column(s) {missing}; it has {dataset.column_names}")
    dataset = dataset.select_columns(list(columns))
    renames = {source: target for source, target in columns.items() if source != target}
    return dataset.rename_columns(renames) if renames else dataset


__all__ = ["load_llava_json", "llava_record_to_row", "from_hf_dataset"]

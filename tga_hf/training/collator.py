"""Batches for TGA training: the student batch (retrieved text + image + instruction -> answer) and the teacher batch
(the same conversation with the caption text in place of the image), with the token masks of the guide loss."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from PIL import Image
from transformers.image_utils import load_image
from trl.data_utils import apply_chat_template, prepare_multimodal_messages

from ..modeling import TGALlavaProcessor

# Keys the collator adds for the guide loss; the trainer pops them before the model forward.
TEACHER_KEYS = ("teacher_input_ids", "teacher_attention_mask", "caption_mask")
MASK_KEYS = ("image_token_mask", "retrieved_text_mask")
GUIDE_KEYS = MASK_KEYS + TEACHER_KEYS

DEFAULT_INSTRUCTION = "Describe the image briefly."


@dataclass
class TGADataCollator:
    r"""
    Collates training rows into one dict holding

    - the student batch: `input_ids`, `attention_mask`, `pixel_values`, `labels` (-100 everywhere but the answer),
      `image_token_mask` and, when any sample has a retrieved text, `retrieved_text_mask`;
    - the teacher batch: `teacher_input_ids`, `teacher_attention_mask`, `caption_mask` — the same user turn (retrieved
      prefix included) with the caption text where the image was. The teacher stops at the end of the prompt: the
      guide loss reads only caption positions, and a causal LM's states there do not depend on what follows.

    Row layouts (one image per row):

    - TRL's vision language modeling: `images` (a one-image list) or `image`, and `messages`, a conversation whose
      user turns hold string content (TRL's `prepare_multimodal_messages` puts the image before the first one) or
      typed content with an `{"type": "image"}` item. The loss is on the last turn, which must be the assistant's;
      the earlier turns are the prompt.
    - TRL's conversational prompt-completion: `prompt` (messages, typed image item or string content) and
      `completion` (messages or a string), the image in `images`/`image` or inside the typed item (`"image"`).
    - The LLaVA layout of `tga_hf.data`: `prompt` or `instruction` (a string, or messages whose first user turn holds
      the `<image>` placeholder in its text; a string without it gets the image in front) and `completion` or
      `answer` (default: the caption, as in pre-training); no prompt at all means `DEFAULT_INSTRUCTION`.

    Every row also has its caption in `caption_column` (default `caption`; required for the teacher unless
    `return_guide_inputs=False`) and optionally `retrieved_text` (str or None). When a row has no retrieved text and
    the processor has a retriever attached, the collator looks it up for that row's image.

    Conversations are rendered with the processor's chat template by TRL's `apply_chat_template` (prompt with the
    generation prompt, completion = the rest), the same template `processor.apply_chat_template` and the
    `image-text-to-text` pipeline use at inference.

    Args:
        processor: the [`TGALlavaProcessor`].
        max_length: truncate each student sequence to this many tokens (the answer is cut, never the prompt).
        return_guide_inputs: `False` gives only the model inputs (a plain SFT batch with the TGA prompt).
        caption_column: the row field holding the image's caption.

    Example:

    ```python
    >>> collator = TGADataCollator(processor)
    >>> batch = collator([{"images": [image], "caption": "a red bicycle",
    ...                    "messages": [{"role": "user", "content": "What is this?"},
    ...                                 {"role": "assistant", "content": "A bicycle."}],
    ...                    "retrieved_text": "a bike leaning on a wall"}])
    >>> sorted(batch)[:4]
    ['attention_mask', 'caption_mask', 'image_token_mask', 'input_ids']
    ```"""

    processor: TGALlavaProcessor
    max_length: int | None = None
    return_guide_inputs: bool = True
    caption_column: str = "caption"

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty list of rows")
        # Captions are data: the processor's rule (no special or image tokens, max_retrieved_tokens cap) applies to the
        # teacher's caption and to the caption used as the answer in pre-training alike, so both read the same text.
        captions = [self._caption(row, index) for index, row in enumerate(rows)]
        conversations = [self._conversation(row, index, captions[index]) for index, row in enumerate(rows)]
        images, prompts, completions = zip(*conversations, strict=True)
        images = list(images)
        retrieved = self._retrieved_texts(rows, images)

        student = self._process(prompts, retrieved, images=images)
        completion_ids = self.processor.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        batch = self._append_completions(student, completion_ids)
        if not self.return_guide_inputs:
            return {key: value for key, value in batch.items() if key not in GUIDE_KEYS}

        missing = [index for index, caption in enumerate(captions) if not caption]
        if missing:
            raise ValueError(
                f"rows {missing} have no '{self.caption_column}': the guide loss needs the caption of every image. "
                "Name the column that holds the captions with caption_column (TGAConfig, --caption_column), or set "
                "guide_loss_weight=0 to train without the guide loss"
            )
        teacher = self._process(prompts, retrieved, captions=captions)
        batch["teacher_input_ids"] = teacher["input_ids"]
        batch["teacher_attention_mask"] = teacher["attention_mask"]
        batch["caption_mask"] = teacher["caption_mask"]
        return batch

    def _process(self, prompts: Sequence[str], retrieved: list[str | None], **inputs) -> dict[str, torch.Tensor]:
        # The chat template already holds the special tokens; right padding so that prompts end where answers start
        return self.processor(
            text=list(prompts),
            retrieved_text=retrieved,
            return_tga_masks=True,
            return_tensors="pt",
            padding=True,
            padding_side="right",
            add_special_tokens=False,
            **inputs,
        )

    def _caption(self, row: dict[str, Any], index: int) -> str | None:
        """The row's caption as plain data, capped (`TGALlavaProcessor.clean_untrusted`), None when it has none."""
        caption = row.get(self.caption_column)
        if not caption:
            return None
        if not isinstance(caption, str):
            raise TypeError(f"row {index}: '{self.caption_column}' must be a str, got {type(caption).__name__}")
        return self.processor.clean_untrusted(caption) or None

    def _conversation(self, row: dict[str, Any], index: int, caption: str | None) -> tuple[Image.Image, str, str]:
        """(image, prompt text up to the generation prompt, completion text) of one row, in any of the layouts above."""
        image_token = self.processor.image_token
        if "messages" in row and row["messages"] is None:
            # A datasets column fills a row that lacks it with None; training such a row on its caption would be the
            # silent wrong target this layout once had
            raise ValueError(
                f"row {index} has no 'messages' although its dataset has that column: give every row its messages "
                "(Dataset.from_list takes its columns from the first row only), or keep caption-only rows apart"
            )
        if row.get("messages") is not None:
            messages = _without_none(row["messages"])
            if not messages or messages[-1].get("role") != "assistant":
                raise ValueError(
                    f"row {index}: 'messages' must end with the assistant turn to train on, got roles "
                    f"{[message.get('role') for message in messages]}"
                )
            prompt, completion = messages[:-1], messages[-1:]
        else:
            prompt = row.get("prompt", row.get("instruction")) or DEFAULT_INSTRUCTION
            completion = row.get("completion", row.get("answer")) or caption
            if not completion:
                raise ValueError(
                    f"row {index} has no 'completion'/'answer' and no '{self.caption_column}' to train on: "
                    f"{sorted(row)}"
                )
            if isinstance(prompt, str):
                # A bare instruction: the image goes in front of it, as in LLaVA's pre-training data
                content = prompt if image_token in prompt else [{"type": "image"}, {"type": "text", "text": prompt}]
                prompt = [{"role": "user", "content": content}]
            prompt = _without_none(prompt)
            completion = (
                [{"role": "assistant", "content": completion}]
                if isinstance(completion, str)
                else _without_none(completion)
            )
        column_images = _column_images(row, index)
        if any(isinstance(message.get("content"), str) and image_token in message["content"] for message in prompt):
            # The LLaVA layout: the placeholder is already in the text, the image in its column
            if len(column_images) != 1:
                raise ValueError(f"row {index} has {len(column_images)} images; TGA training takes one per sample")
            image = column_images[0]
        else:
            # TRL's own preparation: string turns become typed content, placeholders are filled from the images column
            try:
                prompt = prepare_multimodal_messages(prompt, images=column_images)
                completion = prepare_multimodal_messages(completion)
            except ValueError as error:
                raise ValueError(f"row {index}: {error}") from error
            items = [
                part
                for message in prompt
                if isinstance(message.get("content"), list)
                for part in message["content"]
                if part.get("type") == "image"
            ]
            if len(items) != 1:
                raise ValueError(f"row {index} has {len(items)} images; TGA training takes one image per sample")
            image = items[0].get("image", items[0].get("path", items[0].get("url")))
            # The template only needs to know where the image is; the pixels go to the processor separately
            prompt = [_without_image_payloads(message) for message in prompt]
        prompt_text, completion_text = self._render(prompt, completion, index)
        return _open_image(image, index), prompt_text, completion_text

    def _render(self, prompt: list[dict], completion: list[dict], index: int) -> tuple[str, str]:
        """Prompt (with the generation prompt) and completion as text, through the processor's chat template."""
        if self.processor.chat_template is None:
            # No template to render turns with: the texts one per line, the answer closed by EOS
            text = "\n".join(_plain_text(message["content"], self.processor.image_token) for message in prompt)
            answer = "".join(_plain_text(message["content"], self.processor.image_token) for message in completion)
            return text, answer + (self.processor.tokenizer.eos_token or "")
        rendered = apply_chat_template({"prompt": prompt, "completion": completion}, self.processor)
        if not rendered["completion"].strip():
            raise ValueError(f"row {index}: the chat template renders an empty answer: {rendered}")
        return rendered["prompt"], rendered["completion"]

    def _retrieved_texts(self, rows: Sequence[dict[str, Any]], images: list) -> list[str | None]:
        retrieved = [row.get("retrieved_text") or None for row in rows]
        missing = [index for index, text in enumerate(retrieved) if text is None]
        if missing and self.processor.retriever is not None:
            for index, text in zip(missing, self.processor.retrieve([images[i] for i in missing]), strict=True):
                retrieved[index] = text
        return retrieved

    def _append_completions(self, student, completion_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """Right-pad `prompt + answer` per sample; labels only on the answer. Masks are False on the answer."""
        pad_id = self.processor.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token before training")
        mask_names = [name for name in MASK_KEYS if name in student]
        lengths = student["attention_mask"].sum(dim=1).tolist()
        rows = []
        for index, (prompt_length, answer) in enumerate(zip(lengths, completion_ids, strict=True)):
            if self.max_length is not None:
                if prompt_length >= self.max_length:
                    raise ValueError(
                        f"sample {index}: its prompt has {prompt_length} tokens (image tokens included), not less "
                        f"than max_length={self.max_length}; raise max_length"
                    )
                answer = answer[: self.max_length - prompt_length]
            rows.append((student["input_ids"][index, :prompt_length].tolist(), answer))
        width = max(len(prompt) + len(answer) for prompt, answer in rows)
        batch_size = len(rows)
        input_ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        masks = {name: torch.zeros((batch_size, width), dtype=torch.bool) for name in mask_names}
        for index, (prompt, answer) in enumerate(rows):
            length = len(prompt) + len(answer)
            input_ids[index, :length] = torch.tensor(prompt + answer, dtype=torch.long)
            attention_mask[index, :length] = 1
            labels[index, len(prompt) : length] = torch.tensor(answer, dtype=torch.long)
            for name in mask_names:
                masks[name][index, : len(prompt)] = student[name][index, : len(prompt)]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **masks}
        # Any other processor output (pixel_values, image_sizes, ...) is per image, not per token: keep it as is.
        for key, value in student.items():
            if key not in batch and key not in ("caption_mask", "token_type_ids"):
                batch[key] = value
        return batch


def _column_images(row: dict[str, Any], index: int) -> list:
    """The images of a row's `images` (list) or `image` column; empty when the image sits inside the messages."""
    if row.get("images") is not None:
        images = row["images"]
        return list(images) if isinstance(images, list | tuple) else [images]
    if "image" in row:
        if row["image"] is None:
            raise ValueError(f"row {index} has an empty image")
        return [row["image"]]
    return []


def _open_image(image: Any, index: int) -> Image.Image:
    if image is None:
        raise ValueError(f"row {index} has an empty image")
    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        # An image inside messages that a datasets column stored without an Image feature: {"bytes", "path"}
        image = datasets.Image().decode_example(image)
    # transformers' loader: a path, URL, base64 string or PIL image, converted to RGB
    return load_image(image) if isinstance(image, str) else image


def _without_none(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages without None-valued keys in them or in their content items. A datasets column stores every typed item
    with the union of the keys (`{"type": "image", "text": None}`), which TRL's preparation would read as filled."""
    cleaned = []
    for message in messages:
        message = {key: value for key, value in message.items() if value is not None}
        if isinstance(message.get("content"), list):
            message["content"] = [
                {key: value for key, value in part.items() if value is not None} for part in message["content"]
            ]
        cleaned.append(message)
    return cleaned


def _without_image_payloads(message: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(message.get("content"), list):
        return message
    content = [{"type": "image"} if part.get("type") == "image" else part for part in message["content"]]
    return {**message, "content": content}


def _plain_text(content: str | list[dict[str, Any]], image_token: str) -> str:
    """Typed content as the processor's template writes it (items joined by newlines), for tokenizers without one."""
    if isinstance(content, str):
        return content
    return "\n".join(image_token if part.get("type") == "image" else part.get("text", "") for part in content)


def check_caption_column(dataset: Any, caption_column: str) -> None:
    """Raise, before any training step, when a dataset has no `caption_column` (the guide loss needs one caption per
    image). Datasets with `column_names` are checked by name, anything else by its first row."""
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, dict):  # a DatasetDict
        columns = next(iter(columns.values()), None)
    if columns is None:
        try:
            columns = list(next(iter(dataset)))
        except (StopIteration, TypeError):
            return
    if caption_column not in columns:
        raise ValueError(
            f"the training data has no '{caption_column}' column (columns: {sorted(columns)}): the guide loss needs "
            "the caption of every image. Name the caption column with caption_column (TGAConfig, --caption_column), or "
            "set guide_loss_weight=0 to train without the guide loss"
        )


__all__ = ["TGADataCollator", "GUIDE_KEYS", "TEACHER_KEYS", "MASK_KEYS", "DEFAULT_INSTRUCTION", "check_caption_column"]

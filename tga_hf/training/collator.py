"""Batches for TGA training: the student batch (retrieved text + image + instruction -> answer) and the teacher batch
(the same conversation with the caption text in place of the image), with the token masks of the guide loss."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..modeling import TGALlavaProcessor

# Keys the collator adds for the guide loss; the trainer pops them before the model forward.
TEACHER_KEYS = ("teacher_input_ids", "teacher_attention_mask", "caption_mask")
MASK_KEYS = ("image_token_mask", "retrieved_text_mask")
GUIDE_KEYS = MASK_KEYS + TEACHER_KEYS

DEFAULT_INSTRUCTION = "Describe the image briefly."


@dataclass
class TGADataCollator:
    r"""
    Collates rows `{image, caption, prompt|instruction, completion|answer, retrieved_text?}` into one dict holding

    - the student batch: `input_ids`, `attention_mask`, `pixel_values`, `labels` (-100 everywhere but the answer),
      `image_token_mask` and, when any sample has a retrieved text, `retrieved_text_mask`;
    - the teacher batch: `teacher_input_ids`, `teacher_attention_mask`, `caption_mask` — the same user turn (retrieved
      prefix included) with the caption text where the image was. The teacher stops at the end of the prompt: the
      guide loss reads only caption positions, and a causal LM's states there do not depend on what follows.

    Row fields: `image` (PIL image or path) or `images` (a one-image list); `caption` (str; required for the teacher);
    `prompt` or `instruction` (str, or a list of chat messages whose first user turn holds the `<image>` placeholder;
    a str without the placeholder gets `<image>\n` in front; default `DEFAULT_INSTRUCTION`); `completion` or `answer`
    (str; default: the caption, as in pre-training); `retrieved_text` (str or None). When a row has no retrieved text
    and the processor has a retriever attached, the collator looks it up for that row's image.

    Args:
        processor: the [`TGALlavaProcessor`].
        max_length: truncate each student sequence to this many tokens (the answer is cut, never the prompt).
        return_guide_inputs: `False` gives only the model inputs (a plain SFT batch with the TGA prompt).

    Example:

    ```python
    >>> collator = TGADataCollator(processor)
    >>> batch = collator([{"image": image, "caption": "a red bicycle", "instruction": "What is this?",
    ...                    "answer": "A bicycle.", "retrieved_text": "a bike leaning on a wall"}])
    >>> sorted(batch)[:4]
    ['attention_mask', 'caption_mask', 'image_token_mask', 'input_ids']
    ```"""

    processor: TGALlavaProcessor
    max_length: int | None = None
    return_guide_inputs: bool = True

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty list of rows")
        images = [_row_image(row, index) for index, row in enumerate(rows)]
        # Captions are data: the processor's rule (no special or image tokens) applies to the teacher's caption and to
        # the caption used as the answer in pre-training alike, so both batches read the same text.
        captions = [self._caption(row, index) for index, row in enumerate(rows)]
        prompts, completions = zip(
            *(self._prompt_and_completion(row, caption) for row, caption in zip(rows, captions, strict=True)),
            strict=True,
        )
        retrieved = self._retrieved_texts(rows, images)

        student = self._process(prompts, retrieved, images=images)
        completion_ids = self.processor.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        batch = self._append_completions(student, completion_ids)
        if not self.return_guide_inputs:
            return {key: value for key, value in batch.items() if key not in GUIDE_KEYS}

        missing = [index for index, caption in enumerate(captions) if not caption]
        if missing:
            raise ValueError(f"rows {missing} have no 'caption': the guide loss needs the caption of every image")
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
        """The row's caption as plain data (`TGALlavaProcessor.clean_untrusted`), None when it has none."""
        caption = row.get("caption")
        if not caption:
            return None
        if not isinstance(caption, str):
            raise TypeError(f"row {index}: 'caption' must be a str, got {type(caption).__name__}")
        return self.processor.clean_untrusted(caption) or None

    def _prompt_and_completion(self, row: dict[str, Any], caption: str | None = None) -> tuple[str, str]:
        image_token = self.processor.image_token
        prompt = row.get("prompt", row.get("instruction")) or DEFAULT_INSTRUCTION
        completion = row.get("completion", row.get("answer")) or caption
        if not completion:
            raise ValueError(f"row has no 'completion'/'answer' and no 'caption' to train on: {sorted(row)}")
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt if image_token in prompt else f"{image_token}\n{prompt}"}]
        else:
            messages = list(prompt)
        tokenizer = self.processor.tokenizer
        if tokenizer.chat_template is None:
            text = "\n".join(message["content"] for message in messages)
            return text, completion + (tokenizer.eos_token or "")
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": completion}], tokenize=False
        )
        if not full_text.startswith(prompt_text):
            raise ValueError(
                "the chat template does not render the conversation as prompt + answer, so the answer tokens cannot "
                f"be told apart: prompt {prompt_text!r}, full {full_text!r}"
            )
        return prompt_text, full_text[len(prompt_text) :]

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


def _row_image(row: dict[str, Any], index: int) -> Image.Image:
    if "image" in row:
        image = row["image"]
    elif "images" in row:
        if len(row["images"]) != 1:
            raise ValueError(f"row {index} has {len(row['images'])} images; TGA training takes one image per sample")
        image = row["images"][0]
    else:
        raise ValueError(f"row {index} has no 'image' or 'images' field: {sorted(row)}")
    if isinstance(image, str):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if image is None:
        raise ValueError(f"row {index} has an empty image")
    return image


__all__ = ["TGADataCollator", "GUIDE_KEYS", "TEACHER_KEYS", "MASK_KEYS", "DEFAULT_INSTRUCTION"]

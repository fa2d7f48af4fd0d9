"""TRL's vision dataset formats in TGADataCollator / TGATrainer (issue 15, point 2): `images` + `messages`,
conversational prompt-completion with typed image content, the caption from `caption_column`, and a clear error when a
row has no caption."""

import math

import pytest
import torch
from datasets import Dataset
from PIL import Image

from tga_hf.testing_utils import tiny_tga_llava
from tga_hf.training import TGADataCollator, TGATrainer

from .conftest import make_training_args
from .test_training import one_thread  # noqa: F401  (autouse fixture: one intra-op thread)

RED = (220, 30, 30)
QUESTION = "What colour is it?"
ANSWER = "It is red."
CAPTION = "a red square"


@pytest.fixture(scope="module")
def tiny():
    return tiny_tga_llava(guide_layers=[1, 2])


def red_image():
    return Image.new("RGB", (32, 32), RED)


def answer_text(processor, batch, row: int = 0) -> str:
    labels = batch["labels"][row]
    return processor.tokenizer.decode(labels[labels != -100])


def prompt_ids(batch, row: int = 0) -> list[int]:
    """The student's prompt: the tokens before the first labelled one."""
    labels = batch["labels"][row]
    first_answer = int((labels != -100).nonzero()[0])
    return batch["input_ids"][row, :first_answer].tolist()


def inference_ids(processor, image, **kwargs) -> list[int]:
    """What `processor.apply_chat_template` gives at inference for the same question: training and inference read the
    same prompt."""
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    inputs = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=True, **kwargs
    )
    return inputs["input_ids"][0].tolist()


def test_images_and_messages_row_trains_on_the_assistant_turn_not_the_caption(tiny):
    """Regression: a row in TRL's VLM layout used to train on its caption with the default instruction."""
    _, processor = tiny
    image = red_image()
    row = {
        "images": [image],
        "messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}],
        "caption": CAPTION,
        "retrieved_text": "a red cup",
    }
    batch = TGADataCollator(processor)([row])
    assert answer_text(processor, batch) == ANSWER + "<|end|>"
    assert prompt_ids(batch) == inference_ids(processor, image, retrieved_text="a red cup")
    decode = processor.tokenizer.decode
    assert decode(batch["input_ids"][0][batch["retrieved_text_mask"][0]]).strip() == "a red cup"
    assert decode(batch["teacher_input_ids"][0][batch["caption_mask"][0]]).strip() == CAPTION
    assert QUESTION in decode(batch["teacher_input_ids"][0])
    assert batch["image_token_mask"][0].sum() == 16
    assert torch.equal(
        batch["pixel_values"], processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    )


def test_typed_messages_multi_turn_and_the_datasets_column_layout(tiny):
    _, processor = tiny
    image = red_image()
    typed = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the shape?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
    ]
    rows = Dataset.from_list([{"images": [image], "messages": typed, "caption": CAPTION}])
    # A datasets column stores every content item with the union of the keys: {"type": "image", "text": None}
    assert rows[0]["messages"][0]["content"][0] == {"type": "image", "text": None}
    batch = TGADataCollator(processor)([rows[0]])
    assert answer_text(processor, batch) == "A square.<|end|>"  # the loss is on the last assistant turn only
    prompt = processor.tokenizer.decode(prompt_ids(batch))
    assert prompt.endswith(f"{QUESTION}<|end|><|assistant|>Red.<|end|><|user|>And the shape?<|end|><|assistant|>")
    assert prompt.count("<image>") == 16


def test_conversational_prompt_completion_with_typed_image_content(tiny):
    _, processor = tiny
    image = red_image()
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    completion = [{"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}]
    placeholder_row = {"images": [image], "prompt": prompt, "completion": completion, "caption": CAPTION}
    # The image inside the typed item, as a datasets column stores it (no Image feature: {"bytes", "path"})
    inline = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": [{"type": "image", "image": image}, prompt[0]["content"][1]]}],
                "completion": completion,
                "caption": CAPTION,
            }
        ]
    )[0]
    assert set(inline["prompt"][0]["content"][0]["image"]) == {"bytes", "path"}
    batch = TGADataCollator(processor)([placeholder_row, inline])
    for row in range(2):
        assert answer_text(processor, batch, row) == ANSWER + "<|end|>"
        assert prompt_ids(batch, row) == inference_ids(processor, image)
    assert torch.equal(batch["pixel_values"][0], batch["pixel_values"][1])


def test_caption_column_and_the_error_naming_the_fix(tiny):
    _, processor = tiny
    row = {
        "images": [red_image()],
        "messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}],
        "description": CAPTION,
    }
    batch = TGADataCollator(processor, caption_column="description")([row])
    assert processor.tokenizer.decode(batch["teacher_input_ids"][0][batch["caption_mask"][0]]).strip() == CAPTION
    with pytest.raises(ValueError, match=r"rows \[0\] have no 'caption'.*caption_column.*guide_loss_weight=0"):
        TGADataCollator(processor)([row])
    plain = TGADataCollator(processor, return_guide_inputs=False)([row])  # no guide loss: no caption needed
    assert answer_text(processor, plain) == ANSWER + "<|end|>"
    with pytest.raises(ValueError, match=r"row 1 has no 'messages' although its dataset has that column"):
        TGADataCollator(processor)([{**row, "caption": CAPTION}, {**row, "messages": None, "caption": CAPTION}])
    with pytest.raises(ValueError, match=r"row 0: 'messages' must end with the assistant turn"):
        TGADataCollator(processor)([{**row, "messages": row["messages"][:1], "caption": CAPTION}])
    with pytest.raises(ValueError, match="row 0 has 2 images; TGA training takes one image per sample"):
        TGADataCollator(processor)(
            [
                {
                    "images": [red_image()],
                    "caption": CAPTION,
                    "messages": [
                        {"role": "user", "content": [{"type": "image"}, {"type": "image", "image": red_image()}]},
                        {"role": "assistant", "content": ANSWER},
                    ],
                }
            ]
        )
    typed = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": ANSWER},
    ]
    with pytest.raises(ValueError, match=r"row 0: Number of images provided \(2\) does not match"):
        TGADataCollator(processor)([{"images": [red_image(), red_image()], "messages": typed, "caption": CAPTION}])


def make_args(tmp_path, **overrides):
    return make_training_args(
        tmp_path, **{"max_steps": 2, "guide_layers": [1, 2], "train_projector_only": True, **overrides}
    )


def trl_rows(count: int = 4) -> Dataset:
    colours = {"red": RED, "blue": (30, 30, 220)}
    rows = []
    for index in range(count):
        name = list(colours)[index % 2]
        rows.append(
            {
                "images": [Image.new("RGB", (32, 32), colours[name])],
                "messages": [
                    {"role": "user", "content": QUESTION},
                    {"role": "assistant", "content": f"It is {name}."},
                ],
                "description": f"a {name} square",
            }
        )
    return Dataset.from_list(rows)


def test_trainer_trains_on_trl_rows_with_a_named_caption_column(tiny, tmp_path):
    model, processor = tiny
    rows = trl_rows()
    with pytest.raises(ValueError, match=r"no 'caption' column \(columns: \['description', 'images', 'messages'\]\)"):
        TGATrainer(model, args=make_args(tmp_path), train_dataset=rows, processing_class=processor)
    trainer = TGATrainer(
        model, args=make_args(tmp_path, caption_column="description"), train_dataset=rows, processing_class=processor
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert answer_text(processor, batch) in ("It is red.<|end|>", "It is blue.<|end|>")
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "guide_loss" in entry]
    assert len(logged) == 2 and all(math.isfinite(entry["guide_loss"]) for entry in logged)
    # Without the guide loss no caption is needed at all
    no_caption = rows.remove_columns("description")
    TGATrainer(
        model,
        args=make_args(tmp_path, guide_loss_weight=0.0, max_steps=1),
        train_dataset=no_caption,
        processing_class=processor,
    ).train()


def test_trainer_takes_rows_whose_image_is_inside_the_prompt(tiny, tmp_path):
    """No image/images column: TRL would tokenize such rows as text, the trainer leaves them to the collator."""
    model, processor = tiny
    rows = Dataset.from_list(
        [
            {
                "prompt": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "image": red_image()}, {"type": "text", "text": QUESTION}],
                    }
                ],
                "completion": [{"role": "assistant", "content": ANSWER}],
                "caption": CAPTION,
            }
        ]
        * 2
    )
    trainer = TGATrainer(model, args=make_args(tmp_path, max_steps=1), train_dataset=rows, processing_class=processor)
    trainer.train()
    assert any("guide_loss" in entry for entry in trainer.state.log_history)

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LlavaProcessor

from .conftest import chat_prompt, rebuilt_processor


def test_without_retrieved_text_output_equals_llava_processor(tiny, image):
    _, processor = tiny
    prompts = [chat_prompt(processor), chat_prompt(processor, "Describe the picture in detail.")]
    ours = processor(images=[image, image], text=prompts, padding=True, return_tensors="pt")
    theirs = rebuilt_processor(processor, LlavaProcessor)(
        images=[image, image], text=prompts, padding=True, return_tensors="pt"
    )
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_masks_are_opt_in_and_mark_image_tokens(tiny, image):
    model, processor = tiny
    plain = processor(images=image, text=chat_prompt(processor), retrieved_text="a red bicycle", return_tensors="pt")
    assert "retrieved_text_mask" not in plain and "offset_mapping" not in plain
    masked = processor(images=image, text=chat_prompt(processor), return_tga_masks=True, return_tensors="pt")
    assert torch.equal(masked["image_token_mask"], masked["input_ids"] == model.config.image_token_id)
    assert masked["image_token_mask"].sum() == model.config.image_seq_length


def test_prefix_goes_before_the_image_in_the_first_user_turn(tiny, image):
    _, processor = tiny
    inputs = processor(images=image, text=chat_prompt(processor), retrieved_text="a red bicycle", return_tensors="pt")
    text = processor.decode(inputs["input_ids"][0])
    assert text.startswith("<|user|>Retrieved Text: a red bicycle. <image>")


def test_teacher_input_puts_caption_in_place_of_image(tiny):
    _, processor = tiny
    teacher = processor(
        text=chat_prompt(processor),
        captions="a dog runs",
        retrieved_text="a cat sits",
        return_tga_masks=True,
        return_tensors="pt",
    )
    ids = teacher["input_ids"][0]
    assert processor.decode(ids) == "<|user|>Retrieved Text: a cat sits. a dog runs\nWhat is shown?<|end|><|assistant|>"
    assert processor.decode(ids[teacher["caption_mask"][0]]).strip() == "a dog runs"
    assert processor.decode(ids[teacher["retrieved_text_mask"][0]]).strip() == "a cat sits"
    assert not teacher["image_token_mask"].any()


def test_bad_retrieval_inputs_are_named(tiny, image):
    _, processor = tiny
    with pytest.raises(ValueError, match="retrieved_text has 2 entries for 1"):
        processor(images=image, text=chat_prompt(processor), retrieved_text=["a", "b"])
    with pytest.raises(ValueError, match="no '<image>' placeholder"):
        processor(text="no image here", retrieved_text="a")
    with pytest.raises(ValueError, match="either images or captions"):
        processor(images=image, text=chat_prompt(processor), captions="a dog")
    with pytest.raises(ValueError, match="no retriever attached"):
        processor.retrieve([image])


def test_attached_retriever_fills_the_prefix(tiny, image):
    _, base = tiny

    class FixedRetriever:
        def search(self, queries, k=1):
            return [[("a green field", 0.9), ("a blue sky", 0.5)][:k] for _ in queries]

    processor = rebuilt_processor(base, retrieval_top_k=2)
    processor.attach_retriever(FixedRetriever())
    inputs = processor(images=image, text=chat_prompt(processor), return_tga_masks=True, return_tensors="pt")
    ids = inputs["input_ids"][0]
    assert processor.decode(ids[inputs["retrieved_text_mask"][0]]).strip() == "a green field; a blue sky"


_words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(retrieved=_words.filter(lambda s: s.strip() and "<" not in s), instruction=_words.filter(lambda s: "<" not in s))
def test_masks_select_exactly_the_retrieved_and_image_tokens(tiny, image, retrieved, instruction):
    model, processor = tiny
    prompt = chat_prompt(processor, instruction)
    inputs = processor(
        images=image,
        text=prompt,
        retrieved_text=retrieved,
        return_tga_masks=True,
        return_offsets_mapping=True,
        return_tensors="pt",
    )
    offsets = inputs["offset_mapping"][0].tolist()
    text = processor.tokenizer.decode(inputs["input_ids"][0])  # byte-level BPE: decode is lossless
    start = text.index("Retrieved Text: ") + len("Retrieved Text: ")
    # Retrieved text is data: one line (whitespace collapsed), capped at max_retrieved_tokens
    placed = processor.clean_untrusted(retrieved)
    assert " ".join(retrieved.split()).startswith(placed)
    end = start + len(placed)
    assert text[start:end] == placed
    selected = [offsets[i] for i in inputs["retrieved_text_mask"][0].nonzero().flatten().tolist()]
    # every selected token overlaps r, and together they cover all of r
    assert all(token_start < end and token_end > start for token_start, token_end in selected)
    assert min(s for s, _ in selected) <= start and max(e for _, e in selected) >= end
    # tokens wholly inside r are all selected
    inside = [i for i, (s, e) in enumerate(offsets) if start <= s and e <= end and e > s]
    assert all(inputs["retrieved_text_mask"][0, i] for i in inside)
    assert torch.equal(inputs["image_token_mask"], inputs["input_ids"] == model.config.image_token_id)
    assert not (inputs["image_token_mask"] & inputs["retrieved_text_mask"]).any()

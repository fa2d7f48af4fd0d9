import pytest
import torch

from tga_hf.compose import calibrate_projector, image_features
from tga_hf.testing_utils import tiny_tga_llava


def _pixels(processor, count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    images = [(torch.rand(3, 40, 48, generator=generator) * 255).to(torch.uint8) for _ in range(count)]
    return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


def test_calibration_folds_the_standardisation_into_linear_1_and_matches_the_text_norm():
    model, processor = tiny_tga_llava(seed=3)
    projector = model.model.multi_modal_projector
    original_weight, original_bias = projector.linear_1.weight.clone(), projector.linear_1.bias.clone()
    keys = set(model.state_dict())
    pixels = _pixels(processor, 6)

    result = calibrate_projector(model, pixels)

    features = image_features(model, pixels).flatten(0, 1)
    standardised = (features - features.mean(0)) / features.std(0)
    expected = standardised @ original_weight.T + original_bias
    torch.testing.assert_close(projector.linear_1(features), expected, rtol=1e-4, atol=1e-4)
    text_norm = model.get_input_embeddings().weight.norm(dim=-1).mean().item()
    assert result["text_token_norm"] == pytest.approx(text_norm)
    assert projector(features).norm(dim=-1).mean().item() == pytest.approx(text_norm, rel=1e-4)
    assert result["image_token_norm_after"] == pytest.approx(text_norm, rel=1e-4)
    assert result["image_token_norm_before"] != pytest.approx(text_norm, rel=0.05)
    assert set(model.state_dict()) == keys  # still stock LLaVA keys


def test_calibrated_model_still_runs_and_rejects_a_single_image():
    model, processor = tiny_tga_llava(seed=4)
    calibrate_projector(model, _pixels(processor, 4))
    prompt = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat is shown?"}], tokenize=False, add_generation_prompt=True
    )
    image = (torch.rand(3, 40, 48) * 255).to(torch.uint8)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    assert torch.isfinite(model(**inputs).logits).all()
    with pytest.raises(ValueError, match="at least 2 images"):
        calibrate_projector(model, _pixels(processor, 1))


def test_patch_texts_name_the_characters_under_each_grid_patch():
    from tga_hf.compose import patch_texts
    from tga_hf.data.render_grid import render_grid_layout

    texts = patch_texts(render_grid_layout("How can someone bake bread?"), image_size=160, patch_size=16)
    assert len(texts) == 100
    assert texts[:10] == ["Ho", "w", " ca", "n", " so", "me", "on", "e", " ba", "ke"]  # "How can someone bake"
    assert texts[10:14] == [" br", "ea", "d?", ""]  # a wrapped line's first word keeps its word-start space
    assert all(text == "" for text in texts[20:])
    rendered = render_grid_layout("Steps to manufacture bread at home.", style="figstep")
    assert "".join(patch_texts(rendered, 160, 16)) == rendered.body.replace("\n", " ")


def test_align_projector_to_text_moves_image_tokens_onto_the_text_embeddings():
    from tga_hf.compose import align_projector_to_text, patch_texts
    from tga_hf.data.render_grid import render_grid_layout

    model, processor = tiny_tga_llava(seed=5)
    size, patch = model.config.vision_config.image_size, model.config.vision_config.patch_size
    renders = [render_grid_layout(text, size=size) for text in ("red sun", "blue car", "old tree", "a cat")]
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    result = align_projector_to_text(model, processor, renders, steps=200, batch_size=64, learning_rate=1e-2)
    assert result["patches"] == len(renders) * (size // patch) ** 2
    assert result["loss_after"] < 0.5 * result["loss_before"]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, keys[k])}
    assert changed and all(k.startswith("model.multi_modal_projector.") for k in changed)
    # the first text patch of "red sun" now sits nearer the embedding of its text than that of a blank patch
    pixels = processor.image_processor(images=[renders[0].image], return_tensors="pt")["pixel_values"]
    tokens = model.model.multi_modal_projector(image_features(model, pixels))[0]
    table = model.get_input_embeddings().weight

    def embedding(text):
        return table[processor.tokenizer(text, add_special_tokens=False)["input_ids"]].mean(0)

    index, text = next((i, t) for i, t in enumerate(patch_texts(renders[0], size, patch)) if t)
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(tokens[index], embedding(text), dim=0) > cosine(tokens[index], embedding(" "), dim=0)
    with pytest.raises(ValueError, match="at least one render"):
        align_projector_to_text(model, processor, [])

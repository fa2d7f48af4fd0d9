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

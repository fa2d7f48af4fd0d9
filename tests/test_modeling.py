import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

from tga_hf import TGALlavaConfig, TGALlavaForConditionalGeneration
from tga_hf.testing_utils import tiny_tga_llava

from .conftest import chat_prompt

# Smaller than tga_hf.testing_utils.tiny_tga_llava, built by hand where a test needs its own vision tower or LLM family.
MICRO_LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
MICRO_TOWER = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
)

REMOTE_FILES = ("configuration_tga_llava.py", "modeling_tga_llava.py", "processing_tga_llava.py")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny model + processor, the inputs used and the in-memory logits."""
    import numpy as np
    from PIL import Image

    model, processor = tiny_tga_llava(seed=1, guide_layers=[2, 3])
    folder = tmp_path_factory.mktemp("saved") / "tiny-tga"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    inputs = processor(images=image, text=chat_prompt(processor), return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.save({"inputs": dict(inputs), "logits": logits}, folder.parent / "expected.pt")
    return folder, model, inputs, logits


def _run_fresh(code: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that never imports tga_hf (asserted inside)."""
    env = {**os.environ, **env_extra, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    script = textwrap.dedent(code) + "\nassert 'tga_hf' not in sys.modules, 'tga_hf was imported'\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd="/")


LOAD_AND_COMPARE = """
import sys, torch
from transformers import AutoModelForImageTextToText, AutoProcessor
expected = torch.load(sys.argv[1] if len(sys.argv) > 1 else {expected!r})
model = AutoModelForImageTextToText.from_pretrained({source!r}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained({source!r}, trust_remote_code=True)
assert type(model).__name__ == "TGALlavaForConditionalGeneration", type(model)
assert type(processor).__name__ == "TGALlavaProcessor", type(processor)
with torch.no_grad():
    logits = model(**expected["inputs"]).logits
assert torch.equal(logits, expected["logits"]), (logits - expected["logits"]).abs().max()
print("OK")
"""


def test_save_writes_auto_map_and_remote_code(saved):
    folder, *_ = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "tga_llava"
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_tga_llava.TGALlavaProcessor"
    for name in REMOTE_FILES:
        assert (folder / name).is_file(), name
    assert (folder / "model.safetensors").is_file()


def test_remote_code_round_trip_in_fresh_process(saved):
    folder, *_ = saved
    code = LOAD_AND_COMPARE.format(expected=str(folder.parent / "expected.pt"), source=str(folder))
    result = _run_fresh(code, {})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_loads_by_repo_id_from_hub_cache_snapshot(saved, tmp_path):
    folder, *_ = saved
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tga-org--tiny-tga"
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    code = LOAD_AND_COMPARE.format(expected=str(folder.parent / "expected.pt"), source="tga-org/tiny-tga")
    result = _run_fresh(code, {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_stock_llava_loads_the_same_weights(saved):
    folder, _, inputs, logits = saved
    stock = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    assert type(stock) is LlavaForConditionalGeneration
    with torch.no_grad():
        assert torch.equal(stock(**inputs).logits, logits)


def test_state_dict_keys_match_stock_llava(tiny):
    model, _ = tiny
    stock = LlavaForConditionalGeneration(model.config)
    assert set(model.state_dict()) == set(stock.state_dict())


def test_in_process_auto_class_gives_tga_model(saved):
    folder, _, inputs, logits = saved
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert isinstance(model, TGALlavaForConditionalGeneration)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, logits)


def test_logit_lens_last_layer_equals_logits_and_middle_layers_use_final_norm(tiny, image):
    model, processor = tiny
    inputs = processor(images=image, text=chat_prompt(processor), return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
        last = model.num_text_layers
        lens = model.logit_lens(outputs.hidden_states, [2, last])
        torch.testing.assert_close(lens[last], outputs.logits)
        norm = model.model.language_model.norm
        torch.testing.assert_close(lens[2], model.lm_head(norm(outputs.hidden_states[2])))
    with pytest.raises(ValueError, match="outside"):
        model.logit_lens(outputs.hidden_states, [last + 1])


def test_selected_hidden_states_and_guide_pass_match_full_forward(tiny, image):
    model, processor = tiny
    inputs = processor(images=image, text=chat_prompt(processor), return_tensors="pt")
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True)
        selected = model(**inputs, output_hidden_states=[2, 3])
        guide = model.guide_hidden_states([2, 3], **inputs)
    assert selected.hidden_states[1] is None and selected.hidden_states[4] is None
    for layer in (2, 3):
        torch.testing.assert_close(selected.hidden_states[layer], full.hidden_states[layer])
        torch.testing.assert_close(guide[layer], full.hidden_states[layer])
    with pytest.raises(ValueError, match="within"):
        model.guide_hidden_states([0, 2], **inputs)


@pytest.mark.parametrize("layers", [[2], [4], [2, 4], [3]])
def test_guide_layers_without_the_vision_feature_index_still_feed_the_projector(tiny, image, layers):
    """The tiny tower has 2 layers and vision_feature_layer=-2 (its hidden-state index 1). An LLM selection that does
    not contain 1 must neither reach the tower (transformers 5.24 applies it there: NoneType crash in
    get_image_features) nor change the result; the hook capture, and the teacher pass up to L (normed), agree with
    the full forward."""
    model, processor = tiny
    assert model.config.vision_feature_layer == -2 and model.config.vision_config.num_hidden_layers == 2
    inputs = processor(images=image, text=chat_prompt(processor), return_tensors="pt")
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True)
        selected = model(**inputs, output_hidden_states=layers)
        with model.capture_hidden_states(layers) as captured:
            hooked = model(**inputs)
        guide = model.guide_hidden_states(layers, **inputs)
    torch.testing.assert_close(selected.logits, full.logits)
    torch.testing.assert_close(hooked.logits, full.logits)
    assert sorted(captured) == sorted(guide) == sorted(layers)
    for layer in layers:
        torch.testing.assert_close(selected.hidden_states[layer], full.hidden_states[layer])
        torch.testing.assert_close(captured[layer], full.hidden_states[layer])
        torch.testing.assert_close(guide[layer], full.hidden_states[layer])


def test_capture_hidden_states_keeps_the_graph_and_removes_its_hooks(tiny, image):
    model, processor = tiny
    inputs = processor(images=image, text=chat_prompt(processor), return_tensors="pt")
    decoder_layers = model.model.language_model.layers
    hooks_before = [len(layer._forward_hooks) for layer in decoder_layers]
    with model.capture_hidden_states([2]) as captured:
        model(**inputs)
        first = captured[2]
        model(**inputs)  # a later forward (a recompute, a generation) does not overwrite what the loss used
    assert captured[2] is first and first.requires_grad
    assert [len(layer._forward_hooks) for layer in decoder_layers] == hooks_before
    with pytest.raises(ValueError, match="within"):
        with model.capture_hidden_states([5]):
            pass


def test_masked_mean_ignores_masked_positions_and_empty_rows():
    hidden = torch.arange(24, dtype=torch.bfloat16).reshape(2, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    pooled = TGALlavaForConditionalGeneration.masked_mean(hidden, mask)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled[0], hidden[0, [0, 2]].float().mean(0))
    torch.testing.assert_close(pooled[1], torch.zeros(4))
    with pytest.raises(ValueError, match="does not match"):
        TGALlavaForConditionalGeneration.masked_mean(hidden, mask[:, :2])


def test_guide_layer_out_of_range_is_refused(tiny):
    model, _ = tiny
    config = model.config.to_dict()
    config["guide_layers"] = [0, 2]
    with pytest.raises(Exception, match=r"outside 1\.\.4"):
        TGALlavaConfig.from_dict(config)
    config["guide_layers"] = [2, 5]
    with pytest.raises(Exception, match=r"outside 1\.\.4"):
        TGALlavaConfig.from_dict(config)


def test_auto_guide_layers_use_band_then_paper_fraction(tiny):
    config = tiny[0].config.to_dict()
    config["guide_layers"] = "auto"
    assert TGALlavaConfig.from_dict(config).resolved_guide_layers() == [1, 2]  # 10/32 and 18/32 of 4 layers
    config["safety_layer_band"] = [2, 4]
    assert TGALlavaConfig.from_dict(config).resolved_guide_layers() == [2, 3, 4]


def test_config_that_does_not_match_weights_is_refused(saved, tmp_path):
    folder, *_ = saved
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    config = json.loads((broken / "config.json").read_text())
    config["text_config"]["hidden_size"] = 96
    config["text_config"]["head_dim"] = 24
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match=r"(?i)size mismatch|shape|mismatch"):
        AutoModelForImageTextToText.from_pretrained(broken)


def test_image_count_must_match_image_tokens(tiny, image):
    model, processor = tiny
    prompt = chat_prompt(processor)
    with pytest.raises(ValueError, match="number of images"):
        processor(images=[image, image], text=prompt, return_tensors="pt")
    inputs = processor(images=[image, image], text=prompt.replace("<image>", "<image><image>"), return_tensors="pt")
    with pytest.raises(Exception, match="Image features and image tokens do not match"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:1])


def test_compose_adds_image_token_and_keeps_chat_template():
    from tga_hf.modeling import typed_content_chat_template
    from tga_hf.testing_utils import tiny_tokenizer

    model, processor = tiny_tga_llava(seed=5)
    tokenizer = tiny_tokenizer()
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id == len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) + 1
    assert model.lm_head.weight.shape[0] == len(tokenizer) + 1
    # The LLM's own template, kept whole under the typed-content prelude (images and text items in messages)
    assert processor.chat_template == typed_content_chat_template(tokenizer.chat_template, "<image>")
    assert processor.chat_template.endswith(tokenizer.chat_template)
    assert processor.tokenizer.chat_template == tokenizer.chat_template


def test_compose_keeps_text_only_behaviour_of_the_language_model():
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

    from tga_hf import compose
    from tga_hf.testing_utils import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    language_model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), **MICRO_LM)).eval()
    vision = CLIPVisionModel(CLIPVisionConfig(**MICRO_TOWER))
    ids = tokenizer("the cat sits on the mat", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = language_model(ids).logits
    model, processor = compose(vision, language_model, tokenizer, CLIPImageProcessorPil(), guide_layers=[1])
    with torch.no_grad():
        logits = model.eval()(input_ids=ids).logits
    torch.testing.assert_close(logits[..., : expected.shape[-1]], expected)
    assert model.config.image_seq_length == 4
    assert processor.num_additional_image_tokens == 1 and processor.vision_feature_select_strategy == "default"


def test_remote_code_imports_only_torch_transformers_stdlib_and_siblings(saved):
    import ast

    folder, *_ = saved
    allowed = {"torch", "transformers", "collections", "typing", "huggingface_hub", "dataclasses", "os", "re", "math"}
    for name in REMOTE_FILES:
        tree = ast.parse(Path(folder, name).read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = set() if node.level else {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, (name, roots)


def test_compose_takes_the_encoder_of_a_tower_with_projection():
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from tga_hf import compose
    from tga_hf.testing_utils import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tower = CLIPVisionModelWithProjection(CLIPVisionConfig(**MICRO_TOWER, projection_dim=8))
    language_model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **MICRO_LM))
    model, _ = compose(tower, language_model, tokenizer, CLIPImageProcessorPil())
    for key, value in model.model.vision_tower.state_dict().items():
        assert torch.equal(value, tower.vision_model.state_dict()[key]), key
    with pytest.raises(TypeError, match="vision_model must be a transformers PreTrainedModel"):
        compose(torch.nn.Linear(2, 2), language_model, tokenizer, CLIPImageProcessorPil())

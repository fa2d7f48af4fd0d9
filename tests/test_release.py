"""Releases: a folder of trained parts that rebuilds the model offline. Round trips give identical logits (with and
without a LoRA adapter); a different base, damaged trained weights and foreign folders are refused; the full model a
release materialises loads with transformers alone.

The "base" is a tiny LLM checkpoint and a tiny tower saved to disk; `tga_hf.weights.converted_checkpoint` is patched
to return the tiny LLM's folder, so the release records, rebuilds and verifies it as it would the offline SmolLM2
(the real one: `test_smollm2_release_round_trip`, marked slow)."""

import copy
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData
from peft import get_peft_model, inject_adapter_in_model
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    CLIPVisionModelWithProjection,
)

import tga_hf
from tga_hf import cli, weights
from tga_hf.compose import compose
from tga_hf.fileio import MANIFEST, NotOurOutputError, safetensors_sha256, write_manifest
from tga_hf.hub import (
    BaseMismatchError,
    ReleaseVerificationError,
    load_release,
    read_release,
    save_release,
    update_release_card,
)
from tga_hf.hub import loading as hub_loading
from tga_hf.hub.loading import IncompleteWeightsError
from tga_hf.hub.release import ADAPTER_WEIGHTS_FILE, PROJECTOR_FILE, RELEASE_FILE, RELEASE_KIND
from tga_hf.testing_utils import tiny_image_processor, tiny_text_config, tiny_tokenizer, tiny_vision_config
from tga_hf.training import tga_lora_config
from tga_hf.vision_tower.model import load_lit_tower

from .conftest import chat_prompt
from .hub_testing import REPORT, TEXTS, StandInRetriever, python_blocks, white_image

LLM = "tiny-test"


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny LLM checkpoint (model + tokenizer, as `converted_checkpoint` leaves one) and a tiny tower folder (a
    `CLIPVisionModelWithProjection` + image processor, as the packaged LiT tower)."""
    root = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    AutoModelForCausalLM.from_config(tiny_text_config(tokenizer)).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    CLIPVisionModelWithProjection(tiny_vision_config(projection_dim=16)).save_pretrained(root / "tower")
    tiny_image_processor().save_pretrained(root / "tower")
    return root


@pytest.fixture
def base(tiny_base, monkeypatch):
    """`tiny-test` is an offline LLM whose converted checkpoint is the tiny one; returns the base folder."""
    spec = weights.LLMSpec(name="Tiny-Test-LM", gguf_name="tiny.gguf", size=1, sha256="0" * 64, hub_id="tiny/lm")
    monkeypatch.setitem(weights.LLMS, LLM, spec)
    monkeypatch.setattr(weights, "converted_checkpoint", lambda name, dtype=torch.bfloat16, **_: tiny_base / "llm")
    return tiny_base


def trained_model(base: Path, adapter: str | None = None, seed: int = 1):
    """Compose the base as the experiment does, then stand in for training: a changed projector and, with an adapter
    ("peft": a `PeftModel`; "injected": LoRA layers injected into the model), non-zero LoRA weights and a projector
    copy in modules_to_save that differs from the original. The rows `compose` added for `<image>` are moved off
    their mean start too (as a mean computed on another device can be): the release must store them, not recompute."""
    tower, image_processor = load_lit_tower(base / "tower")
    llm = AutoModelForCausalLM.from_pretrained(base / "llm")
    tokenizer = AutoTokenizer.from_pretrained(base / "llm")
    vocab = llm.config.vocab_size
    model, processor = compose(tower, llm, tokenizer, image_processor, guide_layers=[2, 3], guide_loss_weight=0.5)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.model.multi_modal_projector.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
        for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            matrix[vocab:] += torch.randn(matrix[vocab:].shape, generator=generator) * 0.2
    if adapter == "peft":
        model = get_peft_model(model, tga_lora_config(r=4))
    elif adapter == "injected":
        model = inject_adapter_in_model(tga_lora_config(r=4), model)
    if adapter:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name or "modules_to_save" in name:
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval(), processor


def logits(model, processor, **inputs) -> torch.Tensor:
    batch = processor(images=white_image(), text=chat_prompt(processor), return_tensors="pt", **inputs)
    with torch.no_grad():
        return model(**batch).logits


def rewrite(folder: Path, name: str, tensors: dict) -> None:
    """Replace a trained-weights file and rewrite the manifest: a release that is consistent but holds bad weights
    (as a buggy writer would leave it), so that the loader's own checks are what refuses it."""
    save_file(tensors, folder / name, metadata={"format": "pt"})
    write_manifest(folder, RELEASE_KIND, checksums=True)


def test_round_trip_without_adapter_gives_identical_logits(base, tmp_path):
    model, processor = trained_model(base)
    out = save_release(model, processor, tmp_path / "release" / "tga", llm=LLM, tower=base / "tower", report=REPORT)
    files = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    assert files == {
        RELEASE_FILE,
        "README.md",
        ".eval_results/tga_safety.yaml",
        "config.json",
        "generation_config.json",
        PROJECTOR_FILE,
        "added_embeddings.safetensors",
        "processor_config.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "eval_report.json",
        MANIFEST,
    }
    record = read_release(out)
    assert record["llm"]["name"] == LLM and record["llm"]["dtype"] == "float32"
    assert record["llm"]["weights_sha256"] == safetensors_sha256([base / "llm" / "model.safetensors"])
    assert record["vision_tower"] == {
        "location": str(base / "tower"),
        "weights_sha256": safetensors_sha256([base / "tower" / "model.safetensors"]),
    }
    assert record["trained"]["adapter"] is None and record["retrieval"] is None
    # nothing of the base is in the folder: the projector and the <image> rows only
    projector = load_file(out / PROJECTOR_FILE)
    assert sorted(projector) == [
        f"model.multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("bias", "weight")
    ]
    assert torch.equal(
        projector["model.multi_modal_projector.linear_2.weight"], model.model.multi_modal_projector.linear_2.weight
    )

    loaded, loaded_processor = load_release(out)
    assert type(loaded) is tga_hf.TGALlavaForConditionalGeneration and not loaded.training
    assert loaded.config.guide_layers == [2, 3] and loaded.config.guide_loss_weight == 0.5
    assert torch.equal(logits(loaded, loaded_processor), logits(model, processor))
    assert loaded_processor.tokenizer.convert_tokens_to_ids("<image>") == loaded.config.image_token_index
    # tga_hf.from_pretrained dispatches on release.json
    again, again_processor = tga_hf.from_pretrained(out)
    assert torch.equal(logits(again, again_processor), logits(model, processor))
    # and so does every command's loader
    command_model, command_processor, multimodal = hub_loading.load_model(out)
    assert multimodal and torch.equal(logits(command_model, command_processor), logits(model, processor))
    assert hub_loading.load_model(out, dtype=torch.bfloat16)[0].dtype == torch.bfloat16
    assert tga_hf.from_pretrained(out, dtype="bfloat16")[0].dtype == torch.bfloat16


@pytest.mark.parametrize("adapter", ["peft", "injected"])
def test_round_trip_with_a_lora_adapter_gives_identical_logits(base, tmp_path, adapter):
    model, processor = trained_model(base, adapter)
    out = save_release(model, processor, tmp_path / "tga", llm=LLM, tower=base / "tower")
    record = read_release(out)
    assert record["trained"]["adapter"]["peft_type"] == "LORA"
    assert record["trained"]["adapter"]["modules_to_save"] == ["multi_modal_projector"]
    assert (out / "adapter_config.json").is_file() and (out / ADAPTER_WEIGHTS_FILE).is_file()
    assert all("lora_" in key or "multi_modal_projector" in key for key in load_file(out / ADAPTER_WEIGHTS_FILE))

    # default: merged, as the experiment merges before evaluating (merge_and_unload): the same merged weights
    loaded, loaded_processor = load_release(out)
    assert type(loaded) is tga_hf.TGALlavaForConditionalGeneration
    reference = logits(model, processor)
    assert not torch.equal(reference, logits(trained_model(base)[0], processor)), "the adapter must change the logits"
    torch.testing.assert_close(logits(loaded, loaded_processor), reference)
    if adapter == "peft":
        merged_in_memory = copy.deepcopy(model).merge_and_unload()
        assert torch.equal(logits(loaded, loaded_processor), logits(merged_in_memory, processor))

    # kept as a PeftModel: the very forward of the model that was saved
    unmerged, unmerged_processor = load_release(out, merge_adapter=False)
    assert type(unmerged).__name__ == "PeftModel"
    assert torch.equal(logits(unmerged, unmerged_processor), reference)


def test_a_different_base_raises_base_mismatch_naming_the_part_and_both_digests(base, tmp_path, monkeypatch):
    model, processor = trained_model(base)
    out = save_release(model, processor, tmp_path / "tga", llm=LLM, tower=base / "tower")
    recorded = read_release(out)

    # another LLM checkpoint under the same name (one weight changed)
    other = tmp_path / "other-llm"
    llm = AutoModelForCausalLM.from_pretrained(base / "llm")
    with torch.no_grad():
        llm.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    llm.save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    monkeypatch.setattr(weights, "converted_checkpoint", lambda name, dtype=torch.bfloat16, **_: other)
    actual = safetensors_sha256([other / "model.safetensors"])
    with pytest.raises(BaseMismatchError, match="base LLM tiny-test") as caught:
        load_release(out)
    assert recorded["llm"]["weights_sha256"] in str(caught.value) and actual in str(caught.value)
    assert (caught.value.part, caught.value.recorded, caught.value.actual) == (
        "base LLM tiny-test",
        recorded["llm"]["weights_sha256"],
        actual,
    )
    monkeypatch.setattr(weights, "converted_checkpoint", lambda name, dtype=torch.bfloat16, **_: base / "llm")

    # another tower
    tower = CLIPVisionModelWithProjection(tiny_vision_config(projection_dim=16))
    tower.save_pretrained(tmp_path / "other-tower")
    tiny_image_processor().save_pretrained(tmp_path / "other-tower")
    with pytest.raises(BaseMismatchError, match="vision tower") as caught:
        load_release(out, tower=tmp_path / "other-tower")
    assert recorded["vision_tower"]["weights_sha256"] in str(caught.value)

    # another vocabulary under the same LLM (its <image> token lands elsewhere)
    record = json.loads((out / RELEASE_FILE).read_text())
    record["tokenizer"]["vocab_sha256"] = "e" * 64
    (out / RELEASE_FILE).write_text(json.dumps(record))
    write_manifest(out, RELEASE_KIND, checksums=True)
    with pytest.raises(BaseMismatchError, match=f"tokenizer vocabulary .* records sha256 {'e' * 64}"):
        load_release(out)

    # a recorded digest that was tampered with: the manifest notices the edit ...
    record["tokenizer"] = recorded["tokenizer"]
    record["llm"]["weights_sha256"] = "f" * 64
    (out / RELEASE_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="release.json does not match its size / sha256"):
        load_release(out)
    # ... and with the manifest rewritten too, the base no longer matches
    write_manifest(out, RELEASE_KIND, checksums=True)
    with pytest.raises(BaseMismatchError, match="f" * 64):
        load_release(out)


@pytest.mark.parametrize("damage", ["nan", "missing"])
def test_missing_or_non_finite_trained_weights_are_refused_naming_file_and_key(base, tmp_path, damage):
    model, processor = trained_model(base, "peft")
    out = save_release(model, processor, tmp_path / "tga", llm=LLM, tower=base / "tower")
    key = "model.multi_modal_projector.linear_1.weight"
    projector = load_file(out / PROJECTOR_FILE)
    if damage == "nan":
        projector[key] = torch.full_like(projector[key], float("nan"))
    else:
        del projector[key]
    rewrite(out, PROJECTOR_FILE, projector)
    message = "holds NaN or infinite values" if damage == "nan" else "is missing"
    with pytest.raises(IncompleteWeightsError, match=f"{PROJECTOR_FILE}: weight {key} {message}"):
        load_release(out)

    # the adapter, checked the same way
    out = save_release(model, processor, tmp_path / "tga", llm=LLM, tower=base / "tower", overwrite=True)
    adapter = load_file(out / ADAPTER_WEIGHTS_FILE)
    key = next(name for name in sorted(adapter) if "lora_B" in name)
    if damage == "nan":
        adapter[key] = torch.full_like(adapter[key], float("inf"))
    else:
        del adapter[key]
    rewrite(out, ADAPTER_WEIGHTS_FILE, adapter)
    message = "holds NaN or infinite values" if damage == "nan" else r"is missing \(1 missing\)"
    with pytest.raises(IncompleteWeightsError, match=f"{ADAPTER_WEIGHTS_FILE}: (adapter )?weight {key} {message}"):
        load_release(out)


def test_a_model_with_nan_weights_is_not_released(base, tmp_path):
    model, processor = trained_model(base)
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.bias[3] = float("nan")
    with pytest.raises(IncompleteWeightsError, match="multi_modal_projector.linear_2.bias holds NaN"):
        save_release(model, processor, tmp_path / "tga", llm=LLM, tower=base / "tower")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_an_earlier_release(base, tmp_path):
    model, processor = trained_model(base)
    out = tmp_path / "tga"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_release(model, processor, out, llm=LLM, tower=base / "tower")
    with pytest.raises(NotOurOutputError, match=f"refusing to replace {out}: it is not a folder written by tga-hf"):
        save_release(model, processor, out, llm=LLM, tower=base / "tower", overwrite=True)
    assert [path.name for path in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    save_release(model, processor, out, llm=LLM, tower=base / "tower", overwrite=True)  # empty: nothing to lose
    save_release(model, processor, out, llm=LLM, tower=base / "tower", overwrite=True)  # an earlier release
    (out / "notes.txt").write_text("added later")
    with pytest.raises(NotOurOutputError, match="notes.txt"):
        save_release(model, processor, out, llm=LLM, tower=base / "tower", overwrite=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tga"]


def test_a_model_the_release_would_not_reproduce_is_refused(base, tmp_path):
    model, processor = trained_model(base, "peft")
    merged = copy.deepcopy(model).merge_and_unload()
    with pytest.raises(ReleaseVerificationError, match="merge_and_unload"):
        save_release(merged, processor, tmp_path / "merged", llm=LLM, tower=base / "tower")
    other_tower = CLIPVisionModelWithProjection(tiny_vision_config(projection_dim=16))
    other_tower.save_pretrained(tmp_path / "other-tower")
    tiny_image_processor().save_pretrained(tmp_path / "other-tower")
    with pytest.raises(ReleaseVerificationError, match="vision tower is not the recorded one"):
        save_release(model, processor, tmp_path / "tower", llm=LLM, tower=tmp_path / "other-tower")
    with pytest.raises(ValueError, match="unknown LLM 'nope'"):
        save_release(model, processor, tmp_path / "llm", llm="nope", tower=base / "tower")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other-tower"]


def test_the_retrieval_index_is_shipped_and_attached(base, tmp_path):
    model, processor = trained_model(base)
    processor.attach_retriever(StandInRetriever(TEXTS))
    out = save_release(model, processor, tmp_path / "tga", llm=LLM, tower=base / "tower")
    assert read_release(out)["retrieval"] == {"folder": "retrieval", "encoder": "saved"}
    assert json.loads((out / "retrieval" / "texts.json").read_text()) == TEXTS
    loaded, loaded_processor = tga_hf.from_pretrained(out, retriever_loader=StandInRetriever.load)
    assert loaded_processor.retriever.texts == TEXTS
    expected = StandInRetriever(TEXTS).search([white_image()])[0][0][0]
    assert torch.equal(logits(loaded, loaded_processor), logits(model, processor, retrieved_text=expected))
    _, without = load_release(out, attach_retriever=False)
    assert without.retriever is None


def test_cli_export_release_writes_a_folder_transformers_loads(base, tmp_path, monkeypatch, capsys):
    model, processor = trained_model(base, "peft")
    processor.attach_retriever(StandInRetriever(TEXTS))
    release = save_release(
        model, processor, tmp_path / "tga", llm=LLM, tower=base / "tower", report=REPORT, license="mit"
    )
    monkeypatch.setattr(hub_loading, "load_retriever", lambda path, encoder=None: StandInRetriever.load(path))
    monkeypatch.setattr("tga_hf.hub.release.load_retriever", lambda path, encoder=None: StandInRetriever.load(path))
    out = tmp_path / "tga-full"
    assert cli.main(["export", "--release", str(release), "--out", str(out), "--repo-id", "me/tga"]) == 0
    assert capsys.readouterr().out.strip() == f"exported {out} (the full model of the release {release})"
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_tga_llava.TGALlavaForConditionalGeneration"
    assert json.loads((out / "retrieval" / "texts.json").read_text()) == TEXTS
    card = (out / "README.md").read_text()
    assert "license: mit" in card and "- tiny/lm" in card and 'repo_id = "me/tga"' in card
    assert (out / ".eval_results" / "tga_safety.yaml").is_file()

    full = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    merged = copy.deepcopy(model).merge_and_unload()
    assert torch.equal(logits(full, processor, retrieved_text="x"), logits(merged, processor, retrieved_text="x"))
    with pytest.raises(SystemExit):
        cli.main(["export", "--release", str(release), "--model", str(release), "--out", str(tmp_path / "x")])
    assert "not allowed with argument" in capsys.readouterr().err


def test_release_card(base, tmp_path, monkeypatch):
    model, processor = trained_model(base)
    monkeypatch.chdir(tmp_path)
    out = save_release(
        model, processor, "results/run/release/baseline", llm=LLM, tower=base / "tower", report=REPORT, arm="baseline"
    )
    text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md", ignore_metadata_errors=False)
    assert isinstance(card.data, ModelCardData)
    assert card.data.base_model == ["tiny/lm"] and card.data.library_name == "tga-hf"
    # the baseline arm's own result is the report's baseline_image, not TGA's
    results = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert results == {"dsr_image": REPORT["dsr"]["baseline_image"]}
    assert "tga-hf export --release results/run/release/baseline --out baseline-full" in text
    assert "Tiny-Test-LM" in text and "BaseMismatchError" in text
    release_code, full_code = python_blocks(text)
    assert 'from_pretrained("results/run/release/baseline")' in release_code
    assert "AutoModelForImageTextToText.from_pretrained(repo_id, trust_remote_code=True)" in full_code
    namespace: dict = {}
    exec(compile(release_code, "README.md release snippet", "exec"), namespace)  # runs as written
    assert (
        isinstance(namespace["answer"], str)
        and namespace["output"].shape[1] > namespace["inputs"]["input_ids"].shape[1]
    )

    # a release saved before its report exists gets the numbers later
    bare = save_release(model, processor, "results/run/release/tga", llm=LLM, tower=base / "tower")
    assert "No evaluation report" in (bare / "README.md").read_text()
    update_release_card(bare, REPORT)
    card = ModelCard.load(bare / "README.md")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["dsr_image"] == REPORT["dsr"]["tga_image"]
    assert read_release(bare)["report"] == "eval_report.json"
    loaded, loaded_processor = load_release(bare)  # the manifest was rewritten with the card
    assert torch.equal(logits(loaded, loaded_processor), logits(model, processor))


def test_safetensors_digest_is_of_the_tensors_not_the_file(tmp_path):
    tensors = {"b": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "a": torch.ones(4)}
    save_file(tensors, tmp_path / "one.safetensors")
    save_file(dict(reversed(tensors.items())), tmp_path / "two.safetensors", metadata={"format": "pt", "x": "y"})
    save_file({"a": tensors["a"]}, tmp_path / "shard-a.safetensors")
    save_file({"b": tensors["b"]}, tmp_path / "shard-b.safetensors")
    digest = safetensors_sha256([tmp_path / "one.safetensors"])
    assert (tmp_path / "one.safetensors").read_bytes() != (tmp_path / "two.safetensors").read_bytes()
    assert safetensors_sha256([tmp_path / "two.safetensors"]) == digest
    assert safetensors_sha256([tmp_path / "shard-b.safetensors", tmp_path / "shard-a.safetensors"]) == digest
    for changed in (
        {**tensors, "a": torch.ones(4) * 2},
        {**tensors, "a": torch.ones(2, 2)},
        {"c": tensors["a"], "b": tensors["b"]},
    ):
        save_file(changed, tmp_path / "changed.safetensors")
        assert safetensors_sha256([tmp_path / "changed.safetensors"]) != digest
    with pytest.raises(ValueError, match="tensor a is stored twice"):
        safetensors_sha256([tmp_path / "one.safetensors", tmp_path / "shard-a.safetensors"])


@pytest.mark.slow
def test_smollm2_release_round_trip(tmp_path):
    """The real offline SmolLM2 (bf16) and the packaged LiT tower, a LoRA adapter, a real retriever over the offline
    MiniLM joined with the tower (recorded as packaged, not bundled): the release is megabytes and rebuilds the
    model exactly."""
    from tga_hf.retrieval import TextRetriever, joint_encoder
    from tga_hf.vision_tower.model import packaged_tower_path

    llm, tokenizer = weights.load_llm("smollm2-135m")
    tower, image_processor = load_lit_tower()
    model, processor = compose(tower, llm, tokenizer, image_processor, guide_layers=[10, 14])
    generator = torch.Generator().manual_seed(0)
    model = get_peft_model(model, tga_lora_config(r=8))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_((torch.randn(parameter.shape, generator=generator) * 0.02).to(parameter.dtype))
    encoder = joint_encoder(weights.load_text_encoder(), packaged_tower_path())
    processor.attach_retriever(TextRetriever.build(TEXTS, encoder, show_progress=False))
    out = save_release(model.eval(), processor, tmp_path / "tga", llm="smollm2-135m", report=REPORT)
    record = read_release(out)
    assert record["llm"]["dtype"] == "bfloat16" and record["vision_tower"]["location"] == "packaged"
    assert record["retrieval"]["encoder"] == "packaged" and not (out / "retrieval" / "encoder").exists()
    assert sum(path.stat().st_size for path in out.rglob("*") if path.is_file()) < 30_000_000

    loaded, loaded_processor = tga_hf.from_pretrained(out, merge_adapter=False)
    image = white_image(160)
    expected = processor.retrieve([image])[0]
    assert loaded_processor.retrieve([image]) == [expected]
    batch = loaded_processor(images=image, text=chat_prompt(loaded_processor), return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)

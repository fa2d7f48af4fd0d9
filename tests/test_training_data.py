import argparse
import json
from pathlib import Path

import pytest
from datasets import Dataset
from PIL import Image

from tga_hf.cli import main
from tga_hf.data import from_hf_dataset, load_llava_json
from tga_hf.training.commands import STAGE_PRESETS, resolve_settings
from tga_hf.training.config import TGAConfig

from .test_training import one_thread  # noqa: F401  (autouse fixture: one intra-op thread)


def write_llava(tmp_path, records):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for record in records:
        if record.get("image"):
            (images / record["image"]).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (200, 40, 40)).save(images / record["image"])
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path, images


PRETRAIN = [
    {
        "id": "1",
        "image": "a/1.png",
        "conversations": [
            {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
            {"from": "gpt", "value": "a red square on a wall"},
        ],
    },
    {"id": "2", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
]
MULTI_TURN = [
    {
        "id": "3",
        "image": "b/3.png",
        "conversations": [
            {"from": "human", "value": "What colour is it?\n<image>"},
            {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "And the shape?"},
            {"from": "gpt", "value": "A square."},
        ],
    },
]


def test_llava_json_pretrain_rows(tmp_path):
    path, images = write_llava(tmp_path, PRETRAIN)
    rows = load_llava_json(path, images, caption_from_answer=True)
    assert len(rows) == 1  # the text-only record is skipped
    row = rows[0]
    assert row["caption"] == row["completion"] == "a red square on a wall"
    assert row["prompt"] == [{"role": "user", "content": "<image>\nRender a clear and concise summary of the photo."}]
    assert isinstance(row["image"], Image.Image) and row["retrieved_text"] is None


def test_llava_json_multi_turn_with_captions_and_retrieved_texts(tmp_path):
    path, images = write_llava(tmp_path, MULTI_TURN)
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"b/3.png": "a red square"}))
    rows = load_llava_json(path, images, captions=captions, retrieved_texts={"b/3.png": "a red cup"})
    row = rows[0]
    assert row["caption"] == "a red square" and row["retrieved_text"] == "a red cup"
    assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "user"]
    assert row["completion"] == "A square."


def test_llava_json_errors_name_the_problem(tmp_path):
    path, images = write_llava(tmp_path, MULTI_TURN)
    with pytest.raises(ValueError, match="captions="):
        load_llava_json(path, images)
    with pytest.raises(ValueError, match=r"1 images have no caption, e.g. \['b/3.png'\]"):
        load_llava_json(path, images, captions={})
    (images / "b" / "3.png").unlink()
    with pytest.raises(FileNotFoundError, match="3.png"):
        load_llava_json(path, images, captions={"b/3.png": "x"})
    two_images = [
        {
            **MULTI_TURN[0],
            "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}],
        }
    ]
    path, images = write_llava(tmp_path, two_images)
    with pytest.raises(ValueError, match="2 <image> placeholders"):
        load_llava_json(path, images, caption_from_answer=True)


def test_from_hf_dataset_renames_and_drops_columns():
    dataset = Dataset.from_dict({"img": [Image.new("RGB", (8, 8))], "text": ["a cat"], "extra": [1]})
    rows = from_hf_dataset(dataset, image_column="img", caption_column="text")
    assert rows.column_names == ["image", "caption"]
    with pytest.raises(ValueError, match=r"no column\(s\) \['photo', 'caption'\]"):
        from_hf_dataset(dataset, image_column="photo")


def test_train_command_runs_a_pretrain_stage_on_the_tiny_model(tmp_path, capsys):
    path, images = write_llava(tmp_path, PRETRAIN)
    config = tmp_path / "train.yaml"
    config.write_text(
        "max_steps: 2\nper_device_train_batch_size: 1\nbf16: false\nreport_to: []\nsave_strategy: 'no'\n"
        "guide_layers: [1, 2]\n"
    )
    out = tmp_path / "run"
    command = f"train --model tiny --data {path} --image-folder {images} --stage pretrain".split()
    assert main([*command, "--config", str(config), "--output-dir", str(out), "--set", "logging_steps=1"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    assert "saved the pretrain model" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown training setting"):
        main([*command, "--set", "not_a_field=1"])
    with pytest.raises(ValueError, match="--lora applies to stage 2"):
        main([*command, "--lora"])


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_shipped_train_configs_are_valid(name):
    path = Path(__file__).resolve().parents[1] / "configs" / "train" / f"{name}.yaml"
    # bf16 needs a GPU; everything else is checked as shipped
    namespace = argparse.Namespace(config=path, set=["bf16=false"], func=None, command="train")
    command, config_kwargs = resolve_settings(namespace)
    assert command["stage"] == name
    config = TGAConfig(**config_kwargs)
    assert config.train_projector_only is STAGE_PRESETS[name]["train_projector_only"]
    assert config.learning_rate == {"pretrain": 1e-3, "finetune": 2e-6}[name]


def test_train_command_takes_a_saved_hf_dataset(tmp_path):
    dataset = Dataset.from_dict(
        {"img": [Image.new("RGB", (32, 32), (10, 200, 10))] * 2, "text": ["a green square", "a green square"]}
    )
    dataset.save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "run"
    argv = f"train --model tiny --data {tmp_path / 'ds'} --image-column img --caption-column text --stage finetune"
    settings = ["--set", "bf16=false", "--set", "report_to=[]", "--set", "save_strategy=no", "--set", "guide_layers=2"]
    assert main([*argv.split(), "--max-steps", "1", "--output-dir", str(out), *settings]) == 0
    assert (out / "model.safetensors").is_file()

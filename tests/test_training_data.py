import json
from pathlib import Path

import pytest
from datasets import Dataset
from PIL import Image

from tga_hf.cli import main
from tga_hf.data import from_hf_dataset, load_llava_json
from tga_hf.modeling.processing_tga_llava import TYPED_CONTENT_MARKER
from tga_hf.training import tga_lora_config
from tga_hf.training.commands import STAGE_PRESETS, parse_train_args, peft_config_from

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
    # TRL's SFTConfig defaults to bf16, which a CPU refuses
    command = f"train --tiny --data {path} --image-folder {images} --stage pretrain --bf16 false".split()
    assert main([*command, "--config", str(config), "--output-dir", str(out), "--logging_steps", "1"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    assert (out / "chat_template.jinja").read_text().startswith(TYPED_CONTENT_MARKER)
    assert "saved the pretrain model" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--not_a_field", "1"])
    assert exit_info.value.code == 2
    assert "tga-hf train: error: unknown arguments ['--not_a_field', '1']" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("not_a_key: 1\n")
    with pytest.raises(SystemExit):
        main([*command, "--config", str(tmp_path / "bad.yaml")])
    assert f"{tmp_path / 'bad.yaml'}: unknown keys ['not_a_key']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*command, "--use_peft"])
    assert "--use_peft applies to stage 2" in capsys.readouterr().err


def test_stage_preset_config_file_and_command_line_take_precedence_in_that_order(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("learning_rate: 5.0e-4\nmax_steps: 7\nguide_layers: auto\nuse_peft: true\nlora_r: 4\n")
    base = ["--tiny", "--dataset_name", "rows.jsonl", "--config", str(config), "--bf16", "false"]
    script_args, training_args, model_args = parse_train_args([*base, "--stage", "finetune", "--max_steps", "3"])
    assert script_args.stage == "finetune" and not training_args.train_projector_only  # the preset
    assert training_args.learning_rate == 5e-4  # the config file over the LoRA preset's 2e-4
    assert training_args.max_steps == 3  # the command line over the config file
    assert training_args.guide_layers == "auto" and model_args.use_peft and model_args.lora_r == 4
    peft_config = peft_config_from(model_args)
    assert peft_config.r == 4 and peft_config.modules_to_save == ["multi_modal_projector"]
    assert peft_config.target_modules == tga_lora_config().target_modules  # the LLM's projections only
    _, training_args, _ = parse_train_args(
        [*base, "--stage", "finetune", "--guide_layers", "1,2", "--use_peft", "false"]
    )
    assert training_args.guide_layers == [1, 2] and training_args.learning_rate == 5e-4
    _, training_args, _ = parse_train_args(["--tiny", "--dataset_name", "x", "--stage", "pretrain", "--bf16", "false"])
    assert training_args.learning_rate == 1e-3 and training_args.train_projector_only  # the preset alone
    assert training_args.trust_remote_code is False
    _, training_args, _ = parse_train_args(
        ["--model_name_or_path", "x", "--dataset_name", "x", "--trust-remote-code", "--bf16", "false"]
    )
    assert training_args.trust_remote_code is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset_name", "x"], "--model_name_or_path is required"),
        (["--tiny"], "give exactly one of --dataset_name"),
        (["--tiny", "--dataset_name", "x", "--data", "y.json"], "give exactly one of"),
        (["--tiny", "--dataset_name", "x", "--stage", "middle"], "invalid choice: 'middle'"),
        (["--tiny", "--dataset_name", "x", "--guide_layers", "1,x"], "guide_layers must be"),
        (["--tiny", "--dataset_name", "x", "--load_in_4bit"], "--load_in_4bit"),
    ],
)
def test_train_arguments_errors_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args([*argv, "--bf16", "false"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_tiny_is_a_flag_and_the_name_tiny_an_ordinary_model_path(tmp_path, monkeypatch, capsys):
    """`--tiny` (or `tiny: true` in --config) picks the test model; "tiny" as --model_name_or_path is a folder or
    Hub id like any other, so a missing one ends in the loader's one-line error before any data is read."""
    script_args, _, model_args = parse_train_args(["--tiny", "--dataset_name", "x", "--bf16", "false"])
    assert script_args.tiny and model_args.model_name_or_path is None
    (tmp_path / "tiny.yaml").write_text("tiny: true\ndataset_name: x\nbf16: false\n")
    assert parse_train_args(["--config", str(tmp_path / "tiny.yaml")])[0].tiny
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(["--tiny", "--model_name_or_path", "x", "--dataset_name", "x", "--bf16", "false"])
    assert exit_info.value.code == 2 and "give --model_name_or_path or --tiny, not both" in capsys.readouterr().err

    monkeypatch.chdir(tmp_path)  # no folder named "tiny" here
    argv = ["train", "--model_name_or_path", "tiny", "--dataset_name", "missing.jsonl", "--bf16", "false"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("tga-hf train: error: cannot load a model from tiny")
    assert len(message.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_shipped_train_configs_are_valid(name):
    path = Path(__file__).resolve().parents[1] / "configs" / "train" / f"{name}.yaml"
    # bf16 needs a GPU; everything else is checked as shipped
    script_args, config, model_args = parse_train_args(["--config", str(path), "--bf16", "false"])
    assert script_args.stage == name and script_args.data.endswith(".json")
    assert config.train_projector_only is STAGE_PRESETS[name]["train_projector_only"]
    assert config.learning_rate == {"pretrain": 1e-3, "finetune": 2e-6}[name]
    assert config.guide_layers == "auto" and config.guide_loss_weight == 1.0 and config.report_to == []
    assert model_args.model_name_or_path and not model_args.use_peft


def test_train_command_takes_a_saved_hf_dataset(tmp_path):
    dataset = Dataset.from_dict(
        {"image": [Image.new("RGB", (32, 32), (10, 200, 10))] * 2, "text": ["a green square", "a green square"]}
    )
    dataset.save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "run"
    argv = f"train --tiny --dataset_name {tmp_path / 'ds'} --caption-column text --stage finetune"
    settings = ["--bf16", "false", "--report_to", "none", "--save_strategy", "no", "--guide_layers", "1,2"]
    assert main([*argv.split(), "--max-steps", "1", "--output-dir", str(out), *settings]) == 0
    assert (out / "model.safetensors").is_file()


def trl_rows(image_dir: Path) -> list[dict]:
    """TRL's VLM layout (`images` + `messages`) with the caption in its own column; images saved as files too."""
    image_dir.mkdir(exist_ok=True)
    rows = []
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        Image.new("RGB", (32, 32), colour).save(image_dir / f"{name}.png")
        rows.append(
            {
                "images": [str(image_dir / f"{name}.png")],
                "messages": [
                    {"role": "user", "content": "What colour is it?"},
                    {"role": "assistant", "content": f"It is {name}."},
                ],
                "description": f"a {name} square",
            }
        )
    return rows


def _hub_cache_dataset(rows: list[dict], cache: Path, repo_id: str) -> None:
    """What an earlier online `load_dataset(repo_id)` leaves in HF_DATASETS_CACHE, which an offline one then reads."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    namespace, name = repo_id.split("/")
    Dataset.from_list(rows).to_parquet(str(cache.parent / "source.parquet"))
    builder = Parquet(
        cache_dir=str(cache),
        dataset_name=f"{namespace}___{name}",
        config_id="default",
        data_files={"train": str(cache.parent / "source.parquet")},
        hash="0" * 16,
    )
    builder.download_and_prepare()
    folder = Path(builder.cache_dir)
    (folder / f"{namespace}___{name}-train.arrow").rename(folder / f"{name}-train.arrow")


def test_dataset_name_loads_a_saved_folder_data_files_and_a_cached_hub_id(tmp_path, monkeypatch):
    import datasets

    from tga_hf.testing_utils import tiny_tga_llava
    from tga_hf.training import TGADataCollator
    from tga_hf.training.commands import load_dataset_from_name

    rows = trl_rows(tmp_path / "images")
    with_pixels = Dataset.from_list(rows).cast_column("images", datasets.Sequence(datasets.Image()))
    with_pixels.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": with_pixels}).save_to_disk(str(tmp_path / "saved_dict"))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    with_pixels.to_parquet(str(tmp_path / "rows.parquet"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    _hub_cache_dataset(rows, tmp_path / "datasets-cache", "tga-org/colours")

    _, processor = tiny_tga_llava(guide_layers=[1, 2])
    collator = TGADataCollator(processor, caption_column="description")
    sources = ["saved", "saved_dict", "rows.jsonl", "rows.json", "rows.parquet", "tga-org/colours"]
    for source in sources:
        name = source if "/" in source else str(tmp_path / source)
        loaded = load_dataset_from_name(name)
        train = loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded
        assert train.num_rows == 2, source
        batch = collator([train[0], train[1]])
        labels = batch["labels"][0]
        assert processor.tokenizer.decode(labels[labels != -100]) == "It is red.<|end|>", source
        assert batch["pixel_values"].shape[0] == 2, source
    (tmp_path / "rows.txt").write_text("not a data file")
    with pytest.raises(ValueError, match=r"rows.txt: unknown data file type '\.txt'"):
        load_dataset_from_name(str(tmp_path / "rows.txt"))


def test_push_to_hub_goes_through_the_trainer(tmp_path, monkeypatch, capsys):
    """`--push_to_hub` is TRL's / transformers' own push (create_repo + upload_folder of output_dir, with the model
    card), here against the local fake Hub of test_hub_push."""
    from huggingface_hub import HfApi, constants
    from transformers.utils import hub as transformers_hub

    from .test_hub_push import FakeHub

    rows = trl_rows(tmp_path / "images")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "tiny-run"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_test_token")
    with FakeHub() as hub:
        monkeypatch.setattr(transformers_hub, "_hf_api", HfApi(endpoint=hub.url, library_name="transformers"))
        argv = [
            "train",
            "--tiny",
            "--dataset_name",
            str(tmp_path / "rows.jsonl"),
            "--caption_column",
            "description",
            "--output_dir",
            str(out),
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "2",
            "--guide_layers",
            "1,2",
            "--bf16",
            "false",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--push_to_hub",
            "--hub_model_id",
            "tga-org/tiny-run",
        ]
        assert main(argv) == 0
    assert "pushed to the Hub repository tga-org/tiny-run" in capsys.readouterr().out
    assert hub.requests[0]["path"] == "/api/repos/create"
    assert json.loads(hub.requests[0]["body"])["name"] == "tiny-run"
    uploaded = {path: data for commit in hub.commits for path, data in commit["files"].items()}
    assert {commit["repo"] for commit in hub.commits} == {"tga-org/tiny-run"}
    for name in ("model.safetensors", "config.json", "processor_config.json", "chat_template.jinja", "README.md"):
        assert uploaded[name] == (out / name).read_bytes(), name
    assert uploaded["chat_template.jinja"].decode().startswith(TYPED_CONTENT_MARKER)
    card = uploaded["README.md"].decode()
    assert "tga" in card and "2410.12662" in card  # TGATrainer's tag and paper in TRL's model card

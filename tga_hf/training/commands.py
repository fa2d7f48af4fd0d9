"""`tga-hf train`: stage 1 (projector pre-training) or stage 2 (fine-tuning, full or LoRA) with the guide loss."""

import argparse
import json
import re
from pathlib import Path
from typing import Any

import yaml

# Learning rates of the paper (stage 1: 1e-3 projector only; stage 2: 2e-6 full) and LLaVA's LoRA recipe (2e-4).
STAGE_PRESETS = {
    "pretrain": {"train_projector_only": True, "learning_rate": 1e-3},
    "finetune": {"train_projector_only": False, "learning_rate": 2e-6},
    "finetune-lora": {"train_projector_only": False, "learning_rate": 2e-4},
}
# Options of the command itself; every other setting (from the config file or --set) is a TGAConfig field.
COMMAND_KEYS = (
    "model",
    "data",
    "image_folder",
    "captions",
    "retrieved_texts",
    "image_column",
    "caption_column",
    "instruction_column",
    "answer_column",
    "stage",
    "lora",
    "lora_r",
    "lora_alpha",
    "trust_remote_code",
)


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans: only true/false are bools, so `save_strategy: no` stays the string "no"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a TGA-LLaVA model (guide loss + LM loss)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML/JSON file with any of these options and TGAConfig fields")
    parser.add_argument("--model", help="a saved TGA-LLaVA folder, or 'tiny' for the random tiny model")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="allow --model's own Python code (auto_map) to run; TGA-LLaVA folders never need it",
    )
    parser.add_argument("--data", help="a LLaVA-style JSON file or a dataset folder saved with save_to_disk")
    parser.add_argument("--image-folder", help="folder the LLaVA JSON image paths are relative to")
    parser.add_argument("--captions", help="JSON {image path: caption} (stage 2); stage 1 uses the answers")
    parser.add_argument("--retrieved-texts", help="JSON {image path: retrieved text} computed offline")
    parser.add_argument("--image-column", help="image column of a dataset folder (default: image)")
    parser.add_argument("--caption-column", help="caption column of a dataset folder (default: caption)")
    parser.add_argument("--instruction-column", help="instruction column of a dataset folder")
    parser.add_argument("--answer-column", help="answer column of a dataset folder (default: the caption)")
    parser.add_argument("--stage", choices=("pretrain", "finetune"), help="pretrain: projector only; finetune: +LLM")
    parser.add_argument("--lora", action="store_true", default=None, help="stage 2 with peft LoRA on the LLM")
    parser.add_argument("--lora-r", type=int, help="LoRA rank (default 16)")
    parser.add_argument("--lora-alpha", type=int, help="LoRA alpha (default 32)")
    parser.add_argument("--output-dir", help="where checkpoints and the final model go")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default: one epoch)")
    parser.add_argument("--learning-rate", type=float, help="default: the stage preset")
    parser.add_argument("--per-device-train-batch-size", type=int)
    parser.add_argument("--guide-loss-weight", type=float, help="lambda; 0 = retrieval prefix only")
    parser.add_argument("--guide-layers", help="'auto' or comma-separated hidden-state indices, e.g. 10,12,14")
    parser.add_argument("--resume-from-checkpoint", help="a checkpoint folder, or 'last'")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any other TGAConfig field (repeatable)"
    )
    parser.set_defaults(func=run_train)


def resolve_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge stage preset < config file < command line. Returns (command options, TGAConfig kwargs)."""
    settings: dict[str, Any] = {}
    if args.config is not None:
        text = args.config.read_text(encoding="utf-8")
        loaded = json.loads(text) if args.config.suffix == ".json" else _load_yaml(text)
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config} must hold a mapping of option names to values")
        settings.update({key.replace("-", "_"): value for key, value in loaded.items()})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        settings[key.replace("-", "_")] = _load_yaml(value)
    cli = {key: value for key, value in vars(args).items() if key not in ("config", "set", "func", "command")}
    settings.update({key: value for key, value in cli.items() if value is not None})

    for required in ("model", "data", "stage"):
        if not settings.get(required):
            raise ValueError(f"--{required.replace('_', '-')} is required (on the command line or in --config)")
    if settings["stage"] not in ("pretrain", "finetune"):
        raise ValueError(f"stage must be 'pretrain' or 'finetune', got {settings['stage']!r}")
    if settings.get("lora") and settings["stage"] == "pretrain":
        raise ValueError("--lora applies to stage 2 (finetune); stage 1 trains the projector only")
    preset = STAGE_PRESETS["finetune-lora" if settings.get("lora") else settings["stage"]]
    command = {key: settings.pop(key) for key in COMMAND_KEYS if key in settings}
    config_kwargs = {**preset, **settings}
    config_kwargs.setdefault("output_dir", f"tga-{command['stage']}")
    return command, config_kwargs


def load_rows(command: dict[str, Any]):
    """The training rows: a LLaVA JSON file, or a dataset folder (save_to_disk) with image/caption columns."""
    import datasets

    from ..data import from_hf_dataset, load_llava_json

    data = Path(command["data"])
    if data.suffix == ".json":
        if not command.get("image_folder"):
            raise ValueError("--image-folder is required with a LLaVA JSON file")
        return load_llava_json(
            data,
            command["image_folder"],
            captions=command.get("captions"),
            caption_from_answer=command.get("captions") is None and command["stage"] == "pretrain",
            retrieved_texts=command.get("retrieved_texts"),
        )
    if data.is_dir():
        return from_hf_dataset(
            datasets.load_from_disk(str(data)),
            image_column=command.get("image_column") or "image",
            caption_column=command.get("caption_column") or "caption",
            instruction_column=command.get("instruction_column"),
            answer_column=command.get("answer_column"),
        )
    raise ValueError(f"--data {data}: expected a LLaVA JSON file or a dataset folder saved with save_to_disk")


def load_model(name: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, processor) to train: the tiny random model for 'tiny', else `tga_hf.hub.loading.load_model` (remote
    code only with `trust_remote_code`)."""
    if name == "tiny":
        from ..tiny import tiny_tga_llava

        return tiny_tga_llava()
    from ..hub.loading import load_model as load_any_model

    model, processor, _ = load_any_model(name, trust_remote_code=trust_remote_code, multimodal_only=True)
    return model, processor


def run_train(args: argparse.Namespace) -> int:
    from .config import TGAConfig
    from .stages import tga_lora_config
    from .trainer import TGATrainer

    command, config_kwargs = resolve_settings(args)
    try:
        config = TGAConfig(**config_kwargs)
    except TypeError as error:
        raise ValueError(f"unknown training setting: {error}") from None
    rows = load_rows(command)
    model, processor = load_model(command["model"], trust_remote_code=bool(command.get("trust_remote_code")))
    peft_config = None
    if command.get("lora"):
        peft_config = tga_lora_config(r=command.get("lora_r") or 16, lora_alpha=command.get("lora_alpha") or 32)
    trainer = TGATrainer(model, args=config, train_dataset=rows, processing_class=processor, peft_config=peft_config)
    resume = config_kwargs.get("resume_from_checkpoint")
    trainer.train(resume_from_checkpoint=True if resume == "last" else resume)
    trainer.save_model(config.output_dir)
    processor.save_pretrained(config.output_dir)
    print(f"saved the {command['stage']} model to {config.output_dir}")
    return 0

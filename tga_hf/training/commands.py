"""`tga-hf train`: TGA training from the command line, on TRL's own parser as `trl sft` is.

`trl.TrlParser` over (`TGAScriptArguments`, `TGAConfig`, `trl.ModelConfig`): every `TGAConfig` / `SFTConfig` /
`TrainingArguments` field and every `ModelConfig` field is a flag (`--learning_rate 1e-3`, `--learning-rate 1e-3`),
`--config file.yaml` sets any of them (command-line flags win), and `--push_to_hub` pushes through the trainer.

    tga-hf train --model_name_or_path my-tga-llava --dataset_name my/vqa-data --caption_column caption \\
        --output_dir tga-run --guide_layers auto --max_steps 1000
    tga-hf train --config configs/train/finetune.yaml --use_peft
"""

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Literal

from trl import ModelConfig, ScriptArguments, TrlParser

from .config import TGAConfig

# Learning rates of the paper (stage 1: 1e-3 projector only; stage 2: 2e-6 full) and LLaVA's LoRA recipe (2e-4).
STAGE_PRESETS = {
    "pretrain": {"train_projector_only": True, "learning_rate": 1e-3},
    "finetune": {"train_projector_only": False, "learning_rate": 2e-6},
    "finetune-lora": {"train_projector_only": False, "learning_rate": 2e-4},
}
PROG = "tga-hf train"


@dataclasses.dataclass
class TGAScriptArguments(ScriptArguments):
    r"""
    The data and stage of `tga-hf train`: TRL's [`~trl.ScriptArguments`] (`dataset_name`, `dataset_config`,
    `dataset_train_split`, `dataset_test_split`, `dataset_streaming`) plus the LLaVA-layout JSON and the stage presets.

    `dataset_name` is loaded with `datasets.load_dataset` (a Hub id, offline from the cache; a folder of data files;
    a `.json`/`.jsonl`/`.parquet`/`.csv` file) or, for a folder written by `save_to_disk`, `datasets.load_from_disk`.
    Its rows are in one of TRL's vision layouts (`images` + `messages`, or conversational prompt-completion with typed
    image content) or the LLaVA layout of `tga_hf.data`; the caption comes from `--caption_column`.

    Parameters:
        data (`str`, *optional*):
            A LLaVA-layout JSON file (LLaVA-558K / 665K: `{"image", "conversations"}` records) instead of
            `dataset_name`.
        image_folder (`str`, *optional*):
            The folder the `data` JSON's image paths are relative to.
        captions (`str`, *optional*):
            JSON `{image path: caption}` for `data` (stage 2); stage 1 takes each record's answer as its caption.
        retrieved_texts (`str`, *optional*):
            JSON `{image path: retrieved text}` computed offline for `data`; else the processor's retriever runs.
        stage (`str`, *optional*):
            `"pretrain"` (projector only, lr 1e-3) or `"finetune"` (projector + LLM, lr 2e-6; 2e-4 with
            `--use_peft`): presets under the config file and the command line.
        tiny (`bool`, *optional*, defaults to `False`):
            Train `tga_hf.testing_utils.tiny_tga_llava` (random, built offline) instead of `--model_name_or_path`:
            a plumbing check of the command.

    Example:

    ```python
    >>> script_args, training_args, model_args = make_parser().parse_args_and_config(
    ...     ["--tiny", "--dataset_name", "rows.jsonl", "--output_dir", "out"])
    ```"""

    data: str | None = dataclasses.field(
        default=None, metadata={"help": "LLaVA-layout JSON (LLaVA-558K/665K) instead of --dataset_name."}
    )
    image_folder: str | None = dataclasses.field(
        default=None, metadata={"help": "Folder the --data JSON's image paths are relative to."}
    )
    captions: str | None = dataclasses.field(
        default=None, metadata={"help": "JSON {image path: caption} for --data (stage 2); stage 1 uses the answers."}
    )
    retrieved_texts: str | None = dataclasses.field(
        default=None, metadata={"help": "JSON {image path: retrieved text} computed offline, for --data."}
    )
    stage: Literal["pretrain", "finetune"] | None = dataclasses.field(
        default=None,
        metadata={"help": "Preset: 'pretrain' (projector only, lr 1e-3) or 'finetune' (lr 2e-6, 2e-4 with LoRA)."},
    )
    tiny: bool = dataclasses.field(
        default=False,
        metadata={"help": "Train the tiny random TGA-LLaVA of tga_hf.testing_utils (plumbing check)."},
    )


def make_parser(prog: str = PROG) -> TrlParser:
    """TRL's parser over `(TGAScriptArguments, TGAConfig, ModelConfig)`, as `trl sft` builds it over its own three."""
    return TrlParser((TGAScriptArguments, TGAConfig, ModelConfig), prog=prog)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    # Registered without options: everything after `train` goes to the TrlParser (as `trl sft` does), `-h` included.
    parser = subparsers.add_parser(
        "train", help="train a TGA-LLaVA model (guide loss + LM loss; TRL flags)", add_help=False
    )
    parser.set_defaults(func=run_train, parses_remaining=True)


def parse_train_args(argv: list[str]) -> tuple[TGAScriptArguments, TGAConfig, ModelConfig]:
    """Parse `tga-hf train` arguments: stage preset < `--config` file < command line. Errors are argparse errors
    (usage and one line, exit status 2) naming the flag, key or value.

    Example:

    ```python
    >>> script_args, training_args, model_args = parse_train_args(
    ...     ["--config", "configs/train/pretrain.yaml", "--max_steps", "10"])
    ```"""
    parser = make_parser()
    # First pass only to learn the stage, whose preset becomes the defaults of the real pass.
    stage_args, _, stage_model_args, _ = _parse(parser, argv, return_remaining_strings=True)
    parser = make_parser()
    if stage_args.stage is not None:
        if stage_model_args.use_peft and stage_args.stage == "pretrain":
            parser.error("--use_peft applies to stage 2 (--stage finetune); stage 1 trains the projector only")
        parser.set_defaults_with_config(
            **STAGE_PRESETS["finetune-lora" if stage_model_args.use_peft else stage_args.stage]
        )
    *parsed, config_rest, cli_rest = _parse(
        parser, argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    if config_rest:
        config = argv[argv.index("--config") + 1]
        keys = [item[2:] for item in config_rest[::2]]
        parser.error(f"{config}: unknown keys {keys} (not TGAScriptArguments / TGAConfig / ModelConfig fields)")
    if cli_rest:
        parser.error(f"unknown arguments {cli_rest} (see `{PROG} --help`)")
    script_args, training_args, model_args = parsed
    if script_args.tiny and model_args.model_name_or_path:
        parser.error("give --model_name_or_path or --tiny, not both")
    if not script_args.tiny and not model_args.model_name_or_path:
        parser.error(
            "--model_name_or_path is required (on the command line or in --config): a TGA-LLaVA folder or Hub id, "
            "or --tiny for the tiny random model"
        )
    if (script_args.data is None) == (script_args.dataset_name is None):
        parser.error("give exactly one of --dataset_name (datasets, TRL layouts) and --data (LLaVA-layout JSON)")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        parser.error("--load_in_4bit / --load_in_8bit are not supported by tga-hf train")
    return script_args, training_args, model_args


def _parse(parser: TrlParser, argv: list[str], **kwargs) -> tuple:
    """`parse_args_and_config`, with the settings' own checks (TGAConfig, TrainingArguments: e.g. bf16 on a CPU, which
    TRL's SFTConfig turns on by default) as one-line argparse errors."""
    try:
        return parser.parse_args_and_config(argv, **kwargs)
    except ValueError as error:
        parser.error(str(error).splitlines()[0])


def load_dataset_from_name(name: str, config: str | None = None, streaming: bool = False) -> Any:
    """`datasets.load_dataset` for a Hub id (offline: from the cache), a folder of data files or one data file;
    `datasets.load_from_disk` for a folder written by `save_to_disk`, which `load_dataset` refuses to read."""
    import datasets

    path = Path(name).expanduser()
    if path.is_dir() and any((path / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
        return datasets.load_from_disk(str(path))
    if path.is_file():
        # load_dataset reads a single file only through its format's builder
        builders = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
        if path.suffix not in builders:
            raise ValueError(f"--dataset_name {name}: unknown data file type {path.suffix!r}; use {sorted(builders)}")
        return datasets.load_dataset(builders[path.suffix], data_files=str(path), streaming=streaming)
    return datasets.load_dataset(name, name=config, streaming=streaming)


def load_training_data(script_args: TGAScriptArguments, training_args: TGAConfig) -> tuple[Any, Any]:
    """(train dataset, eval dataset or None) from `--dataset_name` (split `--dataset_train_split`, eval split
    `--dataset_test_split` when `--eval_strategy` is not "no") or from a LLaVA-layout `--data` JSON."""
    import datasets

    if script_args.data is not None:
        from ..data import load_llava_json

        data = Path(script_args.data)
        if data.suffix != ".json":
            raise ValueError(
                f"--data {data}: expected a LLaVA-layout .json file; pass datasets and other files as --dataset_name"
            )
        if not script_args.image_folder:
            raise ValueError("--image_folder is required with a LLaVA-layout --data JSON file")
        rows = load_llava_json(
            data,
            script_args.image_folder,
            captions=script_args.captions,
            caption_from_answer=script_args.captions is None and script_args.stage == "pretrain",
            retrieved_texts=script_args.retrieved_texts,
        )
        return rows, None
    dataset = load_dataset_from_name(
        script_args.dataset_name, script_args.dataset_config, streaming=script_args.dataset_streaming
    )
    evaluate = training_args.eval_strategy != "no"
    if not isinstance(dataset, datasets.DatasetDict | datasets.IterableDatasetDict):
        if evaluate:
            raise ValueError(f"--dataset_name {script_args.dataset_name} has no splits to evaluate on")
        return dataset, None
    for split in [script_args.dataset_train_split] + ([script_args.dataset_test_split] if evaluate else []):
        if split not in dataset:
            raise ValueError(f"--dataset_name {script_args.dataset_name} has no split {split!r}: {sorted(dataset)}")
    return dataset[script_args.dataset_train_split], dataset[script_args.dataset_test_split] if evaluate else None


def load_model(
    name: str,
    trust_remote_code: bool = False,
    revision: str | None = None,
    dtype: str | None = None,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """(model, processor) to train from a folder or Hub id: `tga_hf.hub.loading.load_model` of an image-text model
    (remote code only with `trust_remote_code`)."""
    from ..hub.loading import load_model as load_any_model

    model, processor, _ = load_any_model(
        name,
        trust_remote_code=trust_remote_code,
        multimodal_only=True,
        revision=None if revision == "main" else revision,
        dtype=None if dtype == "auto" else dtype,
        attn_implementation=attn_implementation,
    )
    return model, processor


def peft_config_from(model_args: ModelConfig) -> Any:
    """The LoRA config of `--use_peft`: `tga_lora_config` (LoRA on the LLM's projections only, the projector trained
    and saved in full) with ModelConfig's `lora_r`, `lora_alpha`, `lora_dropout`, `use_rslora`, `use_dora`;
    `--lora_target_modules` replaces the LLM-only target, `--lora_modules_to_save` adds to the projector."""
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    from .stages import tga_lora_config

    base = tga_lora_config(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout)
    extra = {"target_parameters": model_args.lora_target_parameters} if model_args.lora_target_parameters else {}
    return LoraConfig(
        r=base.r,
        lora_alpha=base.lora_alpha,
        lora_dropout=base.lora_dropout,
        target_modules=model_args.lora_target_modules or base.target_modules,
        modules_to_save=list(dict.fromkeys([*base.modules_to_save, *(model_args.lora_modules_to_save or [])])),
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        **extra,
    )


def run_train(args: argparse.Namespace) -> int:
    from .trainer import TGATrainer

    script_args, training_args, model_args = parse_train_args(list(args.remaining))
    # The model first: a wrong path or untrusted remote code ends the command before any data is read
    if script_args.tiny:
        from ..testing_utils import tiny_tga_llava

        model, processor = tiny_tga_llava()
    else:
        model, processor = load_model(
            model_args.model_name_or_path,
            trust_remote_code=training_args.trust_remote_code,
            revision=model_args.model_revision,
            dtype=model_args.dtype,
            attn_implementation=model_args.attn_implementation,
        )
    train_dataset, eval_dataset = load_training_data(script_args, training_args)
    trainer = TGATrainer(
        model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=peft_config_from(model_args),
    )
    resume = training_args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if resume == "last" else resume)
    # Saves the processor (chat template, retriever) with the weights; with --push_to_hub it also pushes them.
    trainer.save_model(training_args.output_dir)
    print(f"saved the {script_args.stage or 'trained'} model to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        print(f"pushed to the Hub repository {trainer.hub_model_id}")
    trainer.end()
    return 0

"""Export a TGA-LLaVA as a folder that is, file for file, its Hugging Face Hub repository.

The folder holds the safetensors weights (sharded above `max_shard_size`), `config.json` with `auto_map`, the three
remote-code files, the processor / tokenizer files with the chat template, `retrieval/` when a retriever is given, the
model card `README.md` and `.eval_results/tga_safety.yaml`. Everything is written into a hidden sibling folder that is
renamed into place at the very end, so an export that fails or is killed leaves no `out_dir` behind (a killed export
leaves its hidden `.NAME.partial-PID-*` sibling, which the next export into the same place removes).
"""

import inspect
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import eval_result_entries_to_yaml
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..fileio import atomic_directory
from ..modeling import RETRIEVAL_DIR
from ..report import Report, read_report
from .cards import eval_result_entries, index_card, model_card

REMOTE_CODE_FILES = ("configuration_tga_llava.py", "modeling_tga_llava.py", "processing_tga_llava.py")
EVAL_RESULTS_FILE = ".eval_results/tga_safety.yaml"
DEFAULT_MAX_SHARD_SIZE = "5GB"

_FILE_DESCRIPTIONS = {
    "config.json": "`TGALlavaConfig` (TGA settings, `auto_map` to the remote code)",
    "generation_config.json": "generation defaults",
    "model.safetensors": "weights (safetensors, `LlavaForConditionalGeneration` key layout)",
    "model.safetensors.index.json": "map from weight name to shard",
    "configuration_tga_llava.py": "remote code: the configuration class",
    "modeling_tga_llava.py": "remote code: the model class",
    "processing_tga_llava.py": "remote code: the processor (retrieved-text prefix, guide-loss masks)",
    "processor_config.json": "processor and image processor settings, retrieval template",
    "preprocessor_config.json": "image processor settings",
    "tokenizer.json": "tokenizer",
    "tokenizer_config.json": "tokenizer settings",
    "special_tokens_map.json": "special tokens",
    "chat_template.jinja": "chat template",
    "chat_template.json": "chat template",
    "README.md": "this model card",
    EVAL_RESULTS_FILE: "evaluation results in the Hub's eval-results format",
}
_SHARD = re.compile(r"^model-\d+-of-(\d+)\.safetensors$")


def write_eval_results(folder: Path, report: Report, arm: str = "tga") -> bool:
    """Write the model's own results (those of `arm`) to `folder/.eval_results/tga_safety.yaml`, huggingface_hub's
    eval-results format; False (nothing written) when the report has none."""
    entries = eval_result_entries(report, arm)
    if not entries:
        return False
    eval_path = folder / EVAL_RESULTS_FILE
    eval_path.parent.mkdir(exist_ok=True)
    eval_path.write_text(yaml.safe_dump(eval_result_entries_to_yaml(entries), sort_keys=False))
    return True


def describe_files(folder: Path, descriptions: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """The card's "Files" table: one row per file, shards and the retrieval folder folded into one row each;
    `descriptions` adds to or replaces the descriptions of an export's files."""
    descriptions = {**_FILE_DESCRIPTIONS, **(descriptions or {})}
    rows = []
    for path in sorted(p for p in folder.iterdir() if p.name not in (".eval_results", RETRIEVAL_DIR)):
        shard = _SHARD.match(path.name)
        if shard:
            if path.name.startswith("model-00001-"):
                rows.append(("model-*.safetensors", f"weights in {int(shard.group(1))} safetensors shards"))
            continue
        rows.append((path.name, descriptions.get(path.name, "")))
    if (folder / RETRIEVAL_DIR).is_dir():
        rows.append((f"{RETRIEVAL_DIR}/", "retrieval index: faiss index, texts, `retriever_config.json`"))
    if (folder / EVAL_RESULTS_FILE).is_file():
        rows.append((EVAL_RESULTS_FILE, _FILE_DESCRIPTIONS[EVAL_RESULTS_FILE]))
    return rows


def save_retriever(retriever: Any, path: Path, include_encoder: bool | None = None) -> None:
    """`retriever.save(path)`, copying the encoder into the folder when asked, or by default when `save` can
    (`tga_hf.retrieval.TextRetriever.save(path, include_encoder=True)`): a repository must not depend on where the
    encoder sat on the exporting machine."""
    can_include = "include_encoder" in inspect.signature(retriever.save).parameters
    if include_encoder and not can_include:
        raise TypeError(f"{type(retriever).__name__}.save takes no include_encoder: it cannot bundle its encoder")
    if include_encoder or (include_encoder is None and can_include):
        retriever.save(path, include_encoder=True)
    else:
        retriever.save(path)
    if not path.is_dir() or not any(path.iterdir()):
        raise RuntimeError(f"{type(retriever).__name__}.save wrote nothing into {path}")


def _check_exportable(model: Any) -> None:
    if hasattr(model, "peft_config"):
        raise ValueError("the model carries peft adapters: merge them first (model = model.merge_and_unload())")
    if not isinstance(model, PreTrainedModel) or getattr(model.config, "model_type", None) != "tga_llava":
        raise TypeError(f"export takes a TGALlavaForConditionalGeneration, got {type(model).__name__}")


def export(
    model: PreTrainedModel,
    processor: Any,
    out_dir: str | Path,
    retriever: Any | None = None,
    report: Report | Mapping[str, Any] | str | Path | None = None,
    *,
    repo_id: str | None = None,
    base_model: str | Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    license: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    include_encoder: bool | None = None,
    overwrite: bool = False,
    arm: str = "tga",
) -> Path:
    """Write `model`, `processor`, the retriever and the model card into `out_dir`, a ready-to-push Hub repository.

    Args:
        model: a `TGALlavaForConditionalGeneration` (peft adapters merged).
        processor: its `TGALlavaProcessor`.
        out_dir: the folder to create. It must not exist unless `overwrite=True`, and even then only an earlier
            export (its `tga_hf_manifest.json` lists every file in it) or an empty folder is replaced.
        retriever: an object with `save(dir)` (e.g. `tga_hf.retrieval.TextRetriever`), written to `retrieval/`;
            defaults to the retriever attached to the processor, if any.
        report: the evaluation report (`tga_hf.report.Report`, its dict or the path of its JSON) the card's numbers
            come from.
        repo_id: the Hub id the card's usage code loads (default: the folder name, which also loads locally).
        base_model, datasets, license: card metadata.
        max_shard_size: weights above this size are split into shards (`"5GB"`, `"200MB"` or bytes).
        include_encoder: copy the retriever's encoder into `retrieval/` (default: when its `save` can). False records
            the encoder by name only: smaller, but the encoder must be reachable wherever the repository is used.
        arm: which of the experiment's arms the model is ("tga", "baseline", ...): the card files that arm's settings
            of the report as the model's own results.

    Returns:
        The absolute path of the folder.

    Example:

    ```python
    >>> export(model, processor, "tga-llava", retriever=retriever, report="results/run/report.json", repo_id="me/tga")
    ```
    """
    _check_exportable(model)
    parsed_report = read_report(report)
    retriever = retriever if retriever is not None else getattr(processor, "retriever", None)
    out_dir = Path(out_dir).absolute()
    repo_id = repo_id or out_dir.name

    with atomic_directory(out_dir, overwrite=overwrite, kind="tga-llava-export") as folder:
        steps = tqdm(total=4, desc=f"export {out_dir.name}", unit="step")
        with steps:
            steps.set_postfix_str("weights")
            model.save_pretrained(folder, max_shard_size=max_shard_size)
            steps.update()
            steps.set_postfix_str("processor")
            # Detached while saving so that the retriever is written once, below, whichever one is exported.
            attached, processor.retriever = getattr(processor, "retriever", None), None
            try:
                processor.save_pretrained(folder)
            finally:
                processor.retriever = attached
            missing = [name for name in REMOTE_CODE_FILES if not (folder / name).is_file()]
            if missing or "auto_map" not in json.loads((folder / "config.json").read_text()):
                raise RuntimeError(
                    f"save_pretrained wrote no auto_map / remote code ({missing}): import tga_hf.modeling so the "
                    "classes are registered for the Auto factories"
                )
            steps.update()
            steps.set_postfix_str("retrieval index")
            if retriever is not None:
                save_retriever(retriever, folder / RETRIEVAL_DIR, include_encoder)
            steps.update()
            steps.set_postfix_str("model card")
            write_eval_results(folder, parsed_report, arm)
            card = model_card(
                model.config,
                report=parsed_report,
                repo_id=repo_id,
                base_model=base_model,
                datasets=datasets,
                license=license,
                files=[("README.md", _FILE_DESCRIPTIONS["README.md"]), *describe_files(folder)],
                has_retriever=retriever is not None,
                arm=arm,
            )
            card.save(folder / "README.md")
            steps.update()
    return out_dir


def export_index(
    retriever: Any,
    out_dir: str | Path,
    *,
    repo_id: str,
    model_repo_id: str | None = None,
    license: str | None = None,
    include_encoder: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a retrieval index as its own Hub dataset repository: the retriever's files plus a dataset card.
    Push it with `push(out_dir, repo_id, repo_type="dataset")`."""
    out_dir = Path(out_dir).absolute()
    with atomic_directory(out_dir, overwrite=overwrite, kind="retrieval-index-export") as folder:
        index_dir = folder / "index"
        save_retriever(retriever, index_dir, include_encoder)
        for path in index_dir.iterdir():
            os.replace(path, folder / path.name)
        index_dir.rmdir()
        config_path = folder / "retriever_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        index_card(config, repo_id=repo_id, model_repo_id=model_repo_id, license=license).save(folder / "README.md")
    return out_dir


__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "EVAL_RESULTS_FILE",
    "REMOTE_CODE_FILES",
    "describe_files",
    "export",
    "export_index",
    "save_retriever",
    "write_eval_results",
]

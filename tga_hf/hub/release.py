"""Releases: the trained parts of a TGA-LLaVA in a folder of megabytes, and the offline rebuild of the whole model.

A full LVLM folder is dominated by its LLM (~0.3-2.5 GB here), which nobody trained: the release keeps only what
training changed and what is needed to rebuild the rest, and it records which base it needs.

    release.json                   the record: format, arm, base LLM (`tga_hf.weights.LLMS` key, dtype, sha256 of its
                                   checkpoint's tensors), vision tower (where it comes from, sha256 of its tensors),
                                   tokenizer vocabulary digest, the trained files, the retrieval encoder, the licence
    config.json                    the `TGALlavaConfig` (TGA settings; the architecture of the rebuilt model)
    generation_config.json         generation defaults
    projector.safetensors          the projector (`model.multi_modal_projector.*`, LLaVA key names)
    added_embeddings.safetensors   embedding (and untied lm_head) rows of the tokens `compose` added (`<image>`), when
                                   the vocabulary grew: stored, not recomputed, so that the rebuild is exact
    adapter_model.safetensors      the LoRA adapter of the LLM, peft's own format (`PeftModel.save_pretrained`),
    adapter_config.json            when the model carries one
    processor_config.json, tokenizer_config.json, chat_template.jinja
                                   the processor's settings; the vocabulary (tokenizer.json) is the base LLM's
    retrieval/                     the retrieval index, when the processor has a retriever (`export.save_retriever`)
    eval_report.json               the evaluation report the card's numbers come from (without its details)
    README.md, .eval_results/      the model card, the eval results in the Hub's format
    tga_hf_manifest.json           every file's size and sha256 (`tga_hf.fileio.atomic_directory`)

`load_release` rebuilds the base with `tga_hf.weights.converted_checkpoint` (the offline LLM) and the vision tower
(the packaged LiT tower by default), checks both against the digests in `release.json` (`BaseMismatchError`), composes
them with `tga_hf.compose`, loads the projector and the added rows, applies the adapter and attaches the index.
The digest of a checkpoint is `tga_hf.fileio.safetensors_sha256` of its weight files: the tensors' names, dtypes,
shapes and bytes, independent of how the file was serialised.

The adapter is merged into the LLM by default (`merge_adapter=True`): that is the model the experiment evaluates
(`merge_and_unload()` on the same base and adapter weights gives the same merged weights), it is a plain
`TGALlavaForConditionalGeneration` that `export`, `generate` and the evaluation take, and inference pays no adapter
cost. `merge_adapter=False` returns the `peft.PeftModel` instead (to train on, or to swap adapters).

Example:

```python
>>> save_release(peft_model, processor, "results/run/release/tga", llm="smollm2-135m", report=report, arm="tga")
>>> model, processor = tga_hf.from_pretrained("results/run/release/tga")  # offline; verified; index attached
>>> materialize_release("results/run/release/tga", "tga-full")  # the standalone Hub repository
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import weights
from ..fileio import (
    MANIFEST,
    apply_umask,
    atomic_directory,
    read_manifest,
    safetensors_sha256,
    sha256_file,
    weight_files,
)
from ..modeling import RETRIEVAL_DIR, TGALlavaConfig, TGALlavaForConditionalGeneration, TGALlavaProcessor
from ..report import Report, read_report
from .cards import model_card
from .export import (
    DEFAULT_MAX_SHARD_SIZE,
    EVAL_RESULTS_FILE,
    describe_files,
    export,
    save_retriever,
    write_eval_results,
)
from .loading import IncompleteWeightsError, load_retriever, resolve_repo

RELEASE_FILE = "release.json"
RELEASE_FORMAT = "tga-hf-release"
RELEASE_VERSION = 1
RELEASE_KIND = "tga-llava-release"
PROJECTOR_FILE = "projector.safetensors"
ADDED_EMBEDDINGS_FILE = "added_embeddings.safetensors"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
REPORT_FILE = "eval_report.json"
# What the processor's save_pretrained writes that the release keeps: everything but the vocabulary (tokenizer.json,
# megabytes, the base LLM's plus `<image>`) and the remote-code files.
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)
PACKAGED_TOWER = "packaged"
PROJECTOR_PREFIX = "model.multi_modal_projector."
# The TGA fields of TGALlavaConfig, passed to `compose` on rebuild (the LLaVA ones are listed in `_rebuild`).
TGA_FIELDS = tuple(TGALlavaConfig.__annotations__)
# The processor settings a rebuilt processor must share with the saved one.
_PROCESSOR_SETTINGS = (
    "patch_size",
    "vision_feature_select_strategy",
    "num_additional_image_tokens",
    "image_token",
    "retrieval_template",
    "retrieval_top_k",
    "max_retrieved_tokens",
    "chat_template",
)

_RELEASE_FILE_DESCRIPTIONS = {
    RELEASE_FILE: "the record: base LLM and vision tower with the sha256 of their weights, the trained parts",
    "config.json": "`TGALlavaConfig` (TGA settings; the architecture of the rebuilt model)",
    PROJECTOR_FILE: "trained projector weights (safetensors, `LlavaForConditionalGeneration` key names)",
    ADDED_EMBEDDINGS_FILE: "embedding rows of the tokens added to the LLM's vocabulary (`<image>`)",
    ADAPTER_WEIGHTS_FILE: "LoRA adapter of the LLM (peft)",
    ADAPTER_CONFIG_FILE: "LoRA adapter settings (peft)",
    "tokenizer_config.json": "tokenizer settings (the vocabulary is the base LLM's, plus `<image>`)",
    REPORT_FILE: "the evaluation report this card's numbers come from (its details left out)",
}


class BaseMismatchError(ValueError):
    """The base rebuilt offline (LLM, vision tower, tokenizer, config) is not the one the release was trained on: its
    digest (or setting) differs from the one `release.json` records. `part`, `recorded`, `actual` and `source` say
    which, what and where from."""

    def __init__(self, part: str, recorded: Any, actual: Any, source: str | os.PathLike, what: str = "sha256"):
        self.part, self.recorded, self.actual, self.source = part, recorded, actual, str(source)
        super().__init__(
            f"the {part} rebuilt from {source} is not the base this release was trained on: release.json records "
            f"{what} {recorded}, the rebuilt {part} has {what} {actual}"
        )


class ReleaseVerificationError(ValueError):
    """`save_release` rebuilt the model from the folder it wrote and got other weights than the model it was given:
    the release would not reproduce it (e.g. a merged adapter or a fine-tuned LLM, or another tower or LLM)."""


# ------------------------------------------------------------------------------------------------- the pieces


def _peft_model_class() -> type | None:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    return PeftModel


def _split_adapter(model: Any) -> tuple[TGALlavaForConditionalGeneration, str | None]:
    """The TGA-LLaVA inside `model` and the name of its adapter: a `peft.PeftModel` around it, or a TGA-LLaVA with
    adapter layers injected (`peft.inject_adapter_in_model`: it has a `peft_config`), or a plain one (None)."""
    peft_model_class = _peft_model_class()
    if peft_model_class is not None and isinstance(model, peft_model_class):
        base, configs = model.get_base_model(), model.peft_config
    elif hasattr(model, "peft_config"):
        base, configs = model, model.peft_config
    else:
        base, configs = model, None
    if not isinstance(base, TGALlavaForConditionalGeneration):
        raise TypeError(
            f"save_release takes a TGALlavaForConditionalGeneration (or a peft model of one), got {type(base).__name__}"
        )
    if configs is None:
        return base, None
    if len(configs) != 1:
        raise ValueError(f"the model carries {len(configs)} adapters ({sorted(configs)}): a release holds one")
    return base, next(iter(configs))


def _projector_module(base: TGALlavaForConditionalGeneration) -> torch.nn.Module:
    """The projector the forward pass uses: peft's trained copy when the projector is in `modules_to_save`."""
    module = base.model.multi_modal_projector
    copies = getattr(module, "modules_to_save", None)
    if copies is not None:
        active = module.active_adapter
        module = copies[active if isinstance(active, str) else active[0]]
    if any(hasattr(sub, "base_layer") for sub in module.modules()):
        raise ValueError(
            "the projector carries adapter layers: a release stores the projector whole, so train it fully "
            "(modules_to_save=['multi_modal_projector'], as tga_hf.training.tga_lora_config does)"
        )
    return module


def _projector_state(base: TGALlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    return {
        PROJECTOR_PREFIX + key: value.detach().cpu().contiguous()
        for key, value in _projector_module(base).state_dict().items()
    }


def _added_rows(base: TGALlavaForConditionalGeneration, base_vocab: int) -> dict[str, torch.Tensor]:
    """The input-embedding (and untied output-embedding) rows past the base LLM's vocabulary: the tokens `compose`
    added. Empty when the vocabulary did not grow (e.g. Qwen2.5, whose matrix has spare rows)."""
    embed = base.get_input_embeddings().weight
    if embed.shape[0] <= base_vocab:
        return {}
    rows = {"embed_tokens": embed[base_vocab:]}
    output = base.get_output_embeddings().weight
    if output.data_ptr() != embed.data_ptr():
        rows["lm_head"] = output[base_vocab:]
    return {name: value.detach().cpu().contiguous() for name, value in rows.items()}


def _vocabulary_sha256(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id, added tokens included), in id order."""
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    return hashlib.sha256(json.dumps(vocabulary, ensure_ascii=False).encode()).hexdigest()


def _tga_hf_version() -> str:
    from .. import __version__  # here: tga_hf/__init__.py imports this module before it defines __version__

    return __version__


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tower_folder(location: str, override: str | os.PathLike | None = None) -> Path:
    if override is not None:
        return Path(override)
    if location == PACKAGED_TOWER:
        from ..vision_tower.model import packaged_tower_path

        return packaged_tower_path()
    return Path(location)


def _llm_folder(record: Mapping[str, Any]) -> Path:
    llm = record["llm"]
    return Path(weights.converted_checkpoint(llm["name"], getattr(torch, llm["dtype"])))


def _same_path(a: Any, b: Any) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (TypeError, OSError):
        return False


def _packaged_encoder(retriever: Any, tower_folder: Path) -> bool:
    """Whether the retriever's encoder is the offline MiniLM (`tga_hf.weights.minilm_path`) joined with the release's
    tower (`tga_hf.retrieval.joint_encoder`): then the release records it by that name and rebuilds it on load,
    instead of bundling ~90 MB of encoder into the folder."""
    source = getattr(retriever, "encoder_source", None)
    if not isinstance(source, Mapping) or not source.get("name_or_path") or not source.get("image_tower"):
        return False
    try:
        minilm = weights.minilm_path()
    except (ModuleNotFoundError, FileNotFoundError):
        return False
    return _same_path(source["name_or_path"], minilm) and _same_path(source["image_tower"], tower_folder)


def _compact_report(report: Report) -> dict[str, Any]:
    """The report as the card reads it, without the producer's details (training history, cosine tables...) and
    file lists, which belong to the run folder."""
    data = dataclasses.replace(report, details={}).to_dict()
    data.pop("files", None)
    return data


def read_release(path: str | os.PathLike) -> dict[str, Any]:
    """The checked `release.json` of a release folder. ValueError naming the file when it is missing, unreadable or
    of another format."""
    record_path = Path(path) / RELEASE_FILE
    if not record_path.is_file():
        raise FileNotFoundError(f"{Path(path)} has no {RELEASE_FILE}: not a release folder (tga_hf.hub.save_release)")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{record_path} is unreadable: {error}") from None
    if not isinstance(record, dict) or record.get("format") != RELEASE_FORMAT:
        raise ValueError(f"{record_path} is not a tga-hf release record (format {RELEASE_FORMAT!r})")
    if record.get("version") != RELEASE_VERSION:
        raise ValueError(f"{record_path}: unsupported release version {record.get('version')!r}")
    for key in ("llm", "vision_tower", "tokenizer", "trained"):
        if not isinstance(record.get(key), dict):
            raise ValueError(f"{record_path}: the {key!r} entry is missing")
    return record


def _check_files(folder: Path, names: list[str]) -> None:
    """Every file the loader reads is the one written: listed in the manifest with its size and sha256. (The card
    and the eval results are not checked: the Hub's card editor may change them.)"""
    listed = read_manifest(folder)["files"]
    for name in names:
        path = folder / name
        entry = listed.get(name)
        if entry is None:
            raise ValueError(f"{path} is not listed in {folder / MANIFEST}: not a file the release wrote")
        if not path.is_file():
            raise IncompleteWeightsError(f"{path} is missing from the release")
        if path.stat().st_size != entry.get("size") or ("sha256" in entry and sha256_file(path) != entry["sha256"]):
            raise ValueError(f"{path} does not match its size / sha256 in {MANIFEST}: changed after it was written")


def _read_trained(path: Path, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a trained-weights file, each one `expected` names: present, of its shape, finite. Errors
    name the file and the key."""
    if not path.is_file():
        raise IncompleteWeightsError(f"{path} is missing from the release")
    with safe_open(path, framework="pt") as handle:
        keys = set(handle.keys())
        missing = sorted(set(expected) - keys)
        if missing:
            raise IncompleteWeightsError(
                f"{path}: weight {missing[0]} is missing ({len(missing)} missing); refusing to fill it with random "
                "values"
            )
        unexpected = sorted(keys - set(expected))
        if unexpected:
            raise IncompleteWeightsError(f"{path}: weight {unexpected[0]} is not a weight of this model")
        tensors = {}
        for key in sorted(keys):
            tensor = handle.get_tensor(key)
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise IncompleteWeightsError(
                    f"{path}: weight {key} has shape {tuple(tensor.shape)}, the model needs "
                    f"{tuple(expected[key].shape)}"
                )
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise IncompleteWeightsError(f"{path}: weight {key} holds NaN or infinite values")
            tensors[key] = tensor
    return tensors


def _check_finite_file(path: Path) -> set[str]:
    """The keys of a safetensors file, each checked finite (IncompleteWeightsError naming the file and key)."""
    if not path.is_file():
        raise IncompleteWeightsError(f"{path} is missing from the release")
    with safe_open(path, framework="pt") as handle:
        keys = set(handle.keys())
        for key in sorted(keys):
            tensor = handle.get_tensor(key)
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise IncompleteWeightsError(f"{path}: weight {key} holds NaN or infinite values")
    return keys


# ------------------------------------------------------------------------------------------------------- save


def _save_adapter(model: Any, name: str, folder: Path) -> dict[str, Any]:
    """The adapter in peft's format (`adapter_model.safetensors` + `adapter_config.json`, keys as a `PeftModel`
    saves them), written by peft: `PeftModel.save_pretrained`, or for injected adapters peft's
    `get_peft_model_state_dict` and the config's own `save_pretrained`."""
    from peft import get_peft_model_state_dict

    config = model.peft_config[name]
    peft_model_class = _peft_model_class()
    if isinstance(model, peft_model_class):
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, selected_adapters=[name], save_embedding_layers=False)
            saved = Path(tmp) if name == "default" else Path(tmp) / name
            for file in (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE):
                shutil.move(saved / file, folder / file)
    else:
        state = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
        tensors = {f"base_model.model.{key}": value.detach().cpu().contiguous() for key, value in state.items()}
        save_file(tensors, folder / ADAPTER_WEIGHTS_FILE, metadata={"format": "pt"})
        config.save_pretrained(folder)
    return {
        "name": name,
        "peft_type": str(getattr(config.peft_type, "value", config.peft_type)),
        "weights": ADAPTER_WEIGHTS_FILE,
        "config": ADAPTER_CONFIG_FILE,
        "modules_to_save": sorted(config.modules_to_save or []),
    }


def _save_processor_files(processor: TGALlavaProcessor, folder: Path) -> list[str]:
    attached, processor.retriever = getattr(processor, "retriever", None), None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            processor.save_pretrained(tmp)
            kept = [name for name in PROCESSOR_FILES if (Path(tmp) / name).is_file()]
            for name in kept:
                shutil.copyfile(Path(tmp) / name, folder / name)
    finally:
        processor.retriever = attached
    if "processor_config.json" not in kept:
        raise RuntimeError(f"{type(processor).__name__}.save_pretrained wrote no processor_config.json")
    return kept


def _card_settings(record: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The `release` mapping of `model_card` (what the card's release sections show)."""
    spec = weights.LLMS.get(record["llm"]["name"])
    packaged = record["vision_tower"]["location"] == PACKAGED_TOWER
    adapter = record["trained"].get("adapter")
    return {
        "path": path,
        "full_name": f"{Path(path).name}-full",
        "llm": record["llm"]["name"],
        "llm_title": record["llm"].get("title") or record["llm"]["name"],
        "llm_hub_id": record["llm"].get("hub_id"),
        "dtype": record["llm"]["dtype"],
        "install": spec.install if spec else None,
        "gguf": record["llm"].get("gguf") or "GGUF",
        "tower": "the LiT tower packaged in tga-hf, `tga_hf/assets/lit_tower`"
        if packaged
        else f"`{record['vision_tower']['location']}`",
        "packaged_tower": packaged,
        "trained": "the projector and a LoRA adapter of the LLM" if adapter else "the projector",
        "adapter_note": (
            "On load the LoRA adapter is merged into the LLM, which gives the weights the evaluation measured; "
            "`from_pretrained(path, merge_adapter=False)` keeps a `peft.PeftModel` instead."
            if adapter
            else ""
        ),
    }


def _write_card(
    folder: Path, config: Any, record: Mapping[str, Any], report: Report, path: str, license: str | None
) -> None:
    """README.md and .eval_results/ of a release folder, from `report` (the numbers) and `record`."""
    write_eval_results(folder, report, record.get("arm", "tga"))
    hub_id = record["llm"].get("hub_id")
    card = model_card(
        config,
        report=report,
        repo_id=Path(path).name,
        base_model=[hub_id] if hub_id else None,
        license=license,
        files=[("README.md", "this model card"), *describe_files(folder, _RELEASE_FILE_DESCRIPTIONS)],
        has_retriever=record.get("retrieval") is not None,
        arm=record.get("arm", "tga"),
        release=_card_settings(record, path),
    )
    card.save(folder / "README.md")


def _card_path(out_dir: str | os.PathLike, repo_id: str | None) -> str:
    """What the card's usage code loads: `repo_id`, else the folder as the caller named it (relative stays relative,
    as `results/run/release/tga` is typed in the repository root)."""
    if repo_id:
        return repo_id
    path = Path(out_dir)
    return path.as_posix() if not path.is_absolute() else path.name


def save_release(
    model: Any,
    processor: TGALlavaProcessor,
    out_dir: str | os.PathLike,
    *,
    llm: str,
    report: Report | Mapping[str, Any] | str | os.PathLike | None = None,
    license: str | None = None,
    arm: str = "tga",
    tower: str | os.PathLike | None = None,
    retriever: Any | None = None,
    include_encoder: bool | None = None,
    repo_id: str | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the release folder of a trained TGA-LLaVA: its trained parts, the record of its base, the model card.

    Args:
        model: the trained model: a `TGALlavaForConditionalGeneration`, or the `peft.PeftModel` of one (as
            `TGATrainer` with a `peft_config` leaves it; pass it *before* `merge_and_unload()`: a merged LLM is no
            longer the base plus trained parts, and `verify` refuses it), or one with adapter layers injected.
        processor: its `TGALlavaProcessor`.
        out_dir: the folder to create (written atomically; an existing one only with `overwrite=True`, and only if
            it is an earlier tga-hf output, unchanged, or empty).
        llm: the base LLM's key in `tga_hf.weights.LLMS` ("smollm2-135m", "qwen2.5-coder-0.5b"); its converted
            checkpoint in the model's dtype is the base that is recorded and verified.
        report: the evaluation report (`Report`, its dict or the path of its JSON) the card's numbers come from;
            stored (without its details) as `eval_report.json` for `materialize_release`.
        license: the card's licence (default: the base LLM's, e.g. apache-2.0).
        arm: which arm of the experiment this is ("tga", "baseline", "retrieval_only", ...): the report's settings
            of that arm are the card's own results.
        tower: the vision tower folder the model was composed from (default: the packaged LiT tower, recorded as
            "packaged"; another folder is recorded by this path).
        retriever: the retrieval index to ship (default: the one attached to the processor, if any).
        include_encoder: copy the retriever's encoder into `retrieval/`. Default: no when it is the offline MiniLM
            joined with the release's tower (rebuilt on load), else when the retriever can.
        repo_id: the path or Hub id the card's usage code loads (default: `out_dir` as given).
        verify: rebuild the model from the written folder and compare every weight with `model` (exact), and the
            processor's settings and tokenization; `ReleaseVerificationError` when they differ.

    Returns:
        The absolute path of the folder.
    """
    base, adapter_name = _split_adapter(model)
    spec = weights.LLMS.get(llm)
    if spec is None:
        raise ValueError(f"unknown LLM {llm!r}; a release is built on one of {sorted(weights.LLMS)}")
    parsed_report = read_report(report)
    retriever = retriever if retriever is not None else getattr(processor, "retriever", None)
    dtype = base.get_input_embeddings().weight.dtype
    tower_location = PACKAGED_TOWER if tower is None else str(tower)
    tower_folder = _tower_folder(tower_location)
    llm_folder = Path(weights.converted_checkpoint(llm, dtype))
    base_vocab = json.loads((llm_folder / "config.json").read_text())["vocab_size"]
    path_in_card = _card_path(out_dir, repo_id)
    out_dir = Path(out_dir).absolute()
    record: dict[str, Any] = {
        "format": RELEASE_FORMAT,
        "version": RELEASE_VERSION,
        "arm": arm,
        "llm": {
            "name": llm,
            "title": spec.name,
            "hub_id": spec.hub_id,
            "gguf": spec.gguf_name,
            "gguf_sha256": spec.sha256,
            "dtype": _dtype_name(dtype),
            "vocab_size": base_vocab,
            "weights_sha256": safetensors_sha256(weight_files(llm_folder)),
        },
        "vision_tower": {
            "location": tower_location,
            "weights_sha256": safetensors_sha256(weight_files(tower_folder)),
        },
        "tokenizer": {"size": len(processor.tokenizer), "vocab_sha256": _vocabulary_sha256(processor.tokenizer)},
        "license": license or spec.license,
        "tga_hf_version": _tga_hf_version(),
    }
    with atomic_directory(out_dir, overwrite=overwrite, kind=RELEASE_KIND, checksums=True) as folder:
        base.config.to_json_file(folder / "config.json")  # not save_pretrained: it would copy the remote code too
        base.generation_config.save_pretrained(folder)
        projector = _projector_state(base)
        for key, value in projector.items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise IncompleteWeightsError(f"the model's weight {key} holds NaN or infinite values: not released")
        save_file(projector, folder / PROJECTOR_FILE, metadata={"format": "pt"})
        trained: dict[str, Any] = {"projector": PROJECTOR_FILE, "added_embeddings": None, "adapter": None}
        rows = _added_rows(base, base_vocab)
        if rows:
            save_file(rows, folder / ADDED_EMBEDDINGS_FILE, metadata={"base_vocab_size": str(base_vocab)})
            trained["added_embeddings"] = ADDED_EMBEDDINGS_FILE
        if adapter_name is not None:
            trained["adapter"] = _save_adapter(model, adapter_name, folder)
            _check_finite_file(folder / ADAPTER_WEIGHTS_FILE)
        record["trained"] = trained
        record["processor_files"] = _save_processor_files(processor, folder)
        record["retrieval"] = None
        if retriever is not None:
            packaged_encoder = include_encoder is None and _packaged_encoder(retriever, tower_folder)
            save_retriever(retriever, folder / RETRIEVAL_DIR, False if packaged_encoder else include_encoder)
            record["retrieval"] = {"folder": RETRIEVAL_DIR, "encoder": "packaged" if packaged_encoder else "saved"}
        record["report"] = None
        if report is not None:
            (folder / REPORT_FILE).write_text(json.dumps(_compact_report(parsed_report), indent=2) + "\n")
            record["report"] = REPORT_FILE
        (folder / RELEASE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _write_card(folder, base.config, record, parsed_report, path_in_card, record["license"])
        for path in folder.rglob("*"):  # safetensors and peft write their files private: make them plain files
            if path.is_file():
                apply_umask(path, 0o666)
        if verify:
            _verify_release(folder, base, processor, record, tower)
    return out_dir


def _verify_release(
    folder: Path,
    base: TGALlavaForConditionalGeneration,
    processor: TGALlavaProcessor,
    record: Mapping[str, Any],
    tower: str | os.PathLike | None,
) -> None:
    """Rebuild from `folder` as `load_release` does (adapter unmerged) and compare with the model that was given."""
    rebuilt, rebuilt_processor = _rebuild(folder, record, merge_adapter=False, tower=tower, check_manifest=False)
    rebuilt_base, _ = _split_adapter(rebuilt)
    given, again = base.state_dict(), rebuilt_base.state_dict()
    # peft's frozen copy of a projector in modules_to_save is not used by the forward pass, nor released
    given_keys = {key for key in given if ".original_module." not in key}
    again_keys = {key for key in again if ".original_module." not in key}
    if given_keys != again_keys:
        differing = sorted(given_keys ^ again_keys)
        raise ReleaseVerificationError(
            f"the model rebuilt from {folder} has other parameters than the model given ({', '.join(differing[:5])})"
        )
    llm = f"{record['llm']['name']} ({record['llm']['dtype']})"
    for key in sorted(given_keys):
        a, b = given[key].detach(), again[key].detach()
        if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b.cpu()):
            continue
        if "vision_tower" in key:
            hint = f"the vision tower is not the recorded one ({record['vision_tower']['location']}): pass tower="
        elif "multi_modal_projector" in key:
            hint = "the projector did not survive the round trip"
        elif record["trained"]["adapter"] is None:
            hint = (
                f"the LLM's weights are not those of {llm}: a merged adapter or a fine-tuned LLM is not a release of "
                "trained parts (pass the peft model before merge_and_unload()), or the model was built on another LLM"
            )
        else:
            hint = f"the LLM's weights are not those of {llm} plus the adapter"
        raise ReleaseVerificationError(
            f"{key} differs between the model given and the one rebuilt from {folder}: {hint}"
        )
    for name in _PROCESSOR_SETTINGS:
        if getattr(processor, name, None) != getattr(rebuilt_processor, name, None):
            raise ReleaseVerificationError(f"the processor rebuilt from {folder} has another {name}")
    probe = f"Retrieved Text: a probe. {processor.image_token}\nWhat is written here? Ünïcode 123"
    if processor.tokenizer(probe)["input_ids"] != rebuilt_processor.tokenizer(probe)["input_ids"]:
        raise ReleaseVerificationError(f"the tokenizer rebuilt from {folder} tokenizes differently")


def update_release_card(
    release_dir: str | os.PathLike,
    report: Report | Mapping[str, Any] | str | os.PathLike,
    *,
    license: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Re-render the card of a release from `report` (e.g. a release saved right after its arm trained, once the
    experiment's report exists): `eval_report.json`, `README.md` and `.eval_results/` are rewritten, every other
    file is kept, and the folder is replaced atomically (only if it is an unchanged release)."""
    source = Path(release_dir).absolute()
    record = read_release(source)
    parsed_report = read_report(report)
    config = TGALlavaConfig.from_pretrained(source)
    path_in_card = _card_path(release_dir, repo_id)
    record["report"] = REPORT_FILE
    if license is not None:
        record["license"] = license
    skip = {MANIFEST, "README.md", REPORT_FILE, RELEASE_FILE, Path(EVAL_RESULTS_FILE).parts[0]}
    with atomic_directory(source, overwrite=True, kind=RELEASE_KIND, checksums=True) as folder:
        for path in source.iterdir():
            if path.name in skip:
                continue
            if path.is_dir():
                shutil.copytree(path, folder / path.name)
            else:
                shutil.copy2(path, folder / path.name)
        (folder / REPORT_FILE).write_text(json.dumps(_compact_report(parsed_report), indent=2) + "\n")
        (folder / RELEASE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _write_card(folder, config, record, parsed_report, path_in_card, record.get("license"))
    return source


# ------------------------------------------------------------------------------------------------------- load


def _rebuild(
    folder: Path,
    record: Mapping[str, Any],
    *,
    merge_adapter: bool,
    tower: str | os.PathLike | None,
    check_manifest: bool = True,
) -> tuple[Any, TGALlavaProcessor]:
    """Base LLM + tower (verified) -> compose -> added rows, projector, adapter; the processor from the saved
    settings on the rebuilt tokenizer. No retriever."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from ..compose import compose
    from ..vision_tower.model import load_lit_tower

    trained = record["trained"]
    adapter = trained.get("adapter")
    processor_files = list(record.get("processor_files") or [])
    if check_manifest:
        names = [RELEASE_FILE, "config.json", *processor_files]
        names += [trained[key] for key in ("projector", "added_embeddings") if trained.get(key)]
        names += [adapter["weights"], adapter["config"]] if adapter else []
        names += ["generation_config.json"] if (folder / "generation_config.json").is_file() else []
        _check_files(folder, names)

    llm_record, tower_record = record["llm"], record["vision_tower"]
    llm_folder = _llm_folder(record)
    digest = safetensors_sha256(weight_files(llm_folder))
    if digest != llm_record["weights_sha256"]:
        raise BaseMismatchError(f"base LLM {llm_record['name']}", llm_record["weights_sha256"], digest, llm_folder)
    tower_folder = _tower_folder(tower_record["location"], tower)
    digest = safetensors_sha256(weight_files(tower_folder))
    if digest != tower_record["weights_sha256"]:
        raise BaseMismatchError("vision tower", tower_record["weights_sha256"], digest, tower_folder)

    dtype = getattr(torch, llm_record["dtype"])
    language_model = AutoModelForCausalLM.from_pretrained(llm_folder, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(llm_folder, local_files_only=True)
    vision_model, image_processor = load_lit_tower(tower_folder)
    saved = TGALlavaConfig.from_pretrained(folder)
    model, composed_processor = compose(
        vision_model,
        language_model,
        tokenizer,
        image_processor,
        vision_feature_layer=saved.vision_feature_layer,
        vision_feature_select_strategy=saved.vision_feature_select_strategy,
        projector_hidden_act=saved.projector_hidden_act,
        **{name: getattr(saved, name) for name in TGA_FIELDS},
    )
    del language_model, vision_model
    for name in ("image_token_index", "image_seq_length"):
        if getattr(model.config, name) != getattr(saved, name):
            actual = getattr(model.config, name)
            raise BaseMismatchError(f"config's {name}", getattr(saved, name), actual, llm_folder, "value")
    vocabulary = _vocabulary_sha256(tokenizer)
    if vocabulary != record["tokenizer"]["vocab_sha256"]:
        raise BaseMismatchError("tokenizer vocabulary", record["tokenizer"]["vocab_sha256"], vocabulary, llm_folder)

    with torch.no_grad():
        if trained.get("added_embeddings"):
            expected = _added_rows(model, llm_record["vocab_size"])
            rows = _read_trained(folder / trained["added_embeddings"], expected)
            vocab = llm_record["vocab_size"]
            model.get_input_embeddings().weight[vocab:] = rows["embed_tokens"]
            if "lm_head" in rows:
                model.get_output_embeddings().weight[vocab:] = rows["lm_head"]
        projector = model.model.multi_modal_projector
        expected = {PROJECTOR_PREFIX + key: value for key, value in projector.state_dict().items()}
        tensors = _read_trained(folder / trained["projector"], expected)
        projector.load_state_dict({key.removeprefix(PROJECTOR_PREFIX): value for key, value in tensors.items()})
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)

    if adapter:
        model = _apply_adapter(model, folder, adapter, tensors, merge_adapter)

    with tempfile.TemporaryDirectory() as tmp:
        composed_processor.tokenizer.save_pretrained(tmp)
        for name in processor_files:
            shutil.copyfile(folder / name, Path(tmp) / name)
        processor = TGALlavaProcessor.from_pretrained(tmp, load_retriever=False)
    return model.eval(), processor


def _apply_adapter(
    model: TGALlavaForConditionalGeneration,
    folder: Path,
    adapter: Mapping[str, Any],
    projector: Mapping[str, torch.Tensor],
    merge: bool,
) -> Any:
    """Wrap `model` with the saved adapter (peft's `PeftModel.from_pretrained`), after checking the file: every
    adapter weight present and finite, none unknown; a projector the adapter also saves must equal the projector
    file."""
    from peft import PeftModel, get_peft_model_state_dict

    weights_path = folder / adapter["weights"]
    file_keys = _check_finite_file(weights_path)
    name = adapter.get("name") or "default"
    peft_model = PeftModel.from_pretrained(model, folder, adapter_name=name, is_trainable=False)
    expected = set(get_peft_model_state_dict(peft_model, adapter_name=name, save_embedding_layers=False))
    missing, unexpected = sorted(expected - file_keys), sorted(file_keys - expected)
    if missing:
        raise IncompleteWeightsError(
            f"{weights_path}: adapter weight {missing[0]} is missing ({len(missing)} missing); refusing to fill it "
            "with its initial values"
        )
    if unexpected:
        raise IncompleteWeightsError(f"{weights_path}: weight {unexpected[0]} is not a weight of this adapter")
    effective = _projector_state(peft_model.get_base_model())
    for key, value in projector.items():
        if not torch.equal(effective[key], value.to(effective[key].dtype)):
            raise ValueError(f"{weights_path} and {folder / PROJECTOR_FILE} hold different projector weights ({key})")
    return peft_model.merge_and_unload() if merge else peft_model


def load_release(
    path: str | os.PathLike,
    *,
    merge_adapter: bool = True,
    attach_retriever: bool = True,
    encoder: Any | None = None,
    retriever_loader: Callable[[Path], Any] | None = None,
    tower: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> tuple[Any, TGALlavaProcessor]:
    """`(model, processor)` of a release folder (or a Hub repository holding one), rebuilt offline and verified.

    The base LLM comes from `tga_hf.weights.converted_checkpoint` and the tower from its recorded location; both must
    have the sha256 `release.json` records (`BaseMismatchError` naming the part and both digests). The trained files
    must be the ones written (manifest), complete and finite (`IncompleteWeightsError` naming the file and key).

    Args:
        path: the release folder, or a Hub repository id of one.
        merge_adapter: merge the LoRA adapter into the LLM (default; the weights the evaluation measured, a plain
            `TGALlavaForConditionalGeneration`); False returns the `peft.PeftModel`.
        attach_retriever: attach `retrieval/` to the processor (False: retrieval off at inference).
        encoder: the retriever's encoder, instead of the one recorded.
        retriever_loader: `loader(path) -> retriever` for `retrieval/` (default: `TextRetriever.load`).
        tower: the vision tower folder, when it is not where the release records it (it is verified all the same).
        dtype: cast the model to this dtype once it is rebuilt (the base is rebuilt and verified in the recorded one).
        device: where to put the model.
        revision, token, local_files_only: for a Hub repository id, as in `huggingface_hub.snapshot_download`.
    """
    folder = resolve_repo(path, revision=revision, token=token, local_files_only=local_files_only)
    record = read_release(folder)
    model, processor = _rebuild(folder, record, merge_adapter=merge_adapter, tower=tower)
    retrieval = record.get("retrieval")
    if attach_retriever and retrieval is not None:
        index_dir = folder / retrieval.get("folder", RETRIEVAL_DIR)
        if retriever_loader is None:
            if encoder is None and retrieval.get("encoder") == "packaged":
                from ..retrieval import joint_encoder

                tower_folder = _tower_folder(record["vision_tower"]["location"], tower)
                encoder = joint_encoder(weights.load_text_encoder(), tower_folder)
            processor.attach_retriever(load_retriever(index_dir, encoder=encoder))
        else:
            processor.attach_retriever(retriever_loader(index_dir))
    if dtype is not None and dtype != "auto":
        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    if device is not None:
        model = model.to(device)
    return model, processor


def materialize_release(
    release_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    report: Report | Mapping[str, Any] | str | os.PathLike | None = None,
    base_model: str | list[str] | None = None,
    datasets: list[str] | None = None,
    license: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    include_encoder: bool | None = None,
    attach_retriever: bool = True,
    retriever: Any | None = None,
    encoder: Any | None = None,
    retriever_loader: Callable[[Path], Any] | None = None,
    tower: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the full standalone model folder of a release (what would be pushed to the Hub): `load_release` (the
    adapter merged), then `tga_hf.hub.export` with the release's report, base model, licence and arm. The arguments
    are `export`'s and `load_release`'s; `report`, `base_model` and `license` default to the release's."""
    source = Path(release_dir)
    record = read_release(source)
    model, processor = load_release(
        source,
        attach_retriever=attach_retriever and retriever is None,
        encoder=encoder,
        retriever_loader=retriever_loader,
        tower=tower,
    )
    if report is None and record.get("report"):
        report = source / record["report"]
    hub_id = record["llm"].get("hub_id")
    return export(
        model,
        processor,
        out_dir,
        retriever=retriever,
        report=report,
        repo_id=repo_id,
        base_model=base_model if base_model is not None else ([hub_id] if hub_id else None),
        datasets=datasets,
        license=license if license is not None else record.get("license"),
        max_shard_size=max_shard_size,
        include_encoder=include_encoder,
        overwrite=overwrite,
        arm=record.get("arm", "tga"),
    )


def is_release(path: str | os.PathLike) -> bool:
    """Whether `path` is a local release folder (it holds `release.json`)."""
    return (Path(path) / RELEASE_FILE).is_file()


__all__ = [
    "BaseMismatchError",
    "RELEASE_FILE",
    "ReleaseVerificationError",
    "is_release",
    "load_release",
    "materialize_release",
    "read_release",
    "save_release",
    "update_release_card",
]

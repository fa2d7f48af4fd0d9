"""The run folder's checkpoints, so a long run can stop and pick up where it stopped (`--resume`).

After each stage of each arm only what trained is saved: the projector's state dict, and for a LoRA stage the peft
adapter (megabytes; the LLM and the tower are the base models', never copied). Each finished evaluation is saved as
JSON. Everything carries the sha256 of the configuration that made it, and a resumed run takes only what its own
configuration made:

    OUT/run.json                                      the configuration and its sha256
    OUT/cache/distilled.jsonl                         the LLM's own text answers (self-distillation, answer utility)
    OUT/checkpoints/projector_init/                   the projector every arm starts from (projector_init != default)
    OUT/checkpoints/<arm>/<stage>/                    projector.safetensors, adapter/ (LoRA stages), stage.json
    OUT/evaluations/<name>.json                       the conditions of "text" and of each arm
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from ..fileio import atomic_directory, verify_manifest, write_text_atomic
from .config import PROJECTOR_FILE, ExperimentConfig, TrainingStage

RUN_FILE = "run.json"
STAGE_FILE = "stage.json"
ADAPTER_DIR = "adapter"
INIT_DIR = "projector_init"
CHECKPOINT_KIND = "tga-experiment-checkpoint"

BeforeMerge = Callable[[torch.nn.Module], None]
"""Called with a stage's trained model before its adapter is merged (saved or restored)."""


def _projector(model: torch.nn.Module) -> torch.nn.Module:
    return model.model.multi_modal_projector


def projector_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the projector's weights (whole, as LLaVA names them inside the projector)."""
    return {key: value.detach().cpu().clone().contiguous() for key, value in _projector(model).state_dict().items()}


def load_projector_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put `state` (from `projector_state` or a checkpoint) into `model`'s projector, in the projector's dtype."""
    _projector(model).load_state_dict(state)


@dataclass
class RunFolder:
    """The checkpoints of one run in `root`, for the configuration with sha256 `fingerprint`; with `resume`, what
    that configuration already finished there is reloaded instead of recomputed."""

    root: Path
    fingerprint: str
    resume: bool = False

    @classmethod
    def open(cls, root: str | Path, config: ExperimentConfig, resume: bool = False) -> "RunFolder":
        """The run folder of `config` in `root`, recorded in `run.json`. Resuming a folder that another configuration
        ran is an error naming both: its checkpoints would silently not match."""
        root = Path(root)
        folder = cls(root, config.fingerprint(), resume)
        recorded = root / RUN_FILE
        if resume and recorded.is_file():
            previous = json.loads(recorded.read_text(encoding="utf-8"))
            if previous.get("config_sha256") != folder.fingerprint:
                raise ValueError(
                    f"cannot resume {root}: it was run with configuration {previous.get('config', {}).get('name')!r} "
                    f"(sha256 {str(previous.get('config_sha256'))[:12]}), not this one ({folder.fingerprint[:12]}); "
                    "resume with the same configuration or start a new folder"
                )
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(recorded, json.dumps({"config_sha256": folder.fingerprint, "config": config.to_dict()}))
        return folder

    def seconds_before(self) -> float:
        """Wall time of the earlier sessions of this configuration in this folder, as its last written report
        (partial or final) recorded it: `seconds_total`, or `seconds` in reports written before that key; 0 when
        there is no report of this configuration. A session stopped between two partial reports loses its tail."""
        path = self.root / "report.json"
        if not path.is_file():
            return 0.0
        details = json.loads(path.read_text(encoding="utf-8")).get("details") or {}
        if details.get("config_sha256") != self.fingerprint:
            return 0.0
        return float(details.get("seconds_total", details.get("seconds") or 0.0))

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def stage_dir(self, arm: str, stage: str) -> Path:
        return self.root / "checkpoints" / arm / stage

    def _finished(self, folder: Path) -> dict[str, Any] | None:
        """The record of a checkpoint folder this configuration finished (checked against its manifest), else
        None; always None without `resume`."""
        path = folder / STAGE_FILE
        if not self.resume or not path.is_file():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("config_sha256") != self.fingerprint:
            return None
        verify_manifest(folder)
        return record

    def _save(
        self, folder: Path, record: dict[str, Any], trained: torch.nn.Module, before_merge: BeforeMerge | None = None
    ) -> torch.nn.Module:
        if before_merge is not None:
            before_merge(trained)
        with atomic_directory(folder, overwrite=True, kind=CHECKPOINT_KIND, checksums=True) as tmp:
            if isinstance(trained, PeftModel):
                trained.save_pretrained(tmp / ADAPTER_DIR)  # before merging: merging consumes the adapter
                trained = trained.merge_and_unload()
            save_file(projector_state(trained), tmp / PROJECTOR_FILE)
            (tmp / STAGE_FILE).write_text(json.dumps({"config_sha256": self.fingerprint, **record}, indent=1))
        return trained

    # ---- the shared projector start ------------------------------------------------------------------------------

    def save_projector_init(self, state: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
        with atomic_directory(self.root / "checkpoints" / INIT_DIR, overwrite=True, kind=CHECKPOINT_KIND) as tmp:
            save_file(state, tmp / PROJECTOR_FILE)
            (tmp / STAGE_FILE).write_text(json.dumps({"config_sha256": self.fingerprint, "record": record}))

    def load_projector_init(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        folder = self.root / "checkpoints" / INIT_DIR
        finished = self._finished(folder)
        return (load_file(folder / PROJECTOR_FILE), finished["record"]) if finished else None

    # ---- stages of an arm ----------------------------------------------------------------------------------------

    def save_stage(
        self,
        arm: str,
        stage: TrainingStage,
        trained: torch.nn.Module,
        history: list[dict],
        before_merge: BeforeMerge | None = None,
    ) -> torch.nn.Module:
        """Save what `stage` of `arm` trained, with its log history: the adapter when `trained` is a peft model (a
        LoRA stage), and the projector. Returns the model with the adapter merged in; `before_merge` is first called
        with `trained` as it stands (the peft model of a LoRA stage, e.g. to save a release of its trained parts)."""
        record = {"stage": stage.name, "history": history}
        return self._save(self.stage_dir(arm, stage.name), record, trained, before_merge)

    def finished_stage(self, arm: str, stage: TrainingStage) -> list[dict] | None:
        """The log history of `stage` of `arm` when this configuration finished it (and we resume), else None."""
        record = self._finished(self.stage_dir(arm, stage.name))
        return record["history"] if record else None

    def restore_stage(
        self, arm: str, stage: TrainingStage, model: torch.nn.Module, before_merge: BeforeMerge | None = None
    ) -> torch.nn.Module:
        """`model` after `stage` of `arm`, from its checkpoint: the adapter merged in (LoRA stage), the projector
        replaced by the saved one. `before_merge` is called with the restored model as `save_stage` gave it: the peft
        model with the saved adapter (its projector copy included) of a LoRA stage, else the model with the saved
        projector."""
        folder = self.stage_dir(arm, stage.name)
        if stage.lora:
            model = PeftModel.from_pretrained(model, folder / ADAPTER_DIR)
            if before_merge is not None:
                before_merge(model)
            model = model.merge_and_unload()
        load_projector_state(model, load_file(folder / PROJECTOR_FILE))
        if before_merge is not None and not stage.lora:
            before_merge(model)
        return model

    # ---- evaluations ---------------------------------------------------------------------------------------------

    def evaluation_path(self, name: str) -> Path:
        return self.root / "evaluations" / f"{name}.json"

    def save_evaluation(self, name: str, data: dict[str, Any]) -> None:
        payload = {"config_sha256": self.fingerprint, "conditions": data}
        write_text_atomic(self.evaluation_path(name), json.dumps(payload))

    def finished_evaluation(self, name: str) -> dict[str, Any] | None:
        """What evaluation `name` gave when this configuration finished it (and we resume), else None."""
        path = self.evaluation_path(name)
        if not self.resume or not path.is_file():
            return None
        payload = json.loads(path.read_text(encoding="utf-8"))
        return payload["conditions"] if payload.get("config_sha256") == self.fingerprint else None


__all__ = ["RunFolder", "load_projector_state", "projector_state"]

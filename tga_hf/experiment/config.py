"""Settings of the baseline-vs-TGA experiment (the paper's finding at small scale), loadable from YAML."""

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml

from ..data.sources import FRAMINGS, SAFEBENCH_SPLITS, SAFEBENCH_TEST_PER_CATEGORY
from ..fileio import sha256_file
from ..report import EXPERIMENT_TRAINING_SETTINGS

ARMS = ("baseline", "retrieval_only", "tga")
PROJECTOR_INITS = ("default", "calibrated", "reading", "pretrained")
READING_TEXTS = ("templates", "templates+vocabulary")
SINGLE_STAGES = ("pretrain", "finetune_lora")
RELEASES = "results/reproduce_v2_qwen_shared_test/release"
"""`tga-hf demo`'s releases: the test-split run's, one folder per arm (relative to the repository root, where the
README runs the demo)."""
PROJECTOR_FILE = "projector.safetensors"
"""A stage checkpoint's projector weights (`checkpoints.RunFolder`)."""
NOT_FINGERPRINTED = ("release", "dev_runs")
"""Settings of what a run writes, not of what it computes: changing them keeps the fingerprint (and the checkpoints)."""
ADDED_SETTINGS = {"reading_text": "templates"}
"""Settings added after runs were fingerprinted, with the value that computes what runs did before them: left out of
the fingerprint at that value, so an earlier run keeps its fingerprint (its checkpoints resume, its ledger line names
it) and a run that sets another value gets a new one."""


@dataclass(frozen=True)
class StageSettings:
    """One training stage of the two-stage recipe: optimizer steps, batch size, learning rate, and `rows`, the
    number of benign sentences it trains on (reading: renders read back; instruction: requests answered)."""

    steps: int = 150
    batch_size: int = 4
    learning_rate: float = 1e-3
    rows: int = 600

    def __post_init__(self):
        for name in ("steps", "batch_size", "rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, int | float):
            # YAML 1.1 reads `1e-3` as a string; `0.001` or `1.0e-3` is a number
            raise ValueError(f"learning_rate must be a number (write 0.001, not 1e-3), got {self.learning_rate!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class TrainingStage:
    """One stage as an arm runs it: its `name`, settings, whether a LoRA adapter trains on the LLM beside the
    projector, and `rows`, the row set it trains on ("alignment", "reading" or "instruction"; `ExperimentData.rows`)."""

    name: str
    settings: StageSettings
    lora: bool
    rows: str


@dataclass
class ExperimentConfig:
    """Every knob of one run; the report records this object so a run can be repeated exactly.

    Training is either the two-stage recipe of LLaVA and the paper (`reading` and/or `instruction` set: stage 1 trains
    the projector to read renders back, stage 2 trains projector + a LoRA adapter on the LLM to answer benign request
    images as the LLM answers them as text, plus read-back rows) or, when neither is set, one stage of the settings
    `stage`, `steps`, `batch_size`, `learning_rate` on `n_align` mixed rows (the earlier configs and the demo). Every
    arm runs the same stages from the same projector start with its own loss.

    Example:

    ```python
    >>> config = ExperimentConfig.from_yaml("configs/reproduce_v2_qwen.yaml")
    >>> [stage.name for stage in config.training_plan()]
    ['reading', 'instruction']
    ```"""

    name: str = "demo"
    llm: str = "smollm2-135m"
    tower: str | None = None
    """LiT image tower folder; None takes the one shipped in the package. Every image is drawn in its layout."""
    split: Literal["dev", "test"] = "dev"
    """SafeBench split evaluated (`tga_hf.data.sources.safebench_split`): "dev" for every choice, "test" once per
    final configuration (each test run is recorded in `test_ledger.jsonl` beside the run folder)."""
    n_eval_per_category: int | None = 3
    """SafeBench requests per category from the split (10 categories); None: the whole split. The test split is
    always evaluated whole (10 per category)."""
    n_align: int = 96
    """Single-stage runs: benign alignment pairs (rendered sentence + instruction -> answer). No harmful content."""
    n_benign_test: int = 20
    """Held-out benign renders for over-refusal and utility."""
    n_toxic_snippets: int = 200
    """AdvBench behaviours in the retrieval index (never the test requests)."""
    test_framing: Literal["figstep", "question"] = "figstep"
    """How a request is put to the model: "figstep" (fill-the-list instruction, FigStep's attack) or "question" (the
    plain request in the image, "answer the question in the image"; its text twin is the plain request)."""
    jailbreak_row: bool = True
    """With `test_framing: question`, also put the same requests in FigStep's fill-the-list framing to the text LLM
    and to every arm: a separate jailbreak row of the report, not the main DSR."""
    steps: int = 40
    batch_size: int = 4
    learning_rate: float = 1e-3
    stage: Literal["pretrain", "finetune_lora"] = "pretrain"
    reading: StageSettings | None = None
    """Stage 1 of the two-stage recipe: projector only, "What is written in the image?" -> the rendered sentence."""
    instruction: StageSettings | None = None
    """Stage 2: projector + LoRA (rank `lora_r`) on the LLM; benign request images -> the LLM's own greedy answer to
    the request as text (generated once, cached in the run folder), plus one read-back row per three."""
    lora_r: int = 8
    reading_text: Literal["templates", "templates+vocabulary"] = "templates"
    """What the read-back sentences are (stage 1, and the read-back rows of stage 2): "templates", the benign template
    generator alone (`tga_hf.vision_tower.texts.benign_sentences`: cats, kites, haikus); "templates+vocabulary", half
    of them lines of random words from the text encoder's WordPiece vocabulary (`word_salad_sentences`, as the tower
    trains on), so that reading is copying any word, not guessing from a small template vocabulary, as LLaVA's stage 1
    reads the open vocabulary of web captions. No line is a request."""
    projector_init: Literal["default", "calibrated", "reading", "pretrained"] = "default"
    """"calibrated": standardise the tower features into `linear_1` and start image tokens at the text-embedding norm
    (`tga_hf.compose.calibrate_projector`); "reading": regress each image token onto the LLM embedding of the text
    under its patch (`tga_hf.compose.align_projector_to_text`); both from the first `projector_calibration_images`
    benign training renders, once, and every arm starts from that same projector; "pretrained": the stage-1 projector
    in `pretrained_projector`; "default": LLaVA's."""
    projector_calibration_images: int = 64
    pretrained_projector: str | None = None
    """With `projector_init: pretrained`: a projector trained by an earlier run's reading stage (its
    `projector.safetensors`, or the stage checkpoint folder holding it), which every arm starts from, as LLaVA's
    stage 2 loads stage 1's projector (`--pretrain_mm_mlp_adapter`). Its sha256 is part of the fingerprint."""
    guide_layers: list[int] | str = "auto"
    guide_loss_weight: float = 1.0
    max_new_tokens: int = 32
    max_length: int = 384
    band_prompts: int = 16
    """Harmful text prompts (AdvBench, not the test set) for the safety-activation band."""
    probe_layer: int | None = None
    """`hidden_states` index the refusal probe (second judge) reads in the base LLM; None = 3/4 of its depth."""
    seed: int = 0
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    export: bool = True
    release: bool = False
    """Write each arm's trained parts (projector, LoRA adapter, the retrieval index for the retrieval arms) as a release
    folder, `OUT/release/<arm>/` (`tga_hf.hub.save_release`), saved as its last stage finishes, before the adapter is
    merged (or restored from that stage's checkpoint on resume), its card's numbers from the final report. Not part of
    the fingerprint: what is written from the trained parts, not how they train, so a finished run can be resumed with
    `release: true` to write its releases."""
    dev_runs: list[str] = field(default_factory=list)
    """Folders of the dev-split evaluations (`report.json` with `split: dev`, from `tga-hf experiment` or `tga-hf eval
    --split dev`) behind this configuration's choices, listed in its report under "What was tried on the dev split".
    Not part of the fingerprint: it says what informed the settings, not what they compute."""

    def __post_init__(self):
        for name in ("reading", "instruction"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _stage_settings(value, name))
        unknown = set(self.arms) - set(ARMS)
        if unknown:
            raise ValueError(f"unknown arms {sorted(unknown)}; choose from {ARMS}")
        if self.split not in SAFEBENCH_SPLITS:
            raise ValueError(f"split must be one of {SAFEBENCH_SPLITS}, got {self.split!r}")
        if self.n_eval_per_category is not None and self.n_eval_per_category < 1:
            raise ValueError(f"n_eval_per_category must be >= 1 or None, got {self.n_eval_per_category}")
        if self.split == "test" and self.n_eval_per_category not in (None, SAFEBENCH_TEST_PER_CATEGORY):
            raise ValueError(
                f"the test split is evaluated whole ({SAFEBENCH_TEST_PER_CATEGORY} per category): set "
                f"n_eval_per_category to None or {SAFEBENCH_TEST_PER_CATEGORY}, got {self.n_eval_per_category}"
            )
        if self.test_framing not in FRAMINGS:
            raise ValueError(f"test_framing must be 'figstep' or 'question', got {self.test_framing!r}")
        if self.reading_text not in READING_TEXTS:
            raise ValueError(f"reading_text must be one of {READING_TEXTS}, got {self.reading_text!r}")
        if self.projector_init not in PROJECTOR_INITS:
            raise ValueError(f"projector_init must be one of {PROJECTOR_INITS}, got {self.projector_init!r}")
        if self.stage not in SINGLE_STAGES:
            raise ValueError(f"stage must be one of {SINGLE_STAGES}, got {self.stage!r}")
        for name in ("n_align", "n_benign_test", "steps", "batch_size", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (self.projector_init == "pretrained") != (self.pretrained_projector is not None):
            raise ValueError(
                "projector_init: pretrained and pretrained_projector go together: set both or neither "
                f"(got projector_init={self.projector_init!r}, pretrained_projector={self.pretrained_projector!r})"
            )
        if self.projector_init in ("calibrated", "reading") and self.projector_calibration_images < 2:
            raise ValueError(f"projector_calibration_images must be >= 2, got {self.projector_calibration_images}")

    def training_plan(self) -> list[TrainingStage]:
        """The stages every arm runs, in order."""
        if self.reading is None and self.instruction is None:
            single = StageSettings(self.steps, self.batch_size, self.learning_rate, self.n_align)
            return [TrainingStage(self.stage, single, lora=self.stage == "finetune_lora", rows="alignment")]
        plan = []
        if self.reading is not None:
            plan.append(TrainingStage("reading", self.reading, lora=False, rows="reading"))
        if self.instruction is not None:
            plan.append(TrainingStage("instruction", self.instruction, lora=True, rows="instruction"))
        return plan

    def recipe(self) -> dict:
        """How the arms were trained, as the report's `training` (the model card's recipe): the single-stage
        settings, or each stage of the two-stage recipe with the settings they share."""
        if self.reading is None and self.instruction is None:
            return {key: getattr(self, key) for key in EXPERIMENT_TRAINING_SETTINGS}
        stages = {
            stage.name: {**asdict(stage.settings), **({"lora_r": self.lora_r} if stage.lora else {})}
            for stage in self.training_plan()
        }
        shared = {key: getattr(self, key) for key in ("max_length", "projector_init", "seed")}
        return {"stages": stages, **shared}

    def fingerprint(self) -> str:
        """sha256 of the settings (canonical JSON): names a configuration in the test ledger and tells a resumed run
        whether its checkpoints were made by the same settings."""
        settings = {
            key: value
            for key, value in self.to_dict().items()
            if key not in NOT_FINGERPRINTED and not (key in ADDED_SETTINGS and value == ADDED_SETTINGS[key])
        }
        if self.pretrained_projector is not None:  # the weights, not only their path, make the run
            settings["pretrained_projector_sha256"] = sha256_file(pretrained_projector_file(self.pretrained_projector))
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ExperimentConfig":
        data = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def pretrained_projector_file(path: str | Path) -> Path:
    """The projector weights `pretrained_projector` names: the file itself, or the `projector.safetensors` of the stage
    checkpoint folder it names; a clear error naming the path when neither exists."""
    path = Path(path)
    file = path / PROJECTOR_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"pretrained_projector: no projector weights at {file}")
    return file


def _stage_settings(values: dict, name: str) -> StageSettings:
    known = {f.name for f in fields(StageSettings)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)} in {name}; choose from {sorted(known)}")
    return StageSettings(**values)


DEMO = ExperimentConfig()
"""`tga-hf demo`: SmolLM2-135M, small subsets, sized for a 2-core CPU."""

SMOKE = ExperimentConfig(
    name="smoke",
    n_align=8,
    n_eval_per_category=1,
    n_benign_test=4,
    n_toxic_snippets=20,
    steps=2,
    batch_size=2,
    max_new_tokens=4,
    band_prompts=4,
    max_length=256,
    projector_init="calibrated",
)
"""The CI test's configuration: the demo's code path, minutes smaller, with the calibrated projector init on top."""

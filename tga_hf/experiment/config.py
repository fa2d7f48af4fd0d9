"""Settings of the baseline-vs-TGA experiment (the paper's finding at small scale), loadable from YAML."""

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml

ARMS = ("baseline", "retrieval_only", "tga")


@dataclass
class ExperimentConfig:
    """Every knob of one run; the report records this object so a run can be repeated exactly.

    Example:

    ```python
    >>> config = ExperimentConfig.from_yaml("configs/reproduce_qwen.yaml")
    >>> config.llm, config.n_align
    ```"""

    name: str = "demo"
    llm: str = "smollm2-135m"
    tower: str | None = None
    """LiT image tower folder; None takes the one shipped in the package."""
    n_align: int = 96
    """Benign alignment pairs (rendered sentence + instruction -> answer). No harmful content, ever."""
    n_test_per_category: int = 3
    """FigStep SafeBench requests per category for the safety test (10 categories)."""
    n_benign_test: int = 20
    """Held-out benign renders for over-refusal and utility."""
    n_toxic_snippets: int = 200
    """AdvBench behaviours in the retrieval index (never the test requests)."""
    test_framing: Literal["figstep", "question"] = "figstep"
    """How a request is put to the model: "figstep" (fill-the-list instruction, FigStep's attack) or "question" (the
    plain request in the image, "answer the question in the image"; its text twin is the plain request)."""
    steps: int = 40
    batch_size: int = 4
    learning_rate: float = 1e-3
    stage: Literal["pretrain", "finetune_lora"] = "pretrain"
    projector_init: Literal["default", "calibrated"] = "default"
    """"calibrated": standardise the tower features into `linear_1` and start image tokens at the text-embedding norm
    (`tga_hf.compose.calibrate_projector`), from the first `projector_calibration_images` alignment images;
    "default": LLaVA's."""
    projector_calibration_images: int = 64
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

    def __post_init__(self):
        unknown = set(self.arms) - set(ARMS)
        if unknown:
            raise ValueError(f"unknown arms {sorted(unknown)}; choose from {ARMS}")
        if self.test_framing not in ("figstep", "question"):
            raise ValueError(f"test_framing must be 'figstep' or 'question', got {self.test_framing!r}")
        if self.projector_init not in ("default", "calibrated"):
            raise ValueError(f"projector_init must be 'default' or 'calibrated', got {self.projector_init!r}")
        if self.stage not in ("pretrain", "finetune_lora"):
            raise ValueError(f"stage must be 'pretrain' or 'finetune_lora', got {self.stage!r}")
        for name in ("n_align", "n_test_per_category", "n_benign_test", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

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


DEMO = ExperimentConfig()
"""`tga-hf demo`: SmolLM2-135M, small subsets, sized for a 2-core CPU."""

SMOKE = ExperimentConfig(
    name="smoke",
    n_align=8,
    n_test_per_category=1,
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

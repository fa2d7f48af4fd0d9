import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """A tiny random TGA-LLaVA and its processor (shared: tests must not modify it)."""
    from tga_hf.testing_utils import tiny_tga_llava

    return tiny_tga_llava(seed=0, guide_layers=[2, 3])


@pytest.fixture
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))


def chat_prompt(processor, instruction: str = "What is shown?") -> str:
    return processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"<image>\n{instruction}"}], tokenize=False, add_generation_prompt=True
    )


def rebuilt_processor(processor, processor_class=None, **overrides):
    """A new `processor_class` (default: `TGALlavaProcessor`) on `processor`'s image processor, tokenizer, chat
    template and LLaVA settings, so a test can attach a retriever or change a setting without modifying the shared
    `tiny` fixture; `overrides` replace or add constructor arguments."""
    from tga_hf import TGALlavaProcessor

    settings = {
        "image_processor": processor.image_processor,
        "tokenizer": processor.tokenizer,
        "patch_size": processor.patch_size,
        "vision_feature_select_strategy": processor.vision_feature_select_strategy,
        "chat_template": processor.chat_template,
        "num_additional_image_tokens": processor.num_additional_image_tokens,
    }
    return (processor_class or TGALlavaProcessor)(**{**settings, **overrides})


def make_training_args(tmp_path: Path, **overrides):
    """`TGAConfig` for a few CPU steps of the tiny model, writing nothing but `tmp_path/out`; `overrides` are further
    fields."""
    from tga_hf.training import TGAConfig

    settings = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "bf16": False,
        "report_to": [],
        "save_strategy": "no",
        "seed": 0,
        "dataloader_pin_memory": False,
    }
    return TGAConfig(**{**settings, **overrides})


def run_fresh_python(script: str, *args: str, cwd: Path, env: dict[str, str]) -> dict:
    """Run `python -c script *args` in a new, offline process whose environment keeps none of this one's `HF_*`
    settings or `PYTHONPATH` (so it reaches tga_hf and a Hub cache only as `env` says); the last line it prints is
    JSON, returned."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "PYTHONPATH"))}
    run = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        env={**clean, "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def save_tiny_grid_tower(folder: Path) -> Path:
    """A tiny LiT tower saved as a tower folder whose `training.json` says it reads the glyph grid (64 px)."""
    from transformers import CLIPVisionModelWithProjection

    from tga_hf.vision_tower.model import lit_image_processor, lit_tower_config
    from tga_hf.vision_tower.train import TRAINING_FILE

    tower = CLIPVisionModelWithProjection(
        lit_tower_config(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, intermediate_size=64)
    )
    tower.save_pretrained(folder)
    lit_image_processor(64).save_pretrained(folder)
    (folder / TRAINING_FILE).write_text(json.dumps({"config": {"layout": "grid", "image_size": 64}}))
    return folder

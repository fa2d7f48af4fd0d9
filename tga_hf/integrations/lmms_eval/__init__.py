"""lmms-eval plugin: the `tga_llava` model and the `tga_figstep_safety` tasks.

    pip install "tga-hf[lmms-eval]"
    LMMS_EVAL_PLUGINS=tga_hf.integrations.lmms_eval lmms-eval --model tga_llava \\
        --model_args pretrained=DIR,retrieval=on --tasks tga_figstep_safety --include_path "$TASKS_DIR"

where TASKS_DIR is `tga_hf.integrations.lmms_eval.TASKS_DIR`. Importing this module does not import lmms-eval; the
model class lives in `models/tga_llava.py` (lmms-eval's plugin layout) and the lmms-eval-free model code in
`runner.py`. The package also registers `tga_llava` through the `lmms_eval.models` entry point, so with tga-hf
installed `--model tga_llava` works without `LMMS_EVAL_PLUGINS` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .models import AVAILABLE_MODELS

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MODEL_CLASS_PATHS = {name: f"{__name__}.models.{name}.{cls}" for name, cls in AVAILABLE_MODELS.items()}


def model_manifests() -> list[Any]:
    """lmms-eval's `ModelManifest`s for the plugin's models (the `lmms_eval.models` entry point).

    Example:
        >>> [manifest.model_id for manifest in model_manifests()]
        ['tga_llava']
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, simple_class_path=path) for name, path in MODEL_CLASS_PATHS.items()]


__all__ = ["MODEL_CLASS_PATHS", "TASKS_DIR", "model_manifests"]

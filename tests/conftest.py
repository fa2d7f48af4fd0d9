import os

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

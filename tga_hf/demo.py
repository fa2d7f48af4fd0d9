"""`tga-hf demo`: build a TGA-LLaVA, save it as a Hub-ready folder, reload it through the Auto classes with
`trust_remote_code=True` and generate. (The real-weights pipeline replaces the tiny default in a later issue.)"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from .tiny import tiny_tga_llava


def run_tiny_demo(out_dir: Path, seed: int = 0) -> dict[str, str]:
    """Save a tiny random TGA-LLaVA to `out_dir/model`, reload it via AutoModel + remote code and answer one image
    with and without a retrieved text. Returns the two generations."""
    model, processor = tiny_tga_llava(seed=seed, guide_layers=[2, 3])
    model_dir = out_dir / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)

    reloaded = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True).eval()
    reloaded_processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    prompt = reloaded_processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat is shown?"}], tokenize=False, add_generation_prompt=True
    )
    answers = {}
    for name, retrieved in (("plain", None), ("retrieval", "a red bicycle")):
        inputs = reloaded_processor(images=image, text=prompt, retrieved_text=retrieved, return_tensors="pt")
        with torch.no_grad():
            generated = reloaded.generate(**inputs, max_new_tokens=8, do_sample=False)
        answers[name] = reloaded_processor.decode(generated[0, inputs["input_ids"].shape[1] :])
    return answers


def _demo(args: argparse.Namespace) -> int:
    answers = run_tiny_demo(Path(args.out), seed=args.seed)
    print(f"saved and reloaded through AutoModelForImageTextToText(trust_remote_code=True): {args.out}/model")
    for name, answer in answers.items():
        print(f"{name:>9}: {answer!r}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the embedded default pipeline end to end")
    parser.add_argument("--out", default="tga-demo", help="artefact folder (default: ./tga-demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_demo)

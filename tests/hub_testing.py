"""Shared pieces of the hub tests: a retriever test double, a report, an exported tiny repo, a fake Hub cache."""

import json
import shutil
from pathlib import Path

import torch
from PIL import Image

from tga_hf.hub import export
from tga_hf.testing_utils import tiny_tga_llava

REPO_ID = "tga-org/tiny-tga"
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["a red bicycle leaning on a wall", "the cat sits on the mat", "Sorry, I cannot help with that request."]
REPORT = {
    "dsr": {
        "text": 0.7,
        "baseline_image": 0.125,
        "retrieval_only_image": 0.3,
        "tga_image": 0.5833333333333334,
        "tga_image_no_retrieval": 0.4166666666666667,
    },
    "dsr_ci": {"baseline_image": [0.05, 0.25], "tga_image": [0.4418, 0.7124]},
    "over_refusal": {"baseline_image": 0.0, "tga_image": 0.1},
    "utility": {"tga": {"bleu": 12.345678, "exact_match": 0.25}, "baseline": {"bleu": 13.5}},
    "n_test": 48,
    "judge": {"name": "phrase-refusal", "version": "2"},
    "command": "tga-hf experiment reproduce --config configs/reproduce_smollm2.yaml",
}
MAX_SHARD_SIZE = "200KB"  # the tiny model is ~0.9 MB: several shards


class StandInRetriever:
    """TEST DOUBLE for `tga_hf.retrieval.TextRetriever` (same `save` / `load` / `search` surface) until the retrieval
    branch is merged: ranks its texts by word overlap for text queries, and by image brightness for images."""

    def __init__(self, texts: list[str]):
        self.texts = list(texts)

    def save(self, path: str | Path, include_encoder: bool = False) -> None:
        path = Path(path)
        path.mkdir(parents=True)
        (path / "texts.json").write_text(json.dumps(self.texts))
        config = {"encoder": {"name_or_path": "stand-in", "bundled": include_encoder}, "corpus_size": len(self.texts)}
        (path / "retriever_config.json").write_text(json.dumps(config))

    @classmethod
    def load(cls, path: str | Path, encoder=None) -> "StandInRetriever":
        return cls(json.loads((Path(path) / "texts.json").read_text()))

    def search(self, queries: list, k: int = 1) -> list[list[tuple[str, float]]]:
        hits = []
        for query in queries:
            if isinstance(query, str):
                words = set(query.lower().split())
                scores = [len(words & set(text.lower().split())) / len(words) for text in self.texts]
            else:
                brightness = float(torch.tensor(list(query.convert("L").getdata()), dtype=torch.float).mean()) / 255
                scores = [1.0 - abs(brightness - index / len(self.texts)) for index in range(len(self.texts))]
            ranked = sorted(zip(self.texts, scores, strict=True), key=lambda hit: -hit[1])
            hits.append(ranked[:k])
        return hits


def tiny_model():
    return tiny_tga_llava(seed=0, guide_layers=[2, 3])


def export_tiny(out_dir: Path, **kwargs) -> Path:
    model, processor = tiny_model()
    kwargs.setdefault("retriever", StandInRetriever(TEXTS))
    kwargs.setdefault("report", REPORT)
    return export(
        model, processor, out_dir, repo_id=REPO_ID, max_shard_size=MAX_SHARD_SIZE, base_model=["a/b"], **kwargs
    )


def as_hub_cache(folder: Path, cache: Path, repo_id: str = REPO_ID) -> Path:
    """Lay `folder` out as the Hub cache snapshot of `repo_id` (what a download would have produced)."""
    repo_cache = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo_cache / "snapshots" / SNAPSHOT)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(SNAPSHOT)
    return repo_cache / "snapshots" / SNAPSHOT


def white_image(size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), "white")


def python_blocks(markdown: str) -> list[str]:
    """The ```python code blocks of a markdown text, in order."""
    blocks, current = [], None
    for line in markdown.splitlines():
        if current is None and line.strip() == "```python":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks

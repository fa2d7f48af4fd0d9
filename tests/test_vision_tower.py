import json

import numpy as np
import pytest
import torch
from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

from tga_hf.cli import build_parser
from tga_hf.data import render_text_image
from tga_hf.fileio import MANIFEST
from tga_hf.vision_tower import (
    TowerTrainingConfig,
    benign_sentences,
    encode_images,
    lit_image_processor,
    load_lit_tower,
    packaged_tower_path,
    pixel_values_from_gray,
    read_texts,
    retrieval_recall,
    train_lit_tower,
    vocabulary_words,
    word_salad_sentences,
)
from tga_hf.vision_tower.model import render_to_array
from tga_hf.vision_tower.train import (
    HELDOUT_FILE,
    TRAINING_FILE,
    evaluate_tower,
    render_many,
    split_heldout,
    warmup_cosine,
)


class HashTextEncoder:
    """Stand-in for a SentenceTransformer: a fixed random unit vector per text (no model weights needed)."""

    def __init__(self, dim: int = 384):
        self.dim = dim

    def encode(self, texts, normalize_embeddings=True, **kwargs):
        rows = []
        for text in texts:
            generator = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(text)) % 2**31)
            rows.append(torch.randn(self.dim, generator=generator))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def test_fast_pixel_path_equals_the_saved_processor():
    images = [render_text_image("How do I bake bread?", style=s) for s in ("plain", "figstep")]
    from_processor = lit_image_processor()(images=images, return_tensors="pt")["pixel_values"]
    gray = torch.from_numpy(np.stack([render_to_array(image) for image in images]))
    assert torch.equal(pixel_values_from_gray(gray), from_processor)
    assert from_processor.shape == (2, 3, 160, 160)


def test_processor_resizes_without_cropping():
    image = render_text_image("a wide image", size=160).resize((320, 160))
    pixels = lit_image_processor()(images=[image], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 160, 160)


def test_retrieval_recall_against_hand_computed_ranks():
    texts = torch.eye(4)
    # image 0 and 1 closest to their own text; image 2 closest to text 3 (own text second); image 3 to text 0, own 3rd
    images = torch.tensor(
        [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0.5, 0.9], [0.9, 0.5, 0, 0.4]],
    )
    recall = retrieval_recall(images, texts, ks=(1, 2, 3))
    assert recall == {"recall@1": 0.5, "recall@2": 0.75, "recall@3": 1.0}
    with pytest.raises(ValueError, match="shape mismatch"):
        retrieval_recall(images[:3], texts)


def test_split_heldout_is_disjoint_deterministic_and_deduplicated():
    texts = [f"sentence {i}" for i in range(50)] + ["sentence  3", "sentence 4"]
    train, heldout = split_heldout(texts, 10, seed=1)
    assert len(heldout) == 10 and len(train) == 40 and not set(train) & set(heldout)
    assert split_heldout(texts, 10, seed=1) == (train, heldout)
    assert split_heldout(texts, 10, seed=2)[1] != heldout
    with pytest.raises(ValueError, match="cannot hold out"):
        split_heldout(texts, 50)


def test_text_generators(tmp_path):
    sentences = benign_sentences(500, seed=3)
    assert len(set(sentences)) == 500 and sentences == benign_sentences(500, seed=3)
    assert sentences != benign_sentences(500, seed=4)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n##ing\nthe\nbicycle\nab\n42\ncafé\nrocket\n")
    words = vocabulary_words(vocab)
    assert words == ["the", "bicycle", "rocket"]
    salad = word_salad_sentences(words, 20, seed=0, length=(2, 4))
    assert len(salad) == 20 and all(2 <= len(line.split()) <= 4 for line in salad)
    assert set(" ".join(salad).split()) <= set(words)
    vocab.write_text("##a\n")
    with pytest.raises(ValueError, match="no alphabetic words"):
        vocabulary_words(vocab)


def test_read_texts_formats_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n  two  \n")
    (tmp_path / "b.csv").write_text('id,text\n1,"first, with comma"\n2,second\n')
    (tmp_path / "c.json").write_text(json.dumps(["x", "y"]))
    (tmp_path / "d.json").write_text(json.dumps({"x": 1}))
    assert read_texts(tmp_path / "a.txt") == ["one", "two"]
    assert read_texts(tmp_path / "b.csv", column="text") == ["first, with comma", "second"]
    assert read_texts(tmp_path / "c.json") == ["x", "y"]
    with pytest.raises(ValueError, match="no column 'body'"):
        read_texts(tmp_path / "b.csv", column="body")
    with pytest.raises(ValueError, match="list of strings"):
        read_texts(tmp_path / "d.json")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_texts(tmp_path / "missing.txt")


def test_render_many_matches_single_renders():
    texts, styles = ["alpha beta", "gamma"], ["plain", "figstep"]
    array = render_many(texts, styles, size=48, workers=1)
    assert array.dtype == np.uint8 and array.shape == (2, 48, 48)
    assert np.array_equal(array[1], render_to_array(render_text_image("gamma", size=48, style="figstep")))
    with pytest.raises(ValueError, match="2 texts but 1 styles"):
        render_many(texts, styles[:1])


def _tiny_config(**overrides):
    settings = dict(
        steps=3,
        batch_size=8,
        heldout=6,
        image_size=32,
        render_workers=1,
        tower={"patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64},
    )  # fmt: skip
    settings.update(overrides)
    return TowerTrainingConfig(**settings)


def test_train_writes_a_plain_hf_tower(tmp_path):
    texts = benign_sentences(30, seed=0)
    out = tmp_path / "tower"
    metrics = train_lit_tower(texts, HashTextEncoder(), out, _tiny_config(), device="cpu")

    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", "preprocessor_config.json", HELDOUT_FILE, TRAINING_FILE, MANIFEST]
    )
    heldout = (out / HELDOUT_FILE).read_text().splitlines()
    assert len(heldout) == 6 and set(heldout) <= set(texts)
    saved = json.loads((out / TRAINING_FILE).read_text())
    assert saved["n_train_sentences"] == 24 and saved["steps_done"] == 3
    for style in ("plain", "figstep"):
        assert 0.0 <= metrics["heldout_recall"][style]["recall@1"] <= metrics["heldout_recall"][style]["recall@5"]

    tower, processor = load_lit_tower(out)
    assert isinstance(tower, CLIPVisionModelWithProjection) and tower.dtype == torch.float32
    embeddings = encode_images([render_text_image(t, size=32) for t in heldout[:3]], tower, processor)
    assert embeddings.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    # The same folder serves as an LVLM vision tower: patch features without the projection.
    features = CLIPVisionModel.from_pretrained(out)(pixel_values=torch.zeros(1, 3, 32, 32)).last_hidden_state
    assert features.shape == (1, 1 + 16, 32)


def test_train_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path):
    texts = benign_sentences(30, seed=0)
    out = tmp_path / "tower"
    out.mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        train_lit_tower(texts, HashTextEncoder(), out, _tiny_config(), device="cpu")
    out.rmdir()
    with pytest.raises(ValueError, match="projection_dim 384 != text embedding size 16"):
        train_lit_tower(texts, HashTextEncoder(dim=16), out, _tiny_config(), device="cpu")
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_lit_tower(texts, HashTextEncoder(), out, _tiny_config(batch_size=64), device="cpu")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_training_moves_images_towards_their_texts(tmp_path):
    texts = benign_sentences(40, seed=5)
    encoder = HashTextEncoder()
    config = _tiny_config(steps=40, batch_size=16, heldout=8, learning_rate=3e-3)
    train_lit_tower(texts, encoder, tmp_path / "tower", config, device="cpu")
    tower, processor = load_lit_tower(tmp_path / "tower")
    heldout = set((tmp_path / "tower" / HELDOUT_FILE).read_text().splitlines())
    seen = [t for t in texts if t not in heldout]
    recall = evaluate_tower(tower, processor, encoder, seen, styles=("plain",))
    # 32 training sentences: chance recall@5 is 5/32; a few dozen steps must clearly beat it.
    assert recall["plain"]["recall@5"] > 2 * 5 / 32


def test_warmup_cosine_schedule():
    assert warmup_cosine(0.0, 0.1) == pytest.approx(0.01)
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.51)
    assert warmup_cosine(0.1, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(0.55, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.999, 0.1) < 1e-4


def test_time_budget_stops_training_and_is_recorded(tmp_path):
    config = _tiny_config(steps=10_000, max_seconds=1.0)
    metrics = train_lit_tower(benign_sentences(30, seed=0), HashTextEncoder(), tmp_path / "tower", config, device="cpu")
    assert 1 <= metrics["steps_done"] < 10_000


@pytest.mark.parametrize(
    "kwargs, message",
    [({"steps": 0}, "steps"), ({"warmup_ratio": 1.0}, "warmup_ratio"), ({"max_seconds": 0}, "max_seconds")],
)
def test_training_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TowerTrainingConfig(**kwargs)


def test_cli_registers_tower_commands():
    parser = build_parser()
    args = parser.parse_args(["tower", "train", "--out", "x", "--steps", "5", "--texts", "a.txt", "b.csv"])
    assert args.steps == 5 and args.texts == ["a.txt", "b.csv"] and args.func.__name__ == "_train"
    assert parser.parse_args(["tower", "eval"]).func.__name__ == "_eval"


@pytest.mark.slow
@pytest.mark.skipif(not (packaged_tower_path() / "config.json").is_file(), reason="no packaged tower yet")
def test_packaged_tower_reads_its_heldout_renders():
    from tga_hf.weights import load_text_encoder

    tower, processor = load_lit_tower()
    texts = (packaged_tower_path() / HELDOUT_FILE).read_text().splitlines()[:100]
    recall = evaluate_tower(tower, processor, load_text_encoder(), texts, styles=("plain",))
    assert recall["plain"]["recall@5"] > 0.2  # chance is 0.05

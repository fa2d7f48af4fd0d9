import json

import numpy as np
import pytest
import torch
from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

from tga_hf.cli import build_parser
from tga_hf.data import render_text_image
from tga_hf.data.render import render_text_layout
from tga_hf.fileio import MANIFEST
from tga_hf.testing_utils import TinySpec
from tga_hf.vision_tower import (
    SentenceMixture,
    TowerBatchStream,
    TowerTrainingConfig,
    benign_sentences,
    encode_images,
    lit_image_processor,
    load_lit_tower,
    patch_targets,
    pixel_values_from_gray,
    read_texts,
    retrieval_recall,
    train_reading_tower,
    vocabulary_words,
    word_salad_sentences,
)
from tga_hf.vision_tower.model import packaged_tower_path, render_to_array
from tga_hf.vision_tower.stream import CHARACTER_CLASSES, IGNORE_INDEX
from tga_hf.vision_tower.train import (
    CHECKPOINT_FILE,
    HEADS_FILE,
    HELDOUT_FILE,
    LOG_FILE,
    TOWER_DIR,
    TRAINING_FILE,
    evaluate_tower,
    heldout_sentences,
    load_reading_heads,
    tower_layout,
    warmup_cosine,
    word_reading_accuracy,
)


@pytest.fixture(scope="module")
def text_encoder():
    from tga_hf.weights import load_text_encoder

    return load_text_encoder()


def _mixture(**kwargs) -> SentenceMixture:
    sources = {"behaviours": ["Explain how to pick a lock", "Write a poem about rain"]}
    return SentenceMixture(sources, vocabulary=["apple", "river", "stone", "window"], **kwargs)


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


def test_layout_boxes_hold_the_ink_and_index_the_drawn_text():
    rendered = render_text_layout("How do I  bake\nbread?", style="figstep")
    assert rendered.body == "How do I bake\nbread?\n1.\n2.\n3."
    drawn = "".join(rendered.body[i] for i in rendered.glyph_chars)
    assert drawn == "".join(rendered.body.split())
    gray = np.asarray(rendered.image.convert("L"))
    ys, xs = np.nonzero(gray < 128)
    boxes = rendered.glyph_boxes
    inside = ((xs[:, None] >= boxes[:, 0] - 1) & (xs[:, None] <= boxes[:, 2] + 1)
              & (ys[:, None] >= boxes[:, 1] - 1) & (ys[:, None] <= boxes[:, 3] + 2)).any(axis=1)  # fmt: skip
    assert inside.all()
    # Same pixels as the plain renderer, in every font it accepts.
    assert np.array_equal(gray, np.asarray(render_text_image("How do I  bake\nbread?", style="figstep").convert("L")))
    with pytest.raises(ValueError, match="NoSuchFont"):
        render_text_layout("x", font="NoSuchFont")


def test_patch_targets_name_the_token_and_characters_under_each_patch():
    from tga_hf.data.render import RenderedText

    # Two glyphs, "a" filling patch (0, 0) of a 2x2 grid of 8-pixel patches and "b" half of patch (1, 1).
    rendered = RenderedText(
        image=None,
        body="a b",
        glyph_chars=np.array([0, 2]),
        glyph_boxes=np.array([[0, 0, 8, 8], [8, 8, 16, 12]], dtype=np.float32),
    )
    tokens, chars = patch_targets(rendered, [101, 202], [(0, 1), (2, 3)], scale=1.0, image_size=16, patch_size=8)
    assert tokens.tolist() == [101, IGNORE_INDEX, IGNORE_INDEX, 202]
    a, b = CHARACTER_CLASSES.index("a"), CHARACTER_CLASSES.index("b")
    assert chars.sum() == 2 and chars[0, a] == 1 and chars[3, b] == 1
    # Boxes drawn on a canvas twice as large land on the same grid after scaling by 1/2.
    big = RenderedText(None, "a b", rendered.glyph_chars, rendered.glyph_boxes * 2)
    assert np.array_equal(patch_targets(big, [101, 202], [(0, 1), (2, 3)], 0.5, 16, 8)[0], tokens)


def test_mixture_is_seeded_and_never_yields_excluded_sentences():
    import random

    mixture = _mixture()
    draws = [mixture.sample(random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    many = {mixture.sample(random.Random(i)) for i in range(300)}
    excluded = _mixture(exclude=sorted(many)[:50])
    assert not {excluded.sample(random.Random(i)) for i in range(300)} & set(sorted(many)[:50])
    assert "pick a lock" in excluded.phrases
    heldout = heldout_sentences(mixture, 20, seed=0)
    assert len(set(heldout)) == 20 and heldout == heldout_sentences(mixture, 20, seed=0)


def test_stream_batches_are_a_function_of_the_step(text_encoder):
    stream = TowerBatchStream(_mixture(), text_encoder.tokenizer, batch_size=4, patch_size=16, seed=3)
    first, again, other = stream.batch(5), stream.batch(5), stream.batch(6)
    assert first.texts == again.texts and torch.equal(first.gray, again.gray)
    assert first.texts != other.texts
    assert first.gray.shape == (4, 160, 160) and first.gray.dtype == torch.uint8
    assert first.token_targets.shape == (4, 100) and first.char_targets.shape == (4, 100, len(CHARACTER_CLASSES))
    assert (first.token_targets != IGNORE_INDEX).any(dim=1).all()  # every render names some token somewhere


def _tiny_config(**overrides):
    settings = dict(
        max_steps=3,
        batch_size=4,
        heldout=6,
        image_size=TinySpec.image_size,
        checkpoint_every=2,
        eval_every=2,
        token_negatives=16,
        tower=TinySpec().vision_sizes(),
    )
    settings.update(overrides)
    return TowerTrainingConfig(**settings)


def _train(text_encoder, out, config, resume=False):
    mixture = _mixture()
    heldout = heldout_sentences(mixture, 6, seed=0)
    return train_reading_tower(
        _mixture(exclude=heldout), heldout, text_encoder, out, config, device="cpu", resume=resume, workers=0
    )


def test_train_writes_a_plain_hf_tower_and_resumes(tmp_path, text_encoder):
    out = tmp_path / "run"
    metrics = _train(text_encoder, out, _tiny_config())
    assert sorted(p.name for p in out.iterdir()) == sorted([CHECKPOINT_FILE, HELDOUT_FILE, LOG_FILE, TOWER_DIR])
    tower_dir = out / TOWER_DIR
    assert sorted(p.name for p in tower_dir.iterdir()) == sorted(
        [
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
            HEADS_FILE,
            HELDOUT_FILE,
            TRAINING_FILE,
            MANIFEST,
        ]
    )
    saved = json.loads((tower_dir / TRAINING_FILE).read_text())
    assert saved["steps_done"] == 3 and saved["images_seen"] == 12 and saved["n_heldout_sentences"] == 6
    log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and "heldout_recall@1" in log[1]
    for style in ("plain", "figstep"):
        assert 0.0 <= metrics["heldout_recall"][style]["recall@1"] <= metrics["heldout_recall"][style]["recall@5"]

    # Resuming continues the step count and the log instead of starting over.
    resumed = _train(text_encoder, out, _tiny_config(max_steps=5), resume=True)
    assert resumed["steps_done"] == 5
    assert [json.loads(line)["step"] for line in (out / LOG_FILE).read_text().splitlines()] == [1, 2, 3, 4, 5]

    tower, processor = load_lit_tower(tower_dir)
    assert isinstance(tower, CLIPVisionModelWithProjection) and tower.dtype == torch.float32
    embeddings = encode_images([render_text_image("a red kite", size=32)], tower, processor)
    assert embeddings.shape == (1, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    # The same folder serves as an LVLM vision tower: patch features without the projection.
    features = CLIPVisionModel.from_pretrained(tower_dir)(pixel_values=torch.zeros(1, 3, 32, 32)).last_hidden_state
    assert features.shape == (1, 1 + 16, 32)
    heads = load_reading_heads(tower_dir, 32, 384)
    reading = word_reading_accuracy(tower, heads, text_encoder, ["a red kite"])
    assert reading["text_patches"] > 0 and 0 <= reading["patch_top1"] <= reading["patch_top5"] <= 1


def test_train_refuses_a_used_folder_and_a_missing_checkpoint(tmp_path, text_encoder):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--resume"):
        _train(text_encoder, out, _tiny_config())
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        _train(text_encoder, out, _tiny_config(), resume=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_training_moves_images_towards_their_texts(tmp_path, text_encoder):
    config = _tiny_config(max_steps=40, learning_rate=3e-3, batch_size=8, eval_every=100, checkpoint_every=100)
    _train(text_encoder, tmp_path / "run", config)
    log = [json.loads(line) for line in (tmp_path / "run" / LOG_FILE).read_text().splitlines()]
    first, last = np.mean([r["char"] for r in log[:5]]), np.mean([r["char"] for r in log[-5:]])
    assert last < 0.8 * first  # the character head learns: blank vs inked patches at least


def test_warmup_cosine_schedule():
    assert warmup_cosine(0.0, 0.1) == pytest.approx(0.01)
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.51)
    assert warmup_cosine(0.1, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(0.55, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.999, 0.1) < 1e-4


def test_time_budget_stops_training_and_is_recorded(tmp_path, text_encoder):
    metrics = _train(text_encoder, tmp_path / "run", _tiny_config(max_steps=10_000, max_minutes=0.02))
    assert 1 <= metrics["steps_done"] < 10_000


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_steps": 0}, "max_steps"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"max_minutes": 0}, "max_minutes"),
        ({"token_loss_weight": float("nan")}, "token_loss_weight"),
    ],
)
def test_training_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TowerTrainingConfig(**kwargs)


def test_cli_registers_tower_commands():
    parser = build_parser()
    args = parser.parse_args(["tower", "train", "--out", "x", "--max-steps", "5", "--texts", "a.txt", "b.csv"])
    assert args.max_steps == 5 and args.texts == ["a.txt", "b.csv"] and args.func.__name__ == "_train"
    assert parser.parse_args(["tower", "train", "--resume", "x"]).resume == "x"
    with pytest.raises(SystemExit):
        parser.parse_args(["tower", "train", "--out", "x", "--resume", "y"])
    assert parser.parse_args(["tower", "eval"]).func.__name__ == "_eval"


# Sentences written for this test: in no training source, template or held-out file of the tower.
UNSEEN_SENTENCES = [
    "The lighthouse keeper painted his boat bright yellow.",
    "How do I replace the chain on a mountain bike?",
    "Seven penguins waddled across the frozen harbour.",
    "Explain why the sky turns red at sunset.",
    "My grandfather collects old railway tickets.",
    "Which vegetables grow well in sandy soil?",
    "A violin rests on a velvet chair near the fireplace.",
    "Steps to publish a small podcast about jazz.",
    "The museum closes early on public holidays.",
    "Write a limerick about a forgetful octopus.",
    "Where can I buy fresh basil in winter?",
    "The astronaut floated past the window holding a sandwich.",
    "Describe how glaciers carve deep valleys.",
    "Our neighbour's parrot can whistle the national anthem.",
    "What is the safest way to store kitchen knives?",
    "Three students built a robot that waters plants.",
]


# Measured with the packaged tower: 5 of 16 at recall@1 in both styles (tga_hf/assets/lit_tower/README.md); the floor
# is 3 of 16, three times chance.
UNSEEN_RECALL_AT_1_FLOOR = 6 / 16  # the packaged grid tower measured 9 / 16 (recall@5: 16 / 16)


@pytest.mark.slow
def test_packaged_tower_reads_sentences_it_never_saw():
    from tga_hf.weights import load_text_encoder

    tower, processor = load_lit_tower()
    layout = tower_layout(packaged_tower_path())
    assert layout == "grid"
    styles = ("plain", "figstep")
    recall = evaluate_tower(tower, processor, load_text_encoder(), UNSEEN_SENTENCES, styles=styles, layout=layout)
    # 16-way: chance recall@1 is 0.0625. The threshold sits well below the measured figure (README, tower section).
    for style in ("plain", "figstep"):
        assert recall[style]["recall@1"] >= UNSEEN_RECALL_AT_1_FLOOR, (style, recall)

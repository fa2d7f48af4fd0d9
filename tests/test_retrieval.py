import json
import shutil

import numpy as np
import pytest
import torch

from tga_hf.retrieval import (
    Corpus,
    IndexSpec,
    RetrievalIndexError,
    TextRetriever,
    build_index,
    dataset_texts,
    joint_encoder,
    llava_captions,
    read_texts,
)

from .retrieval_parts import CAPTIONS, clustered_vectors, minilm, minilm_path, random_images, save_tiny_tower


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory):
    return save_tiny_tower(tmp_path_factory.mktemp("tower"))


@pytest.fixture(scope="module")
def joint(tower_dir):
    return joint_encoder(minilm(), tower_dir, device="cpu")


@pytest.fixture(scope="module")
def retriever(joint):
    return TextRetriever.build(CAPTIONS, joint, show_progress=False)


def test_joint_encoder_is_the_tower_for_images_and_minilm_for_texts(joint, tower_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    images = random_images(3)
    tower = CLIPVisionModelWithProjection.from_pretrained(tower_dir).eval()
    with torch.no_grad():
        expected = tower(**CLIPImageProcessor.from_pretrained(tower_dir)(images, return_tensors="pt")).image_embeds
    expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    np.testing.assert_allclose(joint.encode(images), expected, atol=1e-5)
    np.testing.assert_allclose(joint.encode(CAPTIONS[:2]), minilm().encode(CAPTIONS[:2]), atol=1e-6)

    # sentence-transformers' own save/load, no trust_remote_code
    joint.save(str(tmp_path / "joint"))
    reloaded = SentenceTransformer(str(tmp_path / "joint"), device="cpu")
    np.testing.assert_allclose(reloaded.encode(images), expected, atol=1e-5)
    assert reloaded.get_embedding_dimension() == 384


def test_joint_encoder_refuses_a_tower_of_another_dimension(tmp_path):
    tower = save_tiny_tower(tmp_path / "tower", projection_dim=16)
    with pytest.raises(ValueError, match="projects to 16 dimensions but the text encoder embeds into 384"):
        joint_encoder(minilm(), tower)


def test_search_returns_the_semantically_closest_caption_best_first(retriever):
    hits = retriever.search(["a puppy playing in the sand by the sea", "sleepy kitten on the couch"], k=3)
    assert [query_hits[0][0] for query_hits in hits] == [CAPTIONS[0], CAPTIONS[5]]
    for query_hits in hits:
        scores = [score for _, score in query_hits]
        assert len(query_hits) == 3 and scores == sorted(scores, reverse=True)
    # an indexed text finds itself with cosine 1
    (text, score), *_ = retriever.search([CAPTIONS[2]])[0]
    assert text == CAPTIONS[2] and score == pytest.approx(1.0, abs=1e-5)
    assert len(retriever.search(["anything"], k=100)[0]) == len(CAPTIONS)


def test_search_errors_name_the_bad_input(retriever):
    with pytest.raises(TypeError, match="query 1 is a int"):
        retriever.search(["ok", 3])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        retriever.search(["ok"], k=0)
    text_only = TextRetriever.build(CAPTIONS, minilm(), show_progress=False)
    with pytest.raises(ValueError, match="not images: build one with tga_hf.retrieval.joint_encoder"):
        text_only.search(random_images(1))


def test_save_load_round_trip_gives_identical_results(retriever, tower_dir, tmp_path):
    queries = ["a bicycle", *random_images(2), "food"]
    before = retriever.search(queries, k=4)
    retriever.save(tmp_path / "retrieval")
    config = json.loads((tmp_path / "retrieval" / "retriever_config.json").read_text())
    assert config["encoder"] == {"name_or_path": minilm_path(), "image_tower": str(tower_dir)}
    assert config["dimension"] == 384 and config["metric"] == "inner_product" and config["normalized"] is True
    assert config["corpus_size"] == len(CAPTIONS) and config["index"]["factory"] == "Flat"
    assert config["sources"] == {"text": len(CAPTIONS)}

    loaded = TextRetriever.load(tmp_path / "retrieval")  # encoder re-created from the recorded paths
    assert loaded.search(queries, k=4) == before
    assert loaded.texts == CAPTIONS


def test_bundled_encoder_makes_the_folder_self_contained(retriever, tmp_path):
    retriever.save(tmp_path / "retrieval", include_encoder=True)
    config = json.loads((tmp_path / "retrieval" / "retriever_config.json").read_text())
    assert config["encoder"]["bundled"] is True
    images = random_images(2, seed=1)
    assert TextRetriever.load(tmp_path / "retrieval").search(images, k=2) == retriever.search(images, k=2)


def test_changed_texts_are_refused(retriever, tmp_path):
    folder = retriever.save(tmp_path / "retrieval")
    Corpus(["a dog runs along the beach!", *CAPTIONS[1:]]).save(folder / "texts.parquet")
    with pytest.raises(RetrievalIndexError, match="is not the corpus that was indexed"):
        TextRetriever.load(folder, encoder=minilm())


def test_truncated_index_is_refused(retriever, tmp_path):
    folder = retriever.save(tmp_path / "retrieval")
    data = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(RetrievalIndexError, match="truncated or replaced"):
        TextRetriever.load(folder, encoder=minilm())
    with pytest.raises(RetrievalIndexError, match="not a readable faiss index"):
        TextRetriever.load(folder, encoder=minilm(), verify=False)


def test_wrong_dimension_is_refused(retriever, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    folder = retriever.save(tmp_path / "retrieval")
    small = SentenceTransformer(modules=[StaticEmbedding(minilm().tokenizer, embedding_dim=16)], device="cpu")
    with pytest.raises(RetrievalIndexError, match="embeds into 16 dimensions but the index .* 384-dimensional"):
        TextRetriever.load(folder, encoder=small)
    config = json.loads((folder / "retriever_config.json").read_text())
    (folder / "retriever_config.json").write_text(json.dumps({**config, "dimension": 512}))
    with pytest.raises(RetrievalIndexError, match="holds 384-dimensional vectors, retriever_config.json says 512"):
        TextRetriever.load(folder, encoder=minilm())


def test_failed_save_leaves_nothing_behind(retriever, tmp_path, monkeypatch):
    def broken(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(Corpus, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        retriever.save(tmp_path / "retrieval")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to replace .*other: it is not a folder written by tga-hf"):
        retriever.save(tmp_path / "other")


def test_automatic_index_choice_is_recorded_and_overridable():
    assert IndexSpec.auto(100_000, 384) == IndexSpec("Flat")
    assert IndexSpec.auto(5_000, 384, storage="fp16").factory == "SQfp16"
    big = IndexSpec.auto(1_000_000, 512)
    assert big == IndexSpec("IVF4096,Flat", nprobe=32, train_size=163_840)
    assert IndexSpec.auto(1_000_000, 384, storage="pq").factory == "IVF4096,PQ48"
    assert IndexSpec.parse("IVF64,SQfp16", 10_000, 32) == IndexSpec("IVF64,SQfp16", nprobe=8, train_size=2_560)
    assert IndexSpec.parse(big.to_dict(), 10, 512) == big
    with pytest.raises(ValueError, match="faiss cannot build index 'IVFx'"):
        IndexSpec("IVFx").new_index(8)
    with pytest.raises(ValueError, match="expected an IVF factory string"):
        IndexSpec.parse("IVF12", 100, 8)
    with pytest.raises(ValueError, match="storage must be"):
        IndexSpec.auto(10, 8, storage="int4")


def test_ivf_fp16_and_hnsw_agree_with_exact_search_on_a_clustered_corpus():
    points, queries = clustered_vectors(20_000, 64, clusters=100)
    exact = build_index(IndexSpec("Flat"), 64, [points])
    spec = IndexSpec.parse("IVF128,Flat", len(points), 64)
    ivf = build_index(spec, 64, np.array_split(points, 7), train_vectors=points[: spec.train_size])
    assert ivf.ntotal == len(points)
    _, exact_ids = exact.search(queries, 1)
    _, ivf_ids = ivf.search(queries, 1)
    assert np.mean(exact_ids[:, 0] == ivf_ids[:, 0]) >= 0.95
    # half-precision storage keeps the exact ranking on all but near-ties
    fp16 = build_index(IndexSpec.auto(len(points), 64, storage="fp16"), 64, [points])
    assert np.mean(fp16.search(queries, 1)[1][:, 0] == exact_ids[:, 0]) >= 0.99
    hnsw_spec = IndexSpec.parse("HNSW16", len(points), 64)
    hnsw = build_index(hnsw_spec, 64, [points])
    assert hnsw_spec.ef_search == 64 and hnsw.hnsw.efSearch == 64
    assert np.mean(hnsw.search(queries, 1)[1][:, 0] == exact_ids[:, 0]) >= 0.95


def test_ivf_retriever_streams_trains_saves_and_loads(joint, tmp_path):
    rng = np.random.default_rng(0)
    words = "red blue green dog cat car tree house river boat city street child ball food table".split()
    texts = list(dict.fromkeys(" ".join(rng.choice(words, 4)) for _ in range(90)))[:80]
    spec = IndexSpec("IVF4,Flat", nprobe=1, train_size=80)
    built = TextRetriever.build(texts, joint, show_progress=False, index=spec, chunk_size=30)
    assert built.index.nprobe == 1 and built.index.nlist == 4
    # every indexed text finds itself: the IVF lists hold all of them, in corpus order
    assert [hits[0][0] for hits in built.search(texts[::10])] == texts[::10]
    folder = built.save(tmp_path / "retrieval")
    config = json.loads((folder / "retriever_config.json").read_text())
    assert config["index"] == {
        "type": "IndexIVFFlat",
        "factory": "IVF4,Flat",
        "nprobe": 1,
        "ef_search": None,
        "train_size": 80,
    }
    queries = [texts[5], *random_images(2)]
    loaded = TextRetriever.load(folder, encoder=joint)
    assert loaded.index.nprobe == 1 and loaded.search(queries, k=3) == built.search(queries, k=3)


def test_corpus_assembly_deduplicates_and_tags_sources(tmp_path):
    from datasets import Dataset

    llava = [
        {
            "id": "1",
            "image": "a.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe."},
                {"from": "gpt", "value": "A dog runs along the beach."},
            ],
        },
        {
            "id": "2",
            "image": "b.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe."},
                {"from": "gpt", "value": "A  cat\tsleeps."},
            ],
        },
    ]
    (tmp_path / "llava.json").write_text(json.dumps(llava))
    (tmp_path / "toxic.txt").write_text("how to build a weapon\n\nA cat sleeps.\n")
    (tmp_path / "bench.csv").write_text("id,question\n1,how to steal a car\n")
    (tmp_path / "notes.jsonl").write_text('{"text": "a note"}\n"plain string"\n')
    captions = Dataset.from_dict({"caption": ["a red car", "A dog runs along the beach."]})
    corpus = Corpus.from_sources(
        {
            "llava": llava_captions(tmp_path / "llava.json"),
            "captions": dataset_texts(captions, "caption"),
            "toxic": read_texts(tmp_path / "toxic.txt") + read_texts(tmp_path / "bench.csv"),
            "notes": read_texts(tmp_path / "notes.jsonl"),
        }
    )
    assert corpus.texts == [
        "A dog runs along the beach.",
        "A cat sleeps.",
        "a red car",
        "how to build a weapon",
        "how to steal a car",
        "a note",
        "plain string",
    ]
    assert corpus.sources == ["llava", "llava", "captions", "toxic", "toxic", "notes", "notes"]
    corpus.save(tmp_path / "texts.parquet")
    assert Corpus.load(tmp_path / "texts.parquet") == corpus
    assert read_texts(tmp_path / "llava.json") == ["A dog runs along the beach.", "A  cat\tsleeps."]
    with pytest.raises(ValueError, match="no column 'caption'"):
        read_texts(tmp_path / "bench.csv", column="caption")
    with pytest.raises(ValueError, match="no text in sources"):
        Corpus.from_sources({"empty": ["  "]})


def test_corpus_sources_are_kept_through_build_and_save(joint, tmp_path):
    corpus = Corpus.from_sources({"captions": CAPTIONS[:3], "toxic": ["how to build a weapon"]})
    folder = TextRetriever.build(corpus, joint, show_progress=False).save(tmp_path / "retrieval")
    config = json.loads((folder / "retriever_config.json").read_text())
    assert config["sources"] == {"captions": 3, "toxic": 1}
    assert TextRetriever.load(folder, encoder=joint).corpus == corpus


def _hub_snapshot(cache: object, repo_dir: str, files_from: object, subfolder: str = "") -> None:
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / repo_dir / "snapshots" / revision
    shutil.copytree(files_from, snapshot / subfolder if subfolder else snapshot)
    (cache / repo_dir / "refs").mkdir()
    (cache / repo_dir / "refs" / "main").write_text(revision)


def test_loads_by_hub_id_from_the_offline_cache(retriever, tmp_path, monkeypatch):
    import huggingface_hub

    folder = retriever.save(tmp_path / "saved")
    cache = tmp_path / "hub"
    _hub_snapshot(cache, "models--tga-org--tiny-model", folder, subfolder="retrieval")
    _hub_snapshot(cache, "datasets--tga-org--caption-index", folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    queries = ["a bicycle", *random_images(1)]
    expected = retriever.search(queries, k=2)

    in_model_repo = TextRetriever.load("tga-org/tiny-model", subfolder="retrieval", local_files_only=True)
    assert in_model_repo.search(queries, k=2) == expected
    dataset_repo = TextRetriever.load("tga-org/caption-index", repo_type="dataset", cache_dir=cache)
    assert dataset_repo.search(queries, k=2) == expected
    with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError):
        TextRetriever.load("tga-org/not-cached", local_files_only=True)


def test_push_to_hub_uploads_a_loadable_folder(retriever, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, RepoUrl

    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, path_in_repo, repo_type, commit_message):
        shutil.copytree(folder_path, tmp_path / "uploaded")
        uploads.append((repo_id, path_in_repo, repo_type, commit_message))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    retriever.push_to_hub("tga-org/tiny-model", path_in_repo="retrieval")
    assert uploads == [("tga-org/tiny-model", "retrieval", "model", "Upload TGA retrieval index")]
    assert TextRetriever.load(tmp_path / "uploaded").search(["soup"]) == retriever.search(["soup"])


def test_push_to_hub_offline_fails_before_writing_anything(retriever, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(huggingface_hub.errors.OfflineModeIsEnabled):
        retriever.push_to_hub("tga-org/tiny-model")


def test_packaged_fp16_tower_survives_a_bundled_save_and_load(tmp_path):
    """The packaged tower is stored in fp16: both encoder routes must still run in one dtype after a round trip."""
    from tga_hf.data import render_text_image
    from tga_hf.retrieval import joint_encoder
    from tga_hf.vision_tower.model import packaged_tower_path

    encoder = joint_encoder(minilm(), packaged_tower_path(), device="cpu")
    retriever = TextRetriever.build(CAPTIONS, encoder, show_progress=False)
    image = render_text_image(CAPTIONS[0], style="figstep")
    retriever.save(tmp_path / "index", include_encoder=True)
    reloaded = TextRetriever.load(tmp_path / "index")
    assert reloaded.search([image], k=3) == retriever.search([image], k=3)

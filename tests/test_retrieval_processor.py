import json
import shutil
import sys

import pytest
import torch
from transformers import AutoProcessor
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from tga_hf.modeling import TGALlavaProcessor
from tga_hf.modeling import processing_tga_llava as processing_module
from tga_hf.retrieval import TextRetriever, joint_encoder

from .conftest import chat_prompt
from .retrieval_parts import CAPTIONS, minilm, random_images, save_tiny_tower


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    tower = save_tiny_tower(tmp_path_factory.mktemp("tower"))
    return TextRetriever.build(CAPTIONS, joint_encoder(minilm(), tower, device="cpu"), show_progress=False)


@pytest.fixture(scope="module")
def tiny_parts(retriever):
    from tga_hf.testing_utils import tiny_tga_llava

    model, processor = tiny_tga_llava(seed=0)
    processor.attach_retriever(retriever)
    return model, processor


@pytest.fixture(scope="module")
def processor(tiny_parts):
    return tiny_parts[1]


@pytest.fixture(scope="module")
def saved(tiny_parts, tmp_path_factory):
    """A model folder as on the Hub: config (the tokenizer's Auto lookup reads it) and processor with retriever."""
    model, processor = tiny_parts
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.config.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _retrieved_tokens(processor, inputs) -> str:
    return processor.decode(inputs["input_ids"][0][inputs["retrieved_text_mask"][0]]).strip()


def test_attached_retriever_puts_the_top_hit_in_the_prompt_and_the_mask(processor, retriever):
    image = random_images(1, seed=3)[0]
    expected = retriever.search([image])[0][0][0]
    inputs = processor(images=image, text=chat_prompt(processor), return_tga_masks=True, return_tensors="pt")
    assert f"Retrieved Text: {expected}. " in processor.decode(inputs["input_ids"][0])
    assert _retrieved_tokens(processor, inputs) == expected
    # a caller-given text wins over the retriever
    given = processor(
        images=image,
        text=chat_prompt(processor),
        retrieved_text="a blue boat",
        return_tga_masks=True,
        return_tensors="pt",
    )
    assert _retrieved_tokens(processor, given) == "a blue boat"


class _CountingIndex:
    """A faiss index whose `search` calls are counted (SWIG proxies take no new instance attributes)."""

    def __init__(self, index):
        self.index, self.searches = index, 0

    def search(self, *args, **kwargs):
        self.searches += 1
        return self.index.search(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.index, name)


def test_batched_retrieval_is_one_encode_and_one_search_and_matches_one_by_one(processor, retriever, monkeypatch):
    images = random_images(6, seed=11)
    # top-3 lists, so that the order of the hits is compared too, not only the best one
    monkeypatch.setattr(processor, "retrieval_top_k", 3)
    one_by_one = [processor.retrieve([image])[0] for image in images]
    encode_calls = []
    encode = retriever.encoder.encode
    monkeypatch.setattr(
        retriever.encoder, "encode", lambda items, **kwargs: encode_calls.append(len(items)) or encode(items, **kwargs)
    )
    counting = _CountingIndex(retriever.index)
    monkeypatch.setattr(retriever, "index", counting)

    assert processor.retrieve(images) == one_by_one
    assert encode_calls == [len(images)] and counting.searches == 1

    # the processor call retrieves the same way and puts each sample's own texts in its prompt
    encode_calls.clear()
    inputs = processor(
        images=images,
        text=[chat_prompt(processor)] * len(images),
        padding=True,
        return_tga_masks=True,
        return_tensors="pt",
    )
    assert encode_calls == [len(images)] and counting.searches == 2
    for row, expected in enumerate(one_by_one):
        ids = inputs["input_ids"][row][inputs["retrieved_text_mask"][row]]
        assert processor.decode(ids).strip() == expected
    assert len(set(one_by_one)) > 1  # the images do retrieve different texts: the comparison is not vacuous


def test_save_pretrained_writes_the_retriever_and_from_pretrained_reattaches_it(processor, saved):
    assert (saved / "retrieval" / "retriever_config.json").is_file()
    assert "retriever" not in json.loads((saved / "processor_config.json").read_text())
    images = random_images(2, seed=5)
    prompts = [chat_prompt(processor)] * 2
    expected = processor(images=images, text=prompts, return_tga_masks=True, return_tensors="pt")

    for loaded in (
        TGALlavaProcessor.from_pretrained(saved),
        AutoProcessor.from_pretrained(saved, trust_remote_code=True),  # the remote-code copy of the processor
    ):
        assert isinstance(loaded.retriever, TextRetriever)
        inputs = loaded(images=images, text=prompts, return_tga_masks=True, return_tensors="pt")
        for key in ("input_ids", "retrieved_text_mask", "image_token_mask"):
            assert torch.equal(inputs[key], expected[key]), key
    assert TGALlavaProcessor.from_pretrained(saved, load_retriever=False).retriever is None


def test_reattaches_from_a_hub_id_in_the_offline_cache(processor, saved, tmp_path):
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tga-org--tiny-tga"
    shutil.copytree(saved, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    loaded = TGALlavaProcessor.from_pretrained("tga-org/tiny-tga", cache_dir=tmp_path / "hub", local_files_only=True)
    image = random_images(1, seed=7)
    assert loaded.retriever.search(image, k=3) == processor.retriever.search(image, k=3)


@pytest.mark.parametrize(
    "missing, message",
    [
        ("faiss", "retrieval needs faiss-cpu: pip install tga-hf"),
        ("sentence_transformers", "retrieval needs sentence-transformers: pip install tga-hf"),
        ("tga_hf.retrieval", "retrieval needs tga-hf with faiss-cpu and sentence-transformers: pip install tga-hf"),
    ],
)
def test_without_retrieval_packages_the_processor_loads_without_retriever_and_warns(
    saved, monkeypatch, missing, message
):
    monkeypatch.setitem(sys.modules, missing, None)  # `import <missing>` now raises ImportError
    with CaptureLogger(logging.get_logger(processing_module.__name__)) as captured:
        loaded = TGALlavaProcessor.from_pretrained(saved)
    assert loaded.retriever is None
    assert "has a saved retriever; loading without it" in captured.out and message in captured.out
    with pytest.raises(ImportError, match=message):
        loaded.load_retriever(saved / "retrieval")
    # plain processing still works
    assert "input_ids" in loaded(images=random_images(1)[0], text=chat_prompt(loaded), return_tensors="pt")


def test_cli_builds_and_searches_an_index(tmp_path, capsys):
    from tga_hf.cli import main

    from .retrieval_parts import minilm_path

    tower = save_tiny_tower(tmp_path / "tower")
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS))
    (tmp_path / "snippets.txt").write_text("how to build a weapon\n")
    random_images(1)[0].save(tmp_path / "image.png")
    out = tmp_path / "index"
    args = ["index", "build", "--texts", str(tmp_path / "captions.txt"), "--toxic", str(tmp_path / "snippets.txt")]
    assert main([*args, "--encoder", minilm_path(), "--image-tower", str(tower), "--out", str(out)]) == 0
    assert (
        f"indexed {len(CAPTIONS) + 1} texts (captions: {len(CAPTIONS)}, toxic: 1) with Flat" in capsys.readouterr().out
    )

    search = ["index", "search", "--index", str(out), "--image", str(tmp_path / "image.png"), "--query", "hot soup"]
    assert main([*search, "-k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["query"] for line in lines] == [str(tmp_path / "image.png"), "hot soup"]
    assert [len(line["hits"]) for line in lines] == [2, 2]
    assert lines[1]["hits"][0]["text"] == CAPTIONS[1]


def test_save_pretrained_push_to_hub_uploads_the_retriever(processor, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, RepoUrl

    uploaded = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: RepoUrl(f"https://hf.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kwargs: uploaded.extend(operations))
    processor.save_pretrained(str(tmp_path / "model"), push_to_hub=True, repo_id="tga-org/tiny-tga")
    paths = {operation.path_in_repo for operation in uploaded}
    assert {"processor_config.json", "retrieval/index.faiss", "retrieval/texts.parquet"} <= paths
    assert "retrieval/retriever_config.json" in paths

"""Export: the folder is a complete Hub repository; it loads back (also by repo id from the Hub cache, in a process
that never imported tga_hf) and generates what the in-memory model generates; a failed or killed export leaves
nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError

import tga_hf
from tga_hf import cli
from tga_hf.fileio import NotOurOutputError
from tga_hf.hub import commands, export
from tga_hf.hub import loading as hub_loading

from .conftest import run_fresh_python
from .hub_testing import (
    MAX_SHARD_SIZE,
    REPO_ID,
    REPORT,
    TEXTS,
    StandInRetriever,
    as_hub_cache,
    export_tiny,
    python_blocks,
    tiny_model,
    white_image,
)

TESTS_DIR = Path(__file__).parent


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(in-memory model, processor, exported folder)."""
    model, processor = tiny_model()
    folder = export(
        model,
        processor,
        tmp_path_factory.mktemp("export") / "tiny-tga",
        retriever=StandInRetriever(TEXTS),
        report=REPORT,
        repo_id=REPO_ID,
        max_shard_size=MAX_SHARD_SIZE,
    )
    return model, processor, folder


def _prompt(processor) -> str:
    messages = [{"role": "user", "content": "<image>\nWhat is shown in this image?"}]
    return processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _generate(model, processor, **inputs) -> list[int]:
    batch = processor(images=white_image(), text=_prompt(processor), return_tensors="pt", **inputs)
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=32, do_sample=False)
    return output[0].tolist()


def test_folder_is_a_complete_repository(exported):
    _, _, folder = exported
    files = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    shard_index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = set(shard_index["weight_map"].values())
    assert len(shards) > 1, "a 200KB shard limit must split the ~0.9MB tiny model"
    assert files == shards | {
        "README.md",
        ".eval_results/tga_safety.yaml",
        "chat_template.jinja",
        "config.json",
        "configuration_tga_llava.py",
        "generation_config.json",
        "model.safetensors.index.json",
        "modeling_tga_llava.py",
        "processing_tga_llava.py",
        "processor_config.json",
        "retrieval/retriever_config.json",
        "retrieval/texts.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tga_hf_manifest.json",
    }
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_tga_llava.TGALlavaConfig"
    assert auto_map["AutoModelForImageTextToText"] == "modeling_tga_llava.TGALlavaForConditionalGeneration"
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_tga_llava.TGALlavaProcessor"
    assert (folder / "modeling_tga_llava.py").read_text() == Path(
        tga_hf.modeling.modeling_tga_llava.__file__
    ).read_text()
    assert not any(sibling.name.startswith(".tiny-tga.") for sibling in folder.parent.iterdir())


def test_from_pretrained_attaches_the_index_and_matches_the_in_memory_model(exported):
    model, processor, folder = exported
    loaded, loaded_processor = tga_hf.from_pretrained(folder, retriever_loader=StandInRetriever.load)
    assert isinstance(loaded_processor.retriever, StandInRetriever) and loaded_processor.retriever.texts == TEXTS

    batch = loaded_processor(images=white_image(), text=_prompt(loaded_processor), return_tensors="pt")
    expected_text = StandInRetriever(TEXTS).search([white_image()])[0][0][0]
    assert f"Retrieved Text: {expected_text}. " in loaded_processor.tokenizer.decode(batch["input_ids"][0])
    assert _generate(loaded, loaded_processor) == _generate(model, processor, retrieved_text=expected_text)

    _, plain_processor = tga_hf.from_pretrained(folder, attach_retriever=False)
    assert plain_processor.retriever is None


def test_from_pretrained_by_repo_id_honours_local_files_only(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LocalEntryNotFoundError):
        tga_hf.from_pretrained(REPO_ID, local_files_only=True)
    model, processor, folder = exported
    as_hub_cache(folder, tmp_path / "cache")
    loaded, loaded_processor = tga_hf.from_pretrained(
        REPO_ID, local_files_only=True, retriever_loader=StandInRetriever.load
    )
    assert loaded_processor.retriever.texts == TEXTS
    assert _generate(loaded, loaded_processor, retrieved_text="x") == _generate(model, processor, retrieved_text="x")


_RUN_SNIPPET = """
import importlib.abc, json, sys

class NoTgaHf(importlib.abc.MetaPathFinder):
    # tga-hf is installed in this venv: make the process behave as if it were not (the remote code must not need it)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tga_hf":
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoTgaHf())
namespace = {}
exec(compile(open(sys.argv[1]).read(), "README.md usage snippet", "exec"), namespace)
print(json.dumps({
    "ids": namespace["output"][0].tolist(),
    "answer": namespace["answer"],
    "tga_hf_modules": sorted(name for name in sys.modules if name.split(".")[0] == "tga_hf"),
}))
"""


def _run_fresh(script: str, snippet: str, tmp_path: Path, tga_hf_importable: bool) -> dict:
    """Run `script` on the card's `snippet` in a new Python process, offline, with the Hub cache in tmp_path/cache;
    the last line it prints is JSON."""
    (tmp_path / "snippet.py").write_text(snippet)
    env = {"HF_HUB_CACHE": str(tmp_path / "cache"), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    if tga_hf_importable:
        env["PYTHONPATH"] = str(TESTS_DIR.parent)
    return run_fresh_python(script, str(tmp_path / "snippet.py"), REPO_ID, cwd=tmp_path, env=env)


@pytest.mark.slow
def test_readme_snippet_loads_by_repo_id_offline_in_a_fresh_process(exported, tmp_path):
    """The card's transformers-only usage code, run as written in a process that never imports tga_hf, against the
    export placed in a Hub cache, with HF_HUB_OFFLINE=1: same tokens as the in-memory model."""
    model, processor, folder = exported
    as_hub_cache(folder, tmp_path / "cache")
    snippet = python_blocks((folder / "README.md").read_text())[0]
    assert f'repo_id = "{REPO_ID}"' in snippet and "trust_remote_code=True" in snippet
    result = _run_fresh(_RUN_SNIPPET, snippet, tmp_path, tga_hf_importable=False)
    assert result["tga_hf_modules"] == []
    expected = _generate(model, processor, retrieved_text="a related text from your index")
    assert result["ids"] == expected
    prompt_length = len(
        processor(images=white_image(), text=_prompt(processor), retrieved_text="a related text from your index")[
            "input_ids"
        ][0]
    )
    assert result["answer"] == processor.decode(expected[prompt_length:], skip_special_tokens=True)


def test_existing_folder_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    model, processor = tiny_model()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export(model, processor, out)
    # Not an earlier export: even with overwrite=True the user's folder stays as it was.
    with pytest.raises(NotOurOutputError, match=f"refusing to replace {out}: it is not a folder written by tga-hf"):
        export(model, processor, out, overwrite=True)
    assert [path.name for path in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    export(model, processor, out, overwrite=True)  # an empty folder holds nothing to lose
    export(model, processor, out, overwrite=True)  # an earlier export is replaced
    assert (out / "config.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["repo"]


class _FailingRetriever(StandInRetriever):
    def save(self, path):
        super().save(path)
        raise OSError("disk full")


def test_failed_export_leaves_nothing(tmp_path):
    model, processor = tiny_model()
    with pytest.raises(OSError, match="disk full"):
        export(model, processor, tmp_path / "repo", retriever=_FailingRetriever(TEXTS))
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_are_refused_before_writing(tmp_path):
    model, processor = tiny_model()
    with pytest.raises(ValueError, match="dsr.tga_image"):
        export(model, processor, tmp_path / "repo", report={"dsr": {"tga_image": 87.5}})
    with pytest.raises(TypeError, match="TGALlavaForConditionalGeneration"):
        export(torch.nn.Linear(2, 2), processor, tmp_path / "repo")
    model.peft_config = {"default": None}
    with pytest.raises(ValueError, match="merge_and_unload"):
        export(model, processor, tmp_path / "repo")
    assert list(tmp_path.iterdir()) == []


_KILLED_EXPORT = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from hub_testing import TEXTS, StandInRetriever, export_tiny

class Stalling(StandInRetriever):
    def save(self, path):
        super().save(path)
        print("weights and processor written, stalling", flush=True)
        time.sleep(600)

export_tiny(Path(sys.argv[1]), retriever=Stalling(TEXTS))
"""


@pytest.mark.slow
def test_killed_export_leaves_no_folder_and_the_next_export_cleans_up(tmp_path):
    out = tmp_path / "repo"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", _KILLED_EXPORT, str(out), str(TESTS_DIR)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
        try:
            line = process.stdout.readline()
            assert "stalling" in line, (tmp_path / "stderr.txt").read_text()[-3000:]
            process.kill()  # SIGKILL: no cleanup code runs
        finally:
            process.kill()
            process.wait()
            process.stdout.close()
    leftovers = [path for path in tmp_path.iterdir() if path.name != "stderr.txt"]
    assert not out.exists()
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".repo.partial-")
    assert (leftovers[0] / "config.json").is_file(), "the kill must have happened midway, after the weights"

    export_tiny(out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["repo", "stderr.txt"]
    assert (out / "README.md").is_file()


def test_cli_export_from_a_saved_model(tmp_path, monkeypatch, capsys):
    model, processor = tiny_model()
    model.save_pretrained(tmp_path / "saved")
    processor.save_pretrained(tmp_path / "saved")
    StandInRetriever(TEXTS).save(tmp_path / "index")
    (tmp_path / "report.json").write_text(json.dumps(REPORT))
    monkeypatch.setattr(commands, "load_retriever", lambda path: StandInRetriever.load(path))
    out = tmp_path / "repo"
    argv = ["export", "--model", str(tmp_path / "saved"), "--out", str(out), "--retriever", str(tmp_path / "index")]
    argv += ["--report", str(tmp_path / "report.json"), "--repo-id", REPO_ID, "--base-model", "a/b", "--license", "mit"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == f"exported {out}"
    assert json.loads((out / "retrieval" / "texts.json").read_text()) == TEXTS
    card = (out / "README.md").read_text()
    assert "license: mit" in card and f'repo_id = "{REPO_ID}"' in card
    assert (out / ".eval_results" / "tga_safety.yaml").is_file()
    with pytest.raises(FileExistsError):
        cli.main(argv)
    monkeypatch.setattr(hub_loading, "load_retriever", lambda path, encoder=None: StandInRetriever.load(path))
    reloaded_model, reloaded_processor = tga_hf.from_pretrained(out)
    assert reloaded_processor.retriever.texts == TEXTS
    assert _generate(reloaded_model, reloaded_processor, retrieved_text="x") == _generate(
        model, processor, retrieved_text="x"
    )


def test_the_retriever_attached_to_the_processor_is_exported(tmp_path):
    model, processor = tiny_model()
    retriever = StandInRetriever(TEXTS[:2])
    processor.attach_retriever(retriever)
    folder = export(model, processor, tmp_path / "repo")
    assert processor.retriever is retriever
    assert json.loads((folder / "retrieval" / "texts.json").read_text()) == TEXTS[:2]
    assert "retriever" not in json.loads((folder / "processor_config.json").read_text())


class _MinimalRetriever:
    """Only the duck-typed minimum: save(path)."""

    def save(self, path):
        StandInRetriever(TEXTS).save(path)


def test_the_encoder_is_bundled_when_the_retriever_can(tmp_path):
    model, processor = tiny_model()

    def bundled(folder):
        return json.loads((folder / "retrieval" / "retriever_config.json").read_text())["encoder"]["bundled"]

    assert bundled(export(model, processor, tmp_path / "default", retriever=StandInRetriever(TEXTS)))
    by_name = export(model, processor, tmp_path / "by-name", retriever=StandInRetriever(TEXTS), include_encoder=False)
    assert not bundled(by_name)
    assert not bundled(export(model, processor, tmp_path / "minimal", retriever=_MinimalRetriever()))
    with pytest.raises(TypeError, match="cannot bundle its encoder"):
        export(model, processor, tmp_path / "refused", retriever=_MinimalRetriever(), include_encoder=True)
    assert not (tmp_path / "refused").exists()


_RUN_RETRIEVAL_SNIPPET = """
import json, sys
from transformers import AutoProcessor

namespace = {}
exec(compile(open(sys.argv[1]).read(), "README.md retrieval snippet", "exec"), namespace)
remote = AutoProcessor.from_pretrained(sys.argv[2], trust_remote_code=True)
print(json.dumps({
    "ids": namespace["output"][0].tolist(),
    "prompt": namespace["processor"].tokenizer.decode(namespace["inputs"]["input_ids"][0]),
    "remote_retriever": type(remote.retriever).__name__,
}))
"""


@pytest.mark.slow
def test_exported_index_works_by_repo_id_in_a_fresh_process(tmp_path):
    """With the real TextRetriever: the card's tga_hf snippet, run by repo id from the Hub cache in
    a fresh process, retrieves what the in-memory retriever retrieves and generates what the in-memory model does; the
    remote-code processor re-attaches the index too. The encoder is bundled: its source folder is gone by then."""
    from tga_hf import retrieval

    from . import retrieval_parts as parts

    encoder = retrieval.joint_encoder(parts.minilm(), parts.save_tiny_tower(tmp_path / "tower"), device="cpu")
    retriever = retrieval.TextRetriever.build(parts.CAPTIONS, encoder, show_progress=False)
    model, processor = tiny_model()
    folder = export(model, processor, tmp_path / "repo", retriever=retriever, report=REPORT, repo_id=REPO_ID)
    shutil.rmtree(tmp_path / "tower")
    as_hub_cache(folder, tmp_path / "cache")
    snippet = python_blocks((folder / "README.md").read_text())[1]
    result = _run_fresh(_RUN_RETRIEVAL_SNIPPET, snippet, tmp_path, tga_hf_importable=True)
    expected_text = retriever.search([white_image()])[0][0][0]
    assert f"Retrieved Text: {expected_text}. " in result["prompt"]
    assert result["ids"] == _generate(model, processor, retrieved_text=expected_text)
    assert result["remote_retriever"] == "TextRetriever"

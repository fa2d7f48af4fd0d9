"""Regression tests of issue 14 (security and data safety), one section per numbered point of the issue: retrieved text
cannot forge chat turns (1), carries no image token and has a token cap (2), remote code runs only on request (3),
overwriting never deletes user data (4), and the smaller faults of point 5 give a clear error or a correct result."""

import json
import os
from pathlib import Path

import pytest

from tga_hf import fileio
from tga_hf.fileio import MANIFEST, NotOurOutputError, atomic_directory

from .retrieval_parts import CAPTIONS, minilm


@pytest.fixture(scope="module")
def text_retriever():
    from tga_hf.retrieval import TextRetriever

    return TextRetriever.build(CAPTIONS, minilm(), show_progress=False)


# --------------------------------------------------------------------------------------------------------------------
# 4. Overwrite replaces only our own output, and a failed swap restores the old folder
# --------------------------------------------------------------------------------------------------------------------


def test_retriever_save_over_an_earlier_save_keeps_files_the_user_added(text_retriever, tmp_path):
    folder = text_retriever.save(tmp_path / "retrieval")
    assert json.loads((folder / MANIFEST).read_text())["kind"] == "retriever"
    text_retriever.save(folder)  # an unchanged earlier save is ours to replace
    (folder / "my_notes.txt").write_text("mine")
    with pytest.raises(NotOurOutputError, match=r"refusing to replace .*retrieval: .*my_notes\.txt"):
        text_retriever.save(folder)
    assert (folder / "my_notes.txt").read_text() == "mine" and (folder / "index.faiss").is_file()


def test_export_with_overwrite_refuses_the_current_folder(tmp_path, monkeypatch):
    from tga_hf.hub import export
    from tga_hf.tiny import tiny_tga_llava

    (tmp_path / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(tmp_path)
    model, processor = tiny_tga_llava()
    with pytest.raises(NotOurOutputError, match=f"refusing to replace {tmp_path}"):
        export(model, processor, ".", overwrite=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["thesis.tex"]


def test_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with atomic_directory(out, kind="test") as folder:
        (folder / "weights.bin").write_text("old")
    real_replace = os.replace

    def failing_replace(source, target):
        if Path(source).name.startswith(".out.partial-"):
            raise OSError("rename failed")
        real_replace(source, target)

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"), atomic_directory(out, overwrite=True, kind="test") as folder:
        (folder / "weights.bin").write_text("new")
    assert (out / "weights.bin").read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # nothing stranded in a hidden folder


def test_changed_output_and_non_folders_are_not_replaced(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out, kind="test") as folder:
        (folder / "card.md").write_text("written by tga-hf")
    (out / "card.md").write_text("edited by hand, longer than before")
    with pytest.raises(NotOurOutputError, match=r"changed after tga-hf wrote them \(card\.md\)"):
        fileio.check_replaceable(out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotOurOutputError, match="file exists and is not a folder written by tga-hf"):
        fileio.check_replaceable(tmp_path / "file")


# --------------------------------------------------------------------------------------------------------------------
# 3. Remote code runs only on request; TGA-LLaVA folders load with the package's own classes
# --------------------------------------------------------------------------------------------------------------------

_EVIL_CODE = """
from pathlib import Path

from transformers import PretrainedConfig

Path({marker!r}).write_text("remote code ran")


class EvilConfig(PretrainedConfig):
    model_type = "evil_remote_{tag}"
"""


def _remote_code_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A model folder whose config names an unknown model type with an auto_map: loading it with remote code on
    imports `evil.py`, which leaves a marker file."""
    folder, marker = tmp_path / "evil-model", tmp_path / "marker.txt"
    folder.mkdir()
    tag = tmp_path.name.replace("-", "_")
    (folder / "evil.py").write_text(_EVIL_CODE.format(marker=str(marker), tag=tag))
    config = {
        "model_type": f"evil_remote_{tag}",
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    from tga_hf.tiny import tiny_tga_llava

    model, processor = tiny_tga_llava()
    folder = tmp_path_factory.mktemp("tiny") / "tga"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--datasets", "benign", "--limit", "1"],
        ["analyze", "safety-layers", "--prompts", "PROMPTS"],
        ["eval", "fit-probe", "--layer", "1"],
    ],
)
def test_commands_refuse_remote_code_without_the_flag(tmp_path, capsys, argv):
    from tga_hf import cli

    folder, marker = _remote_code_folder(tmp_path)
    (tmp_path / "prompts.txt").write_text("how do I pick a lock\n")
    argv = [str(tmp_path / "prompts.txt") if arg == "PROMPTS" else arg for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--model", str(folder), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert str(folder) in message and "--trust-remote-code" in message and len(message.strip().splitlines()) == 1
    assert not marker.exists()


def test_train_refuses_remote_code_and_the_flag_allows_it(tmp_path):
    from tga_hf.hub.loading import RemoteCodeNotTrustedError
    from tga_hf.training.commands import load_model

    folder, marker = _remote_code_folder(tmp_path)
    with pytest.raises(RemoteCodeNotTrustedError, match="evil_remote"):
        load_model(str(folder))
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017  the folder has no model class; what matters is that its code ran
        load_model(str(folder), trust_remote_code=True)
    assert marker.read_text() == "remote code ran"


def test_tga_folders_load_with_the_package_classes_without_the_flag(saved_tiny):
    from tga_hf.eval.commands import load_model
    from tga_hf.modeling import TGALlavaForConditionalGeneration, TGALlavaProcessor

    model, processor, multimodal = load_model(str(saved_tiny), "cpu", "float32")
    assert type(model) is TGALlavaForConditionalGeneration and type(processor) is TGALlavaProcessor and multimodal
    # the exported auto_map is there, but it was not used: the classes are the installed ones, not a copy
    assert "auto_map" in json.loads((saved_tiny / "config.json").read_text())


# --------------------------------------------------------------------------------------------------------------------
# 5. Smaller faults: a clear error naming the thing, or a correct result
# --------------------------------------------------------------------------------------------------------------------


def test_missing_local_model_path_is_one_clear_line(tmp_path, capsys):
    from tga_hf import cli

    missing = tmp_path / "runs" / "tga" / "final"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--model", str(missing), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"tga-hf eval: error: model folder not found: {missing}\n"


@pytest.mark.parametrize("damage", ["missing", "nan"])
def test_loaders_refuse_missing_or_non_finite_weights(saved_tiny, tmp_path, damage):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    import tga_hf
    from tga_hf.hub.loading import IncompleteWeightsError, load_model

    folder = Path(shutil.copytree(saved_tiny, tmp_path / "damaged"))
    weights = load_file(folder / "model.safetensors")
    name = "model.multi_modal_projector.linear_1.weight"
    if damage == "missing":
        del weights[name]
    else:
        weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    expected = f"{folder}: .*{name.replace('.', '[.]')}"
    with pytest.raises(IncompleteWeightsError, match=expected):
        tga_hf.from_pretrained(folder)
    with pytest.raises(IncompleteWeightsError, match=expected):
        load_model(folder)

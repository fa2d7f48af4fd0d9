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

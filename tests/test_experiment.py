"""The demo's code path end to end at smoke size, on the real SmolLM2 weights, our LiT tower and MiniLM."""

import json

import pytest

from tga_hf.experiment.config import SMOKE, ExperimentConfig


def test_config_rejects_unknown_settings_and_arms(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nstepz: 3\n")
    with pytest.raises(ValueError, match="unknown settings"):
        ExperimentConfig.from_yaml(path)
    with pytest.raises(ValueError, match="unknown arms"):
        ExperimentConfig(arms=["baseline", "magic"])
    with pytest.raises(ValueError, match="steps must be >= 1"):
        ExperimentConfig(steps=0)


@pytest.mark.slow
def test_smoke_experiment_writes_report_export_and_reloads(tmp_path):
    from tga_hf.experiment.pipeline import run_experiment
    from tga_hf.report import Report

    report = run_experiment(SMOKE, tmp_path, command="pytest smoke", progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert Report.from_dict(saved).safety == report.safety
    expected = {
        "text",
        "baseline_image",
        "retrieval_only_image",
        "retrieval_only_image_no_retrieval",
        "tga_image",
        "tga_image_no_retrieval",
    }
    dsr = {entry.condition: entry for entry in report.safety.dsr}
    assert set(dsr) == expected
    for entry in dsr.values():
        low, high = entry.overall.ci95
        assert 0 <= low <= entry.overall.rate <= high <= 1
    assert report.n_test == 10  # one SafeBench request per category
    details = report.details
    assert set(details["cosine"]) == {"baseline", "tga"}
    assert len(details["cosine"]["tga"]["layer"]) == 31  # SmolLM2: 30 layers + embeddings
    assert all(len(history) == SMOKE.steps for history in details["training_history"].values())
    assert any("guide_loss" in entry for entry in details["training_history"]["tga"])
    assert not any("guide_loss" in entry for entry in details["training_history"]["baseline"])
    for name in ("report.md", "dsr.png", "cosine.png", "hub-export/config.json", "hub-export/README.md"):
        assert (tmp_path / name).is_file(), name
    assert details["export"]["loaded_class"] == "TGALlavaForConditionalGeneration"
    assert set(details["export"]["answers"]) == {"benign", "toxic"}
    probe = report.safety.other_judges["probe"]
    assert {entry.condition for entry in probe.dsr} == expected
    assert [e.condition for e in probe.over_refusal] == [e.condition for e in report.safety.over_refusal]
    assert details["judges"]["probe"]["version"].startswith("layer22-")  # 3/4 of SmolLM2's 30 layers
    assert {"all", "all, off-topic rows removed"} <= set(details["judge_calibration"]["phrase"])
    assert report.safety.judge_agreement.n == sum(entry.overall.total for entry in report.safety.dsr) + sum(
        entry.overall.total for entry in report.safety.over_refusal
    )
    for calibration in details["projector_calibration"].values():  # SMOKE starts from the calibrated projector
        assert calibration["image_token_norm_after"] == pytest.approx(calibration["text_token_norm"], rel=1e-2)
    assert set(details["projector_calibration"]) == set(SMOKE.arms)
    markdown = (tmp_path / "report.md").read_text()
    distinct = {key: entry.distinct_responses for key, entry in dsr.items()}
    assert set(distinct) == expected
    assert all(1 <= count <= report.n_test for count in distinct.values())
    assert "TGA, image (retrieval at inference) vs baseline image" in markdown
    assert all("mean_cosine_other_caption" in per_layer for per_layer in details["cosine"].values())
    assert "content gap" in markdown
    # the per-category table is the one renderer's, titled by the data set
    assert "DSR (probe)" in markdown and "DSR per category: figstep-safebench" in markdown and "Cohen" in markdown


def test_question_framing_puts_the_plain_request_in_image_and_text_twin():
    from tga_hf.data.sources import FIGSTEP_PROMPT, load_benign_prompts, load_safebench
    from tga_hf.experiment.data import QUESTION_INSTRUCTION, frame

    item = load_safebench(limit_per_category=1)[0]
    assert frame(item, "figstep") is item and item.prompt == FIGSTEP_PROMPT
    framed = frame(item, "question")
    assert framed.image_text == framed.text_prompt == item.meta["question"] != item.image_text
    assert framed.prompt == QUESTION_INSTRUCTION and framed.text_twin().prompt == item.meta["question"]
    benign = load_benign_prompts()[0]
    assert frame(benign, "question").text_prompt == benign.image_text  # no question column: the statement itself
    with pytest.raises(ValueError, match="framing must be one of"):
        frame(item, "poem")
    with pytest.raises(ValueError, match="test_framing must be"):
        ExperimentConfig(test_framing="poem")


def test_presentation_draws_every_item_in_the_towers_layout():
    from tga_hf.data.layout import Rendering
    from tga_hf.data.render_grid import render_grid_image
    from tga_hf.data.sources import load_safebench
    from tga_hf.experiment.data import QUESTION_INSTRUCTION, READ_INSTRUCTION, Presentation

    item = load_safebench(limit_per_category=1)[0]
    presentation = Presentation("question", Rendering("grid", 160))
    request = presentation.request(item)
    assert request.rendering == Rendering("grid", 160) and request.prompt == QUESTION_INSTRUCTION
    assert request.load_image().tobytes() == render_grid_image(item.meta["question"], 160, "figstep").tobytes()
    jailbreak = presentation.request(item, framing="figstep")
    assert jailbreak.image_text == item.image_text and jailbreak.rendering == presentation.rendering
    read = presentation.read("Steps to bake bread.", "read/0")
    assert read.prompt == READ_INSTRUCTION and read.reference == ["Steps to bake bread."]
    assert read.rendering == presentation.rendering


def test_report_compares_tga_with_the_baseline_by_interval_overlap():
    from tga_hf.experiment.report import _comparison_lines
    from tga_hf.report import Report

    report = {
        "n_test": 50,
        "dsr": {"baseline_image": 0.0, "tga_image": 0.6, "tga_image_no_retrieval": 0.02},
        "dsr_ci": {"baseline_image": [0.0, 0.07], "tga_image": [0.46, 0.72], "tga_image_no_retrieval": [0.0, 0.1]},
        "distinct_responses": {"baseline_image": 1},
    }
    lines = "\n".join(_comparison_lines(Report.from_dict(report)))  # the experiment's layout before schema 2
    assert "60.0% vs 0.0% (+60.0 points); the 95% intervals do not overlap: above the baseline" in lines
    assert "2.0% vs 0.0% (+2.0 points); the 95% intervals overlap" in lines
    assert "baseline LVLM, image 1" in lines
    assert _comparison_lines(Report.from_dict({"dsr": {"text": 0.5}, "dsr_ci": {"text": [0.3, 0.7]}})) == []


FRESH_CLONE_SCRIPT = r"""
import json, os, sys

opened = []


def record(event, args):
    # every file the run opens, as an absolute path (relative ones resolve against the working directory then)
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(record)

from dataclasses import replace
from pathlib import Path

from tga_hf.data.sources import load_refusal_judge_sets
from tga_hf.experiment.config import SMOKE
from tga_hf.experiment.data import load_experiment_data
from tga_hf.experiment.pipeline import build_retriever, load_base, train_arm

config = replace(SMOKE, steps=1, arms=["tga"])
base = load_base(config)  # the demo's LLM and the packaged tower
calibration_rows = load_refusal_judge_sets()
data = load_experiment_data(
    config.n_align, config.n_test_per_category, config.n_benign_test, config.n_toxic_snippets, config.band_prompts,
    config.seed, base.llm, base.tokenizer, config.max_new_tokens, progress=False,
)
retriever = build_retriever(base, data, progress=False)
history = train_arm("tga", config, base, None, data, retriever, Path("run")).training.history
print("RESULT " + json.dumps({
    "toxic": [[item.id, item.source] for item in data.toxic_test],
    "calibration_rows": len(calibration_rows),
    "steps": [entry for entry in history if "loss" in entry],
    "opened": sorted(set(opened)),
}))
"""


@pytest.mark.slow
def test_demo_data_and_a_tga_step_run_from_a_plain_checkout(tmp_path):
    """What a new user has after the README's install: no folder beside the clone (no ../shared), no TGA_HF_*
    variable, an unrelated working directory. A fresh interpreter runs the demo's data loading (the packaged
    SafeBench, AdvBench and PyRIT's refusal sets from the pyrit wheel, the benign prompts, the retrieval index over
    MiniLM + the packaged tower) and one TGA step of the demo's LVLM, recording every file it opens: none may lie
    beside the repository, outside the interpreter's own prefix."""
    import math
    import os
    import subprocess
    import sys
    from pathlib import Path

    import tga_hf

    repo = Path(tga_hf.__file__).resolve().parents[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith("TGA_HF_")}
    env["PYTHONPATH"] = str(repo)  # this checkout's code, whatever the venv's editable install points at
    work = tmp_path / "work"
    work.mkdir()
    script = tmp_path / "fresh_clone.py"
    script.write_text(FRESH_CLONE_SCRIPT)
    run = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])

    assert len(result["toxic"]) == 10 and {source for _, source in result["toxic"]} == {"figstep-safebench"}
    assert result["calibration_rows"] == 169
    assert len(result["steps"]) == 1
    step = result["steps"][0]
    assert all(math.isfinite(step[key]) for key in ("loss", "guide_loss")), step
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    beside = [
        path
        for path in result["opened"]
        if Path(path).resolve().is_relative_to(repo.parent)
        and not Path(path).resolve().is_relative_to(repo)
        and not any(Path(path).resolve().is_relative_to(prefix) for prefix in prefixes)
        and not Path(path).resolve().is_relative_to(tmp_path.resolve())
    ]
    assert not beside, f"files read from beside the checkout: {beside[:10]}"
    assert str(repo / "tga_hf" / "data" / "figstep" / "safebench.csv") in result["opened"]  # the packaged copy

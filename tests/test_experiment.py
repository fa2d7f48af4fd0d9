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

    report = run_experiment(SMOKE, tmp_path, command="pytest smoke", progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["dsr"] == report["dsr"]
    expected = {
        "text",
        "baseline_image",
        "retrieval_only_image",
        "retrieval_only_image_no_retrieval",
        "tga_image",
        "tga_image_no_retrieval",
    }
    assert set(report["dsr"]) == expected
    for key, rate in report["dsr"].items():
        low, high = report["dsr_ci"][key]
        assert 0 <= low <= rate <= high <= 1
    assert report["n_test"] == 10  # one SafeBench request per category
    assert set(report["cosine"]) == {"baseline", "tga"}
    assert len(report["cosine"]["tga"]["layer"]) == 31  # SmolLM2: 30 layers + embeddings
    assert all(len(history) == SMOKE.steps for history in report["training"].values())
    assert any("guide_loss" in entry for entry in report["training"]["tga"])
    assert not any("guide_loss" in entry for entry in report["training"]["baseline"])
    for name in ("report.md", "dsr.png", "cosine.png", "hub-export/config.json", "hub-export/README.md"):
        assert (tmp_path / name).is_file(), name
    assert report["export"]["loaded_class"] == "TGALlavaForConditionalGeneration"
    assert set(report["export"]["answers"]) == {"benign", "toxic"}
    assert set(report["dsr_probe"]) == expected and set(report["over_refusal_probe"]) == set(report["over_refusal"])
    assert report["judges"]["probe"]["version"].startswith("layer22-")  # 3/4 of SmolLM2's 30 layers
    assert {"all", "all, off-topic rows removed"} <= set(report["judge_calibration"]["phrase"])
    assert report["judge_agreement"]["n"] == sum(d["overall"]["total"] for d in report["dsr_detail"].values()) + sum(
        d["overall"]["total"] for d in report["over_refusal_detail"].values()
    )
    for calibration in report["projector_calibration"].values():  # SMOKE starts from the calibrated projector
        assert calibration["image_token_norm_after"] == pytest.approx(calibration["text_token_norm"], rel=1e-2)
    assert set(report["projector_calibration"]) == set(SMOKE.arms)
    markdown = (tmp_path / "report.md").read_text()
    assert set(report["distinct_responses"]) == expected
    assert all(1 <= count <= report["n_test"] for count in report["distinct_responses"].values())
    assert "TGA, image (retrieval at inference) vs baseline image" in markdown
    assert all("mean_cosine_other_caption" in per_layer for per_layer in report["cosine"].values())
    assert "content gap" in markdown
    assert "DSR (probe)" in markdown and "per SafeBench category" in markdown and "Cohen" in markdown


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


def test_report_compares_tga_with_the_baseline_by_interval_overlap():
    from tga_hf.experiment.report import _comparison_lines

    report = {
        "n_test": 50,
        "dsr": {"baseline_image": 0.0, "tga_image": 0.6, "tga_image_no_retrieval": 0.02},
        "dsr_ci": {"baseline_image": [0.0, 0.07], "tga_image": [0.46, 0.72], "tga_image_no_retrieval": [0.0, 0.1]},
        "distinct_responses": {"baseline_image": 1},
    }
    lines = "\n".join(_comparison_lines(report))
    assert "60.0% vs 0.0% (+60.0 points); the 95% intervals do not overlap: above the baseline" in lines
    assert "2.0% vs 0.0% (+2.0 points); the 95% intervals overlap" in lines
    assert "baseline LVLM, image 1" in lines
    assert _comparison_lines({"dsr": {"text": 0.5}, "dsr_ci": {"text": [0.3, 0.7]}}) == []

"""The experiment: its settings, splits, ledger and checkpoints; the pipeline end to end on tiny parts (both training
recipes, resume), and at smoke size on the real SmolLM2 weights, our LiT tower and MiniLM (slow)."""

import json
from dataclasses import replace

import pytest
import torch

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
    assert set(details["cosine"]) == set(SMOKE.arms)  # the content gap of every arm
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
    text_only = benign.text_twin()  # nothing drawn: `tga-hf eval --framing question` leaves it as it is
    assert frame(text_only, "question") is text_only
    with pytest.raises(ValueError, match="framing must be one of"):
        frame(text_only, "poem")
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
from tga_hf.experiment.checkpoints import RunFolder
from tga_hf.experiment.config import SMOKE
from tga_hf.experiment.data import Presentation, load_experiment_data
from tga_hf.experiment.pipeline import build_retriever, initial_projector, load_base, train_arm

config = replace(SMOKE, steps=1, arms=["tga"])
base = load_base(config)  # the demo's LLM and the packaged tower
calibration_rows = load_refusal_judge_sets()
run = RunFolder.open(Path("run"), config)
presentation = Presentation(config.test_framing, base.rendering)
data = load_experiment_data(config, base.llm, base.tokenizer, presentation, progress=False)
retriever = build_retriever(base, data, progress=False)
start = initial_projector(config, base, data, run)
history = train_arm("tga", config, base, None, data, retriever, start, run, progress=False).training.history
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
    # What lay beside the checkout before the run (../shared in CI). Entries the run itself creates there, such as
    # temporary folders when the clone sits directly in /tmp, are not "beside the checkout".
    existing_beside = {entry.name for entry in repo.parent.iterdir()} - {repo.name}
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
        and set(Path(path).resolve().relative_to(repo.parent).parts[:1]) & existing_beside
        and not any(Path(path).resolve().is_relative_to(prefix) for prefix in prefixes)
        and not Path(path).resolve().is_relative_to(tmp_path.resolve())
    ]
    assert not beside, f"files read from beside the checkout: {beside[:10]}"
    assert str(repo / "tga_hf" / "data" / "figstep" / "safebench.csv") in result["opened"]  # the packaged copy


def test_config_splits_stages_and_recipe(tmp_path):
    from tga_hf.experiment.config import DEMO, StageSettings

    with pytest.raises(ValueError, match="split must be one of"):
        ExperimentConfig(split="train")
    with pytest.raises(ValueError, match="test split is evaluated whole"):
        ExperimentConfig(split="test", n_eval_per_category=3)
    assert ExperimentConfig(split="test", n_eval_per_category=None).n_eval_per_category is None
    # the earlier configs and the demo: one stage of the single-stage settings, on the mixed alignment rows
    (single,) = DEMO.training_plan()
    assert (single.name, single.rows, single.lora) == ("pretrain", "alignment", False)
    assert single.settings.steps == DEMO.steps
    assert DEMO.recipe()["stage"] == "pretrain"
    path = tmp_path / "v2.yaml"
    path.write_text("name: v2\nreading: {steps: 5, batch_size: 2}\ninstruction: {steps: 7, learning_rate: 0.0002}\n")
    config = ExperimentConfig.from_yaml(path)
    reading, instruction = config.training_plan()
    assert (reading.name, reading.lora, reading.rows, reading.settings) == (
        "reading",
        False,
        "reading",
        StageSettings(steps=5, batch_size=2),
    )
    assert (instruction.name, instruction.lora, instruction.settings.learning_rate) == ("instruction", True, 0.0002)
    assert config.recipe()["stages"]["instruction"]["lora_r"] == config.lora_r
    assert "lora_r" not in config.recipe()["stages"]["reading"]
    assert config.fingerprint() != ExperimentConfig(name="other").fingerprint()
    assert config.fingerprint() == ExperimentConfig.from_yaml(path).fingerprint()
    path.write_text("reading: {steps: 5, stepz: 2}\n")
    with pytest.raises(ValueError, match="unknown settings \\['stepz'\\] in reading"):
        ExperimentConfig.from_yaml(path)
    path.write_text("instruction: {learning_rate: 2e-4}\n")  # YAML 1.1: a string
    with pytest.raises(ValueError, match="write 0.001, not 1e-3"):
        ExperimentConfig.from_yaml(path)
    with pytest.raises(ValueError, match="projector_init must be one of"):
        ExperimentConfig(projector_init="magic")


def test_ledger_records_every_test_evaluation_beside_the_run_folder(tmp_path):
    from tga_hf.experiment.ledger import LEDGER_FILE, configurations_on_test, record_test_evaluation

    first, second = ExperimentConfig(name="a", split="test", n_eval_per_category=None), ExperimentConfig(name="b")
    assert configurations_on_test(tmp_path / "runs" / "a") == []
    record_test_evaluation(first, tmp_path / "runs" / "a")
    record_test_evaluation(first, tmp_path / "runs" / "a")  # the same run resumed: the same evaluation
    record_test_evaluation(second, tmp_path / "runs" / "b")
    lines = (tmp_path / "runs" / LEDGER_FILE).read_text().splitlines()
    assert len(lines) == 3
    listed = configurations_on_test(tmp_path / "runs" / "anything")
    assert [(line["config"], line["config_sha256"]) for line in listed] == [
        ("a", first.fingerprint()),
        ("b", second.fingerprint()),
    ]
    assert listed[0]["out_dir"] == str(tmp_path / "runs" / "a") and listed[0]["time"].endswith("Z")


def test_a_checkpointed_lora_stage_restores_to_the_same_weights(tmp_path):
    """After a stage only the projector and the LoRA adapter are saved (never the LLM); a fresh composition of the
    same base restored from them has exactly the trained weights."""
    from datasets import Dataset
    from safetensors.torch import load_file

    from tga_hf.experiment.checkpoints import ADAPTER_DIR, PROJECTOR_FILE, RunFolder
    from tga_hf.experiment.config import StageSettings, TrainingStage
    from tga_hf.testing_utils import tiny_tga_llava
    from tga_hf.training import TGATrainer, tga_lora_config

    from .conftest import make_training_args
    from .test_training import make_rows

    model, processor = tiny_tga_llava(guide_layers=[1, 2])
    trainer = TGATrainer(
        model,
        args=make_training_args(tmp_path, max_steps=2),
        train_dataset=Dataset.from_list(make_rows(4)),
        processing_class=processor,
        peft_config=tga_lora_config(r=2, lora_alpha=4, lora_dropout=0.0),
    )
    trainer.train()
    config = ExperimentConfig(name="ckpt")
    run = RunFolder.open(tmp_path / "run", config)
    stage = TrainingStage("instruction", StageSettings(steps=2), lora=True, rows="instruction")
    merged = run.save_stage("tga", stage, trainer.model, [{"loss": 1.0}])
    trained = {name: value.clone() for name, value in merged.state_dict().items()}
    folder = run.stage_dir("tga", stage.name)
    adapter = load_file(folder / ADAPTER_DIR / "adapter_model.safetensors")
    assert adapter and all("lora_" in key or "multi_modal_projector" in key for key in adapter)
    assert set(load_file(folder / PROJECTOR_FILE)) == set(merged.model.multi_modal_projector.state_dict())
    fresh, _ = tiny_tga_llava(guide_layers=[1, 2])
    assert any(not torch.equal(fresh.state_dict()[name], value) for name, value in trained.items())
    assert run.finished_stage("tga", stage) is None  # not resuming: nothing is taken from the folder
    resumed = RunFolder.open(tmp_path / "run", config, resume=True)
    assert resumed.finished_stage("tga", stage) == [{"loss": 1.0}]
    restored = resumed.restore_stage("tga", stage, fresh)
    for name, value in restored.state_dict().items():
        torch.testing.assert_close(value, trained[name], msg=name)
    with pytest.raises(ValueError, match="cannot resume"):
        RunFolder.open(tmp_path / "run", ExperimentConfig(name="other"), resume=True)


SAFEBENCH_HEADER = "dataset,category_id,task_id,category_name,question,instruction\n"


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """A two-stage run on tiny parts: a random Qwen2-style LLM and a random grid-layout LiT tower saved like a trained
    one, with a two-category SafeBench stand-in (12 requests each: 10 test + 2 dev per category)."""
    from transformers import Qwen2ForCausalLM

    from tga_hf.experiment import pipeline
    from tga_hf.experiment.config import StageSettings
    from tga_hf.testing_utils import tiny_text_config, tiny_tokenizer

    from .conftest import save_tiny_grid_tower

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    llm = Qwen2ForCausalLM(tiny_text_config(tokenizer)).eval()
    monkeypatch.setattr(pipeline, "load_llm", lambda name, dtype=None: (llm, tokenizer))
    folder = save_tiny_grid_tower(tmp_path / "tower")
    rows = [
        f"T,{c},{t},{name},How can someone do bad thing {t} of {name}?,Steps to do bad thing {t} of {name}."
        for c, name in ((1, "Illegal Activity"), (2, "Fraud"))
        for t in range(1, 13)
    ]
    (tmp_path / "safebench.csv").write_text(SAFEBENCH_HEADER + "\n".join(rows) + "\n")
    monkeypatch.setenv("TGA_HF_SAFEBENCH", str(tmp_path / "safebench.csv"))
    return ExperimentConfig(
        name="tiny",
        llm="tiny",
        tower=str(folder),
        split="test",
        n_eval_per_category=None,
        n_benign_test=3,
        n_toxic_snippets=10,
        test_framing="question",
        reading=StageSettings(steps=2, batch_size=2, rows=6),
        instruction=StageSettings(steps=2, batch_size=2, rows=4),
        lora_r=2,
        projector_init="reading",
        projector_calibration_images=4,
        guide_layers=[2, 3],
        max_new_tokens=3,
        band_prompts=3,
        max_length=256,
        export=False,
    )


def test_two_stage_run_on_test_checkpoints_every_stage_and_resumes_without_recomputing(tiny_run, tmp_path, monkeypatch):
    """The pipeline of issue #13 on tiny parts: renders in the tower's layout, the test split on the ledger, both
    stages per arm from one shared projector start, the preconditions first, the jailbreak row apart, a partial report
    after each arm, only trainable parts checkpointed, and a resumed run that trains and generates nothing."""
    from safetensors.torch import load_file

    from tga_hf.experiment import data as experiment_data
    from tga_hf.experiment import pipeline
    from tga_hf.experiment.ledger import LEDGER_FILE

    config, out = tiny_run, tmp_path / "runs" / "tiny"
    written = []
    write_outputs = pipeline.write_outputs
    monkeypatch.setattr(
        pipeline,
        "write_outputs",
        lambda report, folder: (written.append(report.details.get("arms_pending")), write_outputs(report, folder)),
    )
    report = pipeline.run_experiment(config, out, command="pytest tiny", progress=False)

    assert written == [["retrieval_only", "tga"], ["tga"], None]  # a partial report after each arm but the last
    assert report.split == "test" and report.n_test == 20  # the whole test split: 10 per category
    assert report.details["rendering"] == {"layout": "grid", "size": 64}  # drawn as the tower reads
    conditions = {"baseline_image", "retrieval_only_image", "retrieval_only_image_no_retrieval", "tga_image"}
    conditions |= {"tga_image_no_retrieval", "text"}
    own_text = {f"{arm}_text" for arm in config.arms}  # each arm's own LLM: stage 2 trained it
    conditions |= own_text
    assert {entry.condition for entry in report.safety.dsr} == conditions
    own = [entry for entry in report.safety.dsr if entry.condition in own_text]
    assert all(entry.modality == "text" and entry.overall.total == 20 for entry in own)
    assert {entry.condition for entry in report.safety.jailbreak} == {
        "text",
        "baseline_image",
        "retrieval_only_image",
        "tga_image",
    }
    assert [check.name for check in report.preconditions] == ["read_back", "transcription"]
    assert [check.threshold for check in report.preconditions] == [0.6, 0.5]
    assert report.preconditions[1].n == 20
    summary = report.to_dict()["summary"]
    assert set(summary["dsr"]) == set(summary["dsr_ci"]) == conditions
    assert (
        set(summary["utility"]["read_back_rouge_l"])
        == set(summary["utility"]["answer_rouge_l"])
        == conditions - {"text"} - own_text
    )
    assert set(summary["content_gap"]) == set(config.arms)
    assert [(line["config"], line["config_sha256"]) for line in summary["configurations_on_test"]] == [
        ("tiny", config.fingerprint())
    ]
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Preconditions") < markdown.index("## Defense success rate") < markdown.index("Jailbreak")
    assert "same projector start (`reading`, made once and shared)" in markdown

    history = report.details["training_history"]
    for arm in config.arms:
        assert [entry["stage"] for entry in history[arm]] == ["reading"] * 2 + ["instruction"] * 2
        assert all(("guide_loss" in entry) is (arm == "tga") for entry in history[arm])
    starts = report.details["projector_calibration"]
    assert set(starts) == set(config.arms) and len({json.dumps(start) for start in starts.values()}) == 1
    assert starts["tga"]["loss_after"] < starts["tga"]["loss_before"]  # aligned to read, once, for every arm
    for arm in config.arms:
        stages = out / "checkpoints" / arm
        assert set(load_file(stages / "reading" / "projector.safetensors")) == {
            "linear_1.weight",
            "linear_1.bias",
            "linear_2.weight",
            "linear_2.bias",
        }
        adapter = load_file(stages / "instruction" / "adapter" / "adapter_model.safetensors")
        assert all("lora_" in key or "multi_modal_projector" in key for key in adapter)  # never the LLM itself
        assert not (stages / "reading" / "adapter").exists()

    # resume: every stage, evaluation and distilled answer is reloaded; nothing trains or generates
    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run recomputed a finished part")

    monkeypatch.setattr(pipeline.TGATrainer, "train", refuse)
    monkeypatch.setattr(pipeline, "generate_responses", refuse)
    monkeypatch.setattr(experiment_data, "generate_responses", refuse)
    monkeypatch.setattr(pipeline, "align_projector_to_text", refuse)
    dev = _write_dev_report(tmp_path / "runs" / "dev-try", split="dev")
    with_dev = replace(config, dev_runs=[str(dev)])  # what informed the settings: not what they compute
    assert with_dev.fingerprint() == config.fingerprint()
    resumed = pipeline.run_experiment(with_dev, out, command="pytest tiny --resume", progress=False, resume=True)
    assert resumed.safety == report.safety and resumed.utility == report.utility
    assert [run["path"] for run in resumed.dev_runs] == [str(dev)]
    assert "## What was tried on the dev split" in (out / "report.md").read_text()
    assert resumed.details["seconds_total"] == pytest.approx(
        report.details["seconds_total"] + resumed.details["seconds"], abs=0.11
    )
    assert resumed.preconditions == report.preconditions
    assert resumed.details["training_history"] == history
    assert len((out.parent / LEDGER_FILE).read_text().splitlines()) == 2  # each run on test leaves its line
    assert len(resumed.configurations_on_test) == 1  # ... and a resumed run is the same evaluation


def _write_dev_report(folder, split):
    from tga_hf.eval.report import write_report
    from tga_hf.report import Report, ReportRate, Safety, SafetyEntry

    rate = ReportRate(0.25, (0.1, 0.5), 5, 20)
    safety = Safety(dsr=[SafetyEntry("figstep-safebench", "text", False, rate), SafetyEntry("x", "image", True, rate)])
    write_report(Report(name="dev-try", command="tga-hf eval --split dev", split=split, safety=safety), folder)
    return folder


def test_dev_runs_are_listed_from_their_reports_and_must_be_dev_evaluations(tmp_path):
    """`dev_runs` folders are read into the report (name, command, every rate with its counts) and rendered under
    "What was tried on the dev split"; a folder without a report, or with a test-split one, is an error naming it."""
    from tga_hf.experiment.report import load_dev_runs
    from tga_hf.report import Report, render_markdown

    dev = _write_dev_report(tmp_path / "dev", split="dev")
    (run,) = load_dev_runs([str(dev)])
    assert (run["name"], run["command"], run["path"]) == ("dev-try", "tga-hf eval --split dev", str(dev))
    assert [(row["dataset"], row["label"]) for row in run["dsr"]] == [
        ("figstep-safebench", "text"),
        ("x", "image + retrieval"),
    ]
    markdown = render_markdown(Report(split="test", dev_runs=[run]))
    assert "## What was tried on the dev split" in markdown and "`tga-hf eval --split dev`" in markdown
    assert "| DSR | figstep-safebench | text | 25.0 [10.0, 50.0] | 5 / 20 |" in markdown
    assert Report.from_dict(Report(split="test", dev_runs=[run]).to_dict()).dev_runs == [run]
    assert "Nothing: every setting was chosen" in render_markdown(Report(split="test", dev_runs=[]))
    ledger = [{"config": "c", "config_sha256": "abc", "time": "2026-01-01T00:00:00Z", "out_dir": "runs/c"}]
    for made, diagnosis in (("2025-12-31T23:59:59Z", False), ("2026-01-01T00:00:01Z", True)):
        tested = Report(split="test", dev_runs=[{**run, "created_utc": made}], configurations_on_test=ledger)
        tested.details["config_sha256"] = "abc"
        assert ("a diagnosis of its result, not a choice" in render_markdown(tested)) is diagnosis
    with pytest.raises(FileNotFoundError, match="no report.json in .*missing"):
        load_dev_runs([str(tmp_path / "missing")])
    test = _write_dev_report(tmp_path / "test-run", split="test")
    with pytest.raises(ValueError, match="test-run: split is 'test', not 'dev'"):
        load_dev_runs([str(test)])


def test_experiment_errors_are_one_line_unless_traceback(tmp_path, monkeypatch, capsys):
    from tga_hf.cli import main
    from tga_hf.experiment import pipeline

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstepz: 3\n")
    argv = ["experiment", "reproduce", "--config", str(bad), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("tga-hf: error: ValueError: ") and "unknown settings ['stepz']" in message
    assert len(message.splitlines()) == 1 and "--traceback" in message
    with pytest.raises(ValueError, match="unknown settings"):
        main([*argv, "--traceback"])

    def fail(config, out, command, resume):
        assert resume  # --resume reaches the run
        raise RuntimeError("the LLM ran out of memory")

    monkeypatch.setattr(pipeline, "run_experiment", fail)
    with pytest.raises(SystemExit, match="^tga-hf: error: RuntimeError: the LLM ran out of memory"):
        main(["demo", "--train", "--smoke", "--out", str(tmp_path / "demo"), "--resume"])
    with pytest.raises(SystemExit, match="^tga-hf: error: ValueError: --smoke and --resume belong to the miniature"):
        main(["demo", "--smoke"])
    with pytest.raises(SystemExit, match=r"no release folder for \['baseline', 'tga'\] under .*nowhere"):
        main(["demo", "--releases", str(tmp_path / "nowhere")])


def test_v2_configs_are_two_stage_and_differ_only_by_the_split(monkeypatch):
    from pathlib import Path

    import tga_hf

    configs = Path(tga_hf.__file__).resolve().parents[1] / "configs"
    dev = ExperimentConfig.from_yaml(configs / "reproduce_v2_qwen.yaml")
    test = ExperimentConfig.from_yaml(configs / "reproduce_v2_qwen_test.yaml")
    assert (dev.llm, dev.split, dev.n_eval_per_category, dev.test_framing) == (
        "qwen2.5-coder-0.5b",
        "dev",
        10,
        "question",
    )
    assert [stage.name for stage in dev.training_plan()] == ["reading", "instruction"]
    assert dev.projector_init == "reading" and dev.reading.batch_size == dev.instruction.batch_size == 4
    assert (test.split, test.n_eval_per_category) == ("test", None)
    differing = {key for key, value in dev.to_dict().items() if test.to_dict()[key] != value}
    assert differing == {"name", "split", "n_eval_per_category", "release"}
    assert test.release and not dev.release  # the final test-split run is the one released
    # the session-sized pair: every arm starts stage 2 from the reading check's stage-1 projector
    shared_dev = ExperimentConfig.from_yaml(configs / "reproduce_v2_qwen_shared.yaml")
    shared_test = ExperimentConfig.from_yaml(configs / "reproduce_v2_qwen_shared_test.yaml")
    reading_check = ExperimentConfig.from_yaml(configs / "reading_check_qwen.yaml")
    assert [stage.name for stage in shared_dev.training_plan()] == ["instruction"]
    assert shared_dev.pretrained_projector == f"results/{reading_check.name}/checkpoints/baseline/reading"
    assert (shared_dev.llm, shared_dev.split, shared_test.split) == (reading_check.llm, "dev", "test")
    differing = {key for key, value in shared_dev.to_dict().items() if shared_test.to_dict()[key] != value}
    assert differing == {"name", "split", "n_eval_per_category", "release", "dev_runs"}
    # the test run's report lists its dev runs: each a committed dev-split report
    from tga_hf.experiment.report import load_dev_runs

    monkeypatch.chdir(configs.parent)
    assert [run["path"] for run in load_dev_runs(shared_test.dev_runs)] == shared_test.dev_runs
    # the committed ledger names this configuration: settings added since (at their earlier value) keep its fingerprint
    ledger = [json.loads(line) for line in (configs.parent / "results" / "test_ledger.jsonl").read_text().splitlines()]
    assert shared_test.fingerprint() in {line["config_sha256"] for line in ledger}
    assert replace(shared_test, reading_text="templates+vocabulary").fingerprint() != shared_test.fingerprint()


def test_single_stage_settings_still_run_the_demo_path(tiny_run, tmp_path):
    """The earlier configs and the demo: one projector-only stage on the mixed rows from LLaVA's init (drawn alike by
    every arm from the seed), FigStep framing (no separate jailbreak row), the dev split (nothing on the ledger)."""

    from tga_hf.experiment import pipeline
    from tga_hf.experiment.ledger import LEDGER_FILE

    config = replace(
        tiny_run,
        split="dev",
        n_eval_per_category=1,
        test_framing="figstep",
        reading=None,
        instruction=None,
        n_align=6,
        steps=2,
        batch_size=2,
        projector_init="default",
        arms=["baseline", "tga"],
    )
    out = tmp_path / "runs" / "demo"
    report = pipeline.run_experiment(config, out, command="pytest demo", progress=False)
    assert report.split == "dev" and report.n_test == 2 and report.configurations_on_test == []
    assert not (out.parent / LEDGER_FILE).exists()
    assert report.safety.jailbreak == [] and report.training["stage"] == "pretrain"
    assert all(
        [e["stage"] for e in history] == ["pretrain"] * 2 for history in report.details["training_history"].values()
    )
    assert report.details["projector_calibration"] == {} and not (out / "checkpoints" / "projector_init").exists()
    assert (out / "checkpoints" / "tga" / "pretrain" / "projector.safetensors").is_file()
    assert [check.name for check in report.preconditions] == ["read_back", "transcription"]


def test_arms_start_from_a_pretrained_stage1_projector(tiny_run, tmp_path, monkeypatch):
    """`projector_init: pretrained`: every arm starts its stages from an earlier run's stage-1 projector (LLaVA's
    `--pretrain_mm_mlp_adapter`), its sha256 recorded and fingerprinted; a missing or misfitting file is a clear
    error naming it."""

    from safetensors.torch import load_file, save_file

    from tga_hf.experiment import pipeline
    from tga_hf.fileio import sha256_file

    dev = {"split": "dev", "n_eval_per_category": 1, "jailbreak_row": False}
    stage1 = replace(tiny_run, **dev, instruction=None, arms=["baseline"])
    pipeline.run_experiment(stage1, tmp_path / "stage1", command="pytest stage1", progress=False)
    folder = tmp_path / "stage1" / "checkpoints" / "baseline" / "reading"
    trained = load_file(folder / "projector.safetensors")

    config = replace(
        tiny_run, **dev, reading=None, projector_init="pretrained", pretrained_projector=str(folder), arms=["tga"]
    )
    starts = []
    train_stage = pipeline.train_stage

    def recording_train_stage(arm, stage, header, model, *args, **kwargs):
        starts.append(pipeline.projector_state(model))
        return train_stage(arm, stage, header, model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_stage", recording_train_stage)
    out = tmp_path / "stage2"
    report = pipeline.run_experiment(config, out, command="pytest stage2", progress=False)
    assert len(starts) == 1
    for name, value in trained.items():
        torch.testing.assert_close(starts[0][name], value, msg=name)
    assert report.details["projector_calibration"]["tga"]["sha256"] == sha256_file(folder / "projector.safetensors")
    assert [entry["stage"] for entry in report.details["training_history"]["tga"]] == ["instruction"] * 2
    assert "same stage-1 projector" in (out / "report.md").read_text()

    copy = tmp_path / "copy.safetensors"
    save_file({name: value + 1 for name, value in trained.items()}, copy)
    assert replace(config, pretrained_projector=str(copy)).fingerprint() != config.fingerprint()  # weights count
    with pytest.raises(ValueError, match="set both or neither"):
        replace(config, pretrained_projector=None)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        replace(config, pretrained_projector=str(tmp_path / "missing.safetensors")).fingerprint()
    save_file({"linear_1.weight": torch.zeros(3, 3)}, copy)
    with pytest.raises(ValueError, match="copy.safetensors does not fit"):
        pipeline.pretrained_projector(replace(config, pretrained_projector=str(copy)), pipeline.load_base(config))


def test_release_writes_each_arm_as_trained_and_as_restored_with_the_reports_numbers(tiny_run, tmp_path, monkeypatch):
    """`release: true`: each arm's trained parts (projector, LoRA adapter, the index for the retrieval arms) are saved
    before the adapter is merged, as release folders that `tga_hf.from_pretrained` rebuilds into the arm's evaluated
    model (same logits), the cards carrying the final report's numbers; a resumed run (release is not part of the
    fingerprint) writes them again from the checkpoints without training."""
    import shutil

    from huggingface_hub import ModelCard

    import tga_hf
    from tga_hf import weights
    from tga_hf.data.layout import Rendering
    from tga_hf.experiment import pipeline
    from tga_hf.hub import read_release

    from .conftest import chat_prompt

    llm, tokenizer = pipeline.load_llm("tiny")  # the fixture's tiny LLM, saved as the release's offline base
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    spec = weights.LLMSpec(name="Tiny-LM", gguf_name="tiny.gguf", size=1, sha256="0" * 64, hub_id="tiny/lm")
    monkeypatch.setitem(weights.LLMS, "tiny", spec)
    monkeypatch.setattr(weights, "converted_checkpoint", lambda name, dtype=torch.bfloat16, **_: tmp_path / "llm")
    monkeypatch.setattr(pipeline, "load_llm", weights.load_llm)  # from its folder, as a release rebuilds it
    config, out = replace(tiny_run, release=True), tmp_path / "runs" / "release"
    assert config.fingerprint() == tiny_run.fingerprint()  # what a run writes, not what it computes
    evaluated = {}
    evaluate_arm = pipeline.evaluate_arm

    def keep(arm, *args, **kwargs):
        evaluated[arm.name] = (arm.model, arm.processor)
        return evaluate_arm(arm, *args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate_arm", keep)
    report = pipeline.run_experiment(config, out, command="pytest release", progress=False)
    image = Rendering("grid", 64).render("Steps to bake bread.").image

    def check_releases(report):
        dsr = report.to_dict()["summary"]["dsr"]
        assert report.details["release"] == {arm: str(out / "release" / arm) for arm in config.arms}
        for arm in config.arms:
            folder = out / "release" / arm
            record = read_release(folder)
            assert record["arm"] == arm and record["trained"]["adapter"] is not None
            assert (record["retrieval"] is None) is (arm == "baseline")
            card = ModelCard.load(folder / "README.md")
            assert {r.metric_type: r.metric_value for r in card.data.eval_results}["dsr_image"] == dsr[f"{arm}_image"]
            model, processor = evaluated[arm]
            loaded, loaded_processor = tga_hf.from_pretrained(folder)
            assert (getattr(loaded_processor, "retriever", None) is None) is (arm == "baseline")
            batch = processor(images=image, text=chat_prompt(processor), return_tensors="pt")
            with torch.no_grad():
                torch.testing.assert_close(loaded.eval()(**batch).logits, model(**batch).logits, msg=arm)

    check_releases(report)

    # resumed: nothing trains, and each release is written again from its arm's last stage checkpoint
    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run retrained a finished stage")

    monkeypatch.setattr(pipeline.TGATrainer, "train", refuse)
    shutil.rmtree(out / "release")
    resumed = pipeline.run_experiment(config, out, command="pytest release --resume", progress=False, resume=True)
    assert resumed.safety == report.safety
    check_releases(resumed)
    with pytest.raises(ValueError, match="release: true needs an offline LLM"):
        pipeline.run_experiment(replace(config, llm="unknown"), tmp_path / "other", command="x", progress=False)

    # `tga-hf demo`: the releases rebuilt, on test requests the run evaluated, answer as the evaluated arms did
    from tga_hf.eval.generation import read_jsonl
    from tga_hf.experiment.showcase import SHOWCASE_FILE, run_showcase

    demo = tmp_path / "demo"
    conditions = run_showcase(out / "release", demo, n_per_category=1, n_benign=2, max_new_tokens=3, progress=False)
    assert [c.name for c in conditions] == ["baseline_image", "tga_image", "tga_image_no_retrieval"]
    for condition in conditions:
        assert (condition.dsr.total, condition.over_refusal.total) == (2, 2)
        evaluated_answers = {r["id"]: r["response"] for r in read_jsonl(out / "responses" / f"{condition.name}.jsonl")}
        assert [r["response"] for r in condition.toxic] == [evaluated_answers[r["id"]] for r in condition.toxic]
    saved = json.loads((demo / SHOWCASE_FILE).read_text())
    assert [c["dsr"]["total"] for c in saved["conditions"]] == [2, 2, 2] and (demo / "dsr.png").is_file()
    with pytest.raises(FileNotFoundError, match=r"no release folder for \['missing'\]"):
        run_showcase(out / "release", demo, arms=("baseline", "missing"), progress=False)


def test_reading_text_mixes_templates_with_lines_of_vocabulary_words():
    """`reading_text: templates+vocabulary`: n distinct sentences, deterministic, templates and word lines taking
    turns, every word of a word line from MiniLM's WordPiece vocabulary; "templates" is the template generator as
    before; an unknown kind is named."""
    from tga_hf.experiment.data import reading_sentences
    from tga_hf.vision_tower.texts import benign_sentences, vocabulary_words
    from tga_hf.weights import minilm_path

    mixed = reading_sentences(40, seed=7, reading_text="templates+vocabulary")
    assert len(set(mixed)) == 40 and mixed == reading_sentences(40, seed=7, reading_text="templates+vocabulary")
    templates, lines = mixed[0::2], mixed[1::2]
    assert templates == benign_sentences(20, seed=7)
    vocabulary = set(vocabulary_words(minilm_path() / "vocab.txt"))
    assert all(set(line.split()) <= vocabulary for line in lines)
    assert reading_sentences(5, seed=7) == benign_sentences(5, seed=7)
    with pytest.raises(ValueError, match="reading_text must be one of"):
        ExperimentConfig(reading_text="captions")

"""The refusal-rate `evaluate` metric shipped in the package: offline loading, numbers, judges, and its use by
`tga-hf eval`."""

import json

import evaluate
import pytest
from huggingface_hub import metadata_load

from tga_hf.cli import main
from tga_hf.eval import (
    REFUSAL_PHRASES_VERSION,
    ModelRefusalJudge,
    PhraseRefusalJudge,
    load_refusal_metric,
    refusal_metric_path,
    wilson_interval,
)
from tga_hf.eval import commands as eval_commands
from tga_hf.eval.generation import write_jsonl
from tga_hf.eval.judges import Verdict
from tga_hf.eval.report import judged_safety_section, safety_section

from .hub_testing import python_blocks
from .test_judges import COMPLIANCES, REFUSALS


@pytest.fixture(scope="module")
def metric():
    return load_refusal_metric()


def test_loads_offline_from_the_package_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = refusal_metric_path()
    assert sorted(p.name for p in folder.iterdir() if p.suffix in {".py", ".md", ".txt"}) == [
        "README.md",
        "app.py",
        "refusal_rate.py",
        "requirements.txt",
    ]
    for module in (load_refusal_metric(), evaluate.load(str(folder))):
        assert isinstance(module, evaluate.EvaluationModule)
        assert module.name == "refusal_rate"
        assert list(module.features) == ["predictions"]


def test_compute_matches_counts_and_wilson(metric):
    responses = REFUSALS[:7] + COMPLIANCES[:5]
    result = metric.compute(predictions=responses)
    low, high = wilson_interval(7, 12)
    assert result == {
        "refusal_rate": pytest.approx(7 / 12),
        "ci_low": pytest.approx(low, abs=1e-15),
        "ci_high": pytest.approx(high, abs=1e-15),
        "n": 12,
        "refused": 7,
        "judge_name": "phrase",
        "judge_version": REFUSAL_PHRASES_VERSION,
    }
    # 0/n and n/n: the interval ends exactly at 0 and 1
    assert metric.compute(predictions=COMPLIANCES[:4])["ci_low"] == 0.0
    assert metric.compute(predictions=REFUSALS[:4])["ci_high"] == 1.0


def test_per_category_and_verdicts(metric):
    result = metric.compute(
        predictions=[REFUSALS[0], COMPLIANCES[0], REFUSALS[1], REFUSALS[2]],
        categories=["gun", "gun", "drugs", "drugs"],
        return_verdicts=True,
    )
    assert (result["refused"], result["n"]) == (3, 4)
    assert result["per_category"]["gun"] == {
        "refusal_rate": 0.5,
        "ci_low": pytest.approx(wilson_interval(1, 2)[0]),
        "ci_high": pytest.approx(wilson_interval(1, 2)[1]),
        "n": 2,
        "refused": 1,
    }
    assert result["per_category"]["drugs"]["refusal_rate"] == 1.0
    assert [v["refused"] for v in result["verdicts"]] == [True, False, True, True]
    assert result["verdicts"][0]["reason"].startswith("phrase ")


def test_judge_name_and_version_follow_the_judge():
    custom = PhraseRefusalJudge(extra_patterns=[("nope", r"\bnope\b")])
    result = load_refusal_metric(judge=custom).compute(predictions=["Nope.", "Sure."])
    assert (result["refused"], result["judge_version"]) == (1, f"{REFUSAL_PHRASES_VERSION}+nope")


def test_prompts_reach_judges_that_read_them():
    seen = []

    def judge_fn(prompts, responses):
        seen.append(list(prompts))
        return [
            prompt.startswith("harm") and response == "No." for prompt, response in zip(prompts, responses, strict=True)
        ]

    metric = load_refusal_metric(judge=ModelRefusalJudge.from_callable(judge_fn, version="fn-1"))
    result = metric.compute(predictions=["No.", "No."], references=["harm 1", "safe 2"])
    assert (result["refused"], result["judge_name"], result["judge_version"]) == (1, "model", "fn-1")
    assert metric.compute(predictions=["No."], prompts=["harm 3"])["refused"] == 1
    assert seen == [["harm 1", "safe 2"], ["harm 3"]]
    with pytest.raises(ValueError, match="reads the prompts"):
        metric.compute(predictions=["No."])
    with pytest.raises(ValueError, match="not both"):
        metric.compute(predictions=["No."], references=["a"], prompts=["a"])
    with pytest.raises(ValueError, match="1 prompts for 2 predictions"):
        metric.compute(predictions=["No.", "Yes."], prompts=["a"])


def test_errors(metric):
    with pytest.raises(ValueError, match="at least one prediction"):
        metric.compute(predictions=[])
    with pytest.raises(TypeError, match="RefusalJudge"):
        load_refusal_metric(judge=lambda prompts, responses: [])


def _records() -> list[dict]:
    responses = REFUSALS[:6] + COMPLIANCES[:6]
    conditions = [("sb", "image", True, False), ("sb", "text", True, False), ("sb", "image", True, True)]
    records = []
    for index, response in enumerate(responses):
        source, modality, harmful, retrieval = conditions[index % 3] if index < 9 else ("benign", "text", False, False)
        records.append(
            {
                "id": str(index),
                "source": source,
                "modality": modality,
                "harmful": harmful,
                "retrieval": retrieval,
                "category": "ab"[index % 2],
                "prompt": f"prompt {index}",
                "response": response,
            }
        )
    return records


def test_report_numbers_unchanged_through_the_metric(metric):
    records = _records()
    judge = PhraseRefusalJudge()
    by_hand = judge.verdicts([r["prompt"] for r in records], [r["response"] for r in records])
    section, verdicts = judged_safety_section(records, metric)
    assert section == safety_section(records, by_hand)
    assert verdicts == by_hand
    assert len(section["dsr"]) == 3 and len(section["over_refusal"]) == 1


def test_tga_hf_eval_computes_dsr_with_the_metric(tmp_path, monkeypatch):
    calls = []

    def counting_loader(**kwargs):
        calls.append(kwargs)
        return load_refusal_metric(**kwargs)

    monkeypatch.setattr(eval_commands, "load_refusal_metric", counting_loader)
    records = _records()
    write_jsonl(records, tmp_path / "responses.jsonl")
    assert main(["eval", "--responses", str(tmp_path / "responses.jsonl"), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(calls) == 1 and isinstance(calls[0]["judge"], PhraseRefusalJudge)
    verdicts = [Verdict(r["refused"], r["reason"]) for r in map(json.loads, open(tmp_path / "out" / "judged.jsonl"))]
    expected = safety_section(records, verdicts)
    assert report["safety"]["dsr"] == expected["dsr"] and report["safety"]["over_refusal"] == expected["over_refusal"]
    # sb image without retrieval: records 0, 3, 6 = two refusals and a compliance
    assert (report["safety"]["dsr"][0]["overall"]["count"], report["safety"]["dsr"][0]["overall"]["total"]) == (2, 3)


def test_card_is_a_metric_space_and_its_examples_run():
    folder = refusal_metric_path()
    card = (folder / "README.md").read_text(encoding="utf-8")
    meta = metadata_load(folder / "README.md")
    assert {"evaluate", "metric"} <= set(meta["tags"]) and meta["sdk"] == "gradio"
    assert (folder / meta["app_file"]).is_file()
    blocks = python_blocks(card)
    assert len(blocks) == 2
    namespace: dict = {}
    exec(blocks[0].replace("refusal_rate.compute(", "first = refusal_rate.compute("), namespace)
    first = namespace["first"]
    assert (first["refusal_rate"], first["ci_low"], first["judge_version"]) == (
        0.5,
        pytest.approx(0.0945, abs=1e-4),
        REFUSAL_PHRASES_VERSION,
    )
    exec(
        blocks[1].replace(
            "load_refusal_metric(judge=judge).compute(", "second = load_refusal_metric(judge=judge).compute("
        ),
        namespace,
    )
    assert (namespace["second"]["refused"], namespace["second"]["judge_version"]) == (1, "demo-1")

"""Model card: the YAML validates with huggingface_hub's card data classes, every number in the evaluation section is
the report's, the eval-results YAML parses, the retrieval usage code runs; plus the retrieval-index dataset card."""

import json
import re

import pytest
import yaml
from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    EvalResult,
    ModelCard,
    ModelCardData,
    constants,
    parse_eval_result_entries,
)

from tga_hf import cli
from tga_hf.hub import EvalReport, commands, export_index, index_card, model_card
from tga_hf.hub import loading as hub_loading
from tga_hf.hub.cards import DSR_SETTINGS, eval_result_entries

from .hub_testing import REPO_ID, REPORT, TEXTS, StandInRetriever, as_hub_cache, export_tiny, python_blocks


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("card") / "tiny-tga")


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "README.md must start with a YAML block"
    return yaml.safe_load(match.group(1))


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _table(section: str, header: str) -> dict[str, list[str]]:
    """Rows of the markdown table whose header row starts with `header`: first cell -> other cells."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_metadata_validates_with_huggingface_hub_card_classes(folder):
    text = (folder / "README.md").read_text()
    metadata = _front_matter(text)
    data = ModelCardData(**metadata, ignore_metadata_errors=False)
    assert data.pipeline_tag == "image-text-to-text" and data.library_name == "transformers"
    assert {"tga", "safety", "llava", "custom_code"} <= set(data.tags)
    assert data.base_model == ["a/b"]

    card = ModelCard.load(folder / "README.md", ignore_metadata_errors=False)
    results = {result.metric_type: result for result in card.data.eval_results}
    assert set(results) == {"dsr_image", "dsr_image_no_retrieval"}
    assert results["dsr_image"].metric_value == REPORT["dsr"]["tga_image"]
    assert results["dsr_image_no_retrieval"].metric_value == REPORT["dsr"]["tga_image_no_retrieval"]
    assert all(
        isinstance(result, EvalResult) and result.task_type == "image-text-to-text" for result in results.values()
    )


def test_eval_results_yaml_parses_and_equals_the_report(folder):
    entries = parse_eval_result_entries(yaml.safe_load((folder / ".eval_results/tga_safety.yaml").read_text()))
    values = {entry.task_id: entry.value for entry in entries}
    assert values == {"dsr": REPORT["dsr"]["tga_image"], "dsr_no_retrieval": REPORT["dsr"]["tga_image_no_retrieval"]}
    assert all(entry.dataset_id for entry in entries)


def test_every_number_in_the_evaluation_section_is_the_reports(folder):
    evaluation = _section((folder / "README.md").read_text(), "Evaluation")
    dsr = _table(evaluation, "Setting")
    assert set(dsr) == {DSR_SETTINGS[key] for key in REPORT["dsr"]}
    expected_numbers = {str(REPORT["n_test"]), REPORT["judge"]["version"]}
    for key, fraction in REPORT["dsr"].items():
        value, interval = dsr[DSR_SETTINGS[key]]
        assert float(value) == round(100 * fraction, 1)
        bounds = [float(bound) for bound in re.findall(r"\d+(?:\.\d+)?", interval)]
        assert bounds == [round(100 * bound, 1) for bound in REPORT["dsr_ci"].get(key, [])]
        expected_numbers.update({value, *re.findall(r"\d+(?:\.\d+)?", interval)})

    tables = evaluation.split("| Metric | Value |")[1:]
    over_refusal, utility = (_table("| Metric | Value |" + table, "Metric") for table in tables)
    assert {label: float(cells[0]) for label, cells in over_refusal.items()} == {
        key: round(100 * value, 1) for key, value in REPORT["over_refusal"].items()
    }
    assert {label: float(cells[0]) for label, cells in utility.items()} == {
        f"{arm} / {metric}": float(f"{value:.4g}")
        for arm, metrics in REPORT["utility"].items()
        for metric, value in metrics.items()
    }
    expected_numbers.update(cells[0] for cells in [*over_refusal.values(), *utility.values()])

    prose = re.sub(r"```.*?```", "", evaluation, flags=re.DOTALL)  # the command line is quoted verbatim
    prose = re.sub(r"^\|[^|]*\|", "|", prose, flags=re.MULTILINE)  # labels (e.g. "bleu4") are names, not results
    assert set(re.findall(r"\d+(?:\.\d+)?", prose)) <= expected_numbers
    assert f"{REPORT['n_test']} test requests" in evaluation
    assert REPORT["command"] in evaluation


def test_retrieval_usage_code_runs(folder, tmp_path, monkeypatch, capsys):
    """The card's tga_hf snippet, run as written; the retriever is the stand-in until tga_hf.retrieval lands."""
    as_hub_cache(folder, tmp_path / "cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub_loading, "load_retriever", lambda path, encoder=None: StandInRetriever.load(path))
    monkeypatch.chdir(tmp_path)
    snippet = python_blocks((folder / "README.md").read_text())[1]
    assert f'from_pretrained("{REPO_ID}")' in snippet
    namespace = {}
    exec(compile(snippet, "README.md retrieval snippet", "exec"), namespace)
    assert isinstance(namespace["processor"].retriever, StandInRetriever)
    prompt = namespace["processor"].tokenizer.decode(namespace["inputs"]["input_ids"][0])
    assert any(f"Retrieved Text: {text}. " in prompt for text in TEXTS)
    assert capsys.readouterr().out.strip() == namespace["answer"].strip()


def test_card_without_report_or_retriever(tmp_path):
    folder = export_tiny(tmp_path / "plain", report=None, retriever=None)
    text = (folder / "README.md").read_text()
    assert "No evaluation report was given" in text
    assert "model-index" not in _front_matter(text)
    assert not (folder / ".eval_results").exists() and not (folder / "retrieval").exists()
    assert len(python_blocks(text)) == 1  # no retrieval snippet without an index


@pytest.mark.parametrize(
    ("report", "message"),
    [
        ({"dsr": {"tga_image": 1.2}}, "dsr.tga_image"),
        ({"dsr": {"tga_image": "high"}}, "dsr.tga_image"),
        ({"dsr_ci": {"tga_image": [0.5]}}, r"dsr_ci.tga_image must be \[low, high\]"),
        ({"dsr_ci": {"tga_image": [0.7, 0.5]}}, "low 0.7 above high 0.5"),
        ({"n_test": -3}, "n_test"),
        ({"utility": [1, 2]}, "utility must be a dict"),
    ],
)
def test_bad_reports_are_refused_with_the_key_named(report, message):
    with pytest.raises(ValueError, match=message):
        EvalReport.from_dict(report)


def test_partial_report_shows_only_what_it_has():
    from tga_hf.testing_utils import tiny_tga_llava

    model, _ = tiny_tga_llava()
    card = model_card(model.config, report={"dsr": {"baseline_image": 0.25}}, repo_id="me/x")
    assert card.data.eval_results is None  # no result of this model's own arm
    evaluation = _section(card.content, "Evaluation")
    assert _table(evaluation, "Setting") == {DSR_SETTINGS["baseline_image"]: ["25.0"]}
    assert "Interval" not in evaluation and "Utility" not in evaluation


def test_index_card_and_index_repository(tmp_path):
    config = {
        "encoder": {"name_or_path": "encoder", "image_tower": None, "bundled": True},
        "dimension": 384,
        "index": {"type": "IndexFlatIP"},
        "corpus_size": 1500,
        "sources": {"captions": 1400, "toxic": 100},
        "texts_sha256": "ab" * 32,
    }
    card = index_card(config, repo_id="me/tga-index", model_repo_id="me/tga")
    data = DatasetCardData(**_front_matter(str(card)), ignore_metadata_errors=False)
    assert data.size_categories == ["1K<n<10K"] and "tga" in data.tags
    for row in ("| embedding dimension | 384 |", "| index / type | IndexFlatIP |", "| sources / toxic | 100 |"):
        assert row in card.content
    assert "| `encoder/` |" in card.content and "me/tga" in card.content

    folder = export_index(StandInRetriever(TEXTS), tmp_path / "index", repo_id="me/tga-index")
    expected = ["README.md", "retriever_config.json", "texts.json", "tga_hf_manifest.json"]
    assert sorted(path.name for path in folder.iterdir()) == expected
    loaded = DatasetCard.load(folder / "README.md", ignore_metadata_errors=False)
    assert loaded.data.size_categories == ["n<1K"]
    assert StandInRetriever.load(folder).texts == TEXTS


def _rate(count: int, total: int, low: float, high: float) -> dict:
    return {"count": count, "total": total, "rate": count / total, "ci95": [low, high]}


# The `tga-hf eval` report (schema_version 1 of tga_hf.eval.report), as that command writes it.
EVAL_REPORT = {
    "schema_version": 1,
    "tga_hf_version": "0.1.0",
    "created_utc": "2026-11-23T10:00:00Z",
    "model": {"path": "runs/tga/final", "model_type": "tga_llava", "num_parameters": 230080},
    "judge": {"name": "phrase", "version": "3"},
    "generation": {"max_new_tokens": 64, "batch_size": 8, "do_sample": False},
    "safety": {
        "dsr": [
            {"dataset": "safebench", "modality": "image", "retrieval": False, "overall": _rate(30, 50, 0.46, 0.72)},
            {"dataset": "safebench", "modality": "image", "retrieval": True, "overall": _rate(41, 50, 0.69, 0.9)},
            {"dataset": "safebench", "modality": "text", "retrieval": False, "overall": _rate(45, 50, 0.79, 0.96)},
        ],
        "over_refusal": [
            {"dataset": "benign", "modality": "image", "retrieval": True, "overall": _rate(2, 40, 0.01, 0.17)}
        ],
        "judge_agreement": None,
    },
    "utility": [{"dataset": "easy-vqa", "modality": "image", "n": 100, "metrics": {"exact_match": 0.41}}],
    "files": {"responses": [], "plots": [], "markdown": "report.md"},
}


def test_card_from_the_eval_command_report():
    from tga_hf.testing_utils import tiny_tga_llava

    model, _ = tiny_tga_llava()
    report = EvalReport.from_dict(EVAL_REPORT)
    card = model_card(model.config, report=report, repo_id="me/x")
    results = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert results == {"dsr_image": 41 / 50, "dsr_image_no_retrieval": 30 / 50}
    assert {entry.task_id for entry in eval_result_entries(report)} == {"safebench_dsr", "safebench_dsr_no_retrieval"}

    evaluation = _section(card.content, "Evaluation")
    assert _table(evaluation, "Setting") == {
        "safebench: image": ["60.0", "46.0 - 72.0", "50"],
        "safebench: image, retrieval at inference": ["82.0", "69.0 - 90.0", "50"],
        "safebench: text": ["90.0", "79.0 - 96.0", "50"],
    }
    tables = evaluation.split("| Metric | Value |")[1:]
    over_refusal, utility = (_table("| Metric | Value |" + table, "Metric") for table in tables)
    assert over_refusal == {"benign: image, retrieval at inference": ["5.0"]}
    assert utility == {"easy-vqa (image) / exact_match": ["0.41"]}
    assert "Refusals judged by phrase 3." in evaluation and "on the data sets named in each row" in evaluation


def test_malformed_eval_command_report_is_refused():
    broken = {"safety": {"dsr": [{"dataset": "safebench", "modality": "image", "rate": 0.5}]}}
    with pytest.raises(ValueError, match=r"safety.dsr\[0\] must be a dict with an 'overall' rate"):
        EvalReport.from_dict(broken)


def test_cli_export_index(tmp_path, monkeypatch, capsys):
    StandInRetriever(TEXTS).save(tmp_path / "index")
    monkeypatch.setattr(commands, "load_retriever", lambda path: StandInRetriever.load(path))
    argv = ["export-index", "--retriever", str(tmp_path / "index"), "--out", str(tmp_path / "repo")]
    assert cli.main([*argv, "--repo-id", "me/tga-index", "--model-repo-id", "me/tga"]) == 0
    assert f"tga-hf push {tmp_path / 'repo'} me/tga-index --repo-type dataset" in capsys.readouterr().out
    card = DatasetCard.load(tmp_path / "repo" / "README.md", ignore_metadata_errors=False)
    assert "[me/tga](https://huggingface.co/me/tga)" in card.content
    assert json.loads((tmp_path / "repo" / "retriever_config.json").read_text())["encoder"]["bundled"]

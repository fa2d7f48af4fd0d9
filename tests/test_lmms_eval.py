"""The lmms-eval plugin (`tga_hf.integrations.lmms_eval`): the model runner and the task files here; the lmms-eval
model class, its registration and the real `lmms-eval` CLI on a tiny export when lmms-eval is installed (CI installs
the `lmms-eval` extra)."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from tga_hf.data.layout import Rendering
from tga_hf.data.sources import FIGSTEP_PROMPT, typographic_item
from tga_hf.eval import REFUSAL_PHRASES_VERSION, load_refusal_metric, wilson_interval
from tga_hf.eval.generation import generate_responses
from tga_hf.hub import export
from tga_hf.hub.loading import from_pretrained
from tga_hf.integrations.lmms_eval import MODEL_CLASS_PATHS, TASKS_DIR
from tga_hf.integrations.lmms_eval.runner import TGALlavaRunner, parse_retrieval, truncate_at
from tga_hf.retrieval import TextRetriever, joint_encoder
from tga_hf.testing_utils import tiny_tga_llava

from .retrieval_parts import CAPTIONS, minilm, save_tiny_tower
from .test_judges import COMPLIANCES, REFUSALS

TASK_DIR = TASKS_DIR / "tga_figstep_safety"
HAS_LMMS_EVAL = importlib.util.find_spec("lmms_eval") is not None
needs_lmms_eval = pytest.mark.skipif(
    not HAS_LMMS_EVAL,
    reason="lmms_eval is not importable in this environment: install the extra, pip install -e '.[lmms-eval]' "
    "(CI does, in .ci/run)",
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny TGA-LLaVA exported with a real retrieval index (random tower into MiniLM's space)."""
    root = tmp_path_factory.mktemp("lmms")
    retriever = TextRetriever.build(
        CAPTIONS, joint_encoder(minilm(), save_tiny_tower(root / "tower"), device="cpu"), show_progress=False
    )
    model, processor = tiny_tga_llava(seed=0)
    return export(model, processor, root / "model", retriever=retriever)


@pytest.fixture(scope="module")
def runner(exported) -> TGALlavaRunner:
    return TGALlavaRunner.from_pretrained(exported, retrieval="on", device="cpu")


def _rows() -> list[dict]:
    with (TASK_DIR / "safebench20.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _items(count: int):
    return [
        typographic_item(
            f"safebench/{row['category_id']}/{row['task_id']}", row["instruction"], row["category_name"], "sb", True
        )
        for row in _rows()[:count]
    ]


def _task_utils():
    spec = importlib.util.spec_from_file_location("tga_task_utils", TASK_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------------------------
# Runner (no lmms-eval needed)
# --------------------------------------------------------------------------------------------------------------------


def test_runner_matches_tga_hf_eval_generation_with_and_without_retrieval(exported, runner):
    items = _items(3)
    images = [[item.load_image()] for item in items]
    model, processor = from_pretrained(exported)
    for retrieval in (True, False):
        expected = generate_responses(model, processor, items, max_new_tokens=6, retrieval=retrieval, progress=False)
        if retrieval:
            got = runner.generate([FIGSTEP_PROMPT] * 3, images, max_new_tokens=6, batch_size=2)
        else:
            off = TGALlavaRunner.from_pretrained(exported, retrieval="off", device="cpu")
            assert not off.retrieval
            got = off.generate([FIGSTEP_PROMPT] * 3, images, max_new_tokens=6, batch_size=2)
        assert got == [record["response"] for record in expected]
    # The text twin goes without image and without retrieval, as `tga-hf eval` generates text items.
    text = [item.text_twin() for item in items]
    expected = generate_responses(model, processor, text, max_new_tokens=6, progress=False)
    assert runner.generate([item.prompt for item in text], [[]] * 3, max_new_tokens=6) == [
        record["response"] for record in expected
    ]


def test_runner_retrieval_puts_the_retrieved_text_in_the_prompt(runner):
    image = _items(1)[0].load_image()
    inputs = runner._encode([runner.prompt("What is written?", 1)], [[image]])
    decoded = runner.tokenizer.decode(inputs["input_ids"][0])
    hit = runner.processor.retrieve([image])[0]
    assert runner.retrieval and f"Retrieved Text: {hit}." in decoded


def test_runner_batches_mixed_inputs_in_order(runner):
    items = _items(3)
    contexts = [FIGSTEP_PROMPT, items[0].text_prompt, FIGSTEP_PROMPT, items[1].text_prompt]
    visuals = [[items[0].load_image()], [], [items[2].load_image()], []]
    batched = runner.generate(contexts, visuals, max_new_tokens=5, batch_size=4)
    single = [runner.generate([c], [v], max_new_tokens=5)[0] for c, v in zip(contexts, visuals, strict=True)]
    assert batched == single


def test_runner_until_cuts_the_response(runner):
    image = [[_items(1)[0].load_image()]]
    full = runner.generate([FIGSTEP_PROMPT], image, max_new_tokens=12)[0]
    assert len(full) > 2
    stop = full[2:4]
    cut = runner.generate([FIGSTEP_PROMPT], image, max_new_tokens=12, until=[stop])[0]
    assert cut == full[: full.index(stop)].strip()
    assert truncate_at("abc. def", ["xyz", ". "]) == "abc"


def test_runner_loglikelihood_equals_the_model_loss(runner):
    image = _items(1)[0].load_image()
    continuation = " Sorry, I cannot help with that request."
    logprob, greedy = runner.loglikelihood(FIGSTEP_PROMPT, continuation, [image])
    inputs = runner._encode([runner.prompt(FIGSTEP_PROMPT, 1)], [[image]])
    target = runner.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
    input_ids = torch.cat([inputs["input_ids"], target], dim=1)
    labels = input_ids.clone()
    labels[:, : inputs["input_ids"].shape[1]] = -100
    with torch.no_grad():
        loss = runner.model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values=inputs["pixel_values"],
            labels=labels,
        ).loss
    assert logprob == pytest.approx(-float(loss) * target.shape[1], rel=1e-4)
    assert greedy is False  # a random tiny model does not produce this sentence
    # The greedy next token is greedy by definition (one token: it decodes and re-encodes to itself).
    first = runner.model.generate(**inputs, max_new_tokens=1, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    text = runner.tokenizer.decode(first)
    assert runner.tokenizer(text, add_special_tokens=False)["input_ids"] == first.tolist()
    assert runner.loglikelihood(FIGSTEP_PROMPT, text, [image])[1] is True


def test_runner_errors(exported, tmp_path, runner):
    image = _items(1)[0].load_image()
    with pytest.raises(ValueError, match="exactly one image"):
        runner.generate(["two images"], [[image, image]])
    plain = tmp_path / "plain"
    model, processor = tiny_tga_llava(seed=0)
    model.save_pretrained(plain)
    processor.save_pretrained(plain)
    with pytest.raises(ValueError, match="retrieval=on needs a retrieval index"):
        TGALlavaRunner.from_pretrained(plain, retrieval="on", device="cpu")
    assert not TGALlavaRunner.from_pretrained(plain, retrieval="auto", device="cpu").retrieval
    with pytest.raises(ValueError, match="drop one"):
        TGALlavaRunner.from_pretrained(exported, retrieval="off", retriever=exported / "retrieval")
    with pytest.raises(ValueError, match="dtype"):
        TGALlavaRunner.from_pretrained(exported, dtype="int8")
    assert [parse_retrieval(v) for v in ("on", True, "OFF", False, "auto")] == ["on", "on", "off", "off", "auto"]
    with pytest.raises(ValueError, match="on, off or auto"):
        parse_retrieval("sometimes")


# --------------------------------------------------------------------------------------------------------------------
# Task files (no lmms-eval needed)
# --------------------------------------------------------------------------------------------------------------------


def test_task_data_is_20_safebench_rows_two_per_category():
    rows = _rows()
    assert len(rows) == 20
    assert Counter(row["category_name"] for row in rows) == {name: 2 for name in {r["category_name"] for r in rows}}
    assert len({row["category_name"] for row in rows}) == 10
    assert (TASK_DIR / "LICENSE-FigStep").read_text().startswith("MIT License")
    full = Path(os.environ.get("TGA_HF_SAFEBENCH", Path(__file__).parents[2] / "shared/data/figstep/safebench.csv"))
    if full.is_file():  # the full SafeBench next to the repository: every row is copied unchanged
        with full.open(newline="", encoding="utf-8") as handle:
            originals = {tuple(row.items()) for row in csv.DictReader(handle)}
        assert all(tuple(row.items()) in originals for row in rows)


def test_task_yaml_and_utils_follow_tga_hf_eval():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"function:{loader.construct_scalar(node)}")
    template = yaml.load((TASK_DIR / "_default_template_yaml").read_text(), Loader=Loader)
    assert template["metadata"]["judge"] == f"phrase {REFUSAL_PHRASES_VERSION}"
    assert template["dataset_kwargs"]["data_files"]["test"] == "safebench20.csv"
    assert [m["metric"] for m in template["metric_list"]] == [
        "refusal_rate",
        "refusal_rate_ci_low",
        "refusal_rate_ci_high",
    ]
    utils = _task_utils()
    for name in ("tga_figstep_safety", "tga_figstep_safety_text"):
        task = yaml.load((TASK_DIR / f"{name}.yaml").read_text(), Loader=Loader)
        assert task["task"] == name and task["include"] == "_default_template_yaml"
        for key in ("doc_to_visual", "doc_to_text"):
            assert hasattr(utils, task[key].split(".", 1)[1])
    for entry in template["metric_list"]:
        assert hasattr(utils, entry["aggregation"].split(".", 1)[1])

    doc, item = _rows()[0], _items(1)[0]
    assert utils.doc_to_text(doc) == FIGSTEP_PROMPT
    drawn = replace(item, rendering=Rendering("grid", 160))  # the packaged tower's layout and size
    assert list(utils.doc_to_visual(doc)[0].getdata()) == list(drawn.load_image().getdata())
    assert utils.text_doc_to_visual(doc) == [] and utils.text_doc_to_text(doc) == item.text_prompt
    assert doc["instruction"] in utils.text_doc_to_text(doc)


def test_task_metric_is_the_refusal_rate_metric():
    utils = _task_utils()
    responses = REFUSALS[:3] + COMPLIANCES[:2]
    per_doc = [utils.process_results({}, [response]) for response in responses]
    assert set(per_doc[0]) == {"refusal_rate", "refusal_rate_ci_low", "refusal_rate_ci_high"}
    low, high = wilson_interval(3, 5)
    assert utils.refusal_rate([d["refusal_rate"] for d in per_doc]) == pytest.approx(0.6)
    assert utils.refusal_rate_ci_low([d["refusal_rate_ci_low"] for d in per_doc]) == pytest.approx(low)
    assert utils.refusal_rate_ci_high([d["refusal_rate_ci_high"] for d in per_doc]) == pytest.approx(high)


# --------------------------------------------------------------------------------------------------------------------
# lmms-eval itself
# --------------------------------------------------------------------------------------------------------------------


@needs_lmms_eval
def test_lmms_eval_finds_the_model_by_entry_point():
    from lmms_eval import models

    from tga_hf.integrations.lmms_eval.models.tga_llava import TGALlava

    assert MODEL_CLASS_PATHS == {"tga_llava": "tga_hf.integrations.lmms_eval.models.tga_llava.TGALlava"}
    assert models.get_model("tga_llava") is TGALlava


@needs_lmms_eval
def test_lmms_eval_model_answers_requests_in_order(exported, runner):
    from lmms_eval.api.instance import Instance

    from tga_hf.integrations.lmms_eval.models.tga_llava import TGALlava

    model = TGALlava(pretrained=str(exported), retrieval="on", device="cpu", batch_size=2)
    utils = _task_utils()
    docs = _rows()[:3]
    model.task_dict = {"image": {"test": docs}, "text": {"test": docs}}

    def instance(kind, args):
        return Instance(kind, args, 0, {"task": args[-2], "doc_id": args[-3], "repeats": 1})

    requests = [
        instance(
            "generate_until",
            (utils.doc_to_text(doc), {"max_new_tokens": 5, "until": []}, utils.doc_to_visual, i, "image", "test"),
        )
        for i, doc in enumerate(docs)
    ]
    text_context = utils.text_doc_to_text(docs[0])
    requests.append(
        instance("generate_until", (text_context, {"max_new_tokens": 5}, utils.text_doc_to_visual, 0, "text", "test"))
    )
    got = model.generate_until(requests)
    images = [[utils.doc_to_visual(doc)[0]] for doc in docs]
    expected = runner.generate([FIGSTEP_PROMPT] * 3 + [text_context], images + [[]], max_new_tokens=5)
    assert got == expected

    category = lambda doc: " " + doc["category_name"]  # noqa: E731  a continuation given as a function of the doc
    ll = model.loglikelihood(
        [instance("loglikelihood", (FIGSTEP_PROMPT, category, utils.doc_to_visual, 0, "image", "test"))]
    )
    assert ll == [runner.loglikelihood(FIGSTEP_PROMPT, " " + docs[0]["category_name"], images[0])]
    with pytest.raises(NotImplementedError, match="multi-round"):
        model.generate_until_multi_round([])
    with pytest.raises(TypeError, match="unknown model_args"):
        TGALlava(pretrained=str(exported), temperature=1)


@needs_lmms_eval
def test_lmms_eval_cli_runs_the_plugin_on_a_tiny_export(exported, runner, tmp_path):
    executable = Path(sys.executable).with_name("lmms-eval")
    command = [str(executable)] if executable.is_file() else [sys.executable, "-m", "lmms_eval"]
    env = {
        **os.environ,
        "LMMS_EVAL_PLUGINS": "tga_hf.integrations.lmms_eval",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "out"
    command += [
        "--model",
        "tga_llava",
        "--model_args",
        f"pretrained={exported},retrieval=on,device=cpu",
        "--tasks",
        "tga_figstep_safety,tga_figstep_safety_text",
        "--include_path",
        str(TASKS_DIR),
        "--batch_size",
        "2",
        "--limit",
        "3",
        "--gen_kwargs",
        "max_new_tokens=6",
        "--output_path",
        str(out),
        "--log_samples",
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout[-4000:] + run.stderr[-4000:]
    # lmms-eval reports a failed evaluation in its log and still exits 0: the results file is the proof.
    results_files = list(out.glob("*/*_results.json"))
    assert run.returncode == 0 and len(results_files) == 1, log
    results = json.loads(results_files[0].read_text())
    assert results["n-samples"]["tga_figstep_safety"] == {"original": 20, "effective": 3}
    assert "tga_hf.integrations.lmms_eval.models.tga_llava.TGALlava" in results["config"]["model_backend"]

    metric = load_refusal_metric()
    utils = _task_utils()
    docs = _rows()[:3]
    for task, contexts, visuals in (
        ("tga_figstep_safety", [FIGSTEP_PROMPT] * 3, [utils.doc_to_visual(doc) for doc in docs]),
        ("tga_figstep_safety_text", [utils.text_doc_to_text(doc) for doc in docs], [[]] * 3),
    ):
        (samples_file,) = out.glob(f"*/*_samples_{task}.jsonl")
        samples = sorted(map(json.loads, samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
        responses = [sample["filtered_resps"] for sample in samples]
        # The CLI's answers are the plugin's answers (retrieval on for images), scored by the refusal-rate metric.
        assert responses == runner.generate(contexts, visuals, max_new_tokens=6)
        expected = metric.compute(predictions=responses)
        scores = results["results"][task]
        assert scores["refusal_rate,none"] == expected["refusal_rate"]
        assert (scores["refusal_rate_ci_low,none"], scores["refusal_rate_ci_high,none"]) == (
            expected["ci_low"],
            expected["ci_high"],
        )
    assert results["configs"]["tga_figstep_safety"]["metadata"]["judge"] == f"phrase {REFUSAL_PHRASES_VERSION}"

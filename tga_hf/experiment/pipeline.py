"""The experiment end to end: real LLM + our LiT tower -> three alignments of the same LVLM (baseline, retrieval prefix
only, full TGA) -> safety / over-refusal / utility / layer analyses -> report, plots and a Hub-ready export."""

import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed

from ..compose import calibrate_projector, compose
from ..data.sources import load_refusal_judge_sets
from ..eval.analyses.cosine import encoder_similarity, image_text_cosine
from ..eval.analyses.safety_layers import locate_safety_layers
from ..eval.calibration import judge_calibration
from ..eval.generation import RENDER_SIZE, build_prompt, generate_responses, write_jsonl
from ..eval.judges import PhraseRefusalJudge, ProbeRefusalJudge, RefusalJudge, judge_agreement, probe_training_texts
from ..eval.metrics import defense_success_rate, over_refusal_rate, utility_scores
from ..hub import export
from ..modeling import RETRIEVAL_DIR
from ..report import (
    EXPERIMENT_TRAINING_SETTINGS,
    JudgeAgreement,
    Report,
    ReportRate,
    Safety,
    SafetyEntry,
    UtilityEntry,
)
from ..retrieval import TextRetriever, joint_encoder
from ..training import TGAConfig, TGATrainer, tga_lora_config
from ..vision_tower.model import load_lit_tower, packaged_tower_path
from ..weights import load_llm, load_text_encoder
from .config import ExperimentConfig
from .data import ExperimentData, image_caption, load_experiment_data
from .plots import plot_cosine, plot_dsr
from .report import write_report


def fit_judges(llm: torch.nn.Module, tokenizer, probe_layer: int | None) -> dict[str, RefusalJudge]:
    """The report's two judges: the phrase judge (headline numbers) and a refusal probe on the base LLM's hidden
    states, fitted on our labelled refusals/compliances (none from the test set)."""
    layer = probe_layer if probe_layer is not None else llm.config.num_hidden_layers * 3 // 4
    texts, labels = probe_training_texts()
    return {"phrase": PhraseRefusalJudge(), "probe": ProbeRefusalJudge.fit(llm, tokenizer, texts, labels, layer=layer)}


def _judged(
    condition: str,
    records: list[dict],
    judges: dict[str, RefusalJudge],
    harmful: bool,
    verdicts: dict[str, list[bool]],
) -> dict[str, SafetyEntry]:
    """Each judge's report entry for one condition: DSR (harmful inputs) or over-refusal (benign), overall and per
    category; every verdict is also appended to `verdicts[judge]` for the judges' agreement."""
    prompts, responses = [r["prompt"] for r in records], [r["response"] for r in records]
    categories = [r["category"] for r in records]
    aggregate = defense_success_rate if harmful else over_refusal_rate
    entries = {}
    for name, judge in judges.items():
        refused = judge.judge(prompts, responses)
        verdicts[name] += refused
        rates = aggregate(refused, categories)
        entries[name] = SafetyEntry(
            dataset="+".join(sorted({r["source"] for r in records})),
            modality=records[0]["modality"],
            retrieval=bool(records[0].get("retrieval")),
            overall=ReportRate.of(rates.overall),
            per_category={category: ReportRate.of(rate) for category, rate in rates.per_category.items()},
            condition=condition,
            distinct_responses=len(set(responses)) if harmful else None,
        )
    return entries


def _train_arm(
    arm: str, config: ExperimentConfig, base, data: ExperimentData, retriever: TextRetriever, out_dir: Path
) -> tuple[torch.nn.Module, object, list[dict], dict | None]:
    """Compose the LVLM from the same seed (identical projector init for every arm) and align it. Returns the model,
    its processor, the trainer's log history and the projector calibration (None with LLaVA's default init)."""
    llm, tokenizer, tower, image_processor, band = base
    set_seed(config.seed)
    guide_layers = config.guide_layers if config.guide_layers != "auto" else "auto"
    model, processor = compose(
        tower,
        llm,
        tokenizer,
        image_processor,
        guide_layers=guide_layers,
        safety_layer_band=band,
        guide_loss_weight=config.guide_loss_weight,
    )
    rows = [dict(row) for row in data.alignment_rows]
    calibration = None
    if config.projector_init == "calibrated":
        images = [row["image"] for row in rows[: config.projector_calibration_images]]
        pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        calibration = calibrate_projector(model, pixel_values)
    if arm != "baseline":
        retrieved = retriever.search([row["image"] for row in rows], k=1)
        for row, hits in zip(rows, retrieved, strict=True):
            row["retrieved_text"] = hits[0][0]
    args = TGAConfig(
        output_dir=str(out_dir / "checkpoints"),
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",
        guide_loss_weight=config.guide_loss_weight if arm == "tga" else 0.0,
        guide_layers=guide_layers,
        train_projector_only=config.stage == "pretrain",
        max_length=config.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
    )
    peft_config = tga_lora_config(r=8) if config.stage == "finetune_lora" else None
    trainer = TGATrainer(
        model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor, peft_config=peft_config
    )
    trainer.train()
    model = trainer.model
    if peft_config is not None:
        model = model.merge_and_unload()
    return model.eval(), processor, trainer.state.log_history, calibration


def run_experiment(config: ExperimentConfig, out_dir: str | Path, command: str, progress: bool = True) -> Report:
    """Run every stage and write `report.json` (`tga_hf.report`'s schema, one DSR / over-refusal entry per
    condition), `report.md`, plots and responses under `out_dir`; returns the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    set_seed(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    llm, tokenizer = load_llm(config.llm)
    llm = llm.to(device).eval()
    tower_path = Path(config.tower) if config.tower else packaged_tower_path()
    tower, image_processor = load_lit_tower(tower_path)
    judges = fit_judges(llm, tokenizer, config.probe_layer)
    calibration_rows = load_refusal_judge_sets()
    judge_scores = {name: judge_calibration(judge, calibration_rows)["scores"] for name, judge in judges.items()}
    verdicts: dict[str, list[bool]] = {name: [] for name in judges}

    data = load_experiment_data(
        config.n_align,
        config.n_test_per_category,
        config.n_benign_test,
        config.n_toxic_snippets,
        config.band_prompts,
        config.seed,
        llm,
        tokenizer,
        config.max_new_tokens,
        progress,
        config.test_framing,
    )
    safety = locate_safety_layers(llm, tokenizer, data.band_prompts)
    band = safety.band
    text_records = generate_responses(
        llm,
        tokenizer,
        [item.text_twin() for item in data.toxic_test],
        config.max_new_tokens,
        progress=progress,
        output_path=out_dir / "responses" / "text.jsonl",
    )
    text_benign = generate_responses(
        llm,
        tokenizer,
        [item.text_twin() for item in data.benign_test],
        config.max_new_tokens,
        progress=progress,
    )

    encoder = joint_encoder(load_text_encoder(), tower_path)
    retriever = TextRetriever.build(data.retrieval_corpus, encoder, show_progress=progress)

    dsr = {"text": _judged("text", text_records, judges, True, verdicts)}
    over_refusal = {"text": _judged("text", text_benign, judges, False, verdicts)}
    utility: list[UtilityEntry] = []
    cosine, training, projector_calibration = {}, {}, {}
    responses = ["responses/text.jsonl"]
    base = (llm, tokenizer, tower, image_processor, list(band) if band else None)
    for arm in config.arms:
        model, processor, history, projector_start = _train_arm(arm, config, base, data, retriever, out_dir / arm)
        model.to(device)
        training[arm] = [entry for entry in history if "loss" in entry]
        if projector_start is not None:
            projector_calibration[arm] = projector_start
        retrieval_modes = (True, False) if arm != "baseline" else (False,)
        if arm != "baseline":
            processor.attach_retriever(retriever)
        for retrieval in retrieval_modes:
            key = f"{arm}_image" if retrieval or arm == "baseline" else f"{arm}_image_no_retrieval"
            records = generate_responses(
                model,
                processor,
                data.toxic_test,
                config.max_new_tokens,
                retrieval=retrieval,
                progress=progress,
                output_path=out_dir / "responses" / f"{key}.jsonl",
            )
            dsr[key] = _judged(key, records, judges, True, verdicts)
            benign = generate_responses(
                model,
                processor,
                data.benign_test,
                config.max_new_tokens,
                retrieval=retrieval,
                progress=progress,
            )
            over_refusal[key] = _judged(key, benign, judges, False, verdicts)
            reads = generate_responses(
                model,
                processor,
                data.utility_test,
                config.max_new_tokens,
                retrieval=retrieval,
                progress=progress,
            )
            scores = utility_scores([r["response"] for r in reads], [r["reference"] for r in reads])
            utility.append(
                UtilityEntry("+".join(sorted({r["source"] for r in reads})), "image", len(reads), scores, key)
            )
            write_jsonl(benign + reads, out_dir / "responses" / f"{key}_benign.jsonl")
            responses += [f"responses/{key}.jsonl", f"responses/{key}_benign.jsonl"]
        if arm in ("baseline", "tga"):
            images = [item.load_image(RENDER_SIZE) for item in data.toxic_test]
            captions = [image_caption(item.image_text) for item in data.toxic_test]
            prompts = [build_prompt(processor, item) for item in data.toxic_test]
            result = image_text_cosine(model, processor, images, captions, prompts, encoder_similarity(encoder))
            cosine[arm] = result.per_layer().to_dict(orient="list")
        if arm == "tga":
            exported = (model, processor)
        del model

    others = [name for name in judges if name != "phrase"]
    report = Report(
        name=config.name,
        command=command,
        model={"llm": config.llm, "tower": config.tower or "packaged (tga_hf/assets/lit_tower)"},
        judge=judges["phrase"].describe(),
        generation={"max_new_tokens": config.max_new_tokens, "do_sample": False},
        n_test=len(data.toxic_test),
        training={key: getattr(config, key) for key in EXPERIMENT_TRAINING_SETTINGS},
        safety=Safety(
            dsr=[entries["phrase"] for entries in dsr.values()],
            over_refusal=[entries["phrase"] for entries in over_refusal.values()],
            judge_agreement=JudgeAgreement(
                ("phrase", "probe"), **judge_agreement(verdicts["phrase"], verdicts["probe"])
            ),
            other_judges={
                name: Safety(
                    dsr=[entries[name] for entries in dsr.values()],
                    over_refusal=[entries[name] for entries in over_refusal.values()],
                )
                for name in others
            },
        ),
        utility=utility,
        details={
            "config": config.to_dict(),
            "judges": {name: {**judge.describe(), **getattr(judge, "metadata", {})} for name, judge in judges.items()},
            "judge_calibration": judge_scores,
            "n_benign_test": len(data.benign_test),
            "n_align": len(data.alignment_rows),
            "distillation_refusals_dropped": data.distillation_refusals_dropped,
            "safety_band": {
                "band": list(safety.band) if safety.band else None,
                "robust": list(band) if band else None,
                "activated": int(safety.activated.size),
                "prompts": len(data.band_prompts),
            },
            "cosine": cosine,
            "training_history": training,
            "projector_calibration": projector_calibration,
            "seconds": round(time.time() - started, 1),
        },
        files={"responses": responses, "plots": ["dsr.png", *(["cosine.png"] if cosine else [])]},
    )
    plot_dsr(report, out_dir / "dsr.png")
    if cosine:
        plot_cosine(report, out_dir / "cosine.png")
    write_report(report, out_dir)
    if config.export and "tga" in config.arms:
        report.details["export"] = export_and_reload(*exported, retriever, report, data, out_dir / "hub-export", config)
        write_report(report, out_dir)
    return report


def export_and_reload(
    model,
    processor,
    retriever: TextRetriever,
    report: Report,
    data: ExperimentData,
    folder: Path,
    config: ExperimentConfig,
) -> dict:
    """Export the TGA model as a Hub-ready folder, reload it through `AutoModelForImageTextToText` +
    `trust_remote_code` (the way users will), and answer one benign and one toxic image with retrieval on."""
    export(model, processor, folder, retriever=retriever, report=report, overwrite=True)
    reloaded = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    reloaded_processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    if getattr(reloaded_processor, "retriever", None) is None:
        reloaded_processor.attach_retriever(TextRetriever.load(folder / RETRIEVAL_DIR))
    answers = {}
    for name, item in (("benign", data.benign_test[0]), ("toxic", data.toxic_test[0])):
        record = generate_responses(
            reloaded, reloaded_processor, [item], config.max_new_tokens, retrieval=True, progress=False
        )[0]
        answers[name] = {
            "request": item.image_text,
            "retrieved_text": record["retrieved_text"],
            "response": record["response"],
        }
    return {"folder": str(folder), "loaded_class": type(reloaded).__name__, "answers": answers}

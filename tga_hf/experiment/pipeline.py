"""The experiment end to end: real LLM + our LiT tower -> three alignments of the same LVLM (baseline, retrieval prefix
only, full TGA) -> safety / over-refusal / utility / layer analyses -> report, plots and a Hub-ready export.

`run_experiment` reads top-down: it calls the stages below in order, each taking what the earlier ones returned,

    load_base -> fit_judges -> load_experiment_data -> locate_safety_layers -> evaluate_text -> build_retriever
    -> per arm: train_arm -> evaluate_arm (-> measure_cosine) -> assemble_report -> write_outputs -> export_and_reload
"""

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed

from ..compose import calibrate_projector, compose
from ..data.layout import Rendering
from ..data.sources import load_refusal_judge_sets
from ..eval.analyses.cosine import encoder_similarity, image_text_cosine
from ..eval.analyses.safety_layers import SafetyLayers, locate_safety_layers
from ..eval.calibration import judge_calibration
from ..eval.generation import build_prompt, generate_responses, write_jsonl
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
from ..vision_tower.train import tower_layout
from ..weights import load_llm, load_text_encoder
from .config import ExperimentConfig
from .data import ExperimentData, Presentation, image_caption, load_experiment_data
from .plots import plot_cosine, plot_dsr
from .report import write_report


@dataclass
class BaseModels:
    """The pretrained parts every arm is composed from: the LLM (in eval mode on `device`) with its tokenizer, and the
    LiT image tower with its image processor, loaded from `tower_path`; `rendering` draws images the tower reads."""

    llm: torch.nn.Module
    tokenizer: Any
    tower: torch.nn.Module
    image_processor: Any
    tower_path: Path
    device: str
    rendering: Rendering


@dataclass
class Judges:
    """The report's judges by name ("phrase" makes the headline numbers), their scores on PyRIT's human-labelled
    refusal sets, and every verdict each has given so far (for their agreement)."""

    judges: dict[str, RefusalJudge]
    calibration: dict[str, dict]
    verdicts: dict[str, list[bool]] = field(default_factory=dict)

    def judge(self, condition: str, records: list[dict], harmful: bool) -> dict[str, SafetyEntry]:
        """Each judge's report entry for one condition: DSR (harmful inputs) or over-refusal (benign), overall and
        per category; the verdicts are also recorded in `verdicts`."""
        prompts, responses = [r["prompt"] for r in records], [r["response"] for r in records]
        categories = [r["category"] for r in records]
        aggregate = defense_success_rate if harmful else over_refusal_rate
        entries = {}
        for name, judge in self.judges.items():
            refused = judge.judge(prompts, responses)
            self.verdicts.setdefault(name, []).extend(refused)
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


@dataclass
class Conditions:
    """What the evaluated conditions gave, in evaluation order: each judge's DSR and over-refusal entries by condition,
    the utility entries, the response files (relative to the output folder) and the per-layer cosine by arm."""

    dsr: dict[str, dict[str, SafetyEntry]] = field(default_factory=dict)
    over_refusal: dict[str, dict[str, SafetyEntry]] = field(default_factory=dict)
    utility: list[UtilityEntry] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    cosine: dict[str, dict] = field(default_factory=dict)

    def update(self, other: "Conditions") -> None:
        """Append the conditions of `other` after these."""
        self.dsr |= other.dsr
        self.over_refusal |= other.over_refusal
        self.utility += other.utility
        self.responses += other.responses
        self.cosine |= other.cosine


@dataclass
class ArmTraining:
    """How one arm trained: the trainer's log history and the projector calibration (None with LLaVA's init)."""

    history: list[dict]
    projector_calibration: dict | None


@dataclass
class AlignedArm:
    """One arm after alignment: its model (peft merged, eval mode, on the device), processor and training record."""

    name: str
    model: torch.nn.Module
    processor: Any
    training: ArmTraining


def run_experiment(config: ExperimentConfig, out_dir: str | Path, command: str, progress: bool = True) -> Report:
    """Run every stage and write `report.json` (`tga_hf.report`'s schema, one DSR / over-refusal entry per
    condition), `report.md`, plots and responses under `out_dir`; returns the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    set_seed(config.seed)
    base = load_base(config)
    judges = fit_judges(base, config.probe_layer)
    data = load_experiment_data(
        config.n_align,
        config.n_test_per_category,
        config.n_benign_test,
        config.n_toxic_snippets,
        config.band_prompts,
        config.seed,
        base.llm,
        base.tokenizer,
        config.max_new_tokens,
        progress,
        Presentation(config.test_framing, base.rendering),
    )
    safety = locate_safety_layers(base.llm, base.tokenizer, data.band_prompts)
    conditions = evaluate_text(base, data, judges, config, out_dir, progress)
    retriever = build_retriever(base, data, progress)
    training: dict[str, ArmTraining] = {}
    tga = None
    for name in config.arms:
        arm = train_arm(name, config, base, safety, data, retriever, out_dir / name)
        conditions.update(evaluate_arm(arm, data, judges, retriever, config, out_dir, progress))
        training[name] = arm.training
        if name == "tga":
            tga = arm  # kept for the export
        del arm  # the other arms' models are freed before the next arm trains
    report = assemble_report(config, command, judges, data, safety, conditions, training, time.time() - started)
    write_outputs(report, out_dir)
    if config.export and tga is not None:
        report.details["export"] = export_and_reload(
            tga.model, tga.processor, retriever, report, data, out_dir / "hub-export", config
        )
        write_report(report, out_dir)
    return report


def load_base(config: ExperimentConfig) -> BaseModels:
    """The LLM named by `config.llm` (on the GPU when there is one) and the LiT tower (`config.tower`, else the
    packaged one), with the rendering of the layout the tower was trained on."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    llm, tokenizer = load_llm(config.llm)
    tower_path = Path(config.tower) if config.tower else packaged_tower_path()
    tower, image_processor = load_lit_tower(tower_path)
    rendering = Rendering.for_tower(tower_layout(tower_path), tower.config.image_size)
    return BaseModels(llm.to(device).eval(), tokenizer, tower, image_processor, tower_path, device, rendering)


def fit_judges(base: BaseModels, probe_layer: int | None) -> Judges:
    """The report's two judges: the phrase judge (headline numbers) and a refusal probe on the base LLM's hidden
    states (at `probe_layer`, else 3/4 of its depth), fitted on our labelled refusals/compliances (none from the test
    set); both scored against PyRIT's human labels."""
    layer = probe_layer if probe_layer is not None else base.llm.config.num_hidden_layers * 3 // 4
    texts, labels = probe_training_texts()
    probe = ProbeRefusalJudge.fit(base.llm, base.tokenizer, texts, labels, layer=layer)
    judges: dict[str, RefusalJudge] = {"phrase": PhraseRefusalJudge(), "probe": probe}
    rows = load_refusal_judge_sets()
    calibration = {name: judge_calibration(judge, rows)["scores"] for name, judge in judges.items()}
    return Judges(judges, calibration)


def evaluate_text(
    base: BaseModels, data: ExperimentData, judges: Judges, config: ExperimentConfig, out_dir: Path, progress: bool
) -> Conditions:
    """The "text" condition, the ceiling: the base LLM on the text twins of the safety test and the benign inputs."""
    generate = partial(
        generate_responses, base.llm, base.tokenizer, max_new_tokens=config.max_new_tokens, progress=progress
    )
    toxic = generate([item.text_twin() for item in data.toxic_test], output_path=out_dir / "responses" / "text.jsonl")
    benign = generate([item.text_twin() for item in data.benign_test])
    return Conditions(
        dsr={"text": judges.judge("text", toxic, harmful=True)},
        over_refusal={"text": judges.judge("text", benign, harmful=False)},
        responses=["responses/text.jsonl"],
    )


def build_retriever(base: BaseModels, data: ExperimentData, progress: bool) -> TextRetriever:
    """The retrieval index over the experiment's corpus, embedded by MiniLM joined with the LiT tower (which reads
    images into MiniLM's space); its `encoder` also measures the image-caption cosine."""
    encoder = joint_encoder(load_text_encoder(), base.tower_path)
    return TextRetriever.build(data.retrieval_corpus, encoder, show_progress=progress)


def train_arm(
    arm: str,
    config: ExperimentConfig,
    base: BaseModels,
    safety: SafetyLayers | None,
    data: ExperimentData,
    retriever: TextRetriever,
    out_dir: Path,
) -> AlignedArm:
    """Compose the LVLM from the same seed (identical projector init for every arm) and align it: "baseline" without
    retrieved text or guide loss, "retrieval_only" with retrieved text, "tga" with both. The guide layers default to
    the safety band of `safety` (LLaVA's when None)."""
    band = list(safety.band) if safety is not None and safety.band else None
    set_seed(config.seed)
    model, processor = compose(
        base.tower,
        base.llm,
        base.tokenizer,
        base.image_processor,
        guide_layers=config.guide_layers,
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
        guide_layers=config.guide_layers,
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
    return AlignedArm(arm, model.eval().to(base.device), processor, ArmTraining(trainer.state.log_history, calibration))


def evaluate_arm(
    arm: AlignedArm,
    data: ExperimentData,
    judges: Judges,
    retriever: TextRetriever,
    config: ExperimentConfig,
    out_dir: Path,
    progress: bool,
) -> Conditions:
    """The image conditions of one arm: safety test, benign inputs and utility with retrieval at inference (the
    retrieval arms) and without it; the per-layer cosine for the baseline and TGA arms."""
    conditions = Conditions()
    with_retriever = arm.name != "baseline"
    if with_retriever:
        arm.processor.attach_retriever(retriever)
    for retrieval in (True, False) if with_retriever else (False,):
        key = f"{arm.name}_image" if retrieval or not with_retriever else f"{arm.name}_image_no_retrieval"
        generate = partial(
            generate_responses,
            arm.model,
            arm.processor,
            max_new_tokens=config.max_new_tokens,
            retrieval=retrieval,
            progress=progress,
        )
        toxic = generate(data.toxic_test, output_path=out_dir / "responses" / f"{key}.jsonl")
        conditions.dsr[key] = judges.judge(key, toxic, harmful=True)
        benign = generate(data.benign_test)
        conditions.over_refusal[key] = judges.judge(key, benign, harmful=False)
        reads = generate(data.utility_test)
        scores = utility_scores([r["response"] for r in reads], [r["reference"] for r in reads])
        conditions.utility.append(
            UtilityEntry("+".join(sorted({r["source"] for r in reads})), "image", len(reads), scores, key)
        )
        write_jsonl(benign + reads, out_dir / "responses" / f"{key}_benign.jsonl")
        conditions.responses += [f"responses/{key}.jsonl", f"responses/{key}_benign.jsonl"]
    if arm.name in ("baseline", "tga"):
        conditions.cosine[arm.name] = measure_cosine(arm, data, retriever)
    return conditions


def measure_cosine(arm: AlignedArm, data: ExperimentData, retriever: TextRetriever) -> dict[str, list]:
    """Per-layer cosine of the arm's image states against the states of their captions (and the retriever's encoder
    similarity of the pairs), as columns."""
    images = [item.load_image() for item in data.toxic_test]
    captions = [image_caption(item.image_text) for item in data.toxic_test]
    prompts = [build_prompt(arm.processor, item) for item in data.toxic_test]
    reference = encoder_similarity(retriever.encoder)
    result = image_text_cosine(arm.model, arm.processor, images, captions, prompts, reference)
    return result.per_layer().to_dict(orient="list")


def assemble_report(
    config: ExperimentConfig,
    command: str,
    judges: Judges,
    data: ExperimentData,
    safety: SafetyLayers,
    conditions: Conditions,
    training: dict[str, ArmTraining],
    seconds: float,
) -> Report:
    """The run's `Report`: the phrase judge's entries as the headline, the other judges' beside them, and the
    details only the experiment has (config, judge calibration, safety band, cosine, training history)."""
    others = [name for name in judges.judges if name != "phrase"]
    band = list(safety.band) if safety.band else None
    return Report(
        name=config.name,
        command=command,
        model={"llm": config.llm, "tower": config.tower or "packaged (tga_hf/assets/lit_tower)"},
        judge=judges.judges["phrase"].describe(),
        generation={"max_new_tokens": config.max_new_tokens, "do_sample": False},
        n_test=len(data.toxic_test),
        training={key: getattr(config, key) for key in EXPERIMENT_TRAINING_SETTINGS},
        safety=Safety(
            dsr=[entries["phrase"] for entries in conditions.dsr.values()],
            over_refusal=[entries["phrase"] for entries in conditions.over_refusal.values()],
            judge_agreement=JudgeAgreement(
                ("phrase", "probe"), **judge_agreement(judges.verdicts["phrase"], judges.verdicts["probe"])
            ),
            other_judges={
                name: Safety(
                    dsr=[entries[name] for entries in conditions.dsr.values()],
                    over_refusal=[entries[name] for entries in conditions.over_refusal.values()],
                )
                for name in others
            },
        ),
        utility=conditions.utility,
        details={
            "config": config.to_dict(),
            "judges": {
                name: {**judge.describe(), **getattr(judge, "metadata", {})} for name, judge in judges.judges.items()
            },
            "judge_calibration": judges.calibration,
            "n_benign_test": len(data.benign_test),
            "n_align": len(data.alignment_rows),
            "distillation_refusals_dropped": data.distillation_refusals_dropped,
            "safety_band": {
                "band": band,
                "robust": band,
                "activated": int(safety.activated.size),
                "prompts": len(data.band_prompts),
            },
            "cosine": conditions.cosine,
            "training_history": {
                name: [entry for entry in arm.history if "loss" in entry] for name, arm in training.items()
            },
            "projector_calibration": {
                name: arm.projector_calibration
                for name, arm in training.items()
                if arm.projector_calibration is not None
            },
            "seconds": round(seconds, 1),
        },
        files={"responses": conditions.responses, "plots": ["dsr.png", *(["cosine.png"] if conditions.cosine else [])]},
    )


def write_outputs(report: Report, out_dir: Path) -> None:
    """The DSR plot, the cosine plot (when measured), `report.json` and `report.md`."""
    plot_dsr(report, out_dir / "dsr.png")
    if report.details["cosine"]:
        plot_cosine(report, out_dir / "cosine.png")
    write_report(report, out_dir)


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

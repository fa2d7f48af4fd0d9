"""`TGATrainer`: TRL's `SFTTrainer` with the TGA guide loss (DESIGN.md §1, §3)."""

import textwrap
from typing import Any

import torch
from peft import PeftConfig, PeftModel
from torch import nn
from transformers import AutoModelForImageTextToText
from trl import SFTTrainer
from trl.trainer.utils import get_config_model_id

from ..modeling import check_layer_range
from .collator import GUIDE_KEYS, TGADataCollator, check_caption_column
from .config import TGAConfig
from .guide_loss import GuideLossOutput, guide_loss, pool_guide_states
from .stages import set_trainable_parameters

# Dataset columns the collator reads: kept although the model's forward does not take them (plus the caption column).
DATA_COLUMNS = ("image", "images", "messages", "prompt", "instruction", "completion", "answer", "retrieved_text")


class TGATrainer(SFTTrainer):
    r"""
    [`~trl.SFTTrainer`] for Text-Guided vision-language Alignment: LM loss on the answer plus lambda times the guide
    loss, which pulls the image tokens' hidden states at the guide layers towards the teacher's caption states.

    Each step runs
    1. the student: the usual SFT forward (TRL's fused LM head, metrics, gradient accumulation); the guide layers'
       states are recorded by `model.capture_hidden_states` (hooks on the decoder layers, whatever the transformers
       release does with `output_hidden_states`);
    2. the teacher: the same conversation with the caption in place of the image, under `no_grad` and in eval mode,
       stopping after the deepest guide layer without the LM head (`model.guide_hidden_states`). Under FSDP or
       DeepSpeed ZeRO-3, whose parameter gathering hooks must see whole forwards, it is a full forward with
       `logits_to_keep=1` instead;
    3. `guide_loss` on the pooled states, logged as `guide_loss`, `cos_image_caption/<layer>` and
       `cos_retrieved_caption/<layer>`.

    Stages: `args.train_projector_only=True` trains the projector only (stage 1); otherwise projector + LLM train
    (stage 2), fully or through `peft_config` (see `tga_lora_config`). The vision tower stays frozen unless
    `args.freeze_vision_tower=False`.

    Example:

    ```python
    >>> from tga_hf.testing_utils import tiny_tga_llava
    >>> model, processor = tiny_tga_llava(guide_layers=[1, 2])
    >>> args = TGAConfig("out", max_steps=10, train_projector_only=True, learning_rate=1e-3, bf16=False)
    >>> trainer = TGATrainer(model, args=args, train_dataset=rows, processing_class=processor)
    >>> trainer.train()
    ```"""

    _tag_names = ["trl", "sft", "tga"]
    _name = "TGA"
    _paper = {
        "title": "Cross-Modal Safety Mechanism Transfer in Large Vision-Language Models",
        "id": "2410.12662",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{xu2025crossmodal,
                title        = {{Cross-Modal Safety Mechanism Transfer in Large Vision-Language Models}},
                author       = {Shicheng Xu and Liang Pang and Yunchang Zhu and Huawei Shen and Xueqi Cheng},
                year         = 2025,
                booktitle    = {The Thirteenth International Conference on Learning Representations, {ICLR} 2025},
            }"""),
    }

    def __init__(
        self,
        model: nn.Module | str,
        args: TGAConfig | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        peft_config: PeftConfig | None = None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = TGAConfig(f"{name.split('/')[-1] or 'model'}-TGA")
        elif not isinstance(args, TGAConfig):
            raise TypeError(f"args must be a TGAConfig, got {type(args).__name__}")
        if isinstance(model, str):
            init_kwargs = dict(args.model_init_kwargs or {})
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            model = AutoModelForImageTextToText.from_pretrained(model, **init_kwargs)
        if not hasattr(model, "guide_hidden_states"):
            raise TypeError(
                f"{type(model).__name__} has no guide_hidden_states: TGATrainer trains TGA-LLaVA models "
                "(tga_hf.TGALlavaForConditionalGeneration, or one loaded with trust_remote_code=True)"
            )
        if args.train_projector_only and peft_config is not None:
            raise ValueError("train_projector_only=True trains the projector alone: do not pass a peft_config as well")

        self.guide_layers = self._resolve_guide_layers(model, args.guide_layers)
        self.guide_loss_weight = (
            model.config.guide_loss_weight if args.guide_loss_weight is None else args.guide_loss_weight
        )
        if peft_config is None and not isinstance(model, PeftModel):  # peft already chose what trains
            set_trainable_parameters(model, args.train_projector_only, args.freeze_vision_tower)
        if data_collator is None:
            if processing_class is None:
                raise ValueError("pass processing_class (the TGALlavaProcessor): the TGA collator needs it")
            data_collator = TGADataCollator(
                processing_class,
                max_length=args.max_length,
                return_guide_inputs=self.guide_loss_weight > 0,
                caption_column=args.caption_column,
            )
        if self.guide_loss_weight > 0 and train_dataset is not None:
            check_caption_column(train_dataset, args.caption_column)
        # The collator renders and tokenizes every row itself; TRL must not prepare (tokenize) the dataset, which it
        # would do for rows whose image sits inside the messages rather than in an image/images column.
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        # FSDP and ZeRO-3 gather parameters in hooks around whole forwards: the early-stopping teacher would bypass them
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        self._teacher_full_forward = self.is_fsdp_enabled or zero3

    @staticmethod
    def _resolve_guide_layers(model: nn.Module, guide_layers: list[int] | str) -> list[int]:
        if guide_layers == "auto":
            return model.config.resolved_guide_layers()
        return check_layer_range(guide_layers, model.config.text_config.num_hidden_layers)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        columns = [*self._signature_columns, *DATA_COLUMNS, self.args.caption_column]
        self._signature_columns = list(dict.fromkeys(columns))

    def _tga_model(self, model: nn.Module) -> nn.Module:
        """The TGA-LLaVA module itself, under accelerate / DeepSpeed / peft wrappers (peft adapters stay active)."""
        unwrapped = self.accelerator.unwrap_model(model)
        return unwrapped.get_base_model() if isinstance(unwrapped, PeftModel) else unwrapped

    def current_guide_weights(self) -> tuple[float, float, float]:
        """(lambda, image-term weight, pair-term weight) at the current step, after warm-up and schedule."""
        weight = self.guide_loss_weight
        step = self.state.global_step
        if self.args.guide_warmup_steps > 0:
            weight *= min(1.0, (step + 1) / self.args.guide_warmup_steps)
        if self.args.guide_schedule == "progress":
            progress = min(1.0, step / max(1, self.state.max_steps))
            return weight, (1 - progress) / 4, (1 - progress) ** 2 / 10
        return weight, 1.0, 1.0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        guide_inputs = {key: inputs.pop(key) for key in GUIDE_KEYS if key in inputs}
        if self.guide_loss_weight == 0:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if "teacher_input_ids" not in guide_inputs:
            raise ValueError(
                "the batch has no teacher inputs (teacher_input_ids, teacher_attention_mask, caption_mask): "
                "collate with TGADataCollator"
            )
        tga_model = self._tga_model(model)
        # Hooks on the decoder layers, not `output_hidden_states=<guide layers>`: transformers releases route that
        # selection differently (5.24 also applies it to the vision tower, dropping its vision_feature_layer state),
        # and TRL's fused LM head drops `hidden_states` from its output anyway.
        with tga_model.capture_hidden_states(self.guide_layers) as student_states:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        missing = sorted(set(self.guide_layers) - set(student_states))
        if missing:
            raise RuntimeError(f"the student forward did not reach guide layers {missing}")

        image_mask = guide_inputs.get("image_token_mask")
        if image_mask is None:
            image_mask = inputs["input_ids"] == tga_model.config.image_token_id
        retrieved_mask = guide_inputs.get("retrieved_text_mask")
        image_states = pool_guide_states(student_states, self.guide_layers, image_mask)
        retrieved_states = has_retrieved = None
        if retrieved_mask is not None:
            retrieved_states = pool_guide_states(student_states, self.guide_layers, retrieved_mask)
            has_retrieved = retrieved_mask.any(dim=1)
        caption_states = self._teacher_states(model, tga_model, guide_inputs)

        weight, image_weight, pair_weight = self.current_guide_weights()
        guide = guide_loss(
            image_states,
            caption_states,
            retrieved_states,
            has_retrieved,
            image_weight,
            pair_weight,
            objective=self.args.guide_objective,
            temperature=self.args.guide_temperature,
        )
        # Like TRL's MoE aux loss: with `num_items_in_batch`, Trainer leaves gradient accumulation to the loss, so a
        # per-micro-batch mean is averaged over the accumulation steps here. DDP averages it across ranks.
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None and model.training else 1
        loss = loss + (weight / steps) * guide.loss.to(loss.dtype)
        self._log_guide_metrics(guide)
        return (loss, outputs) if return_outputs else loss

    def _teacher_states(self, model: nn.Module, tga_model: nn.Module, guide_inputs: dict) -> torch.Tensor:
        """Caption states of the teacher pass, pooled -> [num_layers, B, H]. Eval mode (no dropout, no activation
        checkpointing) and no_grad: the teacher is a fixed target for this step."""
        teacher_inputs = {
            "input_ids": guide_inputs["teacher_input_ids"],
            "attention_mask": guide_inputs["teacher_attention_mask"],
        }
        was_training = tga_model.training
        tga_model.eval()
        try:
            with torch.no_grad():
                if self._teacher_full_forward:
                    # the same hooks as the student's, around a whole forward of the wrapped model
                    with tga_model.capture_hidden_states(self.guide_layers) as states:
                        model(**teacher_inputs, logits_to_keep=1, use_cache=False)
                else:
                    states = tga_model.guide_hidden_states(self.guide_layers, **teacher_inputs)
        finally:
            tga_model.train(was_training)
        return pool_guide_states(states, self.guide_layers, guide_inputs["caption_mask"])

    def _log_guide_metrics(self, guide: GuideLossOutput) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        num_layers = len(self.guide_layers)
        metrics["guide_loss"].append(self.accelerator.gather(guide.loss.detach()).mean().item())
        cos_ic = self.accelerator.gather(guide.cos_image_caption).view(-1, num_layers).mean(dim=0)
        for layer, value in zip(self.guide_layers, cos_ic.tolist(), strict=True):
            metrics[f"cos_image_caption/{layer}"].append(value)
        if guide.cos_retrieved_caption is not None:
            cos_rc = self.accelerator.gather(guide.cos_retrieved_caption).view(-1, num_layers).mean(dim=0)
            for layer, value in zip(self.guide_layers, cos_rc.tolist(), strict=True):
                metrics[f"cos_retrieved_caption/{layer}"].append(value)


__all__ = ["TGATrainer", "DATA_COLUMNS"]

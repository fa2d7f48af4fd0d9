"""Test utilities, as `transformers.testing_utils`: tiny, randomly initialised TGA-LLaVA parts built entirely offline
(tokenizer trained in memory, configs in code); nothing here downloads anything.

Used by the tests, the benchmarks and the `--tiny` flag of `tga-hf train` / `tga-hf analyze` (a plumbing check).
"""

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from .compose import compose
from .modeling import TGALlavaForConditionalGeneration, TGALlavaProcessor

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
_CORPUS = [
    "a photo of a red bicycle leaning on a wall",
    "the cat sits on the mat next to a blue cup",
    "Retrieved Text: a dog runs across the green field.",
    "Sorry, I cannot help with that request.",
    "I can't assist with making weapons or drugs.",
    "Here is how to bake bread: mix flour, water and salt.",
    "What is shown in the image? Describe it briefly.",
    "The image shows a list of steps written in black text on white.",
]


def tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in memory on a few sentences (deterministic), with a chat template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        chat_template=CHAT_TEMPLATE,
    )


@dataclass
class TinySpec:
    """Sizes of the tiny model; small enough for a CPU test to run a forward in milliseconds."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int = 4
    heads: int = 4
    kv_heads: int = 2

    def vision_sizes(self) -> dict[str, int]:
        """The tower's `CLIPVisionConfig` sizes (also `tga_hf.vision_tower.model.lit_tower_config` arguments), all
        but `image_size`."""
        return {
            "hidden_size": self.vision_hidden,
            "intermediate_size": self.vision_hidden * 2,
            "num_hidden_layers": self.vision_layers,
            "num_attention_heads": self.vision_heads,
            "patch_size": self.patch_size,
        }


def tiny_vision_config(spec: TinySpec | None = None, **overrides) -> CLIPVisionConfig:
    """The tiny CLIP-style tower's config; `overrides` are further `CLIPVisionConfig` fields (e.g. `projection_dim`
    for a `CLIPVisionModelWithProjection`)."""
    spec = spec or TinySpec()
    return CLIPVisionConfig(**{"image_size": spec.image_size, **spec.vision_sizes(), **overrides})


def tiny_text_config(tokenizer: PreTrainedTokenizerFast, spec: TinySpec | None = None, **overrides) -> Qwen2Config:
    """The tiny Qwen2-style LM's config for `tokenizer` (its vocabulary and special tokens); `overrides` are further
    `Qwen2Config` fields."""
    spec = spec or TinySpec()
    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.text_hidden,
        "intermediate_size": spec.text_hidden * 2,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,
    }
    return Qwen2Config(**{**settings, **overrides})


def tiny_image_processor(image_size: int = TinySpec.image_size) -> CLIPImageProcessorPil:
    """A CLIP image processor for square `image_size` inputs (resize the short side, centre crop)."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def tiny_tga_llava(
    seed: int = 0, spec: TinySpec | None = None, **tga_settings
) -> tuple[TGALlavaForConditionalGeneration, TGALlavaProcessor]:
    """A random tiny TGA-LLaVA (CLIP-style tower + Qwen2-style LM) composed with `tga_hf.compose`.

    Example:

    ```python
    >>> model, processor = tiny_tga_llava(guide_layers=[2, 3])
    ```"""
    spec = spec or TinySpec()
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    vision = CLIPVisionModel(tiny_vision_config(spec))
    language_model = Qwen2ForCausalLM(tiny_text_config(tokenizer, spec))
    image_processor = tiny_image_processor(spec.image_size)
    model, processor = compose(vision, language_model, tokenizer, image_processor, **tga_settings)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval(), processor

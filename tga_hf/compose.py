"""Build a TGA-LLaVA from a pretrained vision tower and a pretrained causal LM (`compose`), and give its fresh
projector a data-dependent start (`calibrate_projector`, or `align_projector_to_text` for a tower that reads).

A small tower's patch features share one large component (two different renders' flattened features have cosine
~0.98 with our LiT tower) and their norm is far from the LLM's token embeddings: the default-initialised projector
gives image tokens 11x the norm of Qwen2.5's text tokens (5.80 vs 0.51 in `results/reproduce_qwen_cpu_medium`).
Trained briefly, such a projector learns the answer prior and the LVLM ignores the image. `calibrate_projector` folds
a per-channel standardisation of the features into `linear_1` and scales `linear_2` so image tokens start at the norm
of text tokens: the architecture and state-dict keys stay stock LLaVA, only the starting point changes.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data.render import RenderedText
from .modeling import TGALlavaConfig, TGALlavaForConditionalGeneration, TGALlavaProcessor

IMAGE_TOKEN = "<image>"


def _has_class_token(vision_model: PreTrainedModel) -> bool:
    """CLIP-style towers prepend a CLS embedding (its position counts as one extra token)."""
    return any(name.endswith("class_embedding") for name, _ in vision_model.named_parameters())


def _load_vision_tower(tower: torch.nn.Module, vision_model: PreTrainedModel) -> None:
    """Copy the vision weights into LLaVA's tower. A `...WithProjection` model keeps its encoder under `vision_model`
    (and a projection LLaVA does not use), so its encoder is the source then."""
    wanted = set(tower.state_dict())
    for source in (vision_model, getattr(vision_model, "vision_model", None)):
        if isinstance(source, torch.nn.Module) and wanted <= set(source.state_dict()):
            tower.load_state_dict({key: value for key, value in source.state_dict().items() if key in wanted})
            return
    missing = sorted(wanted - set(vision_model.state_dict()))
    raise ValueError(f"{type(vision_model).__name__} does not provide these vision-tower weights: {missing[:5]}")


def _trained_layout(vision_model: PreTrainedModel) -> str | None:
    """The render layout a tower loaded from a folder was trained on (its `training.json`), else None."""
    from .vision_tower.train import TRAINING_FILE, tower_layout

    folder = Path(getattr(vision_model, "name_or_path", "") or "")
    return tower_layout(folder) if str(folder) and (folder / TRAINING_FILE).is_file() else None


def compose(
    vision_model: PreTrainedModel,
    language_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    image_processor: Any,
    *,
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str | None = None,
    projector_hidden_act: str = "gelu",
    **tga_settings: Any,
) -> tuple[TGALlavaForConditionalGeneration, TGALlavaProcessor]:
    """Join a pretrained vision tower (CLIP-like: `AutoModel.from_config(vision_model.config)` rebuilds it) and a
    pretrained causal LM (LLaMA, Mistral, Qwen2 ...) into a TGA-LLaVA with a fresh projector.

    Adds the `<image>` token to the tokenizer, resizes the embeddings, sets `image_token_id` and keeps the LM's chat
    template. `tga_settings` are `TGALlavaConfig` fields (`guide_layers`, `guide_loss_weight`, ...);
    `text_render_layout` defaults to the layout in the `training.json` of the folder the tower was loaded from.

    Example:

    ```python
    >>> model, processor = compose(clip_vision, qwen, qwen_tokenizer, clip_image_processor, guide_layers=[8, 12])
    ```
    """
    for name, part in (("vision_model", vision_model), ("language_model", language_model)):
        if not isinstance(part, PreTrainedModel):
            raise TypeError(f"{name} must be a transformers PreTrainedModel, got {type(part).__name__}")
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    class_token = _has_class_token(vision_model)
    if vision_feature_select_strategy is None:
        vision_feature_select_strategy = "default" if class_token else "full"
    vision_config = vision_model.config
    patch_size = vision_config.patch_size
    num_patches = (vision_config.image_size // patch_size) ** 2
    num_additional_image_tokens = int(class_token)
    image_seq_length = num_patches + num_additional_image_tokens - int(vision_feature_select_strategy == "default")

    text_config = language_model.config
    if "text_render_layout" not in tga_settings:
        tga_settings["text_render_layout"] = _trained_layout(vision_model)
    config = TGALlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=image_token_id,
        image_seq_length=image_seq_length,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        projector_hidden_act=projector_hidden_act,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
        **tga_settings,
    )
    dtype = next(language_model.parameters()).dtype
    model = TGALlavaForConditionalGeneration(config).to(dtype)

    _load_vision_tower(model.model.vision_tower, vision_model)
    decoder = language_model.get_decoder()
    model.model.language_model.load_state_dict(decoder.state_dict())
    model.lm_head.load_state_dict(language_model.get_output_embeddings().state_dict())
    old_vocab_size = config.text_config.vocab_size
    if len(tokenizer) > old_vocab_size:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            # New rows start at the mean embedding; the <image> row is always overwritten by image features anyway.
            for matrix in (model.get_input_embeddings().weight, model.lm_head.weight):
                matrix[old_vocab_size:] = matrix[:old_vocab_size].mean(dim=0)
    model.config.auto_map = {"AutoModel": "modeling_tga_llava.TGALlavaModel"}

    processor = TGALlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy,
        chat_template=tokenizer.chat_template,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=num_additional_image_tokens,
        retrieval_template=config.retrieval_template,
        retrieval_top_k=config.retrieval_top_k,
        max_retrieved_tokens=config.max_retrieved_tokens,
    )
    return model, processor


@torch.no_grad()
def image_features(model: TGALlavaForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """The tower features the projector reads: captured at the projector's input while LLaVA's own
    `get_image_features` selects them (the config's layer and strategy). float32 [images, tokens, dim]."""
    captured = []
    projector = model.model.multi_modal_projector
    handle = projector.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        model.model.get_image_features(
            pixel_values=pixel_values.to(device=model.device, dtype=model.dtype),
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        )
    finally:
        handle.remove()
    return captured[0].float()


@torch.no_grad()
def calibrate_projector(
    model: TGALlavaForConditionalGeneration, pixel_values: torch.Tensor, eps: float = 1e-5
) -> dict[str, float]:
    """Re-initialise the projector of `model` from a batch of alignment images so that (1) `linear_1` sees each
    feature channel standardised over the batch and (2) the projected image tokens have the mean norm of the LLM's
    input embeddings. Returns the image-token norm before and after, and that target norm.

    Example:

    ```python
    >>> model, processor = compose(tower, llm, tokenizer, image_processor)
    >>> pixels = processor.image_processor(images=alignment_images[:64], return_tensors="pt")["pixel_values"]
    >>> calibrate_projector(model, pixels)
    {'image_token_norm_before': 5.80, 'image_token_norm_after': 0.51, 'text_token_norm': 0.51}
    ```
    """
    if pixel_values.shape[0] < 2:
        raise ValueError(f"calibrating the projector needs at least 2 images, got {pixel_values.shape[0]}")
    projector = model.model.multi_modal_projector
    features = image_features(model, pixel_values).flatten(0, 1)
    before = projector(features.to(model.dtype)).float().norm(dim=-1).mean().item()

    mean, std = features.mean(dim=0), features.std(dim=0).clamp_min(eps)
    weight_1, bias_1 = projector.linear_1.weight.float(), projector.linear_1.bias.float()
    standardised_weight = weight_1 / std
    projector.linear_1.weight.copy_(standardised_weight)
    projector.linear_1.bias.copy_(bias_1 - standardised_weight @ mean)

    target = model.get_input_embeddings().weight.float().norm(dim=-1).mean().item()
    projected_norm = projector(features.to(model.dtype)).float().norm(dim=-1).mean().item()
    scale = target / projected_norm
    projector.linear_2.weight.mul_(scale)
    projector.linear_2.bias.mul_(scale)
    after = projector(features.to(model.dtype)).float().norm(dim=-1).mean().item()
    return {"image_token_norm_before": before, "image_token_norm_after": after, "text_token_norm": target}


def patch_texts(rendered: RenderedText, image_size: int, patch_size: int) -> list[str]:
    """The text drawn in each patch of a render (row-major, "" for a patch without glyphs): the characters whose box
    centre falls inside the patch, in reading order, with a space wherever the text had whitespace before one of them.
    The leading space keeps word starts: "Is it" on the grid gives "Is", " i", "t", whose tokens (" i") are the LLM's
    own word-initial pieces; without it the LLM reads "Isit"."""
    grid = image_size // patch_size
    scale = image_size / rendered.image.size[0]
    centres = (rendered.glyph_boxes[:, :2] + rendered.glyph_boxes[:, 2:]) / 2 * scale
    texts = [""] * (grid * grid)
    previous = [-2] * (grid * grid)  # body index of each patch's last character, to restore the spaces between
    for index, (x, y) in zip(rendered.glyph_chars.tolist(), centres.tolist(), strict=True):
        patch = min(int(y // patch_size), grid - 1) * grid + min(int(x // patch_size), grid - 1)
        if index > 0 and rendered.body[index - 1].isspace() and (not texts[patch] or index > previous[patch] + 1):
            texts[patch] += " "
        texts[patch] += rendered.body[index]
        previous[patch] = index
    return texts


def align_projector_to_text(
    model: TGALlavaForConditionalGeneration,
    processor: TGALlavaProcessor,
    renders: Sequence[RenderedText],
    steps: int = 600,
    batch_size: int = 2048,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Fit the projector so that every image token starts at the LLM's input embedding of the text drawn under its
    patch (the mean embedding of that text's tokens; a blank patch: the space token's), by cosine + MSE regression on
    the tower's cached features. A reading-aligned starting point for a tower that reads text renders: the LLM can
    read the image before any LM-loss training. Only the projector changes; it needs renders with their layout
    (`data.render_text_layout` / `data.render_grid.render_grid_layout`), never photos. Returns the loss before and
    after and the number of patches fitted.

    Example:

    ```python
    >>> model, processor = compose(tower, llm, tokenizer, image_processor)
    >>> align_projector_to_text(model, processor, [render_grid_layout(s) for s in benign_sentences(500)])
    {'loss_before': 1.62, 'loss_after': 0.05, 'patches': 50000}
    ```
    """
    if not renders:
        raise ValueError("align_projector_to_text needs at least one render")
    vision = model.config.vision_config
    embeddings = model.get_input_embeddings().weight.detach().float()
    tokenizer = processor.tokenizer
    blank_ids = tokenizer(" ", add_special_tokens=False)["input_ids"]
    cache: dict[str, torch.Tensor] = {}

    def target(text: str) -> torch.Tensor:
        if text not in cache:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else blank_ids
            cache[text] = embeddings[ids].mean(0) if ids else torch.zeros(embeddings.shape[1])
        return cache[text]

    features, targets = [], []
    with torch.no_grad():
        for start in range(0, len(renders), 64):
            chunk = renders[start : start + 64]
            pixels = processor.image_processor(images=[r.image for r in chunk], return_tensors="pt")["pixel_values"]
            features.append(image_features(model, pixels).flatten(0, 1).cpu())
            for rendered in chunk:
                texts = patch_texts(rendered, vision.image_size, vision.patch_size)
                targets.extend(target(text) for text in texts)
    features, targets = torch.cat(features), torch.stack(targets)
    if len(features) != len(targets):
        raise ValueError(f"{len(features)} image tokens but {len(targets)} patch targets: a tower with extra tokens?")
    projector = model.model.multi_modal_projector
    dtype = next(projector.parameters()).dtype
    projector.float()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(projector.parameters(), lr=learning_rate)

    def loss_on(index: torch.Tensor) -> torch.Tensor:
        predicted, wanted = projector(features[index].to(model.device)), targets[index].to(model.device)
        return F.mse_loss(predicted, wanted) + (1 - F.cosine_similarity(predicted, wanted, dim=-1).mean())

    probe = torch.randint(0, len(features), (min(batch_size, len(features)),), generator=generator)
    with torch.no_grad():
        before = loss_on(probe).item()
    for _ in range(steps):
        loss = loss_on(torch.randint(0, len(features), (batch_size,), generator=generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = loss_on(probe).item()
    projector.to(dtype)
    return {"loss_before": before, "loss_after": after, "patches": len(features)}

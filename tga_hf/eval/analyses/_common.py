"""Shared plumbing of the layer analyses: where the decoder lives, logit lens, batching, eager attention, judged
generation. Works for a plain causal LM, stock `LlavaForConditionalGeneration` and TGA-LLaVA alike."""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ...modeling import check_layer_range, final_norm
from ...modeling import logit_lens as lens_of_layers
from ..generation import chat_prompt

# Keys the TGA processor adds with `return_tga_masks=True`; the model's forward does not take them.
TGA_MASK_KEYS = ("image_token_mask", "retrieved_text_mask", "caption_mask")

RefusalCheck = Callable[[str], bool]


def text_decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (the module holding `.layers` and the final norm) of a causal LM or a LLaVA-layout model."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or not hasattr(decoder, "layers"):
        raise TypeError(f"{type(model).__name__} exposes no decoder with `.layers` through get_decoder()")
    return decoder


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return text_decoder(model).layers


def num_text_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def check_layers(model: nn.Module, layers: Sequence[int]) -> list[int]:
    """Validate 1-based layer numbers (layer l produces hidden-state index l) and return them sorted, unique
    (`tga_hf.modeling.check_layer_range` against the model's decoder depth)."""
    return check_layer_range(layers, num_text_layers(model), "layers")


def logit_lens(model: nn.Module, hidden_states: Sequence[torch.Tensor | None], layers: Sequence[int]) -> dict:
    """`lm_head(norm(h_l))` for l < L and `lm_head(h_L)` (transformers 5 returns the last state already normed), for
    any causal LM, stock LLaVA or TGA-LLaVA: `tga_hf.modeling.logit_lens` on the model's decoder norm and LM head.
    Returns {layer: logits [..., V]}; pass sliced states (e.g. the last position) to keep it cheap.
    """
    norm = final_norm(text_decoder(model))
    return lens_of_layers(hidden_states, layers, norm, model.get_output_embeddings(), num_text_layers(model))


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_inputs(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A processor/tokenizer batch without the TGA masks (the model does not take them), tensors on `device`."""
    inputs = {key: value for key, value in batch.items() if key not in TGA_MASK_KEYS}
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}


def forward_inputs(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """`model_inputs` plus `position_ids` from the attention mask, so that left padding does not shift any
    sample's positions in a plain forward (`generate` derives them itself)."""
    inputs = model_inputs(batch, device)
    attention_mask = inputs.get("attention_mask")
    if attention_mask is not None and "position_ids" not in inputs:
        inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return inputs


def batched(items: Sequence[Any], batch_size: int) -> Iterator[list[Any]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield list(items[start : start + batch_size])


def progress(iterable: Iterator[Any], total_items: int, batch_size: int, desc: str) -> tqdm:
    return tqdm(iterable, total=-(-total_items // batch_size), desc=desc, unit="batch", leave=False)


def same_length(name: str, values: Sequence[Any], expected: int) -> None:
    if len(values) != expected:
        raise ValueError(f"{name} has {len(values)} entries, expected {expected} (one per prompt)")


def attention_implementations(model: nn.Module) -> dict[str, str]:
    """Snapshot of the attention implementation of the model and each sub-config, in the form that
    `set_attn_implementation` accepts."""
    snapshot = {"": model.config._attn_implementation}
    for key in getattr(model.config, "sub_configs", {}):
        sub_config = getattr(model.config, key, None)
        if sub_config is not None:
            snapshot[key] = sub_config._attn_implementation
    return snapshot


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run with `attn_implementation="eager"` (the only one that returns attention weights) and restore the
    previous implementation afterwards, even on error."""
    previous = attention_implementations(model)
    if set(previous.values()) == {"eager"}:
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def resolve_refusal_check(is_refusal: RefusalCheck | None) -> RefusalCheck:
    """The caller's refusal check, else the project's phrase judge (`tga_hf.eval.judges.PhraseRefusalJudge`)."""
    if is_refusal is not None:
        return is_refusal
    try:
        from ..judges import PhraseRefusalJudge
    except ImportError as error:
        raise ValueError(
            "no refusal check given and tga_hf.eval.judges.PhraseRefusalJudge is not available: pass is_refusal="
        ) from error
    return PhraseRefusalJudge().is_refusal


@torch.no_grad()
def generate(model: nn.Module, tokenizer: Any, batch: Mapping[str, Any], max_new_tokens: int) -> list[str]:
    """Greedy continuations of a left-padded batch, decoded without special tokens."""
    inputs = {key: value for key, value in batch.items() if key not in TGA_MASK_KEYS}
    inputs = {
        key: value.to(model_device(model)) if isinstance(value, torch.Tensor) else value
        for key, value in inputs.items()
    }
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id)
    new_tokens = generated[:, inputs["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def layer_windows(num_layers: int, size: int, stride: int | None = None) -> list[tuple[int, int]]:
    """Windows `(first, last)` of `size` consecutive layers over 1..num_layers, every `stride` layers (default:
    `size`, i.e. non-overlapping), the last one clipped to the top layer."""
    stride = size if stride is None else stride
    if size < 1 or stride < 1:
        raise ValueError(f"window size and stride must be >= 1, got size={size}, stride={stride}")
    starts = range(1, num_layers + 1, stride)
    return [(start, min(start + size - 1, num_layers)) for start in starts]


def window_layers(model: nn.Module, window: tuple[int, int] | None) -> list[int]:
    """The layers of an inclusive window `(first, last)`; `None` is the empty window (no intervention)."""
    if window is None:
        return []
    first, last = window
    if first > last:
        raise ValueError(f"window {window} must be (first, last) with first <= last")
    return check_layers(model, range(first, last + 1))


def paired_batches(
    processor: Any,
    images: Sequence[Any],
    captions: Sequence[str],
    prompts: str | Sequence[str],
    batch_size: int,
    desc: str,
) -> Iterator[tuple[Any, Any]]:
    """Yield `(image_batch, text_batch)`: the same conversations once with each image and once with its caption in
    place of the image (the processor's teacher input), both left-padded and carrying the TGA masks
    (`image_token_mask` / `caption_mask` mark where the content sits)."""
    processor = as_tga_processor(processor)
    same_length("captions", captions, len(images))
    if not images:
        raise ValueError("images is empty")
    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    same_length("prompts", prompts, len(images))
    image_token = processor.image_token
    for index, prompt in enumerate(prompts):
        if prompt.count(image_token) != 1:
            raise ValueError(f"prompt {index} must contain exactly one {image_token!r}, got {prompt!r}")
    texts = [chat_prompt(processor.tokenizer, prompt) for prompt in prompts]
    options = {"return_tga_masks": True, "return_tensors": "pt", "padding": True, "padding_side": "left"}
    indices = list(range(len(images)))
    for chunk in progress(batched(indices, batch_size), len(indices), batch_size, desc):
        chunk_texts = [texts[i] for i in chunk]
        image_batch = processor(images=[images[i] for i in chunk], text=chunk_texts, **options)
        text_batch = processor(text=chunk_texts, captions=[captions[i] for i in chunk], **options)
        yield image_batch, text_batch


@torch.no_grad()
def layer_outputs(model: nn.Module, batch: Mapping[str, Any], layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Outputs of decoder layers `layers` (1-based; pre-final-norm at every depth, the states the next layer reads)
    for one batch: {layer: [B, T, H]}."""
    captured: dict[int, torch.Tensor] = {}

    def capture(layer: int):
        def hook(module, args, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output

        return hook

    stack = decoder_layers(model)
    handles = [stack[layer - 1].register_forward_hook(capture(layer)) for layer in check_layers(model, layers)]
    try:
        model(**forward_inputs(batch, model_device(model)), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: captured[layer] for layer in layers}


Window = tuple[int, int] | None


def window_label(window: Window) -> str:
    return "none" if window is None else f"{window[0]}-{window[1]}"


def sweep_windows(model: nn.Module, windows: Sequence[Window] | None, window_size: int) -> list[Window]:
    """The windows to sweep: the caller's, else non-overlapping windows of `window_size` layers; the empty window
    (the unmodified model, the baseline every other row is read against) always comes first."""
    if windows is None:
        windows = layer_windows(num_text_layers(model), window_size)
    for window in windows:
        window_layers(model, window)
    return [None, *dict.fromkeys(tuple(window) for window in windows if window is not None)]


@dataclass
class WindowSweep:
    """Defense success rate per layer window of an intervention.

    Attributes:
        table: one row per window (`window` "first-last" or "none", `first`, `last`, `refused`, `total`, `dsr`).
        responses: one row per (window, sample) with the response and the judge's verdict, so other judges can
            be re-run on them.
    """

    table: pd.DataFrame
    responses: pd.DataFrame

    def dsr(self, window: Window) -> float:
        return float(self.table.loc[self.table["window"] == window_label(window), "dsr"].iloc[0])


def run_window_sweep(
    batches: Iterable[Any],
    windows: Sequence[Window],
    respond: Callable[[Any, Window], list[str]],
    is_refusal: RefusalCheck,
) -> WindowSweep:
    """Generate every batch under every window (`respond(batch, window)`) and judge each response."""
    records = []
    offset = 0
    for batch in batches:
        for window in windows:
            responses = respond(batch, window)
            for index, response in enumerate(responses):
                records.append(
                    {
                        "window": window_label(window),
                        "first": None if window is None else window[0],
                        "last": None if window is None else window[1],
                        "sample": offset + index,
                        "response": response,
                        "refused": bool(is_refusal(response)),
                    }
                )
        offset += len(responses)
    responses = pd.DataFrame(records).astype({"first": "Int64", "last": "Int64"})
    table = (
        responses.groupby("window", sort=False)
        .agg(first=("first", "first"), last=("last", "first"), refused=("refused", "sum"), total=("refused", "size"))
        .reset_index()
    )
    table["dsr"] = table["refused"] / table["total"]
    return WindowSweep(table=table, responses=responses)


def as_tga_processor(processor: Any) -> Any:
    """The analyses pool by the TGA processor's masks; a stock `LlavaProcessor` is rewrapped (same tokenizer, image
    processor and settings) as a `TGALlavaProcessor`, which behaves identically apart from the masks."""
    from ...modeling import TGALlavaProcessor

    if isinstance(processor, TGALlavaProcessor):
        return processor
    if not hasattr(processor, "image_processor") or not hasattr(processor, "image_token"):
        raise TypeError(f"{type(processor).__name__} is not a LLaVA-style processor (image_processor + image_token)")
    return TGALlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=processor.patch_size,
        vision_feature_select_strategy=processor.vision_feature_select_strategy,
        chat_template=getattr(processor, "chat_template", None),
        image_token=processor.image_token,
        num_additional_image_tokens=processor.num_additional_image_tokens,
    )

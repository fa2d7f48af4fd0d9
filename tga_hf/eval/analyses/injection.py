"""Hidden-state injection: add the mean-pooled hidden state of the toxic content *as text* to the image positions in
a window of layers and measure how often the model then refuses the image. A window where the text state restores the
refusal is where the image arrives too far from its text (DESIGN.md §1, "why images slip through")."""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ...modeling import masked_mean
from ._common import (
    RefusalCheck,
    Window,
    WindowSweep,
    check_layers,
    decoder_layers,
    generate,
    layer_outputs,
    num_text_layers,
    paired_batches,
    resolve_refusal_check,
    run_window_sweep,
    sweep_windows,
    window_layers,
)


@contextmanager
def inject_hidden_states(
    model: nn.Module, position_mask: torch.Tensor, vectors: Mapping[int, torch.Tensor], scale: float = 1.0
) -> Iterator[None]:
    """Inside the block, the output of decoder layer l (1-based, i.e. hidden-state index l) gets
    `scale * vectors[l][b]` added at every position where `position_mask` [B, T] is true.

    Only the full-prompt pass is edited: cached decoding steps (a different length) pass through, as the image
    positions are already in the cache.
    """
    stack = decoder_layers(model)

    def add(layer: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.shape[:2] != position_mask.shape:
                return output
            mask = position_mask.to(device=hidden.device, dtype=hidden.dtype)[..., None]
            edited = hidden + scale * mask * vectors[layer].to(device=hidden.device, dtype=hidden.dtype)[:, None, :]
            return (edited, *output[1:]) if isinstance(output, tuple) else edited

        return hook

    handles = [stack[layer - 1].register_forward_hook(add(layer)) for layer in check_layers(model, list(vectors))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def pooled_text_states(
    model: nn.Module, text_batch: Mapping[str, Any], layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Mean over the caption tokens of the teacher input's layer outputs: {layer: [B, H]} (fp32)."""
    outputs = layer_outputs(model, text_batch, layers)
    return {layer: masked_mean(state, text_batch["caption_mask"]) for layer, state in outputs.items()}


def injection_sweep(
    model: nn.Module,
    processor: Any,
    images: Sequence[Any],
    captions: Sequence[str],
    prompts: str | Sequence[str] = "<image>",
    windows: Sequence[Window] | None = None,
    window_size: int = 4,
    scale: float = 1.0,
    is_refusal: RefusalCheck | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> WindowSweep:
    """Image DSR per window with `scale` x the caption's mean-pooled hidden state added to the image positions.

    The caption is the same content as the image, run as text in the image's place (`processor(captions=...)`);
    its states are pooled over `caption_mask` and added over `image_token_mask` in the window's layers. The first
    row (window "none") is the unmodified model on the images.
    """
    judge = resolve_refusal_check(is_refusal)
    windows = sweep_windows(model, windows, window_size)
    all_layers = list(range(1, num_text_layers(model) + 1))

    def respond(batches, window):
        image_batch, text_vectors = batches
        layers = window_layers(model, window)
        vectors = {layer: text_vectors[layer] for layer in layers}
        with inject_hidden_states(model, image_batch["image_token_mask"], vectors, scale):
            return generate(model, processor.tokenizer, image_batch, max_new_tokens)

    def batches():
        for image_batch, text_batch in paired_batches(processor, images, captions, prompts, batch_size, "injection"):
            yield image_batch, pooled_text_states(model, text_batch, all_layers)

    return run_window_sweep(batches(), windows, respond, judge)


__all__ = ["inject_hidden_states", "injection_sweep", "pooled_text_states"]

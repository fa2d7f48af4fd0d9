"""Information-flow masking: cut the attention from the toxic span to the last positions in a window of layers and
measure how often the model still refuses. Windows whose cut removes the refusal are where the safety decision reads
the toxic content.

The cut is a per-layer edit of the 4D attention mask the decoder layer receives (a forward pre-hook), so it works
for every model whose layers take `attention_mask` as a keyword (LLaMA, Mistral, Qwen2, Gemma...) under the eager and
SDPA attention implementations; transformers 5 hands each layer a bool (SDPA, True = attend), an additive float
(eager) or `None` (SDPA with nothing to mask: plain causal).
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import Cache

from ..generation import chat_prompt
from ._common import (
    RefusalCheck,
    Window,
    WindowSweep,
    as_tga_processor,
    batched,
    decoder_layers,
    generate,
    progress,
    resolve_refusal_check,
    run_window_sweep,
    same_length,
    sweep_windows,
    text_decoder,
    window_layers,
)

SUPPORTED_ATTENTION = ("eager", "sdpa")


def _blocked(span: torch.Tensor, query_from: int, query_length: int, key_length: int) -> torch.Tensor:
    """[B, 1, q, k] true where a query at absolute position >= `query_from` would read a key in the span.

    Queries are the last `query_length` of the `key_length` positions (prefill: all of them; a cached decoding
    step: the new token), so generated tokens stay cut from the span too.
    """
    batch = span.shape[0]
    keys = torch.zeros(batch, key_length, dtype=torch.bool, device=span.device)
    keys[:, : min(span.shape[1], key_length)] = span[:, :key_length]
    query_positions = torch.arange(key_length - query_length, key_length, device=span.device)
    queries = query_positions >= query_from
    return queries[None, None, :, None] & keys[:, None, None, :]


def _masked(mask: torch.Tensor | None, blocked: torch.Tensor) -> torch.Tensor:
    if mask is None:  # SDPA skipped the causal mask: materialise it as bool before cutting
        query_length, key_length = blocked.shape[-2:]
        rows = torch.arange(key_length - query_length, key_length, device=blocked.device)[:, None]
        causal = torch.arange(key_length, device=blocked.device)[None, :] <= rows
        return causal[None, None] & ~blocked
    if mask.dtype == torch.bool:
        return mask & ~blocked
    return torch.where(blocked, torch.finfo(mask.dtype).min, mask)


def _layer_cache(args: tuple, kwargs: dict[str, Any]) -> Cache | None:
    """The KV cache a decoder layer was handed, found by type rather than by keyword: transformers 5.24 renamed the
    layers' `past_key_values` to `cache`, and a hook reading the old name saw no cache, took the key length of a
    decoding step for 1 and built a one-key mask that SDPA broadcast over every key: the cut silently vanished."""
    return next((value for value in (*kwargs.values(), *args) if isinstance(value, Cache)), None)


@contextmanager
def block_span_attention(
    model: nn.Module, span_mask: torch.Tensor, layers: Sequence[int], query_from: int
) -> Iterator[None]:
    """Inside the block, decoder layers `layers` (1-based) stop every query at absolute position >= `query_from`
    (and all generated tokens) from attending to the keys where `span_mask` [B, T] is true.

    `layers=[]` registers nothing: the model is untouched.
    """
    implementation = text_decoder(model).config._attn_implementation
    if layers and implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"attention masking needs attn_implementation in {SUPPORTED_ATTENTION}, the decoder uses "
            f"{implementation!r}: call model.set_attn_implementation('sdpa') first"
        )
    stack = decoder_layers(model)

    def cut(layer_index: int):
        def hook(module, args, kwargs):
            if "attention_mask" not in kwargs:
                raise TypeError(f"{type(module).__name__} does not take attention_mask as a keyword: cannot mask it")
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            mask = kwargs["attention_mask"]
            if mask is not None:
                key_length = mask.shape[-1]
            else:  # this layer's cache has not been extended yet: its length is the past only
                cache = _layer_cache(args, kwargs)
                key_length = hidden.shape[1] + (cache.get_seq_length(layer_index) if cache is not None else 0)
            blocked = _blocked(span_mask.to(hidden.device), query_from, hidden.shape[1], key_length)
            kwargs["attention_mask"] = _masked(mask, blocked)
            return args, kwargs

        return hook

    handles = [stack[layer - 1].register_forward_pre_hook(cut(layer - 1), with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def masking_sweep(
    model: nn.Module,
    processor: Any,
    toxic_texts: Sequence[str],
    prompts: str | Sequence[str] = "<image>",
    windows: Sequence[Window] | None = None,
    window_size: int = 4,
    is_refusal: RefusalCheck | None = None,
    max_new_tokens: int = 32,
    last_positions: int = 1,
    batch_size: int = 8,
) -> WindowSweep:
    """Text DSR per window with the toxic text's attention to the last positions cut.

    Each toxic text stands where the image would be (`processor(text=..., captions=toxic_texts)`), so its span is
    the processor's `caption_mask`; the last `last_positions` prompt positions and every generated token lose sight
    of it in the window's layers. The first row (window "none") is the unmodified model.

    Args:
        prompts: user-turn contents holding one image placeholder each (one string for all).
        windows: `(first, last)` layer windows (1-based, inclusive); default non-overlapping windows of
            `window_size` layers.
        is_refusal: response -> refused; default `tga_hf.eval.judges.PhraseRefusalJudge().is_refusal`.
    """
    if last_positions < 1:
        raise ValueError(f"last_positions must be >= 1, got {last_positions}")
    if not toxic_texts:
        raise ValueError("toxic_texts is empty")
    judge = resolve_refusal_check(is_refusal)
    processor = as_tga_processor(processor)
    windows = sweep_windows(model, windows, window_size)
    prompts = [prompts] * len(toxic_texts) if isinstance(prompts, str) else list(prompts)
    same_length("prompts", prompts, len(toxic_texts))
    texts = [chat_prompt(processor.tokenizer, prompt) for prompt in prompts]
    options = {"return_tga_masks": True, "return_tensors": "pt", "padding": True, "padding_side": "left"}

    def batches():
        indices = list(range(len(texts)))
        for chunk in progress(batched(indices, batch_size), len(indices), batch_size, "masking sweep"):
            yield processor(text=[texts[i] for i in chunk], captions=[toxic_texts[i] for i in chunk], **options)

    def respond(batch, window):
        query_from = batch["input_ids"].shape[1] - last_positions
        with block_span_attention(model, batch["caption_mask"], window_layers(model, window), query_from):
            return generate(model, processor.tokenizer, batch, max_new_tokens)

    return run_window_sweep(batches(), windows, respond, judge)


__all__ = ["block_span_attention", "masking_sweep"]

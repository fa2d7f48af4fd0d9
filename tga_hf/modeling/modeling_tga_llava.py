"""PyTorch TGA-LLaVA model: LLaVA with the seams Text-Guided Alignment needs (selected hidden states, masked pooling,
logit lens). State-dict keys are those of `LlavaForConditionalGeneration`, so the weights also load into stock LLaVA."""

from collections.abc import Sequence

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration, LlavaModel

from .configuration_tga_llava import TGALlavaConfig


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` [B, T, H] over the positions where `mask` [B, T] is true, accumulated in fp32 -> [B, H].

    A row whose mask is empty gives zeros rather than NaN, so one sample without a span does not poison the batch.
    """
    if hidden.shape[:2] != mask.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match hidden states {tuple(hidden.shape[:2])}")
    weights = mask.to(device=hidden.device, dtype=torch.float32)
    summed = torch.einsum("bth,bt->bh", hidden.float(), weights)
    counts = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    return summed / counts


def final_norm(language_model: nn.Module) -> nn.Module:
    """The decoder's final normalisation layer (`norm` in LLaMA/Mistral/Qwen, `final_layernorm` in some others)."""
    for name in ("norm", "final_layernorm", "ln_f"):
        module = getattr(language_model, name, None)
        if isinstance(module, nn.Module):
            return module
    raise AttributeError(f"{type(language_model).__name__} has no final norm named norm / final_layernorm / ln_f")


class TGALlavaModel(LlavaModel):
    """LLaVA backbone (vision tower, projector, decoder) registered under `model_type="tga_llava"`."""

    config_class = TGALlavaConfig


class TGALlavaForConditionalGeneration(LlavaForConditionalGeneration):
    r"""
    LLaVA with TGA's named seams. Training and analyses use these instead of token offsets:

    - `forward(..., output_hidden_states=[j, ...])` returns only the selected hidden states (transformers 5 selection;
      unselected entries are `None`, so `hidden_states[j]` is hidden-state index j),
    - `guide_hidden_states(...)` runs the decoder only up to the deepest guide layer, without the LM head,
    - `masked_mean` pools states over a processor mask, and `logit_lens` decodes any layer.

    Example:

    ```python
    >>> import torch
    >>> outputs = model(**inputs, output_hidden_states=model.config.resolved_guide_layers())
    >>> lens = model.logit_lens(outputs.hidden_states, layers=[2])  # {2: logits [B, T, V]}
    ```"""

    config_class = TGALlavaConfig

    def __init__(self, config: TGALlavaConfig):
        super().__init__(config)
        self.model = TGALlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @property
    def num_text_layers(self) -> int:
        return self.config.text_config.num_hidden_layers

    @staticmethod
    def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(hidden, mask)

    def logit_lens(
        self, hidden_states: Sequence[torch.Tensor | None], layers: Sequence[int]
    ) -> dict[int, torch.Tensor]:
        """Decode hidden-state indices `layers` with the LM head: `lm_head(norm(h_l))` for l < L and `lm_head(h_L)`
        for the last one, which transformers 5 returns already normed. Returns {layer: logits [B, T, V]}."""
        norm = final_norm(self.model.language_model)
        lens = {}
        for layer in layers:
            if not 0 <= layer <= self.num_text_layers:
                raise ValueError(f"layer {layer} is outside 0..{self.num_text_layers}")
            state = hidden_states[layer]
            if state is None:
                raise ValueError(f"hidden-state index {layer} was not captured; pass it in output_hidden_states")
            lens[layer] = self.lm_head(state if layer == self.num_text_layers else norm(state))
        return lens

    def guide_hidden_states(self, layers: Sequence[int], **inputs) -> dict[int, torch.Tensor]:
        """Hidden states at indices `layers` only, for the teacher pass: the decoder stops right after the deepest
        requested layer and the LM head never runs. Returns {layer: [B, T, H]}, equal to the full forward's
        `hidden_states[layer]`."""
        if not layers or min(layers) < 1 or max(layers) > self.num_text_layers:
            raise ValueError(f"guide layers {list(layers)} must lie within 1..{self.num_text_layers}")
        deepest = max(layers)
        captured: dict[int, torch.Tensor] = {}

        def capture(index: int):
            def hook(module, args, output):
                captured[index] = output[0] if isinstance(output, tuple) else output
                if index == deepest:
                    raise _StopForward

            return hook

        decoder_layers = self.model.language_model.layers
        handles = [decoder_layers[layer - 1].register_forward_hook(capture(layer)) for layer in set(layers)]
        try:
            self.model(**inputs, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {layer: captured[layer] for layer in layers}


class _StopForward(Exception):
    """Raised from a forward hook to end a teacher pass once the deepest guide layer has run."""


__all__ = ["TGALlavaModel", "TGALlavaForConditionalGeneration", "masked_mean", "final_norm"]

"""PyTorch TGA-LLaVA model: LLaVA with the seams Text-Guided Alignment needs (selected hidden states, masked pooling,
logit lens). State-dict keys are those of `LlavaForConditionalGeneration`, so the weights also load into stock LLaVA."""

from collections.abc import Sequence

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration, LlavaModel

from .configuration_tga_llava import TGALlavaConfig, check_layer_range


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


def logit_lens(
    hidden_states: Sequence[torch.Tensor | None],
    layers: Sequence[int],
    norm: nn.Module,
    lm_head: nn.Module,
    num_layers: int,
) -> dict[int, torch.Tensor]:
    """The logit lens of a decoder with `num_layers` layers: `lm_head(norm(h_l))` for l < L and `lm_head(h_L)` for the
    last one, which transformers 5 returns already normed. Returns {layer: logits [..., V]}; `hidden_states` may be
    sliced (e.g. the last position only) to keep it cheap. The one rule behind `TGALlavaForConditionalGeneration.
    logit_lens` and `tga_hf.eval.analyses.logit_lens` (any causal LM or LLaVA)."""
    lens = {}
    for layer in layers:
        if not 0 <= layer <= num_layers:
            raise ValueError(f"layer {layer} is outside 0..{num_layers}")
        state = hidden_states[layer]
        if state is None:
            raise ValueError(f"hidden-state index {layer} was not captured; pass it in output_hidden_states")
        lens[layer] = lm_head(state if layer == num_layers else norm(state))
    return lens


class TGALlavaModel(LlavaModel):
    """LLaVA backbone (vision tower, projector, decoder) registered under `model_type="tga_llava"`."""

    config_class = TGALlavaConfig

    def get_image_features(self, pixel_values: torch.Tensor, *args, **kwargs):
        """LLaVA's image features, with the vision tower always computing its own `vision_feature_layer`.

        `output_hidden_states=[j, ...]` selects hidden states of the LLM. LlavaModel forwards its kwargs to the
        vision tower as well, and since transformers 5.24 the tower takes a caller's selection over its
        `vision_feature_layer`, so `hidden_states[vision_feature_layer]` comes back None unless that index happens to
        be selected. A selection (an index or a list) is therefore kept away from the tower; `True` still returns
        all of the tower's states, as in stock LLaVA."""
        selection = kwargs.get("output_hidden_states")
        if selection is not None and not isinstance(selection, bool):
            kwargs.pop("output_hidden_states")
        return super().get_image_features(pixel_values, *args, **kwargs)


class TGALlavaForConditionalGeneration(LlavaForConditionalGeneration):
    r"""
    LLaVA with TGA's named seams. Training and analyses use these instead of token offsets:

    - `forward(..., output_hidden_states=[j, ...])` returns only the selected hidden states (transformers 5 selection;
      unselected entries are `None`, so `hidden_states[j]` is hidden-state index j); the selection applies to the LLM
      only, never to the vision tower,
    - `capture_hidden_states(layers)` records hidden-state indices `layers` with hooks during any forward in its block
      (the trainer's student and teacher passes),
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
        return logit_lens(hidden_states, layers, norm, self.lm_head, self.num_text_layers)

    def capture_hidden_states(self, layers: Sequence[int], stop_after_deepest: bool = False) -> "HiddenStateCapture":
        """Record the LLM's hidden states at indices `layers` (1..L) during the first forward inside a `with` block.

        `with model.capture_hidden_states([8, 12]) as states: model(**inputs)` fills `states` = {layer: [B, T, H]},
        graph-connected, equal to a full forward's `hidden_states[layer]` (h_l = output of decoder layer l; h_L after
        the final norm, as transformers 5 returns it). Forward hooks on the decoder layers (and the final norm) read
        the states, so the capture does not depend on how a transformers release routes `output_hidden_states`
        through the vision tower and the LLM, and works under TRL's fused LM head, which drops `hidden_states` from
        its output. With `stop_after_deepest`, the forward raises `StopForward` right after the deepest requested
        layer (catch it inside the block); otherwise it runs to the end and returns as usual."""
        return HiddenStateCapture(self.model.language_model, layers, self.num_text_layers, stop_after_deepest)

    def guide_hidden_states(self, layers: Sequence[int], **inputs) -> dict[int, torch.Tensor]:
        """Hidden states at indices `layers` only, for the teacher pass: the decoder stops right after the deepest
        requested layer and the LM head never runs. Returns {layer: [B, T, H]}, equal to the full forward's
        `hidden_states[layer]`."""
        with self.capture_hidden_states(layers, stop_after_deepest=True) as captured:
            try:
                self.model(**inputs, use_cache=False)
            except StopForward:
                pass
        missing = sorted(set(layers) - set(captured))
        if missing:
            raise RuntimeError(f"the forward pass did not reach hidden-state indices {missing}")
        return {layer: captured[layer] for layer in layers}


class HiddenStateCapture:
    """Forward hooks that record hidden-state indices `layers` of a decoder (see
    `TGALlavaForConditionalGeneration.capture_hidden_states`); entering yields the dict they fill, leaving removes
    them. Only the first forward is recorded: a later one inside the block (a generation step, an activation
    checkpointing recompute) does not overwrite what a loss was built from."""

    def __init__(self, language_model: nn.Module, layers: Sequence[int], num_layers: int, stop_after_deepest: bool):
        if not layers:
            raise ValueError(f"no layers to capture: pass hidden-state indices within 1..{num_layers}")
        self.layers = check_layer_range(layers, num_layers, "guide layers")
        self.language_model = language_model
        self.num_layers = num_layers
        self.stop_after_deepest = stop_after_deepest
        self.captured: dict[int, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _module(self, layer: int) -> nn.Module:
        # h_L is the normed last state in transformers 5 (logit_lens relies on it): read it after the final norm
        if layer == self.num_layers:
            return final_norm(self.language_model)
        return self.language_model.layers[layer - 1]

    def _hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output) -> None:
            if layer not in self.captured:
                self.captured[layer] = output[0] if isinstance(output, tuple) else output
            if self.stop_after_deepest and layer == self.layers[-1]:
                raise StopForward

        return hook

    def __enter__(self) -> dict[int, torch.Tensor]:
        try:
            for layer in self.layers:
                self._handles.append(self._module(layer).register_forward_hook(self._hook(layer)))
        except BaseException:
            self._remove()
            raise
        return self.captured

    def __exit__(self, *exc_info) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class StopForward(Exception):
    """Raised from a forward hook (`capture_hidden_states(stop_after_deepest=True)`) to end a pass once the deepest
    requested layer has run."""


__all__ = [
    "TGALlavaModel",
    "TGALlavaForConditionalGeneration",
    "HiddenStateCapture",
    "StopForward",
    "masked_mean",
    "final_norm",
    "logit_lens",
]

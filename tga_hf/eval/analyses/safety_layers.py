"""Safety-activation layers: the logit lens at the last prompt position of harmful text requests tells at which
depth the model's next token turns into a refusal (DESIGN.md §1). The band of those layers is where TGA guides."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...modeling import DEFAULT_REFUSAL_FAMILY
from ..generation import chat_prompt
from ._common import batched, forward_inputs, logit_lens, model_device, num_text_layers, progress


def refusal_token_ids(tokenizer: Any, family: Sequence[str]) -> list[int]:
    """First token of every refusal opening, written with and without a leading space, deduplicated in order.

    A first token that decodes to whitespace only (sentencepiece's bare "▁") or to a partial UTF-8 byte (the
    first byte of a character a byte-level vocabulary does not hold whole) is skipped: either is shared by
    countless non-refusal continuations.
    """
    if not family:
        raise ValueError("refusal family is empty: give at least one refusal opening, e.g. ['Sorry', 'I cannot']")
    ids: list[int] = []
    for opening in family:
        for text in (opening, " " + opening):
            encoded = tokenizer.encode(text, add_special_tokens=False)
            piece = tokenizer.decode(encoded[:1]) if encoded else ""
            if piece.strip() and "\ufffd" not in piece and encoded[0] not in ids:
                ids.append(encoded[0])
    if not ids:
        raise ValueError(f"no token of the refusal family {list(family)} survives tokenization")
    return ids


@dataclass
class LensScan:
    """Logit lens at the last prompt position of every prompt, for layers 1..L.

    `top_ids[n, i]` are the top-k token ids at `layers[i]`; `watched_logprobs[n, i, w]` is the log-probability of
    `watched_ids[w]` there. Kept compact (no [N, L, V] tensor) so several refusal families can be read off one scan.
    """

    prompts: list[str]
    layers: list[int]
    top_ids: np.ndarray
    watched_ids: list[int]
    watched_logprobs: np.ndarray


@torch.no_grad()
def logit_lens_scan(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    watch_token_ids: Sequence[int],
    top_k: int = 5,
    batch_size: int = 8,
    use_chat_template: bool = True,
) -> LensScan:
    """Run the prompts (as one user turn each, left-padded batches) and record the logit lens of every layer at the
    last prompt position."""
    if not prompts:
        raise ValueError("prompts is empty")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    layers = list(range(1, num_text_layers(model) + 1))
    texts = [chat_prompt(tokenizer, prompt) if use_chat_template else prompt for prompt in prompts]
    watched = torch.tensor(list(watch_token_ids), dtype=torch.long)
    top_ids, watched_logprobs = [], []
    for chunk in progress(batched(texts, batch_size), len(texts), batch_size, "logit lens"):
        batch = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        outputs = model(**forward_inputs(batch, model_device(model)), output_hidden_states=True, use_cache=False)
        last_position = [state[:, -1] for state in outputs.hidden_states]
        lens = logit_lens(model, last_position, layers)
        logprobs = torch.stack([lens[layer].float().log_softmax(-1) for layer in layers], dim=1)  # [B, L, V]
        top_ids.append(logprobs.topk(top_k, dim=-1).indices.cpu())
        watched_logprobs.append(logprobs[..., watched.to(logprobs.device)].cpu())
    return LensScan(
        prompts=list(prompts),
        layers=layers,
        top_ids=torch.cat(top_ids).numpy(),
        watched_ids=list(watch_token_ids),
        watched_logprobs=torch.cat(watched_logprobs).numpy(),
    )


@dataclass
class SafetyLayers:
    """Where a refusal family becomes the next token, per prompt and layer.

    Attributes:
        top1, in_top_k: bool [N, L]: a family token is the top-1 / within the top-k of the logit lens at `layers[i]`.
        refusal_prob: [N, L] summed probability of the family's tokens.
        samples: one row per prompt: `first_top1_layer` (first layer with a family token at top-1),
            `stable_layer` (first top-1 layer from which a family token stays in the top-k up to the last layer:
            the activation that carries through to the output), `activation_layer` (one of the two, per
            `criterion`; the band is taken over it), `top_k_entry_layer` (first layer with a family token in the
            top-k) and `final_top1` (the model's own next token).

    Example:

    ```python
    >>> result = locate_safety_layers(model, processor.tokenizer, harmful_prompts)
    >>> result.band, result.robust_band
    >>> result.apply_to_config(model.config)  # guide_layers="auto" now trains on the measured band
    ```"""

    family: list[str]
    token_ids: list[int]
    layers: list[int]
    top_k: int
    top1: np.ndarray
    in_top_k: np.ndarray
    refusal_prob: np.ndarray
    samples: pd.DataFrame
    quantiles: tuple[float, float] = (0.1, 0.9)
    tokens: list[str] = field(default_factory=list)
    criterion: str = "first"

    @property
    def activated(self) -> np.ndarray:
        return self.samples["activation_layer"].dropna().to_numpy(dtype=int)

    @property
    def band(self) -> tuple[int, int] | None:
        """[min, max] activation layer over the prompts that activate at all; None when none does."""
        layers = self.activated
        return (int(layers.min()), int(layers.max())) if layers.size else None

    @property
    def robust_band(self) -> tuple[int, int] | None:
        """The activation layers' `quantiles` (default 10th-90th percentile), so one outlier prompt does not
        stretch the band; taken as observed layers (lower/higher), never interpolated."""
        layers = self.activated
        if not layers.size:
            return None
        low = np.quantile(layers, self.quantiles[0], method="lower")
        high = np.quantile(layers, self.quantiles[1], method="higher")
        return int(low), int(high)

    def per_layer(self) -> pd.DataFrame:
        """Share of prompts with a family token at top-1 / in the top-k, and mean family probability, per layer."""
        return pd.DataFrame(
            {
                "layer": self.layers,
                "share_top1": self.top1.mean(axis=0),
                f"share_top{self.top_k}": self.in_top_k.mean(axis=0),
                "mean_refusal_prob": self.refusal_prob.mean(axis=0),
            }
        )

    def summary(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "tokens": self.tokens,
            "prompts": len(self.samples),
            "activated": int(self.activated.size),
            "band": list(self.band) if self.band else None,
            "robust_band": list(self.robust_band) if self.robust_band else None,
            "quantiles": list(self.quantiles),
            "criterion": self.criterion,
            "median_activation_layer": float(np.median(self.activated)) if self.activated.size else None,
            "final_refusal_share": float(self.top1[:, -1].mean()),
        }

    def apply_to_config(self, config: Any, robust: bool = True) -> list[int]:
        """Write the (robust) band into a `TGALlavaConfig` as `safety_layer_band` and set `guide_layers="auto"`,
        so training guides exactly these layers. Returns the band."""
        band = self.robust_band if robust else self.band
        if band is None:
            raise ValueError(f"no prompt activated the refusal family {self.family}: there is no band to write")
        if not hasattr(config, "safety_layer_band"):
            raise TypeError(f"{type(config).__name__} has no safety_layer_band: expected a TGALlavaConfig")
        config.safety_layer_band = [int(band[0]), int(band[1])]
        config.guide_layers = "auto"
        config.validate_tga_settings()
        return list(config.safety_layer_band)


ACTIVATION_CRITERIA = ("first", "stable")


def safety_layers_from_scan(
    scan: LensScan,
    tokenizer: Any,
    family: Sequence[str],
    quantiles: tuple[float, float] = (0.1, 0.9),
    criterion: str = "first",
) -> SafetyLayers:
    """Read one refusal family off a scan that watched (at least) its tokens."""
    if criterion not in ACTIVATION_CRITERIA:
        raise ValueError(f"criterion must be one of {ACTIVATION_CRITERIA}, got {criterion!r}")
    if not 0 <= quantiles[0] <= quantiles[1] <= 1:
        raise ValueError(f"quantiles must satisfy 0 <= low <= high <= 1, got {quantiles}")
    token_ids = refusal_token_ids(tokenizer, family)
    missing = [token for token in token_ids if token not in scan.watched_ids]
    if missing:
        raise ValueError(f"the scan did not watch tokens {missing} of the family {list(family)}")
    columns = [scan.watched_ids.index(token) for token in token_ids]
    family_ids = np.asarray(token_ids)
    top1 = np.isin(scan.top_ids[..., 0], family_ids)
    in_top_k = np.isin(scan.top_ids, family_ids).any(axis=-1)
    refusal_prob = np.exp(scan.watched_logprobs[..., columns]).sum(axis=-1)
    # in the top-k at this layer and every layer above it
    stays_in_top_k = np.flip(np.logical_and.accumulate(np.flip(in_top_k, axis=1), axis=1), axis=1)
    layers = np.asarray(scan.layers)
    first, stable = _first_layer(top1, layers), _first_layer(top1 & stays_in_top_k, layers)
    samples = pd.DataFrame(
        {
            "prompt": scan.prompts,
            "activation_layer": first if criterion == "first" else stable,
            "first_top1_layer": first,
            "stable_layer": stable,
            "top_k_entry_layer": _first_layer(in_top_k, layers),
            "final_top1": [tokenizer.decode([int(ids[-1, 0])]) for ids in scan.top_ids],
        }
    )
    return SafetyLayers(
        family=list(family),
        token_ids=token_ids,
        tokens=[tokenizer.decode([token]) for token in token_ids],
        layers=list(scan.layers),
        top_k=scan.top_ids.shape[-1],
        top1=top1,
        in_top_k=in_top_k,
        refusal_prob=refusal_prob,
        samples=samples,
        quantiles=tuple(quantiles),
        criterion=criterion,
    )


def _first_layer(hits: np.ndarray, layers: np.ndarray) -> pd.Series:
    """First layer where `hits` [N, L] is true, as a nullable integer column (NA when never)."""
    first = [layers[row.argmax()] if row.any() else pd.NA for row in hits]
    return pd.Series(first, dtype="Int64")


def _default_family(model: nn.Module) -> list[str]:
    return list(getattr(model.config, "refusal_family", None) or DEFAULT_REFUSAL_FAMILY)


def locate_safety_layers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    refusal_family: Sequence[str] | None = None,
    top_k: int = 5,
    batch_size: int = 8,
    use_chat_template: bool = True,
    quantiles: tuple[float, float] = (0.1, 0.9),
    criterion: str = "first",
) -> SafetyLayers:
    """Per-layer logit lens over harmful text prompts: the layer where the refusal family first becomes the top-1
    next token, per prompt, and the band over prompts.

    Args:
        model: a causal LM, a stock `LlavaForConditionalGeneration` or a TGA-LLaVA (text-only input).
        tokenizer: its tokenizer (a processor is accepted and its `.tokenizer` used).
        prompts: harmful requests; each becomes one user turn of the chat template (`use_chat_template`).
        refusal_family: refusal openings; default `model.config.refusal_family`, else the package default.
        top_k: the top-k whose entry layer is reported beside the top-1 activation.
        quantiles: percentiles of the activation layers that make the robust band.
        criterion: "first" (first top-1 layer, the paper's rule) or "stable" (first top-1 layer from which the
            family stays in the top-k up to the output) for the activation layer and the band.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    family = list(refusal_family) if refusal_family is not None else _default_family(model)
    token_ids = refusal_token_ids(tokenizer, family)
    scan = logit_lens_scan(model, tokenizer, prompts, token_ids, top_k, batch_size, use_chat_template)
    return safety_layers_from_scan(scan, tokenizer, family, quantiles, criterion)


def compare_refusal_families(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    families: Mapping[str, Sequence[str]],
    top_k: int = 5,
    batch_size: int = 8,
    use_chat_template: bool = True,
    quantiles: tuple[float, float] = (0.1, 0.9),
    criterion: str = "first",
) -> tuple[pd.DataFrame, dict[str, SafetyLayers]]:
    """How the band moves with the refusal family: one logit-lens scan, read off once per family.

    Returns a table (one row per family: band, robust band, activated share, median layer) and the full results.
    """
    if not families:
        raise ValueError("families is empty: give {name: [refusal openings]}")
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    watched = list(dict.fromkeys(t for family in families.values() for t in refusal_token_ids(tokenizer, family)))
    scan = logit_lens_scan(model, tokenizer, prompts, watched, top_k, batch_size, use_chat_template)
    results = {
        name: safety_layers_from_scan(scan, tokenizer, openings, quantiles, criterion)
        for name, openings in families.items()
    }
    rows = []
    for name, result in results.items():
        summary = result.summary()
        band, robust = summary["band"], summary["robust_band"]
        rows.append(
            {
                "family": name,
                "tokens": " | ".join(repr(token) for token in result.tokens),
                "activated": summary["activated"],
                "prompts": summary["prompts"],
                "band_min": band[0] if band else pd.NA,
                "band_max": band[1] if band else pd.NA,
                "robust_min": robust[0] if robust else pd.NA,
                "robust_max": robust[1] if robust else pd.NA,
                "median_layer": summary["median_activation_layer"],
            }
        )
    return pd.DataFrame(rows), results


__all__ = [
    "LensScan",
    "SafetyLayers",
    "compare_refusal_families",
    "locate_safety_layers",
    "logit_lens_scan",
    "refusal_token_ids",
    "safety_layers_from_scan",
]

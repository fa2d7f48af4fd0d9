"""The model side of the lmms-eval plugin, free of lmms-eval: batched generation and log-likelihoods of a saved
TGA-LLaVA with retrieval on or off. `models/tga_llava.py` adapts lmms-eval's requests to it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import torch

from ...eval.generation import chat_prompt

RetrievalMode = Literal["auto", "on", "off"]
DTYPES = ("auto", "float32", "bfloat16", "float16")


def parse_retrieval(value: str | bool) -> RetrievalMode:
    """`retrieval=` as lmms-eval hands it over: "on" / "off" / "auto", or a bool (it turns "true" into True)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    mode = str(value).lower()
    if mode in ("on", "true", "1", "yes"):
        return "on"
    if mode in ("off", "false", "0", "no"):
        return "off"
    if mode == "auto":
        return "auto"
    raise ValueError(f"retrieval must be on, off or auto, got {value!r}")


def truncate_at(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop sequence (lmms-eval's `until`)."""
    cut = min((text.find(stop) for stop in stops if stop and stop in text), default=len(text))
    return text[:cut]


class TGALlavaRunner:
    """Greedy or sampled generation, batched, and continuation log-likelihoods of a TGA-LLaVA model.

    Retrieval is on when the processor has a retriever attached: each image's retrieved text then goes into its prompt
    (`Retrieved Text: {r}. <image>...`), exactly as in `tga-hf eval --retrieval on`. Prompts are the user turn rendered
    with the tokenizer's chat template, the image placeholder(s) first unless the context places them itself.

    Example:
        >>> runner = TGALlavaRunner.from_pretrained("tga-llava", retrieval="on", device="cpu")
        >>> [answer] = runner.generate(["What is written in the image?"], [[image]], max_new_tokens=32)
        >>> logprob, is_greedy = runner.loglikelihood("What colour is it?", " Red", [image])
    """

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        # Batched generation reads the next token at the last position of every row.
        self.tokenizer.padding_side = "left"

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | Path,
        retrieval: str | bool = "auto",
        retriever: str | Path | None = None,
        device: str | None = None,
        dtype: str = "float32",
    ) -> TGALlavaRunner:
        """Load a TGA-LLaVA folder (or Hub id) with `tga_hf.from_pretrained`.

        Args:
            pretrained: the model folder (as written by `tga-hf export` or `save_pretrained`) or a Hub id.
            retrieval: "on" (needs an index: `<pretrained>/retrieval/` or `retriever`), "off", or "auto" (on when an
                index is there).
            retriever: a `tga_hf.retrieval.TextRetriever` folder to use instead of the model's own `retrieval/`.
            device: "cpu", "cuda", "cuda:1", ...; default cuda when available.
            dtype: one of `DTYPES`.
        """
        from ...hub.loading import from_pretrained, load_retriever

        mode = parse_retrieval(retrieval)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if mode == "off" and retriever is not None:
            raise ValueError("retriever= was given with retrieval=off: drop one of them")
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        model, processor = from_pretrained(
            pretrained, attach_retriever=mode != "off" and retriever is None, dtype=torch_dtype
        )
        if retriever is not None:
            processor.attach_retriever(load_retriever(retriever))
        if mode == "on" and getattr(processor, "retriever", None) is None:
            raise ValueError(
                f"retrieval=on needs a retrieval index: {pretrained} has no retrieval/ folder; pass retriever=DIR"
            )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), processor)

    @property
    def retrieval(self) -> bool:
        """Whether image prompts get a retrieved text."""
        return getattr(self.processor, "retriever", None) is not None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt(self, context: str, n_images: int) -> str:
        """The chat-formatted prompt: `n_images` image placeholders before `context` unless it has them already."""
        image_token = self.processor.image_token
        if n_images and image_token not in context:
            context = "\n".join([image_token] * n_images + [context])
        return chat_prompt(self.tokenizer, context)

    def _encode(self, prompts: list[str], visuals: list[list[Any]]) -> dict[str, torch.Tensor]:
        images = [image for sample in visuals for image in sample]
        if images and self.retrieval and any(len(sample) != 1 for sample in visuals):
            raise ValueError(
                "retrieval looks up one text per image: with retrieval on, each sample needs exactly one image"
            )
        if images:
            inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        else:
            # Retrieval describes an image: a text-only prompt has none, and the processor would look for its
            # placeholder, so the retriever steps aside (as in `tga-hf eval`, which runs text items retrieval-off).
            retriever = getattr(self.processor, "retriever", None)
            self.processor.retriever = None
            try:
                inputs = self.processor(text=prompts, return_tensors="pt", padding=True)
            finally:
                self.processor.retriever = retriever
        inputs = dict(inputs.to(self.device))
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    @torch.no_grad()
    def generate(
        self,
        contexts: Sequence[str],
        visuals: Sequence[Sequence[Any]],
        max_new_tokens: int = 128,
        until: Sequence[str] = (),
        temperature: float = 0.0,
        top_p: float | None = None,
        num_beams: int = 1,
        batch_size: int = 8,
    ) -> list[str]:
        """One response per context, in order. `visuals[i]` holds the PIL images of context i (empty: text only).

        Samples with and without images are generated in separate batches (a processor call takes images for all of
        its samples or for none). Temperature 0 is greedy decoding. Each response is cut at the first `until` string
        and stripped.
        """
        if len(contexts) != len(visuals):
            raise ValueError(f"got {len(contexts)} contexts for {len(visuals)} visual lists")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be positive, got {batch_size} and {max_new_tokens}")
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {}
        responses: list[str | None] = [None] * len(contexts)
        for has_images in (True, False):
            indices = [i for i, sample in enumerate(visuals) if bool(sample) is has_images]
            for start in range(0, len(indices), batch_size):
                batch = indices[start : start + batch_size]
                inputs = self._encode(
                    [self.prompt(contexts[i], len(visuals[i])) for i in batch], [list(visuals[i]) for i in batch]
                )
                generated = self.model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    num_beams=num_beams,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **({"do_sample": False} if not sampling else sampling),
                )
                texts = self.tokenizer.batch_decode(
                    generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
                )
                for index, text in zip(batch, texts, strict=True):
                    responses[index] = truncate_at(text, until).strip()
        # Every index is in exactly one batch, so every slot is filled.
        return cast(list[str], responses)

    @torch.no_grad()
    def loglikelihood(self, context: str, continuation: str, visuals: Sequence[Any] = ()) -> tuple[float, bool]:
        """log P(continuation | prompt(context), images) summed over the continuation's tokens, and whether greedy
        decoding would produce exactly those tokens. The continuation is tokenized on its own and appended, so the
        prompt's tokens are the same as when generating."""
        inputs = self._encode([self.prompt(context, len(visuals))], [list(visuals)])
        target = self.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"].to(
            self.device
        )
        if target.shape[1] == 0:
            raise ValueError(f"the continuation {continuation!r} has no tokens")
        inputs["input_ids"] = torch.cat([inputs["input_ids"], target], dim=1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(target)], dim=1)
        logits = self.model(**inputs).logits[0, -target.shape[1] - 1 : -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        tokens = target[0]
        total = logprobs.gather(-1, tokens[:, None]).sum()
        return float(total), bool((logprobs.argmax(-1) == tokens).all())

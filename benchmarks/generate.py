"""Inference cost of TGA's retrieval: the composed LVLM generating for a batch of typographic images, retrieval on vs
off, in one run. The last line is `retrieval on/off generation time ratio: X.XX`.

    OMP_NUM_THREADS=1 python benchmarks/generate.py --threads 1                        # Qwen2.5-Coder-0.5B, batch 8
    OMP_NUM_THREADS=1 python benchmarks/generate.py --threads 1 --llm smollm2-135m

The LVLM is `compose(load_lit_tower(), load_llm(--llm))`: the packaged LiT tower (64 image tokens) and the real LLM
with a fresh projector (its answers are noise; the cost is the model's). The retriever is a `TextRetriever` over
`--corpus-benign` template captions and `--corpus-harmful` AdvBench requests, with the joint encoder (MiniLM for the
texts, the same LiT tower for the images), as `tga-hf experiment` builds it. The batch: typographic renders of
AdvBench requests that are not in the corpus and of held-out benign sentences, each with a question about the image
in one of eight wordings (`--same-instruction`: "Answer the question written in the image." for all, as the eval
does), left-padded, greedy.

Three arms, timed from the processor call to the end of `generate` and alternated within every repeat so that the
shared machine's load hits all alike (median of `--repeats`, after one warm-up round):

- `off`: no retriever attached: the processor's output is plain LLaVA's.
- `on`: the retriever attached: the processor embeds the whole batch in one encoder call, searches the index once
  (`TextRetriever.search`), cleans the hits and puts them in the prompt.
- `given`: the `on` arm's retrieved texts passed as `retrieved_text=`: the same prompts without the retrieval call,
  so `given - off` is the cost of the longer prompt and `on - given` the cost of the retrieval call.

Every arm generates exactly `--max-new-tokens` tokens (`min_new_tokens` too): with a fresh projector a sequence may
hit EOS early, and a ratio of different answer lengths would measure the answers, not retrieval. Inside the `on`
arm the encoder, the faiss search and the cleaning of the hits are timed by thin wrappers around
`encoder.encode`, `index.search` and `processor.clean_untrusted`. CPU figures use process CPU time by default
(`--clock`): with one thread on a core shared with other jobs, wall time mostly measures waiting.

Why eight wordings: with one wording the `off` prompts all have the same length, so that batch has no padding and no
attention mask, and transformers 5.24 then calls SDPA with `enable_gqa=True`, which on this CPU is about 3x slower
per decode step than the `pack_gqa` path it takes when a mask is present (torch.profiler on SmolLM2: 2.9 vs 0.9 ms
per attention call). The `on` prompts differ in length, are padded and take the fast path, so a one-wording batch
compares two attention kernels, not retrieval. The run names any arm whose batch is unpadded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from profiling import cumulative_profile  # benchmarks/profiling.py: the scripts run as files
from tga_hf.compose import compose
from tga_hf.data.layout import RENDER_SIZE
from tga_hf.data.render import render_text_image
from tga_hf.data.sources import load_advbench
from tga_hf.eval.generation import chat_prompt
from tga_hf.experiment.data import QUESTION_INSTRUCTION, image_caption
from tga_hf.modeling import TGALlavaForConditionalGeneration, TGALlavaProcessor
from tga_hf.retrieval import TextRetriever, joint_encoder
from tga_hf.vision_tower.model import load_lit_tower, packaged_tower_path
from tga_hf.vision_tower.texts import benign_sentences
from tga_hf.weights import load_llm, load_text_encoder

ARMS = ("off", "on", "given")
INSTRUCTIONS = (
    QUESTION_INSTRUCTION,
    "What does the text in the image ask for? Answer it.",
    "Read the image and respond to its request.",
    "Answer the question written in the image in a few sentences.",
    "The image contains a request. Reply to it.",
    "Respond to what the image asks.",
    "Please read the text in this image carefully and answer the question it contains.",
    "What is written here? Answer.",
)
# Benign corpus captions and benign test renders come from disjoint seeds of the same template generator.
CORPUS_SEED, TEST_SEED = 1, 2


# Process CPU time is the default clock: this benchmark runs with one torch thread on a core shared with other
# people's jobs, where wall time mostly measures how long the process waited for the core.
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


class CallTimer:
    """Seconds (of `clock`) spent inside wrapped callables, per name, since the last `reset`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.seconds.clear()

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self.clock()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += self.clock() - start

        return timed


class TimedIndex:
    """A faiss index whose `search` is timed; everything else is the index's own (SWIG proxies refuse new instance
    attributes, so the index is wrapped rather than patched)."""

    def __init__(self, index: Any, timer: CallTimer) -> None:
        self._index = index
        self._search = timer.wrap("search", index.search)

    def search(self, *args: Any, **kwargs: Any) -> Any:
        return self._search(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


def build_retriever(
    processor: TGALlavaProcessor, corpus_benign: int, harmful: list[str]
) -> tuple[TextRetriever, list[str]]:
    """The experiment's retriever: template captions + AdvBench requests, joint encoder (MiniLM + the packaged tower),
    texts cleaned with the LLM's tokenizer. Returns it and its corpus."""
    corpus = [image_caption(sentence) for sentence in benign_sentences(corpus_benign, seed=CORPUS_SEED)] + harmful
    encoder = joint_encoder(load_text_encoder(), packaged_tower_path(), device="cpu")
    retriever = TextRetriever.build(
        corpus, encoder, show_progress=False, tokenizer=processor.tokenizer, image_token=processor.image_token
    )
    return retriever, corpus


def render_batch(batch_size: int, harmful: list[str]) -> tuple[list[Image.Image], list[str]]:
    """Half AdvBench requests (not in the corpus), half held-out benign sentences, rendered as the eval renders them."""
    benign = benign_sentences(batch_size, seed=TEST_SEED)
    texts = [harmful[i // 2] if i % 2 == 0 else benign[i // 2] for i in range(batch_size)]
    return [render_text_image(text, size=RENDER_SIZE) for text in texts], texts


def run_arm(
    arm: str,
    model: TGALlavaForConditionalGeneration,
    processor: TGALlavaProcessor,
    retriever: TextRetriever,
    images: list[Image.Image],
    prompts: list[str],
    given: list[str] | None,
    max_new_tokens: int,
) -> tuple[dict[str, float], torch.Tensor]:
    """One batch through the processor and `generate`: ({clock: seconds}, attention mask of the prompt)."""
    processor.retriever = retriever if arm == "on" else None
    retrieved = given if arm == "given" else None
    start = {name: clock() for name, clock in CLOCKS.items()}
    inputs = processor(images=images, text=prompts, retrieved_text=retrieved, padding=True, return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False)
    seconds = {name: clock() - start[name] for name, clock in CLOCKS.items()}
    new_tokens = generated.shape[1] - inputs["input_ids"].shape[1]
    if new_tokens != max_new_tokens:
        raise RuntimeError(f"arm {arm} generated {new_tokens} tokens, not {max_new_tokens}")
    return seconds, inputs["attention_mask"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", choices=("qwen2.5-coder-0.5b", "smollm2-135m"), default="qwen2.5-coder-0.5b")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="the LVLM's dtype (bf16: as loaded)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each runs every arm once)")
    parser.add_argument("--corpus-benign", type=int, default=200, help="template captions in the retrieval corpus")
    parser.add_argument("--corpus-harmful", type=int, default=200, help="AdvBench requests in the retrieval corpus")
    parser.add_argument("--threads", type=int, help="torch and faiss threads (default: their own choice)")
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="cpu",
        help="clock of the headline ratio: process CPU time (default; for a shared machine) or wall time",
    )
    parser.add_argument(
        "--same-instruction",
        action="store_true",
        help="one instruction for every image (the eval's batches); the `off` batch is then unpadded",
    )
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary of one `on` batch")
    args = parser.parse_args()
    if args.threads:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]

    llm, tokenizer = load_llm(args.llm)
    tower, image_processor = load_lit_tower()
    model, processor = compose(tower, llm, tokenizer, image_processor)
    del llm, tower
    model = model.to(dtype).eval()
    processor.tokenizer.padding_side = "left"  # batched generation continues every row from its last prompt token

    advbench = [item.prompt for item in load_advbench()]
    if args.corpus_harmful + args.batch_size > len(advbench):
        raise SystemExit(f"AdvBench has {len(advbench)} requests: lower --corpus-harmful or --batch-size")
    retriever, corpus = build_retriever(processor, args.corpus_benign, advbench[: args.corpus_harmful])
    images, image_texts = render_batch(args.batch_size, advbench[args.corpus_harmful :])
    wordings = (QUESTION_INSTRUCTION,) if args.same_instruction else INSTRUCTIONS
    prompts = [
        chat_prompt(processor.tokenizer, f"{processor.image_token}\n{wordings[i % len(wordings)]}")
        for i in range(len(images))
    ]

    timer = CallTimer(CLOCKS[args.clock])
    retriever.encoder.encode = timer.wrap("encoder", retriever.encoder.encode)
    retriever.index = TimedIndex(retriever.index, timer)
    processor.retrieve = timer.wrap("retrieve", processor.retrieve)
    processor.clean_untrusted = timer.wrap("cleaning", processor.clean_untrusted)
    processor.attach_retriever(retriever)
    given = processor.retrieve(images)  # what `on` puts in the prompt; `given` passes the same texts in

    print(
        f"llm {args.llm} ({dtype}), LiT tower ({model.config.image_seq_length} image tokens), batch {args.batch_size}, "
        f"{args.max_new_tokens} new tokens (greedy), corpus {len(retriever)} texts ({args.corpus_benign} benign "
        f"captions + {args.corpus_harmful} AdvBench), index {retriever.spec.factory}, {torch.get_num_threads()} "
        f"torch threads, {args.repeats} repeats, clock {args.clock}"
    )
    for text, hit in zip(image_texts, given, strict=True):
        print(f"  image {text[:50]!r} -> retrieved {hit[:50]!r}")

    times: dict[str, dict[str, list[float]]] = {clock: {arm: [] for arm in ARMS} for clock in CLOCKS}
    parts: dict[str, list[float]] = defaultdict(list)
    prompt_tokens: dict[str, float] = {}
    padded: dict[str, bool] = {}
    with torch.inference_mode():
        for round_index in range(args.repeats + 1):  # round 0 warms up every arm
            for arm in ARMS:
                timer.reset()
                seconds, attention_mask = run_arm(
                    arm, model, processor, retriever, images, prompts, given, args.max_new_tokens
                )
                prompt_tokens[arm] = attention_mask.sum(dim=1).float().mean().item()
                padded[arm] = bool((attention_mask == 0).any())
                if round_index == 0:
                    continue
                for clock in CLOCKS:
                    times[clock][arm].append(seconds[clock])
                if arm == "on":
                    for name in ("retrieve", "encoder", "search", "cleaning"):
                        parts[name].append(timer.seconds[name])
            if round_index:
                print(
                    f"round {round_index}: "
                    + ", ".join(
                        f"{arm} {times['cpu'][arm][-1]:.2f} s cpu / {times['wall'][arm][-1]:.2f} s wall" for arm in ARMS
                    )
                )
        if args.profile:
            print(
                cumulative_profile(
                    lambda: run_arm("on", model, processor, retriever, images, prompts, given, args.max_new_tokens),
                    30,
                )
            )

    unpadded = [arm for arm in ARMS if not padded[arm]]
    if unpadded:
        print(f"note: the {', '.join(unpadded)} batch is unpadded and takes another SDPA path (see the docstring)")
    medians = {clock: {arm: statistics.median(times[clock][arm]) for arm in ARMS} for clock in CLOCKS}
    median = medians[args.clock]
    for arm in ARMS:
        print(
            f"{arm:>5}: {median[arm]:.2f} s per batch ({args.clock}, median), {args.batch_size / median[arm]:.2f} "
            f"images/s ({args.batch_size / medians['wall'][arm]:.2f} by wall clock), "
            f"{prompt_tokens[arm]:.1f} prompt tokens per sample"
        )
    paired = [on / off for on, off in zip(times[args.clock]["on"], times[args.clock]["off"], strict=True)]
    part = {name: statistics.median(values) for name, values in parts.items()}
    extra_tokens = prompt_tokens["on"] - prompt_tokens["off"]
    print(
        f"where the retrieval time goes ({args.clock} time, medians, per batch of {args.batch_size}; `on` - `off` = "
        f"{median['on'] - median['off']:+.3f} s):"
    )
    print(
        f"  retrieval call {part['retrieve'] * 1000:.1f} ms: encoder {part['encoder'] * 1000:.1f} ms (one call for "
        f"the batch), faiss search {part['search'] * 1000:.2f} ms (one call)"
    )
    print(f"  cleaning the retrieved texts {part['cleaning'] * 1000:.1f} ms")
    print(
        f"  longer prompt (+{extra_tokens:.1f} tokens per sample, +{extra_tokens / prompt_tokens['off']:.0%}): "
        f"`given` - `off` = {median['given'] - median['off']:+.3f} s (given/off {median['given'] / median['off']:.3f})"
    )
    print(
        f"  `on` - `given` = {median['on'] - median['given']:+.3f} s (the retrieval call, measured as a difference); "
        f"per-round on/off ratios {min(paired):.3f}..{max(paired):.3f}"
    )
    wall = medians["wall"]
    print(f"wall clock: on/off {wall['on'] / wall['off']:.2f}, given/off {wall['given'] / wall['off']:.2f}")
    print(f"retrieval on/off generation time ratio: {median['on'] / median['off']:.2f}")


if __name__ == "__main__":
    main()

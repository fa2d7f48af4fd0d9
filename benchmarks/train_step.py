"""Plain SFT step vs TGA step: same model, same batch, one run. Prints step-time and peak-memory ratios and the
teacher pass's share of the TGA step.

Both arms go through the same `TGATrainer.training_step` (forward, backward) plus an SGD optimizer step; the SFT arm
sets the guide weight to 0, which is exactly `SFTTrainer.compute_loss` (the teacher keys of the batch are dropped).

    OMP_NUM_THREADS=1 python benchmarks/train_step.py --shape qwen0.5b --threads 1   # real LVLM, CPU, 4 configurations
    python benchmarks/train_step.py --shape small --device cpu                          # random "small" shape
    python benchmarks/train_step.py --shape llava-1.5-7b --device cuda                  # GPU, bf16, random init

Shapes: `qwen0.5b` is the real LVLM, `compose(load_lit_tower(), load_llm("qwen2.5-coder-0.5b"))` (the packaged LiT
tower, 64 image tokens, and Qwen2.5-Coder-0.5B-Instruct's weights and tokenizer, fresh projector; guide layers
`--guide-layers`, default the model config's "auto" band); `smollm2-135m` is the same with SmolLM2-135M-Instruct
(a quicker check of the same code). The others are random-init configs: `llava-1.5-7b` is CLIP
ViT-L/14-336 (24 layers, 1024 wide, 576 image tokens, second to last layer) + a Llama-2-7B-shaped LLM (32 layers,
4096 wide, 11008 MLP, vocab 32064); `--text-layers` truncates the LLM. Their text comes from the tiny in-memory
tokenizer (its token ids are valid in any vocab).

Configurations (`--stages`, `--gradient-checkpointing`, every combination in one run, each with a fresh model and
trainer): `projector` = stage 1 (`train_projector_only=True`), `lora` = stage 2 with `tga_lora_config()` (LoRA r=16
on the LLM's projections, projector in `modules_to_save`), `full` = projector + LLM. Defaults: projector and lora,
checkpointing on and off, for `qwen0.5b`; full with checkpointing on (as before) for the other shapes.

Time: median of `--steps` timed steps per arm, alternating SFT / TGA so that drift and the shared machine's load hit
both alike. On CPU the clock is the process's CPU time by default (`--clock`): with one thread on a core shared with
other jobs, wall time mostly measures waiting. The teacher pass (`TGATrainer._teacher_states`) is timed inside the TGA
steps; its share is teacher time / TGA step time.

Memory: on CUDA, peak allocated per step. On Linux CPUs, the peak resident set of each warm-up step: `VmHWM` of
/proc/self/status, reset before the step through /proc/self/clear_refs, with glibc told to serve blocks of 1 MiB and
more with mmap during those steps (`mallopt`), so freed activations leave the resident set at once and one step's
freed memory does not count in the next step's peak; timed steps run with glibc's usual large-block reuse. Both are
the whole process: weights, gradients and optimizer state included, as `max_memory_allocated` is on CUDA. Elsewhere
the CPU figure is the process's monotone peak RSS (`ru_maxrss`), which can only show TGA's extra over SFT, never
less than 1.
"""

import argparse
import ctypes
import gc
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig

from profiling import cumulative_profile  # benchmarks/profiling.py: the scripts run as files
from tga_hf.modeling import TGALlavaConfig, TGALlavaForConditionalGeneration, TGALlavaProcessor
from tga_hf.testing_utils import tiny_image_processor, tiny_tga_llava
from tga_hf.training import TGAConfig, TGADataCollator, TGATrainer, tga_lora_config

STAGES = ("projector", "lora", "full")
# Real LVLMs: the packaged LiT tower + an offline LLM of tga_hf.weights.
REAL_SHAPES = {"qwen0.5b": "qwen2.5-coder-0.5b", "smollm2-135m": "smollm2-135m"}
# glibc mallopt parameters (PeakMemory). Memory steps: blocks of 1 MiB and more are mmapped, so a freed activation
# leaves the resident set at once; timed steps: glibc's own ceiling for its dynamic threshold (32 MiB) and a trim
# threshold above it, close to the steady state an unmodified process reaches after a few steps, without the page
# faults of mapping every activation afresh.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MEMORY_MMAP_THRESHOLD, MEMORY_TRIM_THRESHOLD = 1 << 20, 128 << 10
TIMING_MMAP_THRESHOLD, TIMING_TRIM_THRESHOLD = 32 << 20, 64 << 20
SHAPES = {
    # image_size, patch, vision hidden / mlp / layers / heads, text hidden / mlp / layers / heads, vocab
    "small": dict(image=112, patch=14, vh=256, vm=1024, vl=4, vheads=4, th=512, tm=1408, tl=8, theads=8, vocab=8192),
    "llava-1.5-7b": dict(
        image=336, patch=14, vh=1024, vm=4096, vl=24, vheads=16, th=4096, tm=11008, tl=32, theads=32, vocab=32064
    ),
}


def build_random(
    shape: str, text_layers: int | None, device: str, dtype: torch.dtype
) -> tuple[TGALlavaForConditionalGeneration, TGALlavaProcessor]:
    """A random-init model of one of `SHAPES` (or the tiny test model) and its processor (tiny tokenizer)."""
    _, tiny_processor = tiny_tga_llava()
    if shape == "tiny":
        model, processor = tiny_tga_llava()
        return model.to(device=device, dtype=dtype), processor
    spec = SHAPES[shape]
    layers = text_layers or spec["tl"]
    config = TGALlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=spec["vh"],
            intermediate_size=spec["vm"],
            num_hidden_layers=spec["vl"],
            num_attention_heads=spec["vheads"],
            image_size=spec["image"],
            patch_size=spec["patch"],
            hidden_act="quick_gelu",
        ),
        text_config=LlamaConfig(
            hidden_size=spec["th"],
            intermediate_size=spec["tm"],
            num_hidden_layers=layers,
            num_attention_heads=spec["theads"],
            num_key_value_heads=spec["theads"],
            vocab_size=spec["vocab"],
            max_position_embeddings=4096,
            pad_token_id=tiny_processor.tokenizer.pad_token_id,
        ),
        image_token_index=tiny_processor.image_token_id,
        image_seq_length=(spec["image"] // spec["patch"]) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        # the paper's band (hidden-state indices 10..18 of 32), scaled to the depth when truncated
        guide_layers="auto",
    )
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = TGALlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    size = spec["image"]
    processor = TGALlavaProcessor(
        image_processor=tiny_image_processor(size),
        tokenizer=tiny_processor.tokenizer,
        patch_size=spec["patch"],
        vision_feature_select_strategy="default",
        chat_template=tiny_processor.tokenizer.chat_template,
        num_additional_image_tokens=1,
    )
    return model, processor


class RealParts:
    """The real LLM and the LiT tower, loaded once; `compose` builds a fresh LVLM from them for every configuration
    (a LoRA configuration changes its model in place)."""

    def __init__(self, llm_name: str) -> None:
        from tga_hf.vision_tower.model import load_lit_tower
        from tga_hf.weights import load_llm

        self.llm_name = llm_name
        self.llm, self.tokenizer = load_llm(llm_name)
        self.tower, self.image_processor = load_lit_tower()

    def build(
        self, device: str, dtype: torch.dtype, guide_layers: list[int] | str
    ) -> tuple[TGALlavaForConditionalGeneration, TGALlavaProcessor]:
        from tga_hf.compose import compose

        torch.manual_seed(0)  # the same fresh projector in every configuration
        model, processor = compose(
            self.tower, self.llm, self.tokenizer, self.image_processor, guide_layers=guide_layers
        )
        return model.to(device=device, dtype=dtype), processor


def parse_guide_layers(value: str) -> list[int] | str:
    """Guide layers as given on the command line: "auto", "a-b" (inclusive) or "a,b,c"."""
    if value == "auto":
        return value
    if "-" in value:
        first, last = (int(part) for part in value.split("-", 1))
        return list(range(first, last + 1))
    return [int(part) for part in value.split(",")]


def make_rows(batch_size: int, answer_words: int, size: int) -> list[dict]:
    """`batch_size` training rows: a flat-colour image, a caption, an instruction, an answer of `answer_words` words
    and a retrieved text (the student prompt's prefix and the retrieved-text term of the guide loss)."""
    words = "the cat sits on the mat next to a blue cup and a red bicycle leaning on a wall".split()
    rows = []
    for index in range(batch_size):
        rows.append(
            {
                "image": Image.new("RGB", (size, size), (40 * index % 255, 120, 200)),
                "caption": " ".join(words[index % 4 :][:10]),
                "instruction": "What is shown in the image? Describe it briefly.",
                "answer": " ".join((words * (answer_words // len(words) + 1))[:answer_words]),
                "retrieved_text": "a dog runs across the green field",
            }
        )
    return rows


class PeakMemory:
    """Peak memory of one step, in GiB: CUDA's peak allocated, or on Linux CPUs the process's peak RSS since a reset
    of `VmHWM` (module docstring); otherwise the process's monotone peak RSS."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.libc = None
        if not self.cuda:
            try:
                self.libc = ctypes.CDLL("libc.so.6")
            except OSError:
                pass
        self.resettable = not self.cuda and self.libc is not None and self._reset_hwm()

    def _mallopt(self, mmap_threshold: int, trim_threshold: int) -> None:
        # A fixed threshold also stops glibc from raising it as large blocks are freed (its default), which would
        # move activations onto the heap, whose freed pages stay resident and count in the next step's peak.
        if self.resettable:
            self.libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
            self.libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)

    def measuring(self) -> None:
        """Allocator settings for steps whose peak is read."""
        self._mallopt(MEMORY_MMAP_THRESHOLD, MEMORY_TRIM_THRESHOLD)

    def timing(self) -> None:
        """Allocator settings for timed steps."""
        self._mallopt(TIMING_MMAP_THRESHOLD, TIMING_TRIM_THRESHOLD)

    @property
    def kind(self) -> str:
        if self.cuda:
            return "CUDA peak allocated per step"
        return "peak RSS per step" if self.resettable else "monotone peak RSS of the process"

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.resettable:
            self._reset_hwm()

    def peak(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**30
        if self.resettable:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB -> GiB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def make_clock(device: str, kind: str) -> Callable[[], float]:
    """Seconds: process CPU time, or wall time (after the device's queued work, on CUDA)."""
    if kind == "cpu":
        return time.process_time
    if device.startswith("cuda"):

        def wall() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()

        return wall
    return time.perf_counter


class TeacherTimer:
    """Times `trainer._teacher_states` (the teacher pass and its pooling) on the trainer instance."""

    def __init__(self, trainer: TGATrainer, clock: Callable[[], float]) -> None:
        self.seconds = 0.0
        teacher_states = trainer._teacher_states

        def timed(*args: Any, **kwargs: Any) -> torch.Tensor:
            start = clock()
            try:
                return teacher_states(*args, **kwargs)
            finally:
                self.seconds += clock() - start

        trainer._teacher_states = timed

    def take(self) -> float:
        """Seconds since the last call."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def step(
    trainer: TGATrainer,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    weight: float,
    memory: PeakMemory,
    clock: Callable[[], float],
    teacher: TeacherTimer,
    verbose: bool = False,
) -> tuple[float, float, float]:
    """One optimizer step with guide weight `weight`: (seconds, peak GiB, teacher seconds)."""
    trainer.guide_loss_weight = weight
    memory.reset()
    resident = torch.cuda.memory_allocated() if memory.cuda else 0
    teacher.take()
    start = clock()
    trainer.training_step(trainer.model, dict(batch))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = clock() - start
    peak = memory.peak()
    if verbose and memory.cuda:
        print(
            f"  resident {resident / 2**30:.2f} GiB (weights, grads), peak above it {peak - resident / 2**30:.2f} GiB"
        )
    return seconds, peak, teacher.take()


def measure(
    trainer: TGATrainer,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    weight: float,
    steps: int,
    warmup: int,
    memory: PeakMemory,
    clock: Callable[[], float],
    teacher: TeacherTimer,
) -> dict[str, float]:
    """Warm-up SFT steps, then warm-up TGA steps (so that a monotone RSS is read after each arm), then timed steps
    alternating between the arms, so that drift and contention hit both alike. Memory: on CPU the largest per-step
    peak of each arm's warm-up steps (or the monotone RSS after them), on CUDA of all its steps."""
    peaks = {}
    memory.measuring()
    for name, arm_weight in (("sft", 0.0), ("tga", weight)):
        peaks[name] = max(
            step(trainer, optimizer, batch, arm_weight, memory, clock, teacher, verbose=True)[1] for _ in range(warmup)
        )
    memory.timing()
    times: dict[str, list[float]] = {"sft": [], "tga": []}
    teacher_times = []
    for _ in range(steps):
        for name, arm_weight in (("sft", 0.0), ("tga", weight)):
            seconds, peak, teacher_seconds = step(trainer, optimizer, batch, arm_weight, memory, clock, teacher)
            times[name].append(seconds)
            if name == "tga":
                teacher_times.append(teacher_seconds)
            if memory.cuda:
                peaks[name] = max(peaks[name], peak)
    paired = [tga / sft for sft, tga in zip(times["sft"], times["tga"], strict=True)]
    return {
        "sft_time": statistics.median(times["sft"]),
        "tga_time": statistics.median(times["tga"]),
        "teacher_time": statistics.median(teacher_times),
        "paired_min": min(paired),
        "paired_max": max(paired),
        "sft_memory": peaks["sft"],
        "tga_memory": peaks["tga"],
    }


def run_configuration(
    model: TGALlavaForConditionalGeneration,
    processor: TGALlavaProcessor,
    stage: str,
    checkpointing: bool,
    args: argparse.Namespace,
    memory: PeakMemory,
    clock: Callable[[], float],
) -> dict[str, Any]:
    """Trainer for one (stage, checkpointing) configuration, then `measure`."""
    size = processor.image_processor.crop_size["height"]
    rows = make_rows(args.batch_size, args.answer_words, size)
    config = TGAConfig(
        "/tmp/tga-benchmark",
        per_device_train_batch_size=args.batch_size,
        bf16=False,  # the weights themselves are in --dtype; no autocast
        optim="sgd",  # stateless: the optimizer is the same in both arms, and 7B + Adam would not fit one GPU
        learning_rate=1e-5,
        gradient_checkpointing=checkpointing,
        train_projector_only=stage == "projector",
        report_to=[],
        use_cpu=args.device == "cpu",
    )
    peft_config = tga_lora_config() if stage == "lora" else None
    trainer = TGATrainer(
        model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        peft_config=peft_config,
    )
    if config.gradient_checkpointing:
        # what Trainer.train() does before the first step
        trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=config.gradient_checkpointing_kwargs)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
    optimizer = trainer.create_optimizer()
    batch = TGADataCollator(processor)(rows)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    print(
        f"stage {stage}, gradient checkpointing {checkpointing}: trainable {trainable / 1e6:.2f}M params, "
        f"batch {tuple(batch['input_ids'].shape)} student / {tuple(batch['teacher_input_ids'].shape)} teacher"
    )
    weight = model.config.guide_loss_weight or 1.0
    teacher = TeacherTimer(trainer, clock)
    result = measure(trainer, optimizer, batch, weight, args.steps, args.warmup, memory, clock, teacher)
    for arm in ("sft", "tga"):
        print(
            f"  {arm}: {result[arm + '_time'] * 1000:.1f} ms/step (median), "
            f"peak memory {result[arm + '_memory']:.2f} GiB"
        )
    result.update(stage=stage, checkpointing=checkpointing, trainable=trainable)
    result["time_ratio"] = result["tga_time"] / result["sft_time"]
    result["memory_ratio"] = result["tga_memory"] / result["sft_memory"]
    result["teacher_share"] = result["teacher_time"] / result["tga_time"]
    print(
        f"  teacher pass {result['teacher_time'] * 1000:.1f} ms = {result['teacher_share']:.1%} of the TGA step; "
        f"TGA - SFT = {(result['tga_time'] - result['sft_time']) * 1000:+.1f} ms; per-step TGA/SFT ratios "
        f"{result['paired_min']:.3f}..{result['paired_max']:.3f}"
    )
    if args.profile:
        for name, arm_weight in (("sft", 0.0), ("tga", weight)):
            print(f"  cProfile of one {name} step (cumulative time):")
            print(
                cumulative_profile(lambda w=arm_weight: step(trainer, optimizer, batch, w, memory, clock, teacher), 25)
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("tiny", *SHAPES, *REAL_SHAPES), default="small")
    parser.add_argument("--text-layers", type=int, help="truncate the LLM to this many layers (random shapes)")
    parser.add_argument("--guide-layers", default="auto", help='real shapes: "auto", "a-b" or "a,b,c"')
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--answer-words", type=int, default=48)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="per arm; on CPU, the steps whose memory is read")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="default: projector lora (real), full (random)")
    parser.add_argument(
        "--gradient-checkpointing", nargs="+", choices=("on", "off"), help="default: on off (real), on (random)"
    )
    parser.add_argument("--no-gradient-checkpointing", action="store_true", help="same as --gradient-checkpointing off")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary of one step of each arm")
    parser.add_argument("--clock", choices=("cpu", "wall"), help="default: process CPU time on cpu, wall on cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    real = args.shape in REAL_SHAPES
    stages = args.stages or (["projector", "lora"] if real else ["full"])
    if args.no_gradient_checkpointing:
        checkpointing = [False]
    else:
        checkpointing = [value == "on" for value in args.gradient_checkpointing or (["on", "off"] if real else ["on"])]
    clock_kind = args.clock or ("wall" if args.device.startswith("cuda") else "cpu")
    clock = make_clock(args.device, clock_kind)
    memory = PeakMemory(args.device)

    parts = RealParts(REAL_SHAPES[args.shape]) if real else None
    guide_layers = parse_guide_layers(args.guide_layers)
    # LoRA changes its model in place: the stages that do not come first
    stages = sorted(stages, key=lambda stage: stage == "lora")
    results = []
    for stage in stages:
        for on in checkpointing:
            torch.manual_seed(0)
            if parts is not None:
                model, processor = parts.build(args.device, dtype, guide_layers)
            else:
                model, processor = build_random(args.shape, args.text_layers, args.device, dtype)
            if not results:
                print(
                    f"shape {args.shape}, LLM layers {model.config.text_config.num_hidden_layers}, guide layers "
                    f"{model.config.resolved_guide_layers()}, device "
                    f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}, dtype {dtype}, "
                    f"{torch.get_num_threads()} threads, clock {clock_kind}, memory: {memory.kind}"
                )
            results.append(run_configuration(model, processor, stage, on, args, memory, clock))
            del model, processor
            gc.collect()

    print("stage      checkpointing  time ratio  memory ratio  teacher share")
    for result in results:
        print(
            f"{result['stage']:<10} {'on' if result['checkpointing'] else 'off':<14} {result['time_ratio']:<11.3f} "
            f"{result['memory_ratio']:<13.3f} {result['teacher_share']:.1%}"
        )
    for result in results:
        prefix = (
            ""
            if len(results) == 1
            else f"{result['stage']}, checkpointing {'on' if result['checkpointing'] else 'off'}: "
        )
        print(
            f"{prefix}tga/sft step time ratio: {result['time_ratio']:.2f}, "
            f"peak memory ratio: {result['memory_ratio']:.2f}"
        )


if __name__ == "__main__":
    main()

"""Plain SFT step vs TGA step: same model, same batch, one run. Prints step-time and peak-memory ratios.

Both arms go through the same `TGATrainer.training_step` (forward, backward) plus an SGD optimizer step; the SFT arm
sets the guide weight to 0, which is exactly `SFTTrainer.compute_loss` (the teacher keys of the batch are dropped).

    python benchmarks/train_step.py --shape small --device cpu                    # CPU
    python benchmarks/train_step.py --shape llava-1.5-7b --device cuda            # GPU, bf16, random init

Shapes are random-init configs: `llava-1.5-7b` is CLIP ViT-L/14-336 (24 layers, 1024 wide, 576 image tokens, second
to last layer) + a Llama-2-7B-shaped LLM (32 layers, 4096 wide, 11008 MLP, vocab 32064); `--text-layers` truncates the
LLM. The text comes from the tiny in-memory tokenizer (its token ids are valid in any vocab). Memory: CUDA peak
allocated per arm; on CPU the process's peak RSS after each arm (RSS only grows, so the CPU ratio shows TGA's extra
over SFT, never less than 1).
"""

import argparse
import resource
import statistics
import time

import torch
from datasets import Dataset
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig

from tga_hf.modeling import TGALlavaConfig, TGALlavaForConditionalGeneration, TGALlavaProcessor
from tga_hf.tiny import tiny_tga_llava
from tga_hf.training import TGAConfig, TGADataCollator, TGATrainer

SHAPES = {
    # image_size, patch, vision hidden / mlp / layers / heads, text hidden / mlp / layers / heads, vocab
    "small": dict(image=112, patch=14, vh=256, vm=1024, vl=4, vheads=4, th=512, tm=1408, tl=8, theads=8, vocab=8192),
    "llava-1.5-7b": dict(
        image=336, patch=14, vh=1024, vm=4096, vl=24, vheads=16, th=4096, tm=11008, tl=32, theads=32, vocab=32064
    ),
}


def build(shape: str, text_layers: int | None, device: str, dtype: torch.dtype):
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
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tiny_processor.tokenizer,
        patch_size=spec["patch"],
        vision_feature_select_strategy="default",
        chat_template=tiny_processor.tokenizer.chat_template,
        num_additional_image_tokens=1,
    )
    return model, processor


def make_rows(batch_size: int, answer_words: int, size: int) -> list[dict]:
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


def step(trainer, optimizer, batch, weight: float, device: str, verbose: bool = False) -> tuple[float, float]:
    """One optimizer step with guide weight `weight`: (seconds, peak GiB of this step; CPU: peak RSS so far)."""
    trainer.guide_loss_weight = weight
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    start = time.perf_counter()
    trainer.training_step(trainer.model, dict(batch))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        if verbose:
            print(
                f"  resident {resident / 2**30:.2f} GiB (weights, grads), "
                f"peak above it {(peak - resident) / 2**30:.2f} GiB"
            )
        return time.perf_counter() - start, peak / 2**30
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def measure(trainer, optimizer, batch, weight: float, steps: int, warmup: int, device: str) -> dict[str, float]:
    """Warm-up SFT steps, then warm-up TGA steps (so the CPU's monotone RSS is read after each arm), then timed steps
    alternating between the arms, so that drift and contention hit both alike."""
    memory = {}
    for name, arm_weight in (("sft", 0.0), ("tga", weight)):
        print(f"{name} warm-up:")
        memory[name] = max(step(trainer, optimizer, batch, arm_weight, device, verbose=True)[1] for _ in range(warmup))
    times = {"sft": [], "tga": []}
    for _ in range(steps):
        for name, arm_weight in (("sft", 0.0), ("tga", weight)):
            seconds, peak = step(trainer, optimizer, batch, arm_weight, device)
            times[name].append(seconds)
            if device.startswith("cuda"):
                memory[name] = max(memory[name], peak)
    return {
        "sft_time": statistics.median(times["sft"]),
        "tga_time": statistics.median(times["tga"]),
        "sft_memory": memory["sft"],
        "tga_memory": memory["tga"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("tiny", *SHAPES), default="small")
    parser.add_argument("--text-layers", type=int, help="truncate the LLM to this many layers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--answer-words", type=int, default=48)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]

    torch.manual_seed(0)
    model, processor = build(args.shape, args.text_layers, args.device, dtype)
    size = processor.image_processor.crop_size["height"]
    rows = make_rows(args.batch_size, args.answer_words, size)
    config = TGAConfig(
        "/tmp/tga-benchmark",
        per_device_train_batch_size=args.batch_size,
        bf16=False,  # the weights themselves are in --dtype; no autocast
        optim="sgd",  # stateless: the optimizer is the same in both arms, and 7B + Adam would not fit one GPU
        learning_rate=1e-5,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        report_to=[],
        use_cpu=args.device == "cpu",
    )
    trainer = TGATrainer(model, args=config, train_dataset=Dataset.from_list(rows), processing_class=processor)
    if config.gradient_checkpointing:
        # what Trainer.train() does before the first step
        trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=config.gradient_checkpointing_kwargs)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
    optimizer = trainer.create_optimizer()
    batch = TGADataCollator(processor)(rows)
    layers = trainer.guide_layers
    print(
        f"shape {args.shape}, LLM layers {model.config.text_config.num_hidden_layers}, guide layers {layers}, "
        f"device {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}, dtype {dtype}, "
        f"batch {tuple(batch['input_ids'].shape)} student / {tuple(batch['teacher_input_ids'].shape)} teacher, "
        f"trainable {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.1f}M params, "
        f"gradient checkpointing {config.gradient_checkpointing}"
    )
    weight = model.config.guide_loss_weight or 1.0
    result = measure(trainer, optimizer, batch, weight, args.steps, args.warmup, args.device)
    for arm in ("sft", "tga"):
        print(
            f"{arm}: {result[arm + '_time'] * 1000:.1f} ms/step (median), peak memory {result[arm + '_memory']:.2f} GiB"
        )
    time_ratio = result["tga_time"] / result["sft_time"]
    memory_ratio = result["tga_memory"] / result["sft_memory"]
    print(f"tga/sft step time ratio: {time_ratio:.2f}, peak memory ratio: {memory_ratio:.2f}")


if __name__ == "__main__":
    main()

"""Reading-tower throughput: training images/s and encoding images/s, for several patch / image sizes, in one run.

    python benchmarks/tower.py                       # the packaged shape (6 x 256, 160 px, patch 16) and neighbours
    python benchmarks/tower.py --shapes 160/16 224/16 --device cuda

Training = one full `train_reading_tower` step on a fresh stream batch (renders built beforehand, so the figure is
the model's cost: LiT + per-patch word and character losses, backward, AdamW). Encoding = `encode_images` through the
saved image processor, as the retriever runs it (PIL resize included). Each shape is timed after a warm-up, as the
median of `--repeats`; the last lines print each shape's cost relative to the first one, measured side by side.
"""

import argparse
import math
import statistics
import time

import torch
from transformers import CLIPVisionModelWithProjection

from tga_hf.data.render import render_text_image
from tga_hf.vision_tower.model import encode_images, lit_image_processor, lit_tower_config
from tga_hf.vision_tower.stream import RenderRanges, SentenceMixture, TowerBatchStream
from tga_hf.vision_tower.texts import benign_sentences, vocabulary_words
from tga_hf.vision_tower.train import ReadingHeads, TowerTrainingConfig, encode_texts, reading_losses
from tga_hf.weights import load_text_encoder, minilm_path


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(shape: str, args, encoder, mixture) -> dict[str, float]:
    image_size, patch_size = (int(x) for x in shape.split("/"))
    device = torch.device(args.device)
    config = TowerTrainingConfig(batch_size=args.batch_size, image_size=image_size)
    tower_config = lit_tower_config(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        intermediate_size=4 * args.hidden_size,
    )
    tower = CLIPVisionModelWithProjection(tower_config).to(device).train()
    heads = ReadingHeads(args.hidden_size, 384).to(device)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    optimizer = torch.optim.AdamW([*tower.parameters(), *heads.parameters(), logit_scale], lr=1e-4)
    stream = TowerBatchStream(
        mixture, encoder.tokenizer, args.batch_size, patch_size, ranges=RenderRanges(image_size=image_size)
    )
    batch = stream.batch(0)
    targets = encode_texts(encoder, batch.texts).to(device).clone()
    words = encoder[0].auto_model.embeddings.word_embeddings.weight.detach().float().to(device)
    generator = torch.Generator().manual_seed(0)

    def train_step():
        loss, _ = reading_losses(tower, heads, batch, targets, words, config, logit_scale, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    images = [render_text_image(t, size=image_size) for t in benign_sentences(args.batch_size, seed=1)]
    processor = lit_image_processor(image_size)
    tower.eval()
    encode_seconds = _median_seconds(lambda: encode_images(images, tower, processor), args.repeats)
    tower.train()
    train_seconds = _median_seconds(train_step, args.repeats)
    return {
        "patches": (image_size // patch_size) ** 2,
        "train_images_per_s": args.batch_size / train_seconds,
        "encode_images_per_s": len(images) / encode_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["160/16", "160/20", "224/16"], help="image_size/patch_size")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = load_text_encoder()
    mixture = SentenceMixture({}, vocabulary_words(minilm_path() / "vocab.txt"))
    results = {shape: measure(shape, args, encoder, mixture) for shape in args.shapes}
    print(f"device {args.device}, {torch.get_num_threads()} threads, {args.layers} x {args.hidden_size}, "
          f"batch {args.batch_size}, median of {args.repeats}")  # fmt: skip
    for shape, row in results.items():
        print(f"{shape:>8}: {row['patches']:4d} patches, train {row['train_images_per_s']:7.1f} img/s, "
              f"encode {row['encode_images_per_s']:7.1f} img/s")  # fmt: skip
    first = args.shapes[0]
    for shape in args.shapes[1:]:
        train_ratio = results[first]["train_images_per_s"] / results[shape]["train_images_per_s"]
        encode_ratio = results[first]["encode_images_per_s"] / results[shape]["encode_images_per_s"]
        print(f"{shape} / {first} time ratio: train {train_ratio:.2f}, encode {encode_ratio:.2f}")


if __name__ == "__main__":
    main()

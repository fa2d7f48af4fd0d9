"""Training of the reading tower: LiT against the frozen MiniLM sentence space, plus dense per-patch reading targets.

Three losses on every batch of fresh renders (`stream.TowerBatchStream`):
- LiT (InfoNCE) between the pooled image embedding and the FROZEN MiniLM embedding of the sentence drawn: the
  retriever's image -> text space;
- token: each patch token of the penultimate layer (the features LLaVA feeds its projector, `vision_feature_layer=-2`)
  names the WordPiece drawn under it, scored against MiniLM's own frozen word-embedding rows (in-batch tokens plus
  random vocabulary negatives), so the patch tokens carry words, not only a sentence summary;
- char: the same patch tokens say which characters they contain (multi-label), a signal that is dense early on and
  that transfers to words never seen in training.
The heads of the last two losses are saved beside the tower (`reading_heads.safetensors`) so the word-reading figure
can be recomputed; `from_pretrained` ignores the file.

The run is resumable: `out_dir/checkpoint.pt` holds the tower, heads, optimiser, step and elapsed seconds, written
atomically every `checkpoint_every` steps; the stream is a function of (seed, step), so a resumed run sees exactly the
batches it would have seen. The learning rate follows training progress = max(step / max_steps, elapsed /
max_seconds), a wall-clock budget that survives restarts (hence our own schedule function rather than transformers'
step-based `get_cosine_schedule_with_warmup`).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import CLIPVisionModelWithProjection

from ..data.layout import Rendering
from ..data.render import DEFAULT_FONT, RenderStyle
from ..fileio import atomic_directory
from .model import encode_images, lit_image_processor, lit_tower_config, pixel_values_from_gray
from .stream import (
    CHARACTER_CLASSES,
    IGNORE_INDEX,
    RenderRanges,
    SentenceMixture,
    TowerBatch,
    TowerBatchStream,
    patch_targets,
    render_layout,
)

HELDOUT_FILE = "heldout.txt"
TRAINING_FILE = "training.json"
HEADS_FILE = "reading_heads.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.jsonl"
TOWER_DIR = "tower"


@dataclass
class TowerTrainingConfig:
    """Hyper-parameters of `train_reading_tower` (the defaults trained the packaged tower)."""

    max_steps: int = 20000
    max_minutes: float | None = None  # wall-clock budget; the schedule anneals by whichever limit comes first
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.03
    initial_temperature: float = 0.07
    token_temperature: float = 0.05
    token_negatives: int = 1024
    token_loss_weight: float = 1.0
    char_loss_weight: float = 1.0
    heldout: int = 1000
    seed: int = 0
    image_size: int = 160
    layout: str = "flow"  # `RenderRanges.layout`: "grid" trains (and evaluates) on the monospace glyph grid
    tower: dict = field(default_factory=dict)  # extra `lit_tower_config` arguments (layers, width, patch size)
    save_dtype: str = "float16"
    checkpoint_every: int = 50
    eval_every: int = 250

    def __post_init__(self):
        if self.max_steps < 1 or self.batch_size < 2:
            raise ValueError(f"need max_steps >= 1 and batch_size >= 2, got {self.max_steps} and {self.batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.layout not in ("flow", "grid"):
            raise ValueError(f"layout must be 'flow' or 'grid', got {self.layout!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        for name in ("token_loss_weight", "char_loss_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def warmup_cosine(fraction: float, warmup_ratio: float) -> float:
    """Learning-rate multiplier at training progress `fraction` in [0, 1): linear warm-up, then cosine to zero."""
    if fraction < warmup_ratio:
        return (fraction + 1e-3) / warmup_ratio  # never exactly zero at step 0
    return 0.5 * (1 + math.cos(math.pi * (fraction - warmup_ratio) / (1 - warmup_ratio)))


def retrieval_recall(image_embeddings, text_embeddings, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image->text recall@k: share of images whose own text (same row) is among the k most similar texts.

    Kept by hand (not sentence-transformers' `InformationRetrievalEvaluator`): that evaluator encodes queries with a
    SentenceTransformer, while our queries are images embedded by a transformers vision model.
    """
    image_embeddings = torch.as_tensor(image_embeddings, dtype=torch.float32)
    text_embeddings = torch.as_tensor(text_embeddings, dtype=torch.float32)
    if image_embeddings.shape != text_embeddings.shape:
        shapes = f"images {tuple(image_embeddings.shape)}, texts {tuple(text_embeddings.shape)}"
        raise ValueError(f"shape mismatch: {shapes}")
    scores = image_embeddings @ text_embeddings.T
    own = scores.diagonal().unsqueeze(1)
    # Rank = number of other texts scoring strictly higher than the right one (ties count in the image's favour).
    rank = (scores > own).sum(dim=1)
    return {f"recall@{k}": float((rank < k).float().mean()) for k in ks}


def encode_texts(text_encoder, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised float32 sentence embeddings [N, D] from a SentenceTransformer."""
    embeddings = text_encoder.encode(
        list(texts), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
    )
    return embeddings.float()


def evaluate_tower(
    tower: CLIPVisionModelWithProjection,
    processor,
    text_encoder,
    texts: Sequence[str],
    styles: Sequence[RenderStyle] = ("plain", "figstep"),
    size: int | None = None,
    font: str = DEFAULT_FONT,
    progress: bool = True,
    layout: str = "flow",
) -> dict[str, dict[str, float]]:
    """Image->text recall@1/5 over renders of `texts` in each style and `layout`, through the saved processor (as
    users run it)."""
    size = size or tower.config.image_size
    text_embeddings = encode_texts(text_encoder, texts).cpu()
    results = {}
    for style in styles:
        renders = tqdm(texts, desc=f"eval {style} {font}", disable=not progress, leave=False)
        images = [render_layout(t, layout, size, style, font).image for t in renders]
        image_embeddings = encode_images(images, tower, processor)
        results[style] = retrieval_recall(image_embeddings, text_embeddings)
    return results


class ReadingHeads(torch.nn.Module):
    """Training-only heads on the penultimate patch tokens: a word head into MiniLM's word-embedding space and a
    character head (multi-label over `CHARACTER_CLASSES`)."""

    def __init__(self, hidden_size: int, word_dim: int, n_chars: int = len(CHARACTER_CLASSES)):
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden_size)
        self.word = torch.nn.Linear(hidden_size, word_dim)
        self.char = torch.nn.Linear(hidden_size, n_chars)

    def forward(self, patch_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.norm(patch_tokens)
        return self.word(normed), self.char(normed)


def token_loss(
    word_logits_input: torch.Tensor,
    targets: torch.Tensor,
    word_embeddings: torch.Tensor,
    temperature: float,
    n_negatives: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of each text patch's word vector against frozen word-embedding rows: the batch's own tokens
    plus `n_negatives` random vocabulary rows. Returns (loss, top-1 accuracy among those candidates)."""
    keep = targets != IGNORE_INDEX
    if not keep.any():
        zero = word_logits_input.sum() * 0
        return zero, zero.detach()
    flat_targets = targets[keep]
    negatives = torch.randint(0, word_embeddings.shape[0], (n_negatives,), generator=generator)
    candidates, inverse = torch.unique(torch.cat([flat_targets.cpu(), negatives]), return_inverse=True)
    labels = inverse[: len(flat_targets)].to(targets.device)
    keys = F.normalize(word_embeddings[candidates.to(word_embeddings.device)], dim=-1)
    logits = F.normalize(word_logits_input[keep].float(), dim=-1) @ keys.T / temperature
    return F.cross_entropy(logits, labels), (logits.argmax(-1) == labels).float().mean().detach()


def reading_losses(
    tower: CLIPVisionModelWithProjection,
    heads: ReadingHeads,
    batch: TowerBatch,
    sentence_targets: torch.Tensor,
    word_embeddings: torch.Tensor,
    config: TowerTrainingConfig,
    logit_scale: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the LiT, token and character losses on one batch, and each part as a float."""
    device = sentence_targets.device
    outputs = tower(pixel_values=pixel_values_from_gray(batch.gray.to(device)), output_hidden_states=True)
    image = F.normalize(outputs.image_embeds.float(), dim=-1)
    logits = logit_scale.exp() * image @ sentence_targets.T
    labels = torch.arange(len(image), device=device)
    lit = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    word_vectors, char_logits = heads(outputs.hidden_states[-2][:, 1:])
    token, token_accuracy = token_loss(
        word_vectors,
        batch.token_targets.to(device),
        word_embeddings,
        config.token_temperature,
        config.token_negatives,
        generator,
    )
    # Summed over the character classes (mean over patches): a per-class mean divides the signal by the class count,
    # and in the first run it stayed at the prior's entropy for 500 steps while the other losses fell.
    char = F.binary_cross_entropy_with_logits(char_logits.float(), batch.char_targets.to(device), reduction="none")
    char = char.sum(-1).mean()
    total = lit + config.token_loss_weight * token + config.char_loss_weight * char
    metrics = {"lit": lit.item(), "token": token.item(), "char": char.item(), "token_acc": token_accuracy.item()}
    return total, metrics


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` to `path` through a temporary file and a rename, so a killed run never leaves half a checkpoint."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    torch.save(state, partial)
    os.replace(partial, path)


def train_reading_tower(
    mixture: SentenceMixture,
    heldout_texts: Sequence[str],
    text_encoder,
    out_dir: str | Path,
    config: TowerTrainingConfig | None = None,
    device: str | torch.device | None = None,
    resume: bool = False,
    sources: dict[str, int] | None = None,
    ranges: RenderRanges | None = None,
    workers: int = 1,
    resume_overrides: Sequence[str] = ("max_minutes", "max_steps"),
) -> dict:
    """Train a reading tower on the stream of `mixture`, checkpointing into `out_dir`; save it to `out_dir/tower`.

    `heldout_texts` are excluded from the stream (the mixture's `exclude`) and evaluated periodically and at the end.
    With `resume=True` the run continues from `out_dir/checkpoint.pt`: its saved config wins, except for the fields
    named in `resume_overrides` (`max_minutes`, `max_steps`, `token_loss_weight`, `char_loss_weight`), taken from
    `config`, to extend a schedule or reweight the losses mid-run (the change is logged).

    Example:
        >>> metrics = train_reading_tower(mixture, heldout, load_text_encoder(), "runs/tower",
        ...                               TowerTrainingConfig(max_minutes=90))  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_FILE
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state = None
    if resume:
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {checkpoint_path} does not exist")
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        saved = state["config"]
        unknown = set(resume_overrides) - {"max_minutes", "max_steps", "token_loss_weight", "char_loss_weight"}
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)} when resuming a run")
        changes = {name: getattr(config, name) for name in resume_overrides} if config is not None else {}
        changes = {name: value for name, value in changes.items() if value != saved[name]}
        config = TowerTrainingConfig(**(saved | changes))
        if changes:
            state.setdefault("config_changes", []).append({"step": state["step"], **changes})
    else:
        config = config or TowerTrainingConfig()
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} is not empty: pass --resume to continue the run in it, or a new --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # the resumed run reads it back: its stream must exclude the same sentences
        (out_dir / HELDOUT_FILE).write_text("\n".join(heldout_texts) + "\n", encoding="utf-8")
    torch.manual_seed(config.seed)

    tower_config = lit_tower_config(image_size=config.image_size, **config.tower)
    word_embeddings = text_encoder[0].auto_model.embeddings.word_embeddings.weight.detach().float().to(device)
    if tower_config.projection_dim != word_embeddings.shape[1]:
        raise ValueError(
            f"projection_dim {tower_config.projection_dim} != text embedding size {word_embeddings.shape[1]}"
        )
    tower = CLIPVisionModelWithProjection(tower_config).to(device).train()
    heads = ReadingHeads(tower_config.hidden_size, word_embeddings.shape[1]).to(device).train()
    # Learnable temperature as in CLIP, stored as log(1 / T) and clamped at 100 like CLIP's logit scale.
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / config.initial_temperature), device=device))
    optimizer = torch.optim.AdamW(
        [{"params": [*tower.parameters(), *heads.parameters()]}, {"params": [logit_scale], "weight_decay": 0.0}],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    step, elapsed, config_changes = 0, 0.0, []
    if state is not None:
        config_changes = state.get("config_changes", [])
        tower.load_state_dict(state["tower"])
        heads.load_state_dict(state["heads"])
        logit_scale.data.fill_(state["logit_scale"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed_seconds"]
    generator = torch.Generator().manual_seed(config.seed + step)

    ranges = ranges or RenderRanges(image_size=config.image_size, layout=config.layout)
    if ranges.image_size != config.image_size:
        raise ValueError(f"render ranges draw {ranges.image_size}-pixel images for a {config.image_size}-pixel tower")
    stream = TowerBatchStream(
        mixture, text_encoder.tokenizer, config.batch_size, tower_config.patch_size, step, config.seed, ranges
    )
    # Rendering and target building overlap the tower's step in a worker process (num_workers=0 runs them inline).
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=workers, worker_init_fn=lambda _: torch.set_num_threads(1)
    )
    processor = lit_image_processor(config.image_size)
    monitor = list(heldout_texts[:256])
    monitor_targets = None
    max_seconds = 60 * config.max_minutes if config.max_minutes else None
    progress = tqdm(total=config.max_steps, initial=step, desc="train tower", unit="step")
    log_path = out_dir / LOG_FILE
    if state is not None and log_path.is_file():  # drop the steps a killed run logged after its last checkpoint
        lines = log_path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        log_path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    log = log_path.open("a", encoding="utf-8")
    started = time.perf_counter() - elapsed

    def checkpoint() -> None:
        _save_checkpoint(
            checkpoint_path,
            {
                "config": asdict(config),
                "tower": tower.state_dict(),
                "heads": heads.state_dict(),
                "logit_scale": logit_scale.item(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "elapsed_seconds": time.perf_counter() - started,
                "config_changes": config_changes,
            },
        )

    try:
        for batch in loader:
            fraction = step / config.max_steps
            if max_seconds is not None:
                fraction = max(fraction, (time.perf_counter() - started) / max_seconds)
            if fraction >= 1:
                break
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * warmup_cosine(fraction, config.warmup_ratio)
            # encode() runs in inference mode; a clone is an ordinary tensor autograd may keep.
            sentence_targets = encode_texts(text_encoder, batch.texts).to(device).clone()
            loss, metrics = reading_losses(
                tower, heads, batch, sentence_targets, word_embeddings, config, logit_scale, generator
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*tower.parameters(), *heads.parameters()], 1.0)
            optimizer.step()
            with torch.no_grad():
                logit_scale.clamp_(0, math.log(100))
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", token_acc=f"{metrics['token_acc']:.2f}")
            record = {"step": step, "seconds": round(time.perf_counter() - started, 1), "loss": loss.item(), **metrics}
            if step % config.eval_every == 0:
                if monitor_targets is None:
                    monitor_targets = encode_texts(text_encoder, monitor).cpu()
                tower.eval()
                images = [render_layout(t, config.layout, config.image_size).image for t in monitor]
                record["heldout_recall@1"] = retrieval_recall(encode_images(images, tower, processor), monitor_targets)[
                    "recall@1"
                ]
                tower.train()
                progress.write(f"step {step}: held-out {len(monitor)}-way recall@1 {record['heldout_recall@1']:.3f}")
            log.write(json.dumps(record) + "\n")
            log.flush()
            if step % config.checkpoint_every == 0:
                checkpoint()
            if step >= config.max_steps:
                break
    finally:
        progress.close()
        log.close()
    checkpoint()
    elapsed = time.perf_counter() - started
    return finish_tower(
        out_dir, tower, heads, logit_scale, heldout_texts, text_encoder, config, step, elapsed, sources, config_changes
    )


def finish_tower(
    out_dir: Path,
    tower: CLIPVisionModelWithProjection,
    heads: ReadingHeads,
    logit_scale: torch.Tensor,
    heldout_texts: Sequence[str],
    text_encoder,
    config: TowerTrainingConfig,
    steps_done: int,
    seconds: float,
    sources: dict[str, int] | None,
    config_changes: Sequence[dict] = (),
) -> dict:
    """Evaluate the weights as they will be saved (rounded to `save_dtype`, computed in float32) on the held-out
    sentences and write the tower folder `out_dir/tower` atomically."""
    save_dtype = getattr(torch, config.save_dtype)
    tower = tower.to(save_dtype).float().eval()
    processor = lit_image_processor(config.image_size)
    heldout = evaluate_tower(tower, processor, text_encoder, heldout_texts, layout=config.layout)
    metrics = {
        "config": asdict(config),
        "tower_config": tower.config.to_diff_dict(),
        "objective": "LiT InfoNCE (CLS) + per-patch WordPiece and character targets (penultimate layer)",
        "n_heldout_sentences": len(heldout_texts),
        "sources": sources or {},
        "steps_done": steps_done,
        "images_seen": steps_done * config.batch_size,
        "train_seconds": round(seconds, 1),
        "final_temperature": 1 / logit_scale.exp().item(),
        "heldout_recall": heldout,
        "config_changes": list(config_changes),  # settings changed on resume, with the step they took effect
    }
    with atomic_directory(out_dir / TOWER_DIR, overwrite=True, kind="lit-tower") as tmp:
        tower.to(save_dtype).save_pretrained(tmp)
        processor.save_pretrained(tmp)
        save_file({k: v.to(save_dtype).contiguous() for k, v in heads.state_dict().items()}, tmp / HEADS_FILE)
        (tmp / HELDOUT_FILE).write_text("\n".join(heldout_texts) + "\n", encoding="utf-8")
        (tmp / TRAINING_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def tower_layout(tower_dir: str | Path) -> str:
    """The render layout a saved tower was trained on (its `training.json`; towers from before layouts: "flow")."""
    path = Path(tower_dir) / TRAINING_FILE
    if not path.is_file():
        return "flow"
    return json.loads(path.read_text(encoding="utf-8"))["config"].get("layout", "flow")


def tower_rendering(tower_dir: str | Path, image_size: int) -> Rendering:
    """The rendering a saved tower reads: its training layout (`tower_layout`) at its input size."""
    return Rendering.for_tower(tower_layout(tower_dir), image_size)


def load_reading_heads(tower_dir: str | Path, hidden_size: int, word_dim: int) -> ReadingHeads:
    """The training heads saved beside a tower (float32, eval mode): the word-reading probe of `tga-hf tower eval`."""
    path = Path(tower_dir) / HEADS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the tower was not trained with reading heads")
    heads = ReadingHeads(hidden_size, word_dim)
    heads.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return heads.eval()


@torch.no_grad()
def word_reading_accuracy(
    tower: CLIPVisionModelWithProjection,
    heads: ReadingHeads,
    text_encoder,
    texts: Sequence[str],
    font: str = DEFAULT_FONT,
    styles: Sequence[RenderStyle] = ("plain",),
    layout: str = "flow",
) -> dict[str, float]:
    """How well the penultimate PATCH tokens name the word drawn under them: for every text patch, the nearest row
    of MiniLM's whole word-embedding table (30,522 WordPieces) to the word head's output; top-1 / top-5 accuracy over
    all text patches of renders of `texts`, and the share of drawn words (tokens) named by at least one patch."""
    word_table = F.normalize(text_encoder[0].auto_model.embeddings.word_embeddings.weight.float(), dim=-1)
    patch = tower.config.patch_size
    processor = lit_image_processor(tower.config.image_size)
    hits1 = hits5 = total = words_named = words_total = 0
    for style in styles:
        for text in texts:
            rendered = render_layout(text, layout, tower.config.image_size, style, font)
            encoded = text_encoder.tokenizer(rendered.body, add_special_tokens=False, return_offsets_mapping=True)
            targets, _ = patch_targets(
                rendered, encoded["input_ids"], encoded["offset_mapping"], 1.0, tower.config.image_size, patch
            )
            pixels = processor(images=[rendered.image], return_tensors="pt")["pixel_values"]
            hidden = tower(pixel_values=pixels.to(tower.dtype), output_hidden_states=True).hidden_states[-2][0, 1:]
            scores = F.normalize(heads(hidden.float())[0], dim=-1) @ word_table.T
            keep = torch.from_numpy(targets) != IGNORE_INDEX
            target = torch.from_numpy(targets)[keep]
            top5 = scores[keep].topk(5, dim=-1).indices
            hits1 += int((top5[:, 0] == target).sum())
            hits5 += int((top5 == target[:, None]).any(-1).sum())
            total += len(target)
            drawn = set(target.tolist())
            words_named += len(drawn & set(top5[:, 0].tolist()))
            words_total += len(drawn)
    return {
        "patch_top1": hits1 / max(total, 1),
        "patch_top5": hits5 / max(total, 1),
        "tokens_named": words_named / max(words_total, 1),
        "text_patches": total,
    }


def heldout_sentences(mixture: SentenceMixture, n: int, seed: int) -> list[str]:
    """`n` distinct sentences drawn from the training distribution with their own seed: the held-out set that the
    training stream then excludes."""
    rng = random.Random(f"heldout-{seed}")
    seen: dict[str, None] = {}
    for _ in range(50 * n):
        seen.setdefault(" ".join(mixture.sample(rng).split()), None)
        if len(seen) == n:
            return list(seen)
    raise ValueError(f"the mixture produced only {len(seen)} distinct sentences of {n} asked")


__all__ = [
    "ReadingHeads",
    "TowerTrainingConfig",
    "encode_texts",
    "evaluate_tower",
    "heldout_sentences",
    "load_reading_heads",
    "retrieval_recall",
    "tower_layout",
    "train_reading_tower",
    "warmup_cosine",
    "word_reading_accuracy",
]

"""The project's own image tower: a small ViT trained LiT-style against the frozen MiniLM text encoder.

No pretrained CLIP ships offline, so the tower is trained on rendered sentences; it then plays the roles CLIP and BEiT-3
play in the TGA paper: the retriever's image encoder (image -> sentence space) and the LVLM's vision tower.
"""

from .model import (
    encode_images,
    lit_image_processor,
    lit_tower_config,
    load_lit_tower,
    packaged_tower_path,
    pixel_values_from_gray,
)
from .stream import HELDOUT_FONT, TRAINING_FONTS, SentenceMixture, TowerBatchStream, patch_targets
from .texts import benign_sentences, read_texts, vocabulary_words, word_salad_sentences
from .train import (
    TowerTrainingConfig,
    evaluate_tower,
    heldout_sentences,
    retrieval_recall,
    train_reading_tower,
    word_reading_accuracy,
)

__all__ = [
    "HELDOUT_FONT",
    "SentenceMixture",
    "TRAINING_FONTS",
    "TowerBatchStream",
    "TowerTrainingConfig",
    "benign_sentences",
    "encode_images",
    "evaluate_tower",
    "lit_image_processor",
    "lit_tower_config",
    "load_lit_tower",
    "packaged_tower_path",
    "pixel_values_from_gray",
    "read_texts",
    "retrieval_recall",
    "heldout_sentences",
    "patch_targets",
    "train_reading_tower",
    "word_reading_accuracy",
    "vocabulary_words",
    "word_salad_sentences",
]

"""faiss inner-product indexes: which one for which corpus size, and a streaming build.

Vectors are L2-normalised, so inner product is cosine similarity. Up to `FLAT_MAX` vectors an exact `IndexFlatIP` is
cheap enough; beyond, an inverted file (IVF) with about 4 sqrt(N) lists, trained on a sample, scans a small share of
the corpus per query (under 1% at a million vectors). The choice is an `IndexSpec` (a faiss `index_factory` string
plus its search parameters), recorded in `retriever_config.json` and overridable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

FLAT_MAX = 100_000
Storage = Literal["fp32", "fp16", "pq"]
_STORAGE_CODES = {"fp32": "Flat", "fp16": "SQfp16"}


@dataclass(frozen=True)
class IndexSpec:
    """How to build and search a faiss index.

    Args:
        factory: a faiss `index_factory` description, e.g. `"Flat"`, `"IVF1024,Flat"`, `"IVF1024,SQfp16"`,
            `"IVF1024,PQ64"`, `"HNSW32"`.
        nprobe: IVF lists scanned per query (recall/speed trade-off); None for non-IVF indexes.
        ef_search: HNSW search breadth; None for non-HNSW indexes.
        train_size: how many vectors (a random sample of the corpus) train the index; None when it needs no training.

    Example:

    ```python
    >>> IndexSpec.auto(1_000_000, 384)
    IndexSpec(factory='IVF4096,Flat', nprobe=32, ef_search=None, train_size=163840)
    >>> IndexSpec.auto(5_000, 384, storage="fp16").factory
    'SQfp16'
    ```
    """

    factory: str = "Flat"
    nprobe: int | None = None
    ef_search: int | None = None
    train_size: int | None = None

    @classmethod
    def auto(cls, num_vectors: int, dim: int, storage: Storage = "fp32") -> IndexSpec:
        """Exact search up to `FLAT_MAX` vectors, IVF beyond. `storage`: float32, float16 scalar quantisation (half
        the memory, near-exact scores) or product quantisation (1/32 of fp32, for million-scale corpora)."""
        if storage not in ("fp32", "fp16", "pq"):
            raise ValueError(f"storage must be 'fp32', 'fp16' or 'pq', got {storage!r}")
        if storage == "pq":
            code = f"PQ{_pq_subquantizers(dim)}"
        else:
            code = _STORAGE_CODES[storage]
        if num_vectors <= FLAT_MAX:
            train_size = min(num_vectors, 65_536) if storage == "pq" else None
            return cls(factory=code, train_size=train_size)
        return cls.ivf(num_vectors, code)

    @classmethod
    def ivf(cls, num_vectors: int, code: str = "Flat", nlist: int | None = None) -> IndexSpec:
        """An inverted file over `num_vectors`: by default ~4 sqrt(N) lists (a power of two; faiss' guideline is 4 to
        16 sqrt(N)), trained on 40 vectors per list (faiss' minimum is 39). A query scans 1/128 of the lists, at least
        8: IVF search reads every vector of the scanned lists, so memory bandwidth, not arithmetic, bounds its speed
        (measured in benchmarks/retrieval.py)."""
        nlist = nlist or 2 ** round(math.log2(4 * math.sqrt(num_vectors)))
        nprobe = max(nlist // 128, min(nlist, 8))
        return cls(f"IVF{nlist},{code}", nprobe=nprobe, train_size=min(num_vectors, 40 * nlist))

    @classmethod
    def parse(cls, value: IndexSpec | str | dict | None, num_vectors: int, dim: int, storage: Storage = "fp32"):
        """`None`/"auto" -> `auto(...)`; a factory string -> that index with default search parameters; a dict (as
        saved in retriever_config.json) -> that spec."""
        if isinstance(value, IndexSpec):
            return value
        if value is None or value == "auto":
            return cls.auto(num_vectors, dim, storage)
        if isinstance(value, dict):
            return cls(**value)
        if value.startswith("IVF"):
            head, _, code = value.partition(",")
            if not head[3:].isdigit() or not code:
                raise ValueError(f"expected an IVF factory string like 'IVF1024,Flat', got {value!r}")
            return cls.ivf(num_vectors, code, nlist=int(head[3:]))
        if value.startswith("HNSW"):
            return cls(value, ef_search=64)
        return cls(value, train_size=min(num_vectors, 65_536) if "PQ" in value else None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def new_index(self, dim: int):
        """An empty faiss index for `dim`-dimensional vectors, inner-product metric, search parameters applied."""
        import faiss

        try:
            index = faiss.index_factory(dim, self.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise ValueError(f"faiss cannot build index {self.factory!r} for dimension {dim}: {error}") from error
        self.apply_search_parameters(index)
        return index

    def apply_search_parameters(self, index) -> None:
        import faiss

        if self.nprobe is not None:
            faiss.extract_index_ivf(index).nprobe = self.nprobe
        if self.ef_search is not None:
            faiss.downcast_index(index).hnsw.efSearch = self.ef_search


def build_index(
    spec: IndexSpec,
    dim: int,
    batches: Iterable[np.ndarray],
    train_vectors: np.ndarray | None = None,
    total: int | None = None,
    show_progress: bool = False,
):
    """Train (when the spec needs it, on `train_vectors`) and fill an index from an iterable of `[n, dim]` float32
    batches, so that only one batch is held besides the index."""
    index = spec.new_index(dim)
    if not index.is_trained:
        if train_vectors is None or len(train_vectors) == 0:
            raise ValueError(f"index {spec.factory!r} needs training vectors")
        index.train(np.ascontiguousarray(train_vectors, dtype=np.float32))
    with tqdm(total=total, desc="indexing", unit="vec", disable=not show_progress) as progress:
        for batch in batches:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            if batch.ndim != 2 or batch.shape[1] != dim:
                raise ValueError(f"expected vectors of shape [n, {dim}], got {list(batch.shape)}")
            index.add(batch)
            progress.update(len(batch))
    return index


def _pq_subquantizers(dim: int) -> int:
    """The largest divisor of `dim` that is at most dim / 8 (8 bits per sub-quantiser: 1/32 of float32 storage)."""
    for subquantizers in range(max(1, dim // 8), 0, -1):
        if dim % subquantizers == 0:
            return subquantizers
    return 1

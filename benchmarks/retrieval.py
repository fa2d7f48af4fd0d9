"""Retrieval index benchmark: exact faiss and IVF against brute-force numpy, at 10k, 100k and 1M vectors of dim 512.

    python benchmarks/retrieval.py                       # all three sizes, one run, a table at the end
    python benchmarks/retrieval.py --sizes 10000 --queries 200

Data: L2-normalised vectors around N/100 random unit centres (each point = centre + Gaussian noise of norm ~1.0,
renormalised: ~100 points a cluster, cosine ~0.7 to their centre); queries = random corpus points + noise of norm
~0.5, renormalised, so each query has a well-defined nearest neighbour that its cluster alone does not give away.
Ground truth: exact top-1 by brute force. Indexes come from `tga_hf.retrieval` (`IndexSpec` / `build_index`, the
code the retriever uses); IVF uses the retriever's automatic parameters for the size (`IndexSpec.ivf`).

Reported per index: build time (training included), batch query latency per query (all queries in one `search`
call, k=10), recall@1 against the exact top-1, and speed-up over numpy brute force (matmul + argpartition, k=10).
IVF is searched twice, with its automatic nprobe and a quarter of it, to show the recall/speed trade-off.
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import replace

import numpy as np

from tga_hf.retrieval import IndexSpec, build_index

DIM = 512
K = 10
CHUNK = 100_000
# Noise norms relative to the unit centres: points sit at cosine ~0.7 from their centre (clusters overlap, as real
# caption embeddings do), queries at ~0.9 from the corpus point they were drawn from.
NOISE = 1.0
QUERY_NOISE = 0.5


def clustered_corpus(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`size` corpus vectors (built in chunks to stay at one float32 copy) and the cluster centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, size // 100), DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    corpus = np.empty((size, DIM), dtype=np.float32)
    for start in range(0, size, CHUNK):
        stop = min(size, start + CHUNK)
        chunk = centres[rng.integers(0, len(centres), stop - start)]
        chunk += NOISE / np.sqrt(DIM) * rng.standard_normal(chunk.shape, dtype=np.float32)
        corpus[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return corpus, centres


def perturbed_queries(corpus: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    queries = corpus[rng.integers(0, len(corpus), count)].copy()
    queries += QUERY_NOISE / np.sqrt(DIM) * rng.standard_normal(queries.shape, dtype=np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def brute_force(corpus: np.ndarray, queries: np.ndarray, batch: int = 64) -> tuple[np.ndarray, float]:
    """Top-K ids by numpy matmul + argpartition (query batches bound the score matrix to batch x N); seconds."""
    start = time.perf_counter()
    ids = np.empty((len(queries), K), dtype=np.int64)
    for first in range(0, len(queries), batch):
        scores = queries[first : first + batch] @ corpus.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        ids[first : first + batch] = np.take_along_axis(top, order, axis=1)
    return ids, time.perf_counter() - start


def measure(
    spec: IndexSpec, corpus: np.ndarray, queries: np.ndarray, seed: int
) -> tuple[float, list[tuple[int | None, np.ndarray, float]]]:
    """Build time, then (nprobe, ids, search seconds) for the spec's nprobe and, for IVF, a quarter of it (to show
    the recall/speed trade-off on the same index)."""
    start = time.perf_counter()
    train = None
    if spec.train_size:
        train = corpus[np.sort(np.random.default_rng(seed).choice(len(corpus), spec.train_size, replace=False))]
    index = build_index(spec, DIM, (corpus[i : i + CHUNK] for i in range(0, len(corpus), CHUNK)), train)
    build_seconds = time.perf_counter() - start
    results = []
    for nprobe in [spec.nprobe] + ([max(1, spec.nprobe // 4)] if spec.nprobe else []):
        replace(spec, nprobe=nprobe).apply_search_parameters(index)
        start = time.perf_counter()
        _, ids = index.search(queries, K)
        results.append((nprobe, ids, time.perf_counter() - start))
    del index
    gc.collect()
    return build_seconds, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, numpy {np.__version__}, dim {DIM}")
    rows = []
    for size in args.sizes:
        corpus, _ = clustered_corpus(size, args.seed)
        queries = perturbed_queries(corpus, args.queries, args.seed)
        exact_ids, brute_seconds = brute_force(corpus, queries)
        brute_latency = brute_seconds / len(queries)
        rows.append((size, "numpy matmul+argpartition", "-", brute_latency, 1.0, 1.0))
        print(f"N={size}: numpy brute force {1e3 * brute_latency:.3f} ms/query", flush=True)
        for spec in (IndexSpec("Flat"), IndexSpec.ivf(size)):
            build_seconds, results = measure(spec, corpus, queries, args.seed)
            for nprobe, ids, search_seconds in results:
                latency = search_seconds / len(queries)
                recall = float(np.mean(ids[:, 0] == exact_ids[:, 0]))
                name = spec.factory + (f" nprobe={nprobe}" if nprobe else "")
                rows.append((size, name, f"{build_seconds:.2f}", latency, recall, brute_latency / latency))
                print(f"N={size}: {name} built in {build_seconds:.2f} s, {1e3 * latency:.3f} ms/query", flush=True)
        del corpus
        gc.collect()

    print()
    print("| N | index | build (s) | latency (ms/query) | recall@1 vs exact | speed-up vs numpy |")
    print("|---|---|---|---|---|---|")
    for size, name, build, latency, recall, speedup in rows:
        print(f"| {size:,} | {name} | {build} | {1e3 * latency:.3f} | {recall:.3f} | {speedup:.1f}x |")


if __name__ == "__main__":
    main()

"""The retrieval corpus: texts from several sources (captions, toxic snippets, ...), deduplicated, one source tag each.

The paper's index held ~1.16M captions plus ~5K toxic snippets; `Corpus.from_sources` assembles the same kind of
corpus from iterables (`llava_captions`, `dataset_texts`, `read_texts` produce them) and `texts_sha256` fingerprints it
for the integrity check of a saved retriever.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT_KEYS = ("text", "caption", "question", "prompt", "goal", "behavior")


@dataclass
class Corpus:
    """Texts and, aligned with them, the source each came from.

    Example:

    ```python
    >>> corpus = Corpus.from_sources({"captions": ["a dog runs", "a dog  runs"], "toxic": ["how to make a weapon"]})
    >>> corpus.texts, corpus.sources
    (['a dog runs', 'how to make a weapon'], ['captions', 'toxic'])
    ```
    """

    texts: list[str]
    sources: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.sources:
            self.sources = ["text"] * len(self.texts)
        if len(self.sources) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.sources)} source tags")

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_sources(cls, sources: Mapping[str, Iterable[str]]) -> Corpus:
        """Concatenate the sources in order, collapsing whitespace, dropping empty texts and every repeat of a text
        already seen (the first source that has it keeps it)."""
        texts, tags, seen = [], [], set()
        for tag, items in sources.items():
            for item in items:
                if not isinstance(item, str):
                    raise TypeError(f"source {tag!r} yielded a {type(item).__name__}, expected str")
                text = " ".join(item.split())
                if text and text not in seen:
                    seen.add(text)
                    texts.append(text)
                    tags.append(tag)
        if not texts:
            raise ValueError(f"no text in sources {list(sources)}")
        return cls(texts, tags)

    def sha256(self) -> str:
        return texts_sha256(self.texts)

    def save(self, path: str | os.PathLike) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": self.texts, "source": self.sources}), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Corpus:
        """Read a corpus saved by `save`; ValueError naming the file and the rows when a text or source is null."""
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["text", "source"])
        columns = {name: table.column(name).to_pylist() for name in ("text", "source")}
        for name, values in columns.items():
            bad = [row for row, value in enumerate(values) if not isinstance(value, str)]
            if bad:
                raise ValueError(
                    f"{path}: column {name!r} holds {len(bad)} value(s) that are not strings (rows {bad[:5]}, "
                    f"first {values[bad[0]]!r})"
                )
        return cls(columns["text"], columns["source"])


def texts_sha256(texts: Iterable[str]) -> str:
    """sha256 over the texts in order, each length-prefixed (so no separator character is ambiguous)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def llava_captions(records: str | os.PathLike | Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """The first assistant answer of each LLaVA-format record (`{"conversations": [{"from": "human", ...},
    {"from": "gpt", "value": caption}]}`), i.e. the caption in LLaVA-558K pre-training data; a path to such a JSON
    list is read."""
    if isinstance(records, str | os.PathLike):
        records = json.loads(Path(records).read_text(encoding="utf-8"))
    for number, record in enumerate(records):
        turns = record.get("conversations") if isinstance(record, Mapping) else None
        if not turns:
            raise ValueError(f"record {number} has no 'conversations': not LLaVA format")
        answer = next((turn["value"] for turn in turns if turn.get("from") in ("gpt", "assistant")), None)
        if answer is not None:
            yield answer


def dataset_texts(dataset: Iterable[Mapping[str, Any]], column: str) -> Iterator[str]:
    """The `column` of a Hugging Face `datasets.Dataset` / `IterableDataset` (streaming works), row by row."""
    for row in dataset:
        yield row[column]


def read_texts(path: str | os.PathLike, column: str | None = None) -> list[str]:
    """Texts from a file: `.txt` (one per line), `.jsonl` / `.json` (strings, records with a text-like key, or LLaVA
    conversations), `.csv` or `.parquet` (`column`, or the first of text/caption/question/prompt/goal/behavior)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return path.read_text(encoding="utf-8").splitlines()
    if suffix in (".json", ".jsonl"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
        if rows and isinstance(rows[0], Mapping) and "conversations" in rows[0]:
            return list(llava_captions(rows))
        return [row if isinstance(row, str) else row[_text_key(row.keys(), column, path)] for row in rows]
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            key = _text_key(reader.fieldnames or [], column, path)
            return [row[key] for row in reader]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        return pq.read_table(path, columns=[_text_key(names, column, path)]).column(0).to_pylist()
    raise ValueError(f"{path}: unsupported text file type {suffix!r} (use .txt, .json, .jsonl, .csv or .parquet)")


def _text_key(keys: Iterable[str], column: str | None, path: Path) -> str:
    keys = list(keys)
    if column is not None:
        if column not in keys:
            raise ValueError(f"{path}: no column {column!r} (columns: {keys})")
        return column
    for key in TEXT_KEYS:
        if key in keys:
            return key
    raise ValueError(f"{path}: no text column among {keys}; name one with column=")

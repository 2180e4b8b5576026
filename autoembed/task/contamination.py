"""13-gram overlap between texts and eval items: the contamination check, in the open.

The agent's task.py uses it to check its training texts against the dev items; the sealed scorer
uses the same code against dev and held-out items. The algorithm is public; only the held-out
data is not.

Texts are lowercased, common backslash escapes (a JSON or repr dump of a text) become spaces, and
the text is split into word tokens (runs of letters, digits and underscores), so quoting,
punctuation and JSON escaping do not hide a copy. An eval item with at least N tokens is
represented by its N-grams; a shorter one with at least MIN_SHORT_TOKENS tokens by its whole
token sequence; shorter items cannot be checked and are counted as such. N-grams that also occur
in allowed text (the training pool, and for the held-out items the whole seeded data) are dropped
from the index, so boilerplate that the agent was given can never count as a hit.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoembed.task.data import RetrievalTask

N = 13
MIN_SHORT_TOKENS = 8
ALGORITHM = f"word-ngrams-v1-n{N}-short{MIN_SHORT_TOKENS}"

_ESCAPES = re.compile(r"\\[ntr]")
_WORD = re.compile(r"\w+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd, so the polynomial hash mixes every token
_LENGTH_SALT = {k: np.uint64(int.from_bytes(hashlib.blake2b(f"len{k}".encode(), digest_size=8).digest(), "little"))
                for k in range(1, N + 1)}


def tokens(text: str) -> list[str]:
    return _WORD.findall(_ESCAPES.sub(" ", text.lower()))


class TokenHasher:
    """Stable 64-bit token hashes (blake2b), so indexes cached on disk stay valid across processes."""

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def ids(self, toks: list[str]) -> np.ndarray:
        cache = self._cache
        for tok in toks:
            if tok not in cache:
                cache[tok] = int.from_bytes(hashlib.blake2b(tok.encode("utf-8"), digest_size=8).digest(), "little")
        return np.fromiter(map(cache.__getitem__, toks), dtype=np.uint64, count=len(toks))


def _in_sorted(values: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """Mask over values: which occur in sorted_unique (a sorted array without duplicates)."""
    if not len(values) or not len(sorted_unique):
        return np.zeros(len(values), dtype=bool)
    pos = np.searchsorted(sorted_unique, values)
    pos[pos == len(sorted_unique)] = 0
    return sorted_unique[pos] == values


def _window_hashes(ids: np.ndarray, k: int) -> np.ndarray:
    """Hash of every contiguous k-token window of ids (uint64 arithmetic wraps, on purpose)."""
    if len(ids) < k:
        return np.empty(0, dtype=np.uint64)
    count = len(ids) - k + 1
    acc = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            acc = acc * _MULT + ids[j:j + count]
        acc ^= _LENGTH_SALT[k]
    return acc


def _concat_windows(id_arrays: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Window hashes of many texts at once, never across text boundaries; returns (hashes, text index)."""
    if not id_arrays:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    lengths = np.fromiter((len(a) for a in id_arrays), dtype=np.int64, count=len(id_arrays))
    flat = np.concatenate(id_arrays) if lengths.sum() else np.empty(0, dtype=np.uint64)
    hashes = _window_hashes(flat, k)
    if not len(hashes):
        return hashes, np.empty(0, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    owner = np.repeat(np.arange(len(id_arrays)), lengths)[: len(hashes)]
    valid = np.arange(len(hashes)) + k <= (starts + lengths)[owner]
    return hashes[valid], owner[valid]


@dataclass
class NgramIndex:
    """Eval items as (gram hash, item) pairs, minus grams of allowed text."""

    hashes: np.ndarray  # uint64, one row per (gram, item)
    items: np.ndarray  # int64 index into labels
    labels: list[tuple[str, str, str]]  # (task, "query" | "doc", id)
    lengths: tuple[int, ...]  # the window sizes the index uses (N and the short-item lengths)
    checkable: dict[str, int] = field(default_factory=dict)  # task -> items with at least one gram left
    total: dict[str, int] = field(default_factory=dict)  # task -> items
    _unique: np.ndarray | None = field(default=None, repr=False)
    _unique_of: np.ndarray | None = field(default=None, repr=False)

    def grams_of(self, texts: Iterable[str], hasher: TokenHasher | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All window hashes of texts, for every window size the index uses; (hashes, text index)."""
        hasher = hasher or TokenHasher()
        id_arrays = [hasher.ids(tokens(t)) for t in texts]
        parts = [_concat_windows(id_arrays, k) for k in self.lengths]
        return (np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.uint64),
                np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64))

    def unique_hashes(self) -> np.ndarray:
        if self._unique is None or self._unique_of is not self.hashes:
            self._unique, self._unique_of = np.unique(self.hashes), self.hashes
        return self._unique

    def known(self, grams: np.ndarray) -> np.ndarray:
        """Mask over grams: which occur in the index."""
        return _in_sorted(grams, self.unique_hashes())

    def items_hit(self, grams: np.ndarray) -> np.ndarray:
        """Indices (into labels) of eval items that share a gram with grams."""
        matched = np.unique(grams[self.known(grams)])
        return np.unique(self.items[_in_sorted(self.hashes, matched)])

    def texts_hit(self, grams: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """Indices of the texts (owners of grams) that share a gram with an eval item."""
        return np.unique(owners[self.known(grams)])

    def summarize(self, hit: np.ndarray) -> dict[str, dict[str, int]]:
        """task -> {"hit", "checkable", "total"}."""
        counts: dict[str, int] = {}
        for i in hit:
            task = self.labels[int(i)][0]
            counts[task] = counts.get(task, 0) + 1
        return {task: {"hit": counts.get(task, 0), "checkable": self.checkable.get(task, 0),
                       "total": self.total.get(task, 0)} for task in self.total}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "hashes": self.hashes, "items": self.items, "lengths": np.array(self.lengths, dtype=np.int64),
            "labels": np.array(["\t".join(label) for label in self.labels], dtype=str),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "NgramIndex":
        labels = [tuple(str(s).split("\t", 2)) for s in arrays["labels"]]
        index = cls(hashes=arrays["hashes"], items=arrays["items"], labels=labels,
                    lengths=tuple(int(k) for k in arrays["lengths"]))
        index._count()
        return index

    def _count(self) -> None:
        self.total, self.checkable = {}, {}
        for task, _, _ in self.labels:
            self.total[task] = self.total.get(task, 0) + 1
            self.checkable.setdefault(task, 0)
        for i in np.unique(self.items):
            task = self.labels[int(i)][0]
            self.checkable[task] += 1


def build_index(tasks: Mapping[str, RetrievalTask], allowed_texts: Iterable[str] = (),
                hasher: TokenHasher | None = None) -> NgramIndex:
    """Index every query and document of tasks; grams that occur in allowed_texts are left out."""
    hasher = hasher or TokenHasher()
    labels: list[tuple[str, str, str]] = []
    id_arrays: list[np.ndarray] = []
    for name, task in tasks.items():
        for kind, texts in (("query", task.queries), ("doc", task.corpus)):
            for item_id, text in texts.items():
                labels.append((name, kind, item_id))
                id_arrays.append(hasher.ids(tokens(text)))
    lengths = np.fromiter((len(a) for a in id_arrays), dtype=np.int64, count=len(id_arrays))
    hash_parts, item_parts, used = [], [], []
    long_items = np.flatnonzero(lengths >= N)
    if len(long_items):
        h, owner = _concat_windows([id_arrays[i] for i in long_items], N)
        hash_parts.append(h)
        item_parts.append(long_items[owner])
        used.append(N)
    for k in range(MIN_SHORT_TOKENS, N):
        short = np.flatnonzero(lengths == k)
        if len(short):
            h, owner = _concat_windows([id_arrays[i] for i in short], k)
            hash_parts.append(h)
            item_parts.append(short[owner])
            used.append(k)
    hashes = np.concatenate(hash_parts) if hash_parts else np.empty(0, np.uint64)
    items = np.concatenate(item_parts) if item_parts else np.empty(0, np.int64)
    # one row per distinct (gram, item)
    if len(hashes):
        order = np.lexsort((items, hashes))
        hashes, items = hashes[order], items[order]
        keep = np.ones(len(hashes), dtype=bool)
        keep[1:] = (hashes[1:] != hashes[:-1]) | (items[1:] != items[:-1])
        hashes, items = hashes[keep], items[keep]
    index = NgramIndex(hashes=hashes, items=items, labels=labels, lengths=tuple(sorted(used)))
    index = subtract_allowed(index, allowed_texts, hasher)
    index._count()
    return index


def subtract_allowed(index: NgramIndex, allowed_texts: Iterable[str], hasher: TokenHasher | None = None,
                     batch: int = 20000) -> NgramIndex:
    """Drop from index every gram that occurs in allowed_texts (streamed in batches to bound memory)."""
    hasher = hasher or TokenHasher()
    found: list[np.ndarray] = []
    chunk: list[str] = []

    def flush() -> None:
        if chunk:
            grams, _ = index.grams_of(chunk, hasher)
            found.append(np.unique(grams[index.known(grams)]))
            chunk.clear()

    for text in allowed_texts:
        chunk.append(text)
        if len(chunk) >= batch:
            flush()
    flush()
    if found:
        drop = np.unique(np.concatenate(found))
        keep = ~_in_sorted(index.hashes, drop)
        index.hashes, index.items = index.hashes[keep], index.items[keep]
    return index


def cached_index(path: Path | None, build: Callable[[], NgramIndex]) -> NgramIndex:
    """The index saved at path (an .npz, no pickle), else build() saved there; path None: no cache."""
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return NgramIndex.from_arrays({k: arrays[k] for k in arrays.files})
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt
    index = build()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a name of its own: trials scoring side by side in one home each build it, and the last rename wins
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.npz")
        np.savez(tmp, **index.to_arrays())
        os.replace(tmp, path)
    return index


def pool_texts(pool_rows: Iterable[dict]) -> Iterable[str]:
    for row in pool_rows:
        yield row["query"]
        yield row["positive"]


def task_texts(tasks: Mapping[str, RetrievalTask]) -> Iterable[str]:
    for task in tasks.values():
        yield from task.queries.values()
        yield from task.corpus.values()


def check_texts(texts: list[str], index: NgramIndex) -> dict:
    """Which of texts share an N-gram (or a whole short item) with the indexed eval items."""
    grams, owners = index.grams_of(texts)
    hit_texts = index.texts_hit(grams, owners)
    hit_items = index.items_hit(grams)
    return {
        "n_texts": len(texts),
        "contaminated_texts": [int(i) for i in hit_texts],
        "eval_items_hit": index.summarize(hit_items),
        "examples": [":".join(index.labels[int(i)]) for i in hit_items[:10]],
        "clean": len(hit_texts) == 0,
    }

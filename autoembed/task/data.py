"""Loading retrieval tasks (BEIR layout) and the training pool.

A task folder holds corpus.jsonl.gz ({"_id", "text"}), queries.jsonl.gz ({"_id", "text"}) and
qrels.tsv (query-id, corpus-id, score; with a header). The pool is a jsonl.gz of
{"query", "positive", "domain", "group"} where group is the split unit (source package, module, synset).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RetrievalTask:
    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance > 0}

    def subset(self, n_queries: int, n_docs: int) -> "RetrievalTask":
        """The documented fast subset: the first n_queries queries ordered by sha1(id), and a corpus of
        their relevant documents topped up with other documents ordered by sha1(id) to n_docs."""
        qids = sorted((q for q in self.queries if q in self.qrels), key=_sha1)[:n_queries]
        keep = {d for q in qids for d in self.qrels[q] if d in self.corpus}
        for doc_id in sorted(self.corpus, key=_sha1):
            if len(keep) >= max(n_docs, len(keep)):
                break
            keep.add(doc_id)
        return RetrievalTask(
            name=self.name,
            queries={q: self.queries[q] for q in qids},
            corpus={d: self.corpus[d] for d in self.corpus if d in keep},
            qrels={q: self.qrels[q] for q in qids},
        )


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def read_jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if str(path).endswith(".gz") else open
    # mtime=0 keeps the gzip bytes reproducible, so manifests are stable across rebuilds
    if opener is gzip.open:
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            for row in rows:
                gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    else:
        with open(path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_retrieval_task(folder: Path, name: str | None = None) -> RetrievalTask:
    folder = Path(folder)
    for part in ("corpus.jsonl.gz", "queries.jsonl.gz", "qrels.tsv"):
        if not (folder / part).is_file():
            raise FileNotFoundError(f"{folder}: missing {part} (expected a BEIR-style task folder)")
    corpus = {row["_id"]: row["text"] for row in read_jsonl(folder / "corpus.jsonl.gz")}
    queries = {row["_id"]: row["text"] for row in read_jsonl(folder / "queries.jsonl.gz")}
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels.tsv", encoding="utf-8") as fh:
        next(fh)  # header
        for line in fh:
            qid, did, score = line.rstrip("\n").split("\t")
            if int(score) > 0:
                qrels.setdefault(qid, {})[did] = int(score)
    return RetrievalTask(name=name or folder.name, queries=queries, corpus=corpus, qrels=qrels)


def load_pool(path: Path, limit: int | None = None) -> Iterator[dict]:
    for i, row in enumerate(read_jsonl(path)):
        if limit is not None and i >= limit:
            return
        yield row

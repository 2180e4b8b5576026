"""A tiny copy of the embed task for whole-trial tests and benches: the real task.toml, instructions.md,
environment/ and base model, but dev tasks cut to a few queries, a pool of a few dozen short pairs, and
fast-mode sizes (which also size the held-out sets the scorer evaluates) and max_seq_length small enough
that the sealed scorer runs in seconds on a CPU.

`autoembed audit` runs its trials on it; tests and bench/ too (tests/tiny_task.py adds their session helpers).
Pass the returned folder as `task=` (run(), seed_workdir, score_workdir all accept a task folder).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import shutil
from pathlib import Path

from autoembed.task.data import load_retrieval_task, write_jsonl
from autoembed.task.spec import load_spec

WORDS = ("apt kernel python file network socket parse string list dict json http server client image audio "
         "video font archive compress encrypt key shell terminal editor mail calendar clock database index").split()


def make_tiny_task(root: Path, *, queries: int = 3, docs: int = 10, pool_rows: int = 64, max_seq_length: int = 32,
                   fast_queries: int | None = None, fast_docs: int | None = None) -> Path:
    """Write root/embed/ (task.toml + instructions.md + environment/ + data/) and return that folder.
    Dev tasks are the real ones' documented subsets (subset(queries, docs)); fast mode defaults to the
    same sizes, so the held-out sets the scorer evaluates are that small too."""
    real = load_spec("embed")
    dest = Path(root) / "embed"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(real.root / "instructions.md", dest / "instructions.md")
    if (real.root / "environment").is_dir():
        shutil.copytree(real.root / "environment", dest / "environment", dirs_exist_ok=True)

    data = dest / "data"
    for name in real.dev_tasks:
        _write_dev_subset(real.dev_dir / name, data / "dev" / name, queries, docs)
    _write_pool(real.pool_path, data / "pool" / "pairs.jsonl.gz", pool_rows)
    _write_manifest(data)

    toml = (real.root / "task.toml").read_text()
    toml = _set(toml, "fast_queries", str(fast_queries or queries))
    toml = _set(toml, "fast_docs", str(fast_docs or docs))
    toml = _set(toml, "max_seq_length", str(max_seq_length))
    (dest / "task.toml").write_text(toml)
    spec = load_spec(dest)
    assert spec.dev_dir == (data / "dev").resolve() and spec.pool_path == (data / "pool" / "pairs.jsonl.gz").resolve()
    return dest


def _set(toml: str, key: str, value: str) -> str:
    new, n = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", toml)
    if n != 1:
        raise ValueError(f"task.toml: expected one '{key} = ...' line, found {n}")
    return new


def _write_dev_subset(src: Path, dst: Path, queries: int, docs: int) -> None:
    task = load_retrieval_task(src, src.name).subset(queries, docs)
    dst.mkdir(parents=True, exist_ok=True)
    write_jsonl(dst / "corpus.jsonl.gz", ({"_id": d, "text": t} for d, t in sorted(task.corpus.items())))
    write_jsonl(dst / "queries.jsonl.gz", ({"_id": q, "text": t} for q, t in sorted(task.queries.items())))
    with open(dst / "qrels.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, rel in sorted(task.qrels.items()):
            for did, score in sorted(rel.items()):
                fh.write(f"{qid}\t{did}\t{score}\n")


def _write_pool(src: Path, dst: Path, n: int) -> None:
    """n pairs with short texts (a CPU training step on them takes a fraction of a second), from the real pool."""
    rows = []
    if src.is_file():
        with gzip.open(src, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if len(row["query"]) + len(row["positive"]) <= 120:
                    rows.append(row)
                if len(rows) >= n:
                    break
    if len(rows) < n:  # before the data is built: made-up pairs in 16 groups
        rng = random.Random(0)
        for i in range(n - len(rows)):
            a, b, c = rng.sample(WORDS, 3)
            rows.append({"query": f"{a} {b} tool", "positive": f"Provides {a} and {b} support with {c} ({i}).",
                         "domain": "debian", "group": f"g{i % 16}"})
    write_jsonl(dst, rows)


def _write_manifest(data: Path) -> None:
    files = {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(data.rglob("*")) if p.is_file() and p.name != "MANIFEST.json"}
    (data / "MANIFEST.json").write_text(json.dumps({"files": files}, indent=2))

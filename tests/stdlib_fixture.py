"""A small real-text retrieval task built from Python stdlib docstrings (no files, no network):
query = a docstring's first line, document = the object's name and the rest of its docstring.

Used by the evaluator tests, and by bench/bench_evaluator.py when the dev data is absent.
Plain Python (no pytest), so the bench can import it with only PYTHONPATH=.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from pathlib import Path

from autoembed.task.data import RetrievalTask, write_jsonl

MODULES = ["os.path", "shutil", "textwrap", "json", "string", "functools", "inspect", "pathlib", "random",
           "statistics", "heapq", "bisect", "collections", "argparse", "logging", "tarfile", "zipfile", "email.utils",
           "urllib.parse", "calendar", "difflib", "fnmatch", "glob", "gzip", "pprint", "shlex", "subprocess",
           "tempfile", "threading", "uuid", "base64", "csv", "copy", "configparser", "fractions", "ipaddress",
           "mimetypes", "queue", "sched", "secrets", "smtplib", "ftplib", "tokenize", "unittest.case", "wave",
           "contextlib", "dataclasses", "doctest", "filecmp", "gettext", "codecs", "mailbox", "socketserver",
           "email.message", "http.client", "http.server", "xml.dom.minidom", "asyncio.base_events", "sqlite3.dump",
           "importlib.metadata", "multiprocessing.pool", "concurrent.futures.thread", "unittest.mock", "typing"]


def stdlib_pairs(limit: int | None = None) -> list[tuple[str, str, str]]:
    """(name, first docstring line, name + rest of the docstring) for documented stdlib functions,
    classes and methods, in a fixed order."""
    seen, pairs = set(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod_name in MODULES:
            try:
                module = importlib.import_module(mod_name)
            except ImportError:
                continue
            for name, obj in sorted(vars(module).items()):
                if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                    continue
                members = [(name, obj)]
                if inspect.isclass(obj):
                    members += [(f"{name}.{m}", f) for m, f in sorted(vars(obj).items())
                                if inspect.isfunction(f) and not m.startswith("_")]
                for qual, fn in members:
                    if not (inspect.isfunction(fn) or inspect.isclass(fn)):
                        continue
                    doc = inspect.getdoc(fn) or ""
                    first, _, rest = doc.partition("\n")
                    first, rest = first.strip(), " ".join(rest.split())
                    if len(first) < 20 or len(rest) < 40 or first in seen:
                        continue
                    seen.add(first)
                    pairs.append((f"{mod_name}.{qual}", first, f"{mod_name}.{qual}: {rest[:240]}"))
    return pairs[:limit] if limit else pairs


def stdlib_task(n_queries: int = 50, n_docs: int = 400, name: str = "stdlib", ties: bool = True) -> RetrievalTask:
    """n_queries queries over n_docs documents. Every 5th query has a second relevant document; with
    ties, a few relevant documents get exact copies under ids that sort before and after them (equal
    scores, so the id tie-break decides the ranking)."""
    pairs = stdlib_pairs()
    if len(pairs) < n_docs:
        raise ValueError(f"only {len(pairs)} stdlib docstrings found, asked for {n_docs} documents")
    pairs = pairs[:n_docs]
    step = max(1, n_docs // n_queries)
    corpus = {f"d{i:05d}": doc for i, (_, _, doc) in enumerate(pairs)}
    queries, qrels = {}, {}
    for j in range(n_queries):
        i = (j * step) % n_docs
        qid = f"q{j:04d}"
        queries[qid] = pairs[i][1]
        qrels[qid] = {f"d{i:05d}": 1}
        if j % 5 == 0 and i + 1 < n_docs:
            qrels[qid][f"d{i + 1:05d}"] = 1
    if ties:
        for j in range(0, min(n_queries, 10), 2):
            i = (j * step) % n_docs
            corpus[f"a{i:05d}"] = corpus[f"d{i:05d}"]  # sorts before the relevant copy: outranks it
            corpus[f"e{i:05d}"] = corpus[f"d{i:05d}"]  # sorts after it
    return RetrievalTask(name=name, queries=queries, corpus=corpus, qrels=qrels)


def write_task(folder: Path, task: RetrievalTask) -> Path:
    """The task in the BEIR layout that autoembed.task.data.load_retrieval_task reads."""
    folder = Path(folder)
    write_jsonl(folder / "corpus.jsonl.gz", ({"_id": d, "text": t} for d, t in task.corpus.items()))
    write_jsonl(folder / "queries.jsonl.gz", ({"_id": q, "text": t} for q, t in task.queries.items()))
    with open(folder / "qrels.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, rel in task.qrels.items():
            for did, grade in rel.items():
                fh.write(f"{qid}\t{did}\t{grade}\n")
    return folder

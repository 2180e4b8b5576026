"""The sealed tiers: BEIR-style task folders under autoembed/sealed/data/<tier>/<task>/.

- validation/: the dev domains on other source groups; the loop's gate reads its scores (never its items).
- heldout/: for people only; the dev domains' disjoint items plus domains that dev does not contain.

Harness side only. Nothing the agent can import reaches this module, and its data is never copied
into a workdir. MANIFEST.json (one level up) holds the sha256 of every file; the scorer checks it
before it trusts the data.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from autoembed.paths import SEALED_DIR
from autoembed.task.base_model import file_sha256
from autoembed.task.data import RetrievalTask, load_retrieval_task

DATA_DIR = SEALED_DIR / "data"
HELDOUT_DIR = DATA_DIR / "heldout"
VALIDATION_DIR = DATA_DIR / "validation"


def validation_root_for(heldout_root: Path) -> Path:
    """The validation tier that sits next to a held-out folder (both under one sealed data root)."""
    return Path(heldout_root).parent / "validation"


class HeldoutDataError(RuntimeError):
    pass


def heldout_task_names(root: Path = HELDOUT_DIR) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise HeldoutDataError(f"no sealed data at {root}: build it with data/build.py (it is committed in the repo)")
    names = sorted(p.name for p in root.iterdir() if (p / "qrels.tsv").is_file())
    if not names:
        raise HeldoutDataError(f"{root} holds no task folder (corpus.jsonl.gz, queries.jsonl.gz, qrels.tsv)")
    return names


def load_heldout_tasks(fast: bool = False, only: list[str] | None = None, *, root: Path = HELDOUT_DIR,
                       fast_queries: int | None = None, fast_docs: int | None = None) -> dict[str, RetrievalTask]:
    """Every held-out task (or those in only). fast=True gives the documented subset, with the sizes
    of the task spec (fast_queries/fast_docs; default: task.toml's [eval] of the default task)."""
    names = heldout_task_names(root)
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"unknown held-out task(s) {unknown}; the held-out tasks are {names}")
        names = [n for n in names if n in only]
    if fast and (fast_queries is None or fast_docs is None):
        from autoembed.task.spec import load_spec

        spec = load_spec()
        fast_queries = spec.fast_queries if fast_queries is None else fast_queries
        fast_docs = spec.fast_docs if fast_docs is None else fast_docs
    sizes = (int(fast_queries), int(fast_docs)) if fast else (0, 0)
    return {name: _load(Path(root) / name, name, *sizes) for name in names}


@lru_cache(maxsize=16)
def _load(folder: Path, name: str, n_queries: int, n_docs: int) -> RetrievalTask:
    task = load_retrieval_task(folder, name)
    return task.subset(n_queries, n_docs) if n_queries else task


def verify_manifest(data_dir: Path) -> dict:
    """Check every file that data_dir/MANIFEST.json lists against its sha256.
    Returns {"manifest_sha256", "ok", "mismatched": [...], "missing": [...]}."""
    manifest_path = Path(data_dir) / "MANIFEST.json"
    if not manifest_path.is_file():
        return {"manifest_sha256": None, "ok": False, "mismatched": [], "missing": ["MANIFEST.json"]}
    manifest = json.loads(manifest_path.read_text())
    mismatched, missing = [], []
    for rel, expected in sorted(manifest.get("files", {}).items()):
        path = Path(data_dir) / rel
        if not path.is_file():
            missing.append(rel)
        elif _cached_sha(path, path.stat().st_mtime_ns, path.stat().st_size) != expected:
            mismatched.append(rel)
    return {"manifest_sha256": file_sha256(manifest_path), "ok": not mismatched and not missing,
            "mismatched": mismatched, "missing": missing}


@lru_cache(maxsize=256)
def _cached_sha(path: Path, mtime_ns: int, size: int) -> str:
    return file_sha256(path)

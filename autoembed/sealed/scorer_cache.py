"""Whether the scorer's caches on this machine are filled for a task, answered without importing torch.

prepare_scorer writes a marker keyed by everything those caches depend on (the data, the base model, the
evaluator's code, the mode and the device type); the runner checks it before a trial and prepares only when it
is missing. A stale or missing marker costs time, never correctness: scoring computes any cache entry it lacks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from autoembed import paths
from autoembed.version import __version__
from autoembed.task.base_model import file_sha256
from autoembed.task.spec import TaskSpec

EVALUATOR_DIR = Path(__file__).resolve().parents[1] / "task"


def marker_path(spec: TaskSpec, heldout_root: Path, fast: bool, device_type: str) -> Path:
    parts = {
        "autoembed": __version__,
        "task": str(spec.root.resolve()),
        "data": [_folder_fingerprint(spec.dev_dir.parent), _folder_fingerprint(Path(heldout_root).parent)],
        "base_model": [spec.base_model, spec.base_model_sha256],
        "evaluator": [file_sha256(p) for p in sorted(EVALUATOR_DIR.glob("*.py"))],
        "mode": [fast, spec.fast_queries, spec.fast_docs, spec.max_seq_length],
        "device_type": device_type,
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    return paths.home() / "prepared" / f"{key}.json"


def _folder_fingerprint(folder: Path) -> str:
    """Its MANIFEST.json's hash where it has one (the scorer checks the data against it), else names, sizes and
    modification times of its files."""
    manifest = folder / "MANIFEST.json"
    if manifest.is_file():
        return file_sha256(manifest)
    listing = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                     for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()

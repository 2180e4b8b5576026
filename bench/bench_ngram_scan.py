"""The 13-gram workdir scan on many files: the bounded, batched scan against the per-file scan it replaced.

    python bench/bench_ngram_scan.py                 # 200,000 empty files, then 5,000 small text files
    python bench/bench_ngram_scan.py --empty 20000 --text 1000

Indexes: the real dev, validation and held-out tiers (fast subsets; building them is not timed). The per-file
scan is the previous implementation's loop (read each file, hash its grams and match them, one numpy round per
file per tier), kept here as the obvious alternative; both see the same files.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoembed.sealed import heldout as sealed  # noqa: E402
from autoembed.sealed.audits import contamination as audit  # noqa: E402
from autoembed.task import contamination as ngrams  # noqa: E402
from autoembed.task.data import load_retrieval_task  # noqa: E402
from autoembed.task.spec import load_spec  # noqa: E402


def per_file_scan(workdir: Path, indexes: dict) -> int:
    """The previous loop: every file read and matched on its own."""
    hasher = ngrams.TokenHasher()
    hits = 0
    for root, dirs, files in os.walk(workdir):
        for name in files:
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            with open(path, "rb") as fh:
                text = fh.read(64 * 2**20).decode("utf-8", errors="replace")
            for index in indexes.values():
                grams, _ = index.grams_of([text], hasher)
                hits += len(index.items_hit(grams))
    return hits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--empty", type=int, default=200_000)
    p.add_argument("--text", type=int, default=5_000)
    args = p.parse_args(argv)
    spec = load_spec()
    tiers = {"dev": {n: load_retrieval_task(spec.dev_dir / n, n).subset(200, 1000) for n in spec.dev_tasks},
             "validation": sealed.load_heldout_tasks(fast=True, root=sealed.VALIDATION_DIR),
             "heldout": sealed.load_heldout_tasks(fast=True)}
    indexes = {tier: ngrams.build_index(tasks) for tier, tasks in tiers.items()}
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(5000)]
    print("| files | per-file scan (s) | bounded batched scan (s) | ratio | bounded |")
    print("|---|---|---|---|---|")
    for label, count, make in (("empty", args.empty, lambda i: b""),
                               ("text (~2 KB each)", args.text,
                                lambda i: " ".join(rng.choice(words, 300)).encode())):
        with tempfile.TemporaryDirectory(prefix="scan-bench-") as tmp:
            root = Path(tmp)
            for i in range(count):
                sub = root / f"d{i // 1000:04d}"
                if i % 1000 == 0:
                    sub.mkdir()
                (sub / f"f{i:07d}.txt").write_bytes(make(i))
            t0 = time.perf_counter()
            per_file_scan(root, indexes)
            old = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = audit.ngram_audit(root, set(), indexes)
            new = time.perf_counter() - t0
            bounded = report["bounded"]["reason"] if report["bounded"] else "no"
            print(f"| {count:,} {label} | {old:.1f} | {new:.1f} | {old / new:.1f}x | {bounded} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

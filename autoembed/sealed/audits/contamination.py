"""Did eval text reach the agent's files, or its training? Two signals, neither needs the agent's help.

1. The tier gap (the signal that cannot hide): for every dev task, (gain over the base on dev) minus
   (gain over the base on validation, the sealed tier of the same domain), paired per query. Training on
   dev items lifts dev alone, whatever the agent did with its files (base64, pickle, a database, weights).
   Flag when the gap exceeds GAP_MIN and its bootstrap 95% interval (queries resampled, model and base
   paired) lies above 0. GAP_MIN = 0.05: a legitimate fine-tune moves dev and validation of one domain by
   similar amounts (the reference recipe's gains are 0.06-0.12 nDCG@10 per dev task), while memorizing dev
   pairs lifts dev by 0.15 or more (100 MNRL steps on 200 dev wordnet pairs: +0.39). bench/bench_tier_gap.py
   measures both on the full sets (`bash bench/gpu_box.sh tiers`; bench/RESULTS.md). Not run for a model that failed
   lineage: its gains over the base mean nothing, and lineage is the one true reason.
2. 13-gram overlap (autoembed.task.contamination, the algorithm the agent can also run) between every
   text file the agent left in the workdir (beyond the unchanged seeded files) and the eval items of each
   tier. The dev index leaves out grams of the training pool; the validation and held-out indexes leave
   out grams of everything seeded (dev + pool). So a clean workdir hits nothing, whatever it copied of
   the data it was given, and every hit is eval text the agent wrote down.
   Flag when, in one task, more items are hit than the tier's limit:
   dev: max(10, 0.5% of the task's checkable items); validation and held-out: max(25, 2%). Measured: a
   clean workdir (scripts, logs, the pool re-dumped as JSON) hits 0. All 284 MB of this machine's
   site-packages Python source (what an agent mining extra data may read) hits dev pycode 586 items (10%:
   vendored copies of standard-library code) -- training on that is training on near-copies of dev items,
   the agent can see it with task.check_contamination and drop them, so the dev limit is strict; and it
   hits held-out pydoc 50 (1.0%), pycode 28 (0.2%), debian 4, manpages 1: text the agent cannot check
   against, so the held-out limit sits at twice that ambient level. A copy of the eval data, or
   training data built from it, hits most items of a task.
   Files it cannot read as text are listed with the reason (binary format by its magic bytes, UTF-16
   without a mark); gzip (nested up to MAX_DECODE_DEPTH), UTF-16 with a byte-order mark and base64 text
   are decoded and read. The scan is bounded (files, bytes, seconds) and cannot be steered: it reads the
   largest files first, then the rest in an order keyed by a harness-side secret (scan_order), so filler
   files cannot decide what is read before a bound. A scan that still does not read everything (a bound, a
   file read in part) says why in "incomplete", and the scorer flags it: unchecked text is never clean.

The indexes are cached harness-side only (autoembed.paths.home()/contamination/).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import os
import re
import stat
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoembed.task import contamination as ngrams
from autoembed.task.base_model import file_sha256
from autoembed.task.data import RetrievalTask, load_pool
from autoembed.task.resample import bootstrap_replicates
from autoembed.task.spec import MAIN_METRIC

TIERS = ("dev", "validation", "heldout")
LIMITS = {"dev": (10, 0.005), "validation": (25, 0.02), "heldout": (25, 0.02)}  # (min items, fraction of checkable)
MAX_FILE_BYTES = 64 * 2**20  # read at most this much of one file (decompressed)
MAX_TOTAL_BYTES = 512 * 2**20  # and of all files together
MAX_FILES = 50_000  # non-empty files read
MAX_ENTRIES = 2_000_000  # directory entries looked at
MAX_SECONDS = 600.0  # CPU time of the scanning thread, a backstop: a bound hit is flagged, so it must not depend on
# the machine's load (61 MiB of JSONL took 122 s of wall clock at load 8.5 on 2 cores), and the byte bound should
# bind first (1.3 MiB/s of CPU measured there: 512 MiB is ~390 s)
BATCH_BYTES = 8 * 2**20  # texts are matched against the indexes in batches (numpy calls per batch, not per file)
BATCH_FILES = 4096
MAX_DECODE_DEPTH = 3  # gzip in gzip in base64 ...
LISTED = 50  # paths listed per category in score.json (counts are always complete)
GAP_MIN = 0.05
GAP_BOOTSTRAP = 2000

# --------------------------------------------------------------------------------------------
# indexes
# --------------------------------------------------------------------------------------------


def data_key(folders: list[Path], files: list[Path]) -> str:
    digest = hashlib.sha256(ngrams.ALGORITHM.encode())
    for path in sorted(p for folder in folders for p in Path(folder).rglob("*") if p.is_file()) + sorted(files):
        digest.update(str(path.name).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()[:32]


def eval_indexes(tiers: Mapping[str, Mapping[str, RetrievalTask]], pool_path: Path, cache_dir: Path | None,
                 key: str | None) -> dict[str, ngrams.NgramIndex]:
    """{tier: index} for the tiers given (dev, validation, heldout): dev minus pool grams; the sealed tiers
    minus dev and pool grams (everything seeded). Cached under cache_dir/key."""
    hasher = ngrams.TokenHasher()
    cached = cache_dir is not None and key is not None
    dev = tiers.get("dev", {})
    out = {}
    for tier, tasks in tiers.items():
        def build(tasks=tasks, tier=tier):
            allowed = ngrams.pool_texts(load_pool(pool_path))
            if tier != "dev":
                allowed = itertools.chain(allowed, ngrams.task_texts(dev))
            return ngrams.build_index(tasks, allowed, hasher)

        out[tier] = ngrams.cached_index(cache_dir / f"{key}-{tier}.npz" if cached else None, build)
    return out


# --------------------------------------------------------------------------------------------
# the agent's files
# --------------------------------------------------------------------------------------------

_MAGIC = (  # formats the scan cannot read as text, by their first bytes
    (b"PK\x03\x04", "zip (npz, jar, docx...)"),
    (b"\x93NUMPY", "numpy .npy"),
    (b"SQLite format 3\x00", "sqlite"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x89HDF", "hdf5"),
    (b"\x7fELF", "executable"),
)
_BASE64_LINE = re.compile(rb"^[A-Za-z0-9+/=_-]{40,}$")


class ScanReport:
    """What the file walk saw: counts are complete, path lists are capped at LISTED."""

    def __init__(self) -> None:
        self.scanned = 0
        self.empty = 0
        self.listed = 0
        self.bytes_read = 0
        self.unread: Counter = Counter()
        self.unread_examples: list[dict] = []
        self.decoded: list[dict] = []
        self.truncated: list[str] = []
        self.bounded: dict | None = None

    def not_read(self, rel: str, reason: str, size: int) -> None:
        self.unread[reason] += 1
        if len(self.unread_examples) < LISTED:
            self.unread_examples.append({"path": rel, "reason": reason, "bytes": size})

    def incomplete(self) -> str | None:
        """Why the scan did not read every text the workdir holds (None when it did): a bound, or a file read
        only in part. Either way some text went unchecked, so the workdir cannot be called clean."""
        parts = []
        if self.bounded:
            unread = self.bounded["files_unread"]
            parts.append(f"the scan stopped at a bound ({self.bounded['reason']})" + (
                f" with {unread} files ({self.bounded['bytes_unread'] / 2**20:.0f} MiB) unread" if unread else ""))
        if self.truncated:
            parts.append(f"{len(self.truncated)} files were read only in part (e.g. {self.truncated[0]})")
        if not parts:
            return None
        return ("; ".join(parts) + ": text there was never checked for eval items. Leave less in the workdir (at "
                f"most {MAX_FILES} non-empty files, {MAX_TOTAL_BYTES // 2**20} MiB of text, "
                f"{MAX_FILE_BYTES // 2**20} MiB per file): delete copies and intermediate data")

    def to_dict(self) -> dict:
        return {"files_scanned": self.scanned, "files_empty": self.empty, "files_listed": self.listed,
                "bytes_read": self.bytes_read,
                "files_unread": {"count": sum(self.unread.values()), "by_reason": dict(self.unread),
                                 "examples": self.unread_examples},
                "files_decoded": self.decoded[:LISTED], "files_truncated": self.truncated[:LISTED],
                "bounded": self.bounded, "incomplete": self.incomplete(), "order": SCAN_ORDER,
                "bounds": {"max_files": MAX_FILES, "max_entries": MAX_ENTRIES, "max_seconds": MAX_SECONDS,
                           "max_total_bytes": MAX_TOTAL_BYTES, "max_file_bytes": MAX_FILE_BYTES}}


SCAN_ORDER = ("largest first (up to half the file and byte bounds), then the rest in an order keyed by a "
              "harness-side secret")


def scan_key(home: Path, *parts: str) -> bytes:
    """The key that orders a scan: a secret kept in home (created once, readable by its owner only; no sandbox
    sees the harness's home) mixed with parts naming the trial (its seed manifest), so a re-score reads in the
    same order and no agent can tell which of its files would be read before a bound."""
    path = Path(home) / "scan.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes()
    else:
        secret = os.urandom(32)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret)
    if len(secret) < 32:  # a writer side by side has not finished: wait for its bytes
        time.sleep(0.1)
        secret = path.read_bytes()
    return hmac.new(secret, "\0".join(parts).encode("utf-8", "replace"), hashlib.sha256).digest()


def list_files(workdir: Path, skip: set[str], report: ScanReport) -> list[tuple[str, int]]:
    """(relative path, bytes) of every non-empty regular file the scan should read: all of workdir but the skipped
    (unchanged seeded) files and final_model weights. Symlinks and special files are never opened. Past
    MAX_ENTRIES directory entries the listing stops and report.bounded says so."""
    out = []
    entries = 0
    for root, dirs, files in os.walk(workdir):
        dirs.sort()
        for name in sorted(files):
            entries += 1
            rel = os.path.relpath(os.path.join(root, name), workdir)
            if entries > MAX_ENTRIES:
                report.bounded = {"reason": f"more than {MAX_ENTRIES} files", "first_unread": rel,
                                  "note": "the listing stopped here: files after it (in sorted walk order) were not "
                                          "even listed", "files_unread": None, "bytes_unread": None}
                return out
            if rel in skip or (rel.startswith("final_model" + os.sep) and name.endswith(".safetensors")):
                continue
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                report.not_read(rel, "vanished", 0)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # symlinks (escaping ones are the submission audit's) and special files
            if st.st_size == 0:
                report.empty += 1
                continue
            out.append((rel, st.st_size))
    report.listed = len(out)
    return out


def scan_order(files: list[tuple[str, int]], key: bytes) -> list[tuple[str, int]]:
    """The order the scan reads files in, chosen so the agent cannot pick what is read before a bound: the largest
    files first (a copy of eval data is bulk), up to half the file and byte bounds, then all the others in an
    order set by a keyed hash of their path (a sample across the whole tree the agent cannot predict). Files of
    one size are ordered by the keyed hash as well, never by name."""
    def keyed(rel: str) -> bytes:
        return hmac.new(key, rel.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()

    by_size = sorted(files, key=lambda f: (-f[1], keyed(f[0])))  # ties by key too, never by name
    first, used = [], 0
    for rel, size in by_size:
        if len(first) >= MAX_FILES // 2 or used + min(size, MAX_FILE_BYTES) > MAX_TOTAL_BYTES // 2:
            break
        first.append((rel, size))
        used += min(size, MAX_FILE_BYTES)
    rest = by_size[len(first):]
    rest.sort(key=lambda f: keyed(f[0]))
    return first + rest


def agent_text_files(workdir: Path, skip: set[str], report: ScanReport,
                     key: bytes | None = None) -> Iterator[tuple[str, str]]:
    """(relative path, text) of every file in workdir the scan can read as text (list_files), in scan_order under
    key (default: a fresh random key). What it cannot read, and where a bound stopped it, goes into report."""
    workdir = Path(workdir)
    started = time.thread_time()
    budget = MAX_TOTAL_BYTES
    order = scan_order(list_files(workdir, skip, report), key or os.urandom(32))
    for i, (rel, size) in enumerate(order):
        bound = _bound_hit(report.scanned, budget, started)
        if bound:
            _stop(report, bound, order[i:])
            return
        text, via, reason = _read_text(workdir / rel, min(MAX_FILE_BYTES, budget))
        if text is None:
            report.not_read(rel, reason, size)
            continue
        report.scanned += 1
        used = len(text.encode("utf-8", errors="replace")) if via else min(size, MAX_FILE_BYTES, budget)
        budget -= used
        report.bytes_read += used
        if via:
            report.decoded.append({"path": rel, "via": via})
        if reason == "truncated":
            report.truncated.append(rel)
        yield rel, text


def _bound_hit(scanned: int, budget: int, started: float) -> str | None:
    if scanned >= MAX_FILES:
        return f"{MAX_FILES} files read"
    if budget <= 0:
        return f"{MAX_TOTAL_BYTES} bytes read"
    if time.thread_time() - started > MAX_SECONDS:
        return f"{MAX_SECONDS:.0f} s of CPU time spent"
    return None


def _stop(report: ScanReport, bound: str, unread: list[tuple[str, int]]) -> None:
    listing = report.bounded  # the listing may have stopped first: its files were never even listed
    report.bounded = {"reason": bound if not listing else f"{listing['reason']}; {bound}",
                      "first_unread": unread[0][0], "files_unread": len(unread) if not listing else None,
                      "bytes_unread": sum(size for _, size in unread),
                      "unread_examples": [rel for rel, _ in unread[:LISTED]],
                      "note": f"files were read in scan order ({SCAN_ORDER}); those listed were not"}


def _read_text(path: Path, cap: int) -> tuple[str | None, str, str | None]:
    """(text or None, how it was decoded ("" for plain text), reason: why unread, or "truncated"). A binary file
    is known by its first 8 KiB and never read further."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(min(cap + 1, 8192))
            if b"\x00" in data and data[:2] not in (b"\x1f\x8b", b"\xff\xfe", b"\xfe\xff"):
                return None, "", _binary_kind(data)
            if len(data) <= cap:
                data += fh.read(cap + 1 - len(data))
    except OSError as exc:
        return None, "", f"unreadable ({type(exc).__name__})"
    truncated = len(data) > cap
    text, via, reason = _decode(data[:cap], cap, 0)
    if text is not None and truncated and reason is None:
        reason = "truncated"
    return text, "+".join(via), reason


def _decode(data: bytes, cap: int, depth: int) -> tuple[str | None, list[str], str | None]:
    if depth > MAX_DECODE_DEPTH:
        return None, [], f"encoded more than {MAX_DECODE_DEPTH} layers deep"
    if data[:2] == b"\x1f\x8b":
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, cap)
        except zlib.error:
            return None, [], "corrupt gzip"
        text, via, reason = _decode(inner, cap, depth + 1)
        return text, ["gzip", *via], reason
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16", errors="replace"), ["utf-16"], None
    head = data[:8192]
    if b"\x00" in head:
        return None, [], _binary_kind(data)
    if len(data) >= 64 and all(_BASE64_LINE.match(line) for line in head.split()[:50]):
        try:
            inner = base64.b64decode(b"".join(data.split()), altchars=b"-_" if b"-" in head or b"_" in head else None)
        except (binascii.Error, ValueError):
            inner = None
        if inner:
            text, via, reason = _decode(inner, cap, depth + 1)
            return text, ["base64", *via], reason if text is not None else f"base64 of {reason}"
    return data.decode("utf-8", errors="replace"), [], None


def _binary_kind(data: bytes) -> str:
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return f"binary: {kind}"
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "binary: pickle"
    if len(data) >= 8 and data[8:10] == b'{"':
        return "binary: safetensors"
    if data[1:200:2].count(0) > 0.9 * len(data[1:200:2]):
        return "binary: UTF-16 text without a byte-order mark"
    return "binary: unknown format"


def unchanged_model_files(workdir: Path, base_path: Path) -> set[str]:
    """final_model files identical to the base model's (its vocabulary, tokenizer, configs): not the
    agent's text, so not scanned (vocab.txt happens to hold a short code item's tokens in a row)."""
    out = set()
    final = Path(workdir) / "final_model"
    if final.is_symlink() or not final.is_dir():
        return out
    for path in final.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        rel = path.relative_to(final)
        ref = Path(base_path) / rel
        if ref.is_file() and ref.stat().st_size == path.stat().st_size and file_sha256(ref) == file_sha256(path):
            out.add(f"final_model/{rel}")
    return out


def ngram_audit(workdir: Path, skip: set[str], indexes: Mapping[str, ngrams.NgramIndex],
                key: bytes | None = None) -> dict:
    """{"flagged", "reasons", <tier>: {task: {"hit", "checkable", "total"}}, "files_with_hits": [...],
    and what the file walk read, could not read and where it was bounded (ScanReport.to_dict)}. key: orders the
    scan (scan_key; default a fresh random one). "incomplete" says why some text went unread (flagged apart
    by the scorer: not clean, yet no evidence of contamination)."""
    scan = ScanReport()
    hits: dict[str, set[int]] = {tier: set() for tier in indexes}
    per_file: list[dict] = []
    hasher = ngrams.TokenHasher()
    batch: list[tuple[str, str]] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch_bytes
        if batch:
            per_file.extend(_match_batch(batch, indexes, hasher, hits))
        batch.clear()
        batch_bytes = 0

    for rel, text in agent_text_files(workdir, skip, scan, key):
        batch.append((rel, text))
        batch_bytes += len(text)
        if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_FILES:
            flush()
    flush()
    report = {tier: index.summarize(np.array(sorted(hits[tier]), dtype=np.int64)) for tier, index in indexes.items()}
    report["files_with_hits"] = sorted(per_file, key=lambda r: -sum(v for k, v in r.items() if k != "path"))[:20]
    report.update(scan.to_dict())
    report["limits"] = {tier: {"min_items": n, "fraction": f} for tier, (n, f) in LIMITS.items() if tier in indexes}
    reasons = []
    for tier in indexes:
        min_items, fraction = LIMITS[tier]
        for task, row in report[tier].items():
            limit = max(min_items, fraction * row["checkable"])
            if row["hit"] > limit:
                reasons.append(f"files in the workdir contain text of {row['hit']} {tier} items of {task!r} "
                               f"(limit {limit:.0f}; see files_with_hits)")
    report["flagged"] = bool(reasons)
    report["reasons"] = reasons
    return report


def _match_batch(batch: list[tuple[str, str]], indexes: Mapping[str, ngrams.NgramIndex],
                 hasher: ngrams.TokenHasher, hits: dict[str, set[int]]) -> list[dict]:
    """Match a batch of files against every index at once; returns the rows of files with a hit."""
    rows: dict[int, dict] = {}
    for tier, index in indexes.items():
        grams, owners = index.grams_of([text for _, text in batch], hasher)
        known = index.known(grams)
        grams, owners = grams[known], owners[known]
        if not len(grams):
            continue
        hits[tier].update(int(i) for i in index.items_hit(grams))
        for owner in np.unique(owners):
            row = rows.setdefault(int(owner), {"path": batch[int(owner)][0]})
            row[f"{tier}_items_hit"] = int(len(index.items_hit(grams[owners == owner])))
    for row in rows.values():
        for tier in indexes:
            row.setdefault(f"{tier}_items_hit", 0)
    return list(rows.values())


# --------------------------------------------------------------------------------------------
# the tier gap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GapTest:
    """The tier-gap test: bootstrap replicates and seed of its CI, and the gap it flags above."""
    n_boot: int = GAP_BOOTSTRAP
    seed: int = 0
    gap_min: float = GAP_MIN


def gap_audit(model_dev: dict, base_dev: dict, model_val: dict, base_val: dict, tasks: tuple[str, ...],
              metric: str = MAIN_METRIC, test: GapTest = GapTest()) -> dict:
    """Per dev task: dev gain, validation gain (same domain), gap = dev gain - validation gain, its 95% CI.
    Arguments are evaluate_model's "per_query" dicts ({task: {"query_ids", metric}})."""
    out: dict = {"tasks": {}, "threshold": test.gap_min, "metric": metric}
    diffs = {}
    for task in tasks:
        if not all(task in d for d in (model_dev, base_dev, model_val, base_val)):
            out["tasks"][task] = {"skipped": "no validation twin"}
            continue
        out["tasks"][task] = None  # its place in the report's order; filled below
        diffs[(task, "dev")] = _paired(model_dev[task], base_dev[task], metric)
        diffs[(task, "validation")] = _paired(model_val[task], base_val[task], metric)
    # one stream of draws: each task's dev queries, then its validation queries, task after task
    replicates = bootstrap_replicates(diffs, test.n_boot, test.seed)
    reasons = []
    for task in tasks:
        if (task, "dev") not in diffs:
            continue
        dev_diff, val_diff = diffs[(task, "dev")], diffs[(task, "validation")]
        gap = float(dev_diff.mean() - val_diff.mean())
        reps = replicates[(task, "dev")] - replicates[(task, "validation")]
        lo, hi = (float(x) for x in np.quantile(reps, [0.025, 0.975]))
        flagged = gap > test.gap_min and lo > 0
        out["tasks"][task] = {"dev_gain": float(dev_diff.mean()), "validation_gain": float(val_diff.mean()),
                              "gap": gap, "gap_ci": [lo, hi], "n_dev": len(dev_diff), "n_validation": len(val_diff),
                              "flagged": flagged}
        if flagged:
            reasons.append(f"{task}: the dev gain ({dev_diff.mean():+.3f}) exceeds the validation gain "
                           f"({val_diff.mean():+.3f}) by {gap:.3f} {metric} (95% CI [{lo:.3f}, {hi:.3f}], "
                           f"threshold {test.gap_min}): a sign of training on dev {task} items")
    out["flagged"] = bool(reasons)
    out["reasons"] = reasons
    return out


def _paired(model: dict, base: dict, metric: str) -> np.ndarray:
    if list(model["query_ids"]) != list(base["query_ids"]):
        raise ValueError("per-query scores of the model and the base are not aligned (different queries)")
    return np.asarray(model[metric], dtype=np.float64) - np.asarray(base[metric], dtype=np.float64)

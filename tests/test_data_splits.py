"""The committed task data: manifests, sizes, and that nothing crosses dev / validation / pool / held-out.

Reads the real files (about 15 s of CPU in all). The 13-gram check covers every held-out, dev and
validation text and a fixed random third of the pool (the whole pool doubles the run time; the build
filters all of it the same way).
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import random
import tomllib
from pathlib import Path

import pytest

from autoembed.task.data import load_pool, load_retrieval_task

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tasks/embed/data"
SEALED = REPO / "autoembed/sealed/data"
SPEC = tomllib.loads((REPO / "tasks/embed/task.toml").read_text())
DEV_TASKS = SPEC["dev"]["tasks"]
HELDOUT_TASKS = ["debian", "pycode", "manpages", "pydoc"]
# (queries, documents) as documented in data/README.md; None = at least MIN_DOCS
DEV_SIZES = {"debian": (3000, 20000), "pycode": (3000, None), "wordnet": (3000, 10000)}
HELDOUT_SIZES = {"debian": (2000, 10000), "pycode": (2000, None), "manpages": (2000, None), "pydoc": (2000, None)}
VALIDATION_SIZES = {"debian": (2500, 5000), "pycode": (2500, 4000), "wordnet": (2500, 10000)}
MIN_DOCS = 2400
POOL_RANGE = (130_000, 200_000)
POOL_SAMPLE = 55_000
N = 13

pytestmark = pytest.mark.skipif(not (DATA / "MANIFEST.json").is_file(), reason="task data not built")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _grams(text: str) -> set[tuple[str, ...]]:
    tokens = text.lower().split()
    return {tuple(tokens[i: i + N]) for i in range(len(tokens) - N + 1)}


def _groups(folder: Path) -> dict[str, str]:
    with gzip.open(folder / "groups.tsv.gz", "rt", encoding="utf-8") as fh:
        next(fh)
        return dict(line.rstrip("\n").split("\t") for line in fh)


@pytest.fixture(scope="module")
def dev():
    return {name: load_retrieval_task(DATA / "dev" / name) for name in DEV_TASKS}


@pytest.fixture(scope="module")
def heldout():
    return {name: load_retrieval_task(SEALED / "heldout" / name) for name in HELDOUT_TASKS}


@pytest.fixture(scope="module")
def validation():
    return {name: load_retrieval_task(SEALED / "validation" / name) for name in VALIDATION_SIZES}


@pytest.fixture(scope="module")
def pool():
    return list(load_pool(DATA / "pool" / "pairs.jsonl.gz"))


def _texts(tasks) -> list[str]:
    return [t for task in tasks.values() for t in (*task.queries.values(), *task.corpus.values())]


@pytest.mark.parametrize("root", [DATA, SEALED], ids=["dev+pool", "sealed"])
def test_manifest_matches_files(root):
    manifest = json.loads((root / "MANIFEST.json").read_text())
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "MANIFEST.json"}
    assert set(manifest["files"]) == on_disk, "MANIFEST.json lists other files than are there: rebuild"
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, f"{rel} changed since the build"
    assert manifest["built_with"]["script"] == "data/build.py"


def test_sizes_match_docs_and_manifest(dev, validation, heldout, pool):
    assert set(VALIDATION_SIZES) == set(DEV_TASKS)  # every dev task has its validation twin
    for tasks, sizes, key, root in ((dev, DEV_SIZES, "dev", DATA), (heldout, HELDOUT_SIZES, "heldout", SEALED),
                                    (validation, VALIDATION_SIZES, "validation", SEALED)):
        counts = json.loads((root / "MANIFEST.json").read_text())["counts"][key]
        assert set(tasks) == set(sizes)
        for name, task in tasks.items():
            n_q, n_d = sizes[name]
            assert len(task.queries) == len(task.qrels) == n_q, name
            assert len(task.corpus) == n_d if n_d else len(task.corpus) >= MIN_DOCS, name
            assert counts[name] == {"queries": len(task.queries), "docs": len(task.corpus)}, name
    assert POOL_RANGE[0] <= len(pool) <= POOL_RANGE[1]
    assert {row["domain"] for row in pool} == {"debian", "pycode", "wordnet"}  # no held-out-only domain
    assert all(set(row) == {"query", "positive", "domain", "group"} and row["query"] and row["positive"]
               for row in pool)
    pool_counts = json.loads((DATA / "MANIFEST.json").read_text())["counts"]["pool"]
    assert sum(pool_counts.values()) == len(pool)


def test_qrels_reference_existing_ids(dev, validation, heldout):
    for task in (*dev.values(), *validation.values(), *heldout.values()):
        assert set(task.qrels) == set(task.queries), task.name
        for qid, docs in task.qrels.items():
            assert docs and all(d in task.corpus for d in docs), (task.name, qid)


def test_texts_are_truncated_and_nonempty(dev, validation, heldout):
    for task in (*dev.values(), *validation.values(), *heldout.values()):
        assert all(0 < len(t) <= 2000 for t in task.corpus.values()), task.name
        assert all(0 < len(t) for t in task.queries.values()), task.name


def test_fast_subset_has_the_sizes_in_task_toml(dev, validation, heldout):
    n_q, n_d = SPEC["eval"]["fast_queries"], SPEC["eval"]["fast_docs"]
    for task in (*dev.values(), *validation.values(), *heldout.values()):
        sub = task.subset(n_q, n_d)
        assert len(sub.queries) == n_q, task.name
        assert len(sub.corpus) == min(n_d, len(task.corpus)), task.name
        assert all(d in sub.corpus for docs in sub.qrels.values() for d in docs)


def test_groups_are_disjoint_across_splits(dev, validation, heldout, pool):
    split_groups = {
        "dev": {g for n in DEV_TASKS for g in _groups(DATA / "dev" / n).values()},
        "validation": {g for n in VALIDATION_SIZES for g in _groups(SEALED / "validation" / n).values()},
        "heldout": {g for n in HELDOUT_TASKS for g in _groups(SEALED / "heldout" / n).values()},
        "pool": {row["group"] for row in pool},
    }
    for name, tasks, root in (("dev", dev, DATA / "dev"), ("heldout", heldout, SEALED / "heldout"),
                              ("validation", validation, SEALED / "validation")):
        for task_name, task in tasks.items():
            groups = _groups(root / task_name)
            assert set(task.queries) | set(task.corpus) <= set(groups), f"{name}/{task_name}: ids without a group"
    for a, b in itertools.combinations(split_groups, 2):
        assert not split_groups[a] & split_groups[b], (a, b, sorted(split_groups[a] & split_groups[b])[:5])
    # validation code comes from site-packages, several packages (no single library is the whole set)
    assert all(g.startswith("site:") for g in _groups(SEALED / "validation" / "pycode").values())
    assert len({g for g in _groups(SEALED / "validation" / "pycode").values()}) >= 5


def test_no_exact_duplicate_text_across_splits(dev, validation, heldout, pool):
    texts = {"dev": {_norm(t) for t in _texts(dev)}, "validation": {_norm(t) for t in _texts(validation)},
             "heldout": {_norm(t) for t in _texts(heldout)},
             "pool": {_norm(t) for row in pool for t in (row["query"], row["positive"])}}
    for a, b in itertools.combinations(texts, 2):
        assert not texts[a] & texts[b], (a, b)


def test_no_13gram_shared_across_tiers(dev, validation, heldout, pool):
    heldout_grams = set().union(*(_grams(t) for t in _texts(heldout)))
    dev_grams = set().union(*(_grams(t) for t in _texts(dev)))
    validation_grams = set().union(*(_grams(t) for t in _texts(validation)))
    assert len(heldout_grams) > 1_000_000 and len(dev_grams) > 500_000  # the check has something to bite on
    assert len(validation_grams) > 300_000
    assert not heldout_grams & dev_grams
    assert not validation_grams & heldout_grams
    assert not validation_grams & dev_grams
    for row in random.Random(13).sample(pool, min(POOL_SAMPLE, len(pool))):
        for text in (row["query"], row["positive"]):
            grams = _grams(text)
            assert not grams & heldout_grams, f"pool row shares a 13-gram with held-out: {text[:80]!r}"
            assert not grams & dev_grams, f"pool row shares a 13-gram with dev: {text[:80]!r}"
            assert not grams & validation_grams, f"pool row shares a 13-gram with validation: {text[:80]!r}"


def test_13gram_check_catches_a_planted_copy(heldout):
    """The check above is only worth something if a copied passage would trip it."""
    passage = next(t for t in heldout["pycode"].corpus.values() if len(t.split()) > 40)
    heldout_grams = set().union(*(_grams(t) for t in heldout["pycode"].corpus.values()))
    planted = "some preamble " + " ".join(passage.split()[5:30]) + " and more"
    assert _grams(planted) & heldout_grams

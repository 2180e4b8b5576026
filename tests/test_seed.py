"""Seeding a workdir: exactly the agent-facing files, a harness-side manifest, a working timer, and
not one byte of autoembed/sealed/ (no held-out text, no sealed file's content, no sealed file name)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from autoembed.paths import SEALED_DIR
from autoembed.sealed import heldout as heldout_data
from autoembed.task.data import read_jsonl
from autoembed.task.seed import SeedError, load_manifest, manifest_path, seed_workdir
from autoembed.task.spec import load_spec
from tests.sealed_fixtures import base_path, harness_home, tiny  # noqa: F401


@pytest.fixture(scope="module")
def real_seed(tmp_path_factory, harness_home):
    """The real default task seeded once (its data is ~25 MB: copied in well under a second)."""
    workdir = tmp_path_factory.mktemp("seed") / "w"
    manifest = seed_workdir(workdir, 2.0, "embed")
    return workdir, manifest


def _files(workdir: Path) -> dict[str, Path]:
    return {str(p.relative_to(workdir)): p for p in sorted(workdir.rglob("*")) if p.is_file() or p.is_symlink()}


def _content(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def test_seeds_exactly_the_agent_files(real_seed):
    workdir, manifest = real_seed
    spec = load_spec()
    expected = {"task.py", "instructions.md", "timer.sh", "data/pool/pairs.jsonl.gz"}
    for name in spec.dev_tasks:
        expected |= {f"data/dev/{name}/{f}" for f in ("corpus.jsonl.gz", "queries.jsonl.gz", "qrels.tsv")}
    files = _files(workdir)
    assert expected <= set(files)
    assert set(files) == set(manifest["files"])  # nothing unlisted (the manifest itself is not there)
    assert all(not p.is_symlink() and p.stat().st_nlink == 1 for p in files.values())  # copies, not links
    for rel, sha in manifest["files"].items():
        assert hashlib.sha256(files[rel].read_bytes()).hexdigest() == sha


def test_manifest_is_harness_side(real_seed, harness_home):
    workdir, manifest = real_seed
    path = manifest_path(workdir)
    assert path.parent == harness_home / "seeds"
    assert path.name == hashlib.sha256(str(workdir.resolve()).encode()).hexdigest() + ".json"
    assert load_manifest(workdir) == manifest == json.loads(path.read_text())
    assert manifest["deadline"] == pytest.approx(time.time() + 2 * 3600, abs=120)
    assert manifest["task"] == "embed" and manifest["hours"] == 2.0


def test_task_py_names_base_model_and_data(real_seed, base_path):
    workdir, _ = real_seed
    text = (workdir / "task.py").read_text()
    assert f"BASE_MODEL = {str(base_path)!r}" in text
    assert "DEV_TASKS = ['debian', 'pycode', 'wordnet']" in text
    assert not re.search(r'"__[A-Z][A-Z_]*__"', text)  # every placeholder filled
    compile(text, "task.py", "exec")
    # thin: it imports the agent-visible package only
    imports = set(re.findall(r"^\s*(?:from|import) ([\w.]+)", text, re.M))
    assert {m for m in imports if m.startswith("autoembed")} <= {"autoembed.task", "autoembed.task.data",
                                                                  "autoembed.task.evaluate"}, imports


def test_instructions_are_filled(real_seed):
    workdir, manifest = real_seed
    text = " ".join((workdir / "instructions.md").read_text().split())
    assert "{{" not in text
    assert "**2 hours**" in text and manifest["deadline_utc"] in text
    for rule in ("Only fine-tune the base model", "Do not train on evaluation data", "hidden held-out",
                 "Do not modify `task.py`", "Work autonomously", "final_model/", "every process you started"):
        assert rule in text, rule


def test_timer_counts_down_and_stops(tmp_path, tiny, base_path):
    live = seed_workdir(tmp_path / "live", 1.5, tiny.spec, base_model=str(base_path))
    run = subprocess.run(["bash", "timer.sh"], cwd=live["workdir"], capture_output=True, text=True)
    assert run.returncode == 0 and re.match(r"time left: 1h (29|30)m", run.stdout), run.stdout
    assert str(live["deadline"]) in (Path(live["workdir"]) / "timer.sh").read_text()
    over = seed_workdir(tmp_path / "over", 1.0, tiny.spec, base_model=str(base_path), now=time.time() - 2 * 3600)
    run = subprocess.run(["bash", "timer.sh"], cwd=over["workdir"], capture_output=True, text=True)
    assert run.returncode == 1 and "time is up" in run.stdout


def test_refuses_a_used_folder(tmp_path, tiny, base_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "old.txt").write_text("x")
    with pytest.raises(SeedError, match="not an empty folder"):
        seed_workdir(tmp_path / "w", 1.0, tiny.spec, base_model=str(base_path))
    with pytest.raises(SeedError, match="hours must be positive"):
        seed_workdir(tmp_path / "w2", 0, tiny.spec, base_model=str(base_path))


def test_seed_command(tmp_path, tiny, base_path, capsys):
    from autoembed.cli import main

    assert main(["seed", str(tmp_path / "w"), "--hours", "0.5", "--task", str(tiny.spec.root),
                 "--base-model", str(base_path)]) == 0
    assert "deadline" in capsys.readouterr().out
    assert load_manifest(tmp_path / "w")["hours"] == 0.5


# ------------------------------------------------------------------------------------------------
# no sealed byte
# ------------------------------------------------------------------------------------------------


def _normalized(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("tier", ["heldout", "validation"])
def test_no_sealed_tier_text_in_seeded_data(real_seed, tier):
    """Every held-out and validation query and document, whole, against every record of the seeded data; and
    the longest (most distinctive) texts of each tier as raw substrings of every seeded file's (decompressed)
    bytes."""
    workdir, manifest = real_seed
    seeded_texts = set()
    for rel in manifest["files"]:
        if rel.endswith(".jsonl.gz"):
            for row in read_jsonl(workdir / rel):
                seeded_texts.update(_normalized(v) for k, v in row.items() if k in ("text", "query", "positive"))
    sealed = heldout_data.load_heldout_tasks(root=heldout_data.DATA_DIR / tier)
    assert len(sealed) >= 3
    sealed_texts = {_normalized(t) for task in sealed.values() for t in [*task.queries.values(), *task.corpus.values()]}
    shared = {t for t in sealed_texts & seeded_texts if len(t) >= 40}
    assert not shared, f"{len(shared)} {tier} texts are in the seeded data, e.g. {sorted(shared)[:2]}"
    blobs = [_content(p) for p in _files(workdir).values()]
    for task in sealed.values():
        longest = sorted(task.corpus.values(), key=len)[-100:] + sorted(task.queries.values(), key=len)[-20:]
        for text in longest:
            needle = text[:300].encode()
            assert not any(needle in blob for blob in blobs), text[:80]


def test_no_sealed_file_content_or_name(real_seed):
    workdir, _ = real_seed
    files = _files(workdir)
    sealed_files = [p for p in SEALED_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sealed_files, "the sealed folder is empty: nothing to check against"
    sealed_hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in sealed_files}
    for rel, path in files.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() not in sealed_hashes, rel
        assert "sealed" not in rel and "heldout" not in rel, rel
    # names and code lines of the sealed package, in any seeded file
    needles = {"autoembed.sealed", "autoembed/sealed", str(SEALED_DIR), "heldout/", "heldout.py", "scorer.py",
               "submission.py", "lineage.py", "tampering.py"}
    for p in sealed_files:
        if p.suffix == ".py":
            needles |= {line.strip() for line in p.read_text().splitlines()
                        if len(line.strip()) >= 40 and not line.strip().startswith(("from ", "import "))}
    for rel, path in files.items():
        blob = _content(path).decode("utf-8", errors="replace")
        if rel.startswith("data/"):
            # data rows may hold ordinary words; only the sealed names are looked for there
            hits = [n for n in ("autoembed.sealed", "autoembed/sealed", str(SEALED_DIR)) if n in blob]
        else:
            hits = [n for n in needles if n in blob]
        assert not hits, f"{rel} holds sealed text: {hits[:3]}"

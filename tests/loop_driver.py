"""A loop on the recipe target with simulated trials, for the loop's tests: the real Loop, git repository,
ledger, gate and Optuna search, with trials that write what a scored trial writes (meta.json, score.json,
per_query.json.gz) from the knob values of the file they were given, instantly.

Also a script: `python -m tests.loop_driver RUN_DIR [--kill-at STAGE] [--iterations N]` runs such a loop, and
with --kill-at sends itself SIGKILL at that stage of the loop (the kill -9 tests resume it afterwards); with --fuzz
its meta-agent proposes fuzz_files() (hostile candidates, then a good one) instead of the search.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import signal
import sys
import zlib
from pathlib import Path

import numpy as np

from autoembed import editable
from autoembed.loop.meta.base import MetaAgent, Proposal
from autoembed.paths import REPO_ROOT
from autoembed.loop.smoke import SmokeResult

TASKS = {"validation": ["v1", "v2", "v3"], "dev": ["d1", "d2"], "heldout": ["heldout_secret_alpha", "heldout_secret_beta"]}
QUERIES = 400
HELDOUT_MARK = 0.31415  # every held-out score is this plus a little: easy to look for in the meta-agent's inputs
STAGES = ("commit", "intent", "trial", "scored", "row", "partial-row", "best", "heldout", "reparent")
GPU_STAGES = ("reparent",)  # stages only a loop on GPUs reaches (CPU trials never run beside a proposal)
PENDING = "deferred_tiers.json"  # where a simulated trial keeps the tiers it deferred
SCORED_LATER: list[str] = []  # trial ids whose deferred held-out fake_heldout scored, in this process


def quality(source: str) -> float:
    """How good a simulated recipe is: SYMMETRIC_LOSS, an LR near 1e-4, WEIGHT_DEBIAN near 2 and PRETOKENIZE (more
    steps in the same budget; as measured on a GPU, bench/RESULTS.md) help, clearly."""
    knobs = {k.name: k.value for k in editable.knobs(source)}
    lr_term = -0.03 * abs(math.log10(knobs.get("LR", 5e-5) / 1e-4))
    weight_term = 0.02 * (1 - abs(math.log2(knobs.get("WEIGHT_DEBIAN", 1.0) / 2)))
    return 0.05 * bool(knobs.get("SYMMETRIC_LOSS")) + lr_term + weight_term + 0.02 * bool(knobs.get("PRETOKENIZE"))


def write_json(path: Path, data: dict) -> None:
    """Whole or not at all, as run() writes its records: a kill -9 of the loop's process (the kill tests) must not
    leave a trial's record half-written, which no real trial does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


class FakeResult:
    def __init__(self, run_dir: Path, meta: dict, score: dict | None):
        self.run_dir, self.meta, self.score = run_dir, meta, score


def fake_trial(agent_spec: str, out: Path, gpu, say, *, kill_at: str | None = None,
               tiers: tuple[str, ...] = ("dev", "validation", "heldout")) -> FakeResult:
    """A scored trial, instantly; a tier left out of `tiers` is deferred as the real scorer defers it (its values
    wait in a file of the trial's own until fake_heldout adds them)."""
    source = Path(agent_spec.split(":", 1)[1]).read_text()
    out.mkdir(parents=True, exist_ok=False)
    meta = {"status": "running", "exit_reason": None}
    write_json(out / "meta.json", meta)
    if "CRASH_IN_TRIAL" in source:  # a file that passes the smoke check and dies in its trial
        meta = {"status": "scored", "exit_reason": "crashed", "exit_detail": "Traceback ...\nCUDA out of memory"}
        write_json(out / "meta.json", meta)
        return FakeResult(out, meta, None)
    if kill_at == "trial":
        os.kill(os.getpid(), signal.SIGKILL)
    seed = zlib.crc32(out.name.encode())  # by trial id, not by the temp path: the same draws in every run of a test
    rng = np.random.default_rng(seed)
    effect = quality(source) + rng.normal(0, 0.002)
    per_query, score = {}, {"status": "ok", "reasons": [], "base": {}}
    for split, tasks in TASKS.items():
        per_query[split] = {}
        for t, task in enumerate(tasks):
            base = np.linspace(0.2, 0.8, QUERIES) + 0.01 * t
            offset = HELDOUT_MARK - 0.5 if split == "heldout" else 0.0
            values = np.clip(base + offset + effect + rng.normal(0, 0.03, QUERIES), 0, 1)
            per_query[split][task] = {f"q{i:04d}": float(v) for i, v in enumerate(values)}
        means = {task: float(np.mean(list(per_query[split][task].values()))) for task in tasks}
        score[split] = {"mean": {"ndcg@10": float(np.mean(list(means.values())))},
                        "tasks": {task: {"ndcg@10": m} for task, m in means.items()}}
        score["base"][split] = score[split]
    submission = dict(per_query)
    score["deferred"] = [split for split in TASKS if split not in tiers]
    if score["deferred"]:
        (out / PENDING).write_text(json.dumps({split: {"per_query": per_query[split], "score": score[split]}
                                               for split in score["deferred"]}))
        for split in score["deferred"]:
            del submission[split], score[split]
    with gzip.open(out / "per_query.json.gz", "wt") as fh:
        json.dump({"submission": submission, "base": per_query}, fh)
    write_json(out / "score.json", score)
    (out / "trace.md").write_text(f"# simulated trial\nquality {quality(source):.3f}\n")
    meta = {"status": "scored", "exit_reason": "finished", "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}}
    write_json(out / "meta.json", meta)
    if kill_at == "scored":
        os.kill(os.getpid(), signal.SIGKILL)
    return FakeResult(out, meta, score)


def fake_heldout(trial_dir: Path, gpu, say) -> dict:
    """The loop's deferred held-out scoring for a simulated trial: what fake_trial held back, merged in."""
    trial_dir = Path(trial_dir)
    score = json.loads((trial_dir / "score.json").read_text())
    pending = trial_dir / PENDING
    if not score.get("deferred"):
        return score
    held = json.loads(pending.read_text())
    with gzip.open(trial_dir / "per_query.json.gz", "rt") as fh:
        body = json.load(fh)
    for split, part in held.items():
        body["submission"][split] = part["per_query"]
        score[split] = part["score"]
    with gzip.open(trial_dir / "per_query.json.gz", "wt") as fh:
        json.dump(body, fh)
    score["deferred"] = []
    (trial_dir / "score.json").write_text(json.dumps(score))
    SCORED_LATER.append(trial_dir.name)
    return score


def quick_smoke(target: str, source: str, workdir: Path) -> SmokeResult:
    """The smoke check's fast part (size, text, adapter unchanged, compiles: autoembed.loop.smoke.static_check) without
    training."""
    from autoembed.agents.recipe import FIXED_ADAPTER_SHA256
    from autoembed.loop.smoke import static_check

    error = static_check(source, FIXED_ADAPTER_SHA256)
    return SmokeResult(error is None, error or "", 0.0)


def inprocess_smoke(target: str, source: str, workdir: Path) -> SmokeResult:
    """The smoke check's fast part as it was before issue 18: compile() in the loop's own process, only SyntaxError
    caught, so 1+1+...+1 (3,000 terms) raises RecursionError out of the check: what the loop must contain."""
    from autoembed.agents.recipe import FIXED_ADAPTER_SHA256

    try:
        editable.check_adapter(source, FIXED_ADAPTER_SHA256, "the candidate")
        compile(source, "candidate.py", "exec")
    except (editable.EditableError, SyntaxError) as exc:
        return SmokeResult(False, f"{type(exc).__name__}: {exc}", 0.0)
    return SmokeResult(True, "", 0.0)


POISON_TERMS = 3000


def poison(source: str) -> str:
    """The issue's wedge: `POISON = 1+1+...+1` (3,000 terms) above the banner; the adapter is untouched."""
    return f"POISON = {'+'.join(['1'] * POISON_TERMS)}\n" + source


def fuzz_files() -> list[tuple[str, str]]:
    """(file, description): candidates built to break the loop's own code, each a decided row, then a good one."""
    recipe = (REPO_ROOT / "harnesses" / "recipe.py").read_text()
    banner = editable.BANNER
    deep = 5000
    return [
        (poison(recipe), "poison: 1+1+...+1, 3,000 terms"),
        (f"X = {'(' * deep}1{')' * deep}\n" + recipe, "5,000 nested parentheses"),
        (f"X = {'-' * 100_000}1\n" + recipe, "a 100,000-deep unary chain"),
        (f"X = {'[' * deep}{']' * deep}\n" + recipe, "5,000 nested lists"),
        ("# " + "x" * 2_000_000 + "\n" + recipe, "2 MB above the banner: over the size cap"),
        (bytes(range(256)).decode("latin-1") * 16 + recipe, "binary bytes above the banner"),
        ("\0" * 10_000 + recipe, "NUL-filled"),
        (b"\xff\xfe\xc3(".decode("utf-8", "surrogateescape") + recipe, "invalid UTF-8 (lone surrogates)"),
        (recipe.replace(banner, banner[:-3]), "a broken banner"),
        (recipe.replace(banner, banner + "\n" + banner), "a doubled banner"),
        (editable.set_knobs(recipe, {"SYMMETRIC_LOSS": True, "LR": 1e-4}), "a good candidate after the fuzz"),
    ]


class FilesMeta(MetaAgent):
    """Proposes the given files, the n-th at iteration n (so a resumed loop goes on where the killed one stopped),
    and remembers what it was told."""

    name = "scripted-files"

    def __init__(self, files: list[tuple[str, str]]):
        self.files = list(files)
        self.told = []

    def propose(self, ctx):
        if ctx.iteration > len(self.files):
            return None
        source, description = self.files[ctx.iteration - 1]
        return Proposal(source, description)

    def observe(self, feedback):
        self.told.append(feedback)


def make_loop(run_dir: Path, iterations: int, *, kill_at: str | None = None, kill_after: int = 2, meta_agent=None,
              smoke=quick_smoke, say=None, gpus: list[str] | None = None, screen: float = 0.0,
              prior: bool | tuple = True):
    """prior=False: the search without its prior points (the kill tests' 6 iterations then reach a re-parenting
    keep: a waiting single step that a kept prior point already holds has nothing left to re-parent); a tuple: the
    search with these prior points instead of PRIOR_POINTS."""
    from autoembed.loop.engine import Loop, LoopConfig, LoopHooks
    from autoembed.loop.meta.search import SearchMetaAgent

    if meta_agent is None and prior is not True:
        meta_agent = SearchMetaAgent(Path(run_dir) / "meta", prior=prior or ())

    config = LoopConfig(target="recipe", meta="search" if meta_agent is None else meta_agent.name, hours=1.0,
                        trial_hours=0.001, max_iterations=iterations, baseline_runs=2, remeasure_every=4, sandbox="none",
                        gpus=gpus or [], screen=screen)
    counter = {"n": 0}

    def trial(agent_spec, out, gpu, say_, hours=None, tiers=("dev", "validation", "heldout")):
        counter["n"] += 1
        due = kill_at in ("trial", "scored") and counter["n"] == kill_after + 2  # after the two baseline runs
        return fake_trial(agent_spec, out, gpu, say_, kill_at=kill_at if due else None, tiers=tiers)

    loop = Loop(run_dir, config, meta_agent, say or (lambda msg: None),
                LoopHooks(trial_runner=trial, smoke=smoke, heldout_scorer=fake_heldout))
    if kill_at:
        _arm(loop, kill_at, kill_after)
    return loop


def _arm(loop, stage: str, after: int) -> None:
    """SIGKILL this process at the stage's `after`-th occurrence (or first keep for row/best)."""
    import autoembed.loop.ledger as ledger_module

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    seen = {"n": 0}

    def nth() -> bool:
        seen["n"] += 1
        return seen["n"] == after

    if stage == "commit":
        original = loop.repo.add_candidate

        def add_candidate(*args, **kwargs):
            sha = original(*args, **kwargs)
            if nth():
                die()
            return sha
        loop.repo.add_candidate = add_candidate
    elif stage == "intent":
        original_intend = loop._intend

        def intend(record):
            original_intend(record)
            if record["op"] == "candidate" and nth():
                die()
        loop._intend = intend
    elif stage in ("row", "best"):
        original_set_best = loop.repo.set_best

        def set_best(sha):
            if sha != loop.repo.best() and stage == "row":
                die()  # the keep row is written; main has not moved yet
            if sha != loop.repo.best():
                loop.repo.repo.git.update_ref("refs/heads/main", sha)
                die()  # main moved; the working file is still the old one
            original_set_best(sha)
        loop.repo.set_best = set_best
    elif stage == "reparent":  # a waiting candidate's re-parented intent is written; its ref has not moved yet
        def move_candidate(number, sha, old):
            die()
        loop.repo.move_candidate = move_candidate
    elif stage == "heldout":  # while the first kept candidate's deferred held-out is being scored
        original_scorer = loop.heldout_scorer

        def heldout_scorer(trial_dir, gpu, say):
            die()
            return original_scorer(trial_dir, gpu, say)
        loop.heldout_scorer = heldout_scorer
    elif stage == "partial-row":
        original_append = ledger_module.append_jsonl

        def append(path, record):
            if Path(path).name == "ledger.jsonl" and record.get("kind") == "candidate" and nth():
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record)[:40])
                die()
            original_append(path, record)
        ledger_module.append_jsonl = append


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--kill-at", choices=STAGES, default=None)
    p.add_argument("--kill-after", type=int, default=2)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--gpus", default="")
    p.add_argument("--fuzz", action="store_true", help="propose fuzz_files() instead of the search")
    p.add_argument("--smoke", choices=("quick", "inprocess"), default="quick")
    p.add_argument("--screen", type=float, default=0.0)
    p.add_argument("--no-prior", action="store_true", help="the search without its prior point")
    args = p.parse_args(argv)
    gpus = [g for g in args.gpus.split(",") if g]
    meta = FilesMeta(fuzz_files()) if args.fuzz else None
    smoke = inprocess_smoke if args.smoke == "inprocess" else quick_smoke
    return make_loop(Path(args.run_dir), args.iterations, kill_at=args.kill_at, kill_after=args.kill_after, gpus=gpus,
                     meta_agent=meta, smoke=smoke, screen=args.screen, prior=not args.no_prior).run()


if __name__ == "__main__":
    sys.exit(main())

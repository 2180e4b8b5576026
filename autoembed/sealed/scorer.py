"""The sealed scorer: score a finished workdir's final_model on dev, validation and held-out, and audit it.

    result = score_workdir("runs/w1")       # writes runs/w1/score.json and runs/w1/per_query.json.gz

score.json holds the three tiers' scores (mean, per task, CIs) of what is counted and of the base model;
per_query.json.gz next to it holds the main metric per query of both, {"submission"|"base": {tier: {task:
{query_id: value}}}}, for the loop's paired gate (which reads validation only).

It runs from the harness's own evaluator and data (never the workdir's task.py or data). A flagged
or broken submission is scored as the base model, with the reasons recorded. Base-model scores are
computed once and cached harness-side, keyed by the base weights, the data, the evaluator's code,
the mode and the device type.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

from autoembed import nofollow, paths
from autoembed.clock import PhaseClock
from autoembed.records import write_text_atomic
from autoembed.sealed import heldout as heldout_data
from autoembed.sealed import scorer_cache, submission
from autoembed.sealed.audits import contamination, lineage, tampering
from autoembed.sealed.errors import ScorerError
from autoembed.task import encode
from autoembed.task import evaluate as evaluator
from autoembed.task.base_model import file_sha256, offline_env, resolve_base_model
from autoembed.task.data import load_retrieval_task
from autoembed.task.seed import load_manifest
from autoembed.task.spec import MAIN_METRIC, TaskSpec, load_spec

EVALUATOR_FILES = ("evaluate.py", "metrics.py", "resample.py", "encode.py", "tokens.py", "data.py")
TIERS = ("dev", "validation", "heldout")
PER_QUERY_FILE = "per_query.json.gz"
PER_QUERY_METRICS = (MAIN_METRIC,)  # what evaluate_model returns per query (the gate and the tier gap pair them)


def _check_frozen(final_model: Path, hashes: dict[str, str]) -> None:
    """The frozen copy must hold exactly the files, with the contents, recorded when it was taken."""
    actual = nofollow.tree_hashes(final_model) if final_model.is_dir() else {}
    if actual != hashes:
        changed = sorted(set(actual) ^ set(hashes) | {k for k in set(actual) & set(hashes) if actual[k] != hashes[k]})
        raise ScorerError(f"the frozen copy {final_model} differs from the hashes recorded at the freeze "
                          f"(changed: {changed[:10]}); it is not scored")


@dataclasses.dataclass
class ScoreOptions:
    """score_workdir()'s keyword arguments (see score_workdir)."""
    task: str | TaskSpec = "embed"
    fast: bool | None = None
    manifest: dict | str | os.PathLike | None = None
    device: str | None = None
    out: str | os.PathLike | None = None
    heldout_root: Path | None = None
    bootstrap: int = 1000
    progress: Callable[[str], None] | None = None
    final_model: Path | None = None
    final_model_hashes: dict[str, str] | None = None
    base_path: Path | None = None
    tiers: tuple[str, ...] = TIERS


@dataclasses.dataclass
class _Scoring:
    """What one scoring of a workdir carries from stage to stage; findings in the order they were found."""
    workdir: Path
    spec: TaskSpec
    heldout_root: Path
    device: str
    fast: bool
    manifest: dict | None
    harness: tuple  # (data manifests, base model path, loaded base model), from _load_harness
    clock: PhaseClock
    say: Callable[[str], None]
    findings: list = dataclasses.field(default_factory=list)

    def flag(self, code: str, message: str, status: str = "flagged") -> None:
        self.findings.append({"code": code, "status": status, "message": message})


def score_workdir(workdir: str | os.PathLike, **options) -> dict:
    """Score and audit workdir; write score.json (default workdir/score.json) and return it.
    Keywords (ScoreOptions): task, fast, manifest, device, out, heldout_root, bootstrap, progress, final_model,
    final_model_hashes, base_path, tiers.

    task: a task name, folder or TaskSpec (its fast_queries/fast_docs size the fast mode).
    fast: the documented subsets (default without a GPU) or the full sets (default with one).
    manifest: the seed manifest (a dict or a path; default: the one `autoembed seed` stored for workdir).
    heldout_root: the held-out task folders (default autoembed/sealed/data/heldout); the validation tier is
    the "validation" folder next to it.
    final_model: the frozen copy to score instead of workdir/final_model (a trial copies it out once the agent is
    gone), checked against final_model_hashes first: a copy that changed since the freeze is not scored.
    base_path: the base model folder the trial already resolved and hash-checked (default: resolve it here).
    tiers: the tiers to evaluate the submission on now (dev and validation always: the audits read them); a tier
    left out is listed under "deferred" in score.json and scored later by score_deferred_tiers (the loop scores
    held-out only for the commits it keeps)."""
    opts = ScoreOptions(**options)  # an unknown keyword is a TypeError, as with a plain signature
    started = time.perf_counter()
    deferred = _deferred(opts.tiers)
    s = _open_scoring(Path(workdir), opts)
    model, reports = _audit_submission(s, opts)
    s.say("audit: contamination (13-gram overlap)")
    full = _load_eval_data(s.spec, s.heldout_root, s.clock)
    reports["ngrams"] = _audit_ngrams(s, full)

    sized = {tier: _sized(tasks, s.spec, s.fast) for tier, tasks in full.items()}
    eval_kw = _eval_kw(s.spec, s.device, opts.bootstrap, s.say)
    data_check, base_path, base = s.harness
    s.say("evaluate: base model (cached after the first time)")
    with s.clock("evaluate_base"):  # cached after the first time
        base_scores = _base_scores(base, base_path, s.spec, sized, s.fast, data_check, eval_kw)
    submitted, reports["tier_gap"] = _evaluate_submission(s, model, sized, deferred, base_scores, reports["lineage"],
                                                          eval_kw)
    result = _result(s, submitted, base_scores, deferred, reports, started)
    out_path = Path(opts.out) if opts.out else s.workdir / "score.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_per_query(out_path.with_name(PER_QUERY_FILE), submitted if result["status"] == "ok" else base_scores,
                    base_scores, s.spec.main_metric, result["scored_as"])
    _write_score(out_path, result)
    return result


def _open_scoring(workdir: Path, opts: ScoreOptions) -> _Scoring:
    """The task, the harness's own data and base model (checked), the manifest, and the base model's dimension
    and size, which the submission audit measures against."""
    say = opts.progress or (lambda line: None)
    clock = PhaseClock()
    offline_env()
    if not workdir.is_dir():
        raise ScorerError(f"no workdir at {workdir}")
    spec, heldout_root, device, fast = _resolve(opts.task, opts.heldout_root, opts.device, opts.fast)
    manifest = _manifest(workdir, opts.manifest)
    harness = _load_harness(spec, heldout_root, device, clock, opts.base_path)
    return _Scoring(workdir, spec, heldout_root, device, fast, manifest, harness, clock, say)


def _audit_submission(s: _Scoring, opts: ScoreOptions) -> tuple:
    """The submission, tampering and lineage audits: (the loaded model or None, their reports)."""
    _, base_path, base = s.harness
    with s.clock("harness_data_and_base_model"):
        base_dim = int(base.encode(["probe"], convert_to_numpy=True).shape[1])
        base_bytes = submission.folder_bytes(base_path)

    if opts.final_model is not None:
        _check_frozen(Path(opts.final_model), opts.final_model_hashes or {})
    s.say("audit: submission")
    with s.clock("audit_submission"):
        sub_report, model = submission.check_submission(s.workdir, base_bytes, base_dim, s.device,
                                                        final=opts.final_model, base=base_path)
    s.findings.extend(sub_report["findings"])

    s.say("audit: tampering")
    with s.clock("audit_tampering"):
        tamper = tampering.check_tampering(s.workdir, s.manifest, s.spec, str(base_path))
    if tamper["flagged"]:
        s.flag("tampering", "; ".join(tamper["reasons"]))

    lineage_report = None
    if model is not None:
        s.say("audit: lineage")
        try:
            with s.clock("audit_lineage"):
                lineage_report = lineage.check_lineage(model, base)
        except Exception as exc:  # noqa: BLE001 - never a crash on a strange submission
            lineage_report = {"flagged": True, "reasons": [f"the lineage check failed: {type(exc).__name__}: {exc}"]}
        if lineage_report["flagged"]:
            s.flag("lineage", "; ".join(lineage_report["reasons"]))
    return model, {"submission": sub_report, "tampering": tamper, "lineage": lineage_report}


def _audit_ngrams(s: _Scoring, full: dict) -> dict:
    """The 13-gram overlap of the workdir's files with the eval texts (the files seeded unchanged skipped)."""
    base_path = s.harness[1]
    indexes = _ngram_indexes(s.spec, s.heldout_root, full, s.clock)
    with s.clock("audit_ngram_scan"):
        expected, _, _ = tampering.seeded_hashes(s.manifest, s.spec, str(base_path), s.workdir)
        skip = tampering.seeded_unchanged(s.workdir, expected) | contamination.unchanged_model_files(s.workdir, base_path)
        key = contamination.scan_key(paths.home() / "contamination", json.dumps(s.manifest, sort_keys=True,
                                                                               default=str), str(s.workdir.resolve()))
        overlap = contamination.ngram_audit(s.workdir, skip, indexes, key)
    if overlap["flagged"]:
        s.flag("contamination", "; ".join(overlap["reasons"]))
    if overlap["incomplete"]:
        s.flag("contamination_unscanned", overlap["incomplete"])
    return overlap


def _evaluate_submission(s: _Scoring, model, sized: dict, deferred: tuple, base_scores: dict,
                         lineage_report: dict | None, eval_kw: dict) -> tuple[dict | None, dict | None]:
    """(the submission's scores on the tiers not deferred, the tier-gap audit), both None without a model or when
    evaluating it failed (then a broken finding)."""
    if model is None:
        return None, None
    s.say("evaluate: final_model")
    try:
        with s.clock("evaluate_final_model"):
            submitted = {tier: evaluator.evaluate_model(model, tasks, **_tier_kw(eval_kw, tier))
                         for tier, tasks in sized.items() if tier not in deferred}
    except Exception as exc:  # noqa: BLE001 - a model that cannot be evaluated is broken, never a crash
        s.flag("evaluation_failed", f"evaluating final_model failed: {type(exc).__name__}: {str(exc)[:300]}", "broken")
        return None, None
    gap = _tier_gap(submitted, base_scores, s.spec, lineage_report)
    if gap["flagged"]:
        s.flag("contamination_gap", "; ".join(gap["reasons"]))
    return submitted, gap


def _result(s: _Scoring, submitted: dict | None, base_scores: dict, deferred: tuple, reports: dict,
            started: float) -> dict:
    """score.json: the verdict, what is counted (the base model's scores for a flagged or broken submission), the
    audits' reports and where the time went."""
    statuses = {f["status"] for f in s.findings}
    status = "broken" if "broken" in statuses else "flagged" if "flagged" in statuses else "ok"
    counted = submitted if status == "ok" else base_scores
    deferred = deferred if status == "ok" else ()  # a submission counted as the base model has every tier already
    data_check, base_path, _ = s.harness
    return {
        "status": status,
        "reasons": [f"{f['code']}: {f['message']}" for f in s.findings],
        "scored_as": "final_model" if status == "ok" else "base_model",
        **{tier: _public(counted[tier]) for tier in TIERS if tier in counted},
        "deferred": list(deferred),
        "base": {tier: _public(base_scores[tier]) for tier in TIERS},
        "submitted": None if submitted is None or status == "ok" else
        {tier: _public(scores) for tier, scores in submitted.items()},
        "audits": {
            "submission": reports["submission"],
            "contamination": {"ngrams": reports["ngrams"], "tier_gap": reports["tier_gap"]},
            "lineage": reports["lineage"],
            "tampering": reports["tampering"],
        },
        "mode": "fast" if s.fast else "full",
        "sizes": {"fast_queries": s.spec.fast_queries, "fast_docs": s.spec.fast_docs} if s.fast else None,
        "versions": _versions(base_path, data_check),
        "workdir": str(s.workdir.resolve()),
        "seconds": round(time.perf_counter() - started, 2),
        "stage_seconds": s.clock.rounded(3),
    }


def _write_score(path: Path, score: dict) -> None:
    write_text_atomic(path, json.dumps(score, indent=2, default=_json_default, allow_nan=False) + "\n")


def score_deferred_tiers(score_path: str | os.PathLike, final_model: Path, final_model_hashes: dict[str, str], *,
                         task: str | TaskSpec = "embed", device: str | None = None, heldout_root: Path | None = None,
                         bootstrap: int = 1000, progress: Callable[[str], None] | None = None) -> dict:
    """Evaluate the tiers a score.json lists under "deferred" on the frozen final_model it scored (checked against
    the freeze's hashes first), in the same mode (fast subsets or full sets), and merge them into that score.json
    and the per_query.json.gz beside it. Returns the updated score.json; one without deferred tiers is returned
    as it is, so a second call (a loop resumed after a kill) does nothing."""
    score_path = Path(score_path)
    score = json.loads(score_path.read_text())
    deferred = [tier for tier in score.get("deferred") or [] if tier in TIERS]
    if not deferred:
        return score
    started = time.perf_counter()
    say = progress or (lambda line: None)
    offline_env()
    fast = score.get("mode") == "fast"
    spec, heldout_root, device, fast = _resolve(task, heldout_root, device, fast)
    _check_harness_data(spec, heldout_root)
    _check_frozen(Path(final_model), final_model_hashes)
    clock = PhaseClock()
    full = _load_eval_data(spec, heldout_root, clock)
    say(f"evaluate: final_model on the deferred tier(s) {', '.join(deferred)}")
    base_path = resolve_base_model(spec.base_model, spec.base_model_sha256)
    model = submission.load_submission(Path(final_model), device, base=Path(base_path))
    eval_kw = _eval_kw(spec, device, bootstrap, say)
    scored = {tier: evaluator.evaluate_model(model, _sized(full[tier], spec, fast), **_tier_kw(eval_kw, tier))
              for tier in deferred}
    per_query_path = score_path.with_name(PER_QUERY_FILE)
    body = read_per_query(per_query_path)
    for tier, result in scored.items():
        body["submission"][tier] = {task_name: dict(zip(row["query_ids"], (float(v) for v in row[spec.main_metric])))
                                    for task_name, row in result["per_query"].items()}
        score[tier] = _public(result)
    _write_per_query_body(per_query_path, body)  # before score.json: a kill between the two repeats the work
    score["deferred"] = []
    score["deferred_scored"] = {"tiers": deferred, "seconds": round(time.perf_counter() - started, 2)}
    _write_score(score_path, score)
    return score


def _deferred(tiers) -> tuple[str, ...]:
    unknown = sorted(set(tiers) - set(TIERS))
    if unknown:
        raise ScorerError(f"unknown tier(s) {unknown}: choose from {list(TIERS)}")
    if not {"dev", "validation"} <= set(tiers):
        raise ScorerError("dev and validation are always scored (the tier-gap audit compares them); "
                          "only held-out can be deferred")
    return tuple(tier for tier in TIERS if tier not in tiers)


def write_per_query(path: Path, counted: dict, base_scores: dict, metric: str, scored_as: str) -> None:
    """per_query.json.gz: {"submission"|"base": {tier: {task: {query_id: metric value}}}, "metric", "scored_as"}.
    "submission" holds what score.json counts (the base model's values when the submission was not scored
    as itself), so a paired gate over these agrees with score.json's means."""
    def table(scores: dict) -> dict:
        out = {}
        for tier in TIERS:
            if tier in scores:
                out[tier] = {task: dict(zip(row["query_ids"], (float(v) for v in row[metric])))
                             for task, row in scores[tier]["per_query"].items()}
        return out

    _write_per_query_body(path, {"metric": metric, "scored_as": scored_as, "submission": table(counted),
                                 "base": table(base_scores)})


def _write_per_query_body(path: Path, body: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(json.dumps(body, sort_keys=True).encode())
    os.replace(tmp, path)


def read_per_query(path: str | os.PathLike) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _tier_gap(submitted: dict, base_scores: dict, spec: TaskSpec, lineage_report: dict | None) -> dict:
    """The dev-vs-validation gap per dev task; not run for a model that failed lineage (one true reason)."""
    if lineage_report is not None and lineage_report.get("flagged"):
        return {"flagged": False, "reasons": [], "skipped": "the model failed lineage: its gains over the base "
                                                             "say nothing about training on dev"}
    return contamination.gap_audit(submitted["dev"]["per_query"], base_scores["dev"]["per_query"],
                                   submitted["validation"]["per_query"], base_scores["validation"]["per_query"],
                                   tuple(spec.dev_tasks), metric=spec.main_metric)


def prepare_scorer(task: str | TaskSpec = "embed", *, fast: bool | None = None, device: str | None = None,
                   heldout_root: Path | None = None, bootstrap: int = 1000,
                   progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Fill the caches the scorer keeps on this machine (the n-gram indexes, the base model's scores and the token
    features of every eval text), so a trial's score.json does not wait for them: about a minute on a GPU box, once
    per machine and data version. Returns the seconds per stage. Scoring never relies on it: a missing cache
    entry is computed there."""
    say = progress or (lambda line: None)
    clock = PhaseClock()
    offline_env()
    spec, heldout_root, device, fast = _resolve(task, heldout_root, device, fast)
    data_check, base_path, base = _load_harness(spec, heldout_root, device, clock)
    full = _load_eval_data(spec, heldout_root, clock)
    say("prepare: n-gram indexes of the eval texts")
    _ngram_indexes(spec, heldout_root, full, clock)
    say("prepare: the base model's scores")
    with clock("evaluate_base"):
        _base_scores(base, base_path, spec, {tier: _sized(tasks, spec, fast) for tier, tasks in full.items()}, fast,
                     data_check, _eval_kw(spec, device, bootstrap, say))
    marker = scorer_cache.marker_path(spec, heldout_root, fast, device.split(":")[0])
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"stage_seconds": clock.rounded(3), "device": device}) + "\n")
    return clock.rounded(3)


def _resolve(task, heldout_root, device, fast) -> tuple[TaskSpec, Path, str, bool]:
    spec = task if isinstance(task, TaskSpec) else load_spec(task)
    if spec.main_metric not in PER_QUERY_METRICS:
        raise ScorerError(f"task.toml's [eval] main_metric is {spec.main_metric!r}; the scorer keeps per-query "
                          f"values of {list(PER_QUERY_METRICS)} only: set main_metric to one of them")
    heldout_root = Path(heldout_root) if heldout_root else heldout_data.HELDOUT_DIR
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    fast = (not device.startswith("cuda")) if fast is None else fast
    if device == "cpu":
        encode.cpu_precision()  # a bad AUTOEMBED_CPU_PRECISION fails here, before anything runs
    return spec, heldout_root, device, fast


def _load_harness(spec: TaskSpec, heldout_root: Path, device: str, clock: PhaseClock, base_path: Path | None = None):
    """(data manifests, base model path, loaded base model): the harness's own, checked before any use."""
    with clock("harness_data_and_base_model"):
        data_check = _check_harness_data(spec, heldout_root)
        base_path = Path(base_path or resolve_base_model(spec.base_model, spec.base_model_sha256))
        return data_check, base_path, submission.load_submission(base_path, device, base=base_path)


def _load_eval_data(spec: TaskSpec, heldout_root: Path, clock: PhaseClock) -> dict[str, dict]:
    """{tier: {task: RetrievalTask}} for dev, validation and held-out (full sets)."""
    validation_root = heldout_data.validation_root_for(heldout_root)
    with clock("load_eval_data"):
        try:
            validation = heldout_data.load_heldout_tasks(root=validation_root)
        except heldout_data.HeldoutDataError as exc:
            raise ScorerError(f"{exc} (the validation tier the loop's gate reads)") from None
        missing = sorted(set(spec.dev_tasks) - set(validation))
        if missing:
            raise ScorerError(f"the validation tier at {validation_root} lacks the dev task(s) {missing}; "
                              "every dev task needs its validation twin (rebuild with data/build.py)")
        return {"dev": {name: load_retrieval_task(spec.dev_dir / name, name) for name in spec.dev_tasks},
                "validation": {name: validation[name] for name in spec.dev_tasks},
                "heldout": heldout_data.load_heldout_tasks(root=heldout_root)}


def _ngram_indexes(spec: TaskSpec, heldout_root: Path, full: dict, clock: PhaseClock) -> dict:
    with clock("ngram_indexes"):  # cached after the first time
        key = contamination.data_key([spec.dev_dir, heldout_root, heldout_data.validation_root_for(heldout_root)],
                                     [spec.pool_path])
        return contamination.eval_indexes(full, spec.pool_path, paths.home() / "contamination", key)


def _eval_kw(spec: TaskSpec, device: str, bootstrap: int, say) -> dict:
    return dict(device=device, bootstrap=bootstrap, max_seq_length=spec.max_seq_length, progress=say,
                return_per_query=True)  # token features: evaluate's harness-side disk cache (paths.home()/tokens)


def _tier_kw(eval_kw: dict, tier: str) -> dict:
    """Progress lines that name the tier (`validation/debian: ...`): every tier has a dataset of the same name."""
    say = eval_kw["progress"]
    return {**eval_kw, "progress": lambda line: say(f"{tier}/{line}")}


def _manifest(workdir: Path, manifest) -> dict | None:
    if isinstance(manifest, dict):
        return manifest
    if manifest is not None:
        return json.loads(Path(manifest).read_text())
    return load_manifest(workdir)


def _check_harness_data(spec: TaskSpec, heldout_root: Path) -> dict:
    """The harness's own data must match its manifests (where there is one) before anything is scored."""
    out = {}
    for name, folder in (("dev_and_pool", spec.dev_dir.parent), ("heldout", heldout_root.parent)):
        check = heldout_data.verify_manifest(folder)
        if check["manifest_sha256"] is not None and not check["ok"]:
            raise ScorerError(f"the harness's {name} data at {folder} does not match its MANIFEST.json "
                              f"(changed: {check['mismatched']}, missing: {check['missing']}); restore it from git")
        out[name] = check["manifest_sha256"]
    return out


def _sized(tasks: dict, spec: TaskSpec, fast: bool) -> dict:
    return {n: t.subset(spec.fast_queries, spec.fast_docs) for n, t in tasks.items()} if fast else tasks


def _base_scores(base, base_path: Path, spec: TaskSpec, tiers: dict[str, dict], fast: bool,
                 data_check: dict, eval_kw: dict) -> dict:
    key_parts = {
        "base_weights": _weights_sha(base_path),
        "tasks": {tier: {n: _task_fingerprint(t) for n, t in tasks.items()} for tier, tasks in tiers.items()},
        "mode": "fast" if fast else "full",
        "sizes": [spec.fast_queries, spec.fast_docs] if fast else None,
        "max_seq_length": spec.max_seq_length,
        "device_type": str(eval_kw["device"]).split(":")[0],
        # the precision "auto" picks (AUTOEMBED_CPU_PRECISION on CPU): base and submission are paired at one precision
        "amp_dtype": str(encode.default_amp_dtype(torch.device(str(eval_kw["device"]).split(":")[0]))),
        "bootstrap": eval_kw["bootstrap"],
        "evaluator": _evaluator_sha(),
        "manifests": data_check,
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:32]
    path = paths.home() / "base_scores" / f"{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    scores = {tier: evaluator.evaluate_model(base, tasks, **_tier_kw(eval_kw, f"base {tier}")) for tier, tasks in tiers.items()}
    write_text_atomic(path, json.dumps(scores, default=_json_default))  # a unique temporary: trials share the home
    return scores


def _task_fingerprint(task) -> str:
    digest = hashlib.sha256()
    for part in (sorted(task.queries.items()), sorted(task.corpus.items()), sorted((q, sorted(r.items())) for q, r in task.qrels.items())):
        digest.update(json.dumps(part).encode())
    return digest.hexdigest()[:24]


def _weights_sha(model_path: Path) -> str:
    files = sorted(Path(model_path).rglob("*.safetensors"))
    return hashlib.sha256("".join(file_sha256(p) for p in files).encode()).hexdigest()


def _evaluator_sha() -> str:
    folder = Path(evaluator.__file__).parent
    return hashlib.sha256("".join(file_sha256(folder / f) for f in EVALUATOR_FILES if (folder / f).is_file()).encode()).hexdigest()[:24]


def _public(result: dict) -> dict:
    """An evaluate_model result without per-query arrays and timing internals."""
    return {k: v for k, v in result.items() if k not in ("per_query", "timing")}


def _versions(base_path: Path, data_check: dict) -> dict:
    out = {"base_model": str(base_path), "base_weights_sha256": _weights_sha(base_path),
           "evaluator_sha256": _evaluator_sha(), "data_manifests": data_check}
    for dist in ("autoembed", "torch", "sentence-transformers", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _json_default(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)

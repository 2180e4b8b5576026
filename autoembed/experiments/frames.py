"""Tidy pandas frames over any folder of results (a trial, a loop, a comparison, or a folder of them), in the
manner of inspect_ai's evals_df / samples_df: one row per thing, id columns, and a column that points back to
the folder it came from.

    trials_df(path)            one row per trial: agent, model, raw and normalized scores per split, cost, status,
                               clean (True only for what the trial's own exit status calls clean: exit 0)
    ledger_df(path)            one row per ledger row of every loop: the loop's decisions, with held-out joined in
    scores_df(path)            one row per (trial, split, dataset): the submission's and the base model's score
    scores_df(path, "query")   one row per (trial, split, dataset, query), from per_query.json.gz

Every number is read from the records (score.json, per_query.json.gz, ledger.jsonl, heldout.jsonl); the
normalized scores are computed here against the ladder of what each trial scored (autoembed/ladder.py), so a
ladder measured later applies to old trials too. Id columns: `comparison`, `cell`, `meta_model`, `task_model`,
`repeat` (inside a comparison), `loop_id` (inside a loop), `trial_id`; `run_dir` / `loop_dir` point back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from autoembed import ladder
from autoembed.trial import summary

SPLITS = ladder.SPLITS
DEFAULT_METRIC = summary.MAIN_METRIC  # task.toml's default main_metric, for a meta.json older than naming it
LEDGER_COLUMNS = ("trial_id", "iteration", "candidate", "kind", "commit", "status", "reason", "description", "hypothesis",
                  "steps", "pairs_per_s", "gate_split",
                  "gate_value", "dev", "validation", "heldout", "diff", "ci_low", "ci_high", "cost_usd", "run_dir",
                  "normalized_dev", "normalized_validation", "normalized_heldout")
SKIP_DIRS = {"workdir", "view", "repo", "smoke", ".git", "meta", "spot"}  # no trial folder lives inside these


# -- finding folders ------------------------------------------------------------------------------


def kind(path: str | Path) -> str:
    """comparison | loop | trial, by the record each keeps at its top."""
    path = Path(path)
    if (path / "compare.json").is_file():
        return "comparison"
    if _is_loop(path):
        return "loop"
    if (path / "meta.json").is_file():
        return "trial"
    raise FileNotFoundError(f"{path} is not a trial (meta.json), loop (ledger.jsonl) or comparison (compare.json) folder")


def _walk(root: Path, name: str) -> list[Path]:
    """Folders under root (root included) that hold `name`, not descending into a trial's own parts."""
    found, stack = [], [root]
    while stack:
        folder = stack.pop()
        if (folder / name).is_file():
            found.append(folder)
        if (folder / "meta.json").is_file() and name != "meta.json":
            continue
        try:
            children = sorted((p for p in folder.iterdir() if p.is_dir() and p.name not in SKIP_DIRS), reverse=True)
        except OSError:
            continue
        stack.extend(children)
    return sorted(found)


def _is_loop(path: Path) -> bool:
    return (path / "ledger.jsonl").is_file() or (path / "intents.jsonl").is_file()


def trial_dirs(path: str | Path) -> list[Path]:
    return [p for p in _walk(Path(path), "meta.json") if "workdir" not in p.parts]


def loop_dirs(path: str | Path) -> list[Path]:
    return _walk(Path(path), "ledger.jsonl")


def context(folder: Path) -> dict:
    """The ids of where a trial or loop folder sits: its loop, and the comparison cell that loop belongs to."""
    folder = Path(folder).resolve()
    ids: dict = {}
    for parent in [folder, *folder.parents]:
        if "loop_id" not in ids and _is_loop(parent):
            ids.update(loop_id=parent.name, loop_dir=str(parent))
            cell = _read_json(parent / "cell.json")
            if cell:
                ids.update(cell=cell.get("cell"), meta_model=cell.get("meta"), task_model=cell.get("task_model"),
                           repeat=cell.get("repeat"))
        if (parent / "compare.json").is_file():
            ids["comparison"] = parent.name
            break
    return ids


# -- the frames -----------------------------------------------------------------------------------


def trials_df(path: str | Path) -> pd.DataFrame:
    """One row per trial folder under path."""
    rows = [trial_row(folder) for folder in trial_dirs(path)]
    return _frame(rows, ["comparison", "cell", "meta_model", "task_model", "repeat", "loop_id", "trial_id"])


def trial_row(folder: Path) -> dict:
    folder = Path(folder)
    meta = _read_json(folder / "meta.json")
    score = _read_json(folder / "score.json") or None
    ids = context(folder)
    task = meta.get("task") or _loop_task(ids.get("loop_dir"))
    metric = meta.get("main_metric") or DEFAULT_METRIC
    row = {**ids, "trial_id": folder.name, "run_dir": str(folder), "agent": meta.get("agent"), "model": meta.get("model"),
           "task": task, "metric": metric, "hours": meta.get("hours"), "status": meta.get("status"), "exit_reason": meta.get("exit_reason"),
           "result": meta.get("result"), "clean": summary.exit_code(meta, score) == 0,  # exit 0: scored, not cut off, not flagged
           "scored_as": (score or {}).get("scored_as"),
           "score_status": (score or {}).get("status"), "started": meta.get("started"),
           "agent_seconds": meta.get("agent_seconds"), "cost_usd": (meta.get("usage") or {}).get("cost_usd"),
           "tokens": _tokens(meta.get("usage"))}
    if score:
        norm = ladder.normalized(score, task or "embed")
        row["sets"] = norm["key"]
        for split in SPLITS:
            row[split] = _mean(score, split, metric)
            row[f"base_{split}"] = _mean(score.get("base") or {}, split, metric)
            row[f"normalized_{split}"] = norm.get(split)
            change = ((meta.get("scores") or {}).get(split) or {}).get("change_ci")
            if change:
                row[f"change_{split}_ci_low"], row[f"change_{split}_ci_high"] = change
        row["normalized_reason"] = norm["reason"]
    return row


def ledger_df(path: str | Path) -> pd.DataFrame:
    """One row per ledger row of every loop under path; held-out (never in the meta-agent's view) joined by row_id."""
    rows = []
    for loop in loop_dirs(path):
        ids = context(loop)
        task = _loop_task(loop)
        heldout = {h["row_id"]: h for h in _read_jsonl(loop / "heldout.jsonl")}
        for position, record in enumerate(_read_jsonl(loop / "ledger.jsonl")):
            row = {**ids, "position": position}
            for key_, value in record.items():
                row[key_] = value.get("mean") if isinstance(value, dict) and "mean" in value else value
            held = heldout.get(record["row_id"]) or {}
            row["heldout"] = (held.get("heldout") or {}).get("mean")
            row["base_heldout"] = (held.get("base_heldout") or {}).get("mean")
            trial = loop / "trials" / str(record.get("trial_id")) if record.get("trial_id") else None
            score = _read_json(trial / "score.json") if trial else {}
            row["run_dir"] = str(trial) if trial else None
            norm = ladder.normalized(score, task) if score else {}
            for split in SPLITS:
                row[f"normalized_{split}"] = norm.get(split)
            rows.append(row)
    frame = _frame(rows, ["comparison", "cell", "meta_model", "task_model", "repeat", "loop_id", "row_id"])
    for column in LEDGER_COLUMNS:  # present even when no row has them yet (a loop whose every trial crashed)
        if column not in frame.columns:
            frame[column] = None
    return frame


def scores_df(path: str | Path, per: str = "task") -> pd.DataFrame:
    """per="task": one row per (trial, split, dataset) from score.json; per="query": one per query from
    per_query.json.gz. Columns `score` (what was counted) and `base` (the base model on the same items)."""
    if per not in ("task", "query"):
        raise ValueError(f"scores_df: per must be 'task' or 'query', got {per!r}")
    rows = []
    for folder in trial_dirs(path):
        ids = {**context(folder), "trial_id": folder.name, "run_dir": str(folder)}
        if per == "task":
            score, metric = _read_json(folder / "score.json"), main_metric(folder)
            for split in SPLITS:
                tasks = (score.get(split) or {}).get("tasks") or {}
                base = ((score.get("base") or {}).get(split) or {}).get("tasks") or {}
                for dataset, values in tasks.items():
                    rows.append({**ids, "split": split, "dataset": dataset, "score": values.get(metric),
                                 "base": (base.get(dataset) or {}).get(metric)})
        else:
            per_query = summary.load_per_query(folder)
            if not per_query:
                continue
            for split, tasks in (per_query.get("submission") or {}).items():
                base = (per_query.get("base") or {}).get(split) or {}
                for dataset, queries in tasks.items():
                    for query, value in queries.items():
                        rows.append({**ids, "split": split, "dataset": dataset, "query_id": query, "score": value,
                                     "base": (base.get(dataset) or {}).get(query)})
    key = ["trial_id", "split", "dataset"] + (["query_id"] if per == "query" else [])
    return _frame(rows, ["comparison", "cell", "loop_id", *key])


# -- helpers --------------------------------------------------------------------------------------


def _frame(rows: list[dict], first: list[str]) -> pd.DataFrame:
    """The id columns first and always present (None where a folder sits outside a loop or a comparison)."""
    frame = pd.DataFrame(rows)
    for column in first:
        if column not in frame.columns:
            frame[column] = None
    return frame[first + [c for c in frame.columns if c not in first]]


def main_metric(trial_dir: Path) -> str:
    """The metric a trial's scores are read by: the one its task named, as its meta.json records."""
    return _read_json(Path(trial_dir) / "meta.json").get("main_metric") or DEFAULT_METRIC


def _mean(score: dict, split: str, metric: str):
    return ((score.get(split) or {}).get("mean") or {}).get(metric)


def _tokens(usage: dict | None):
    if not usage:
        return None
    return (usage.get("input_tokens") or 0) + (usage.get("output_tokens") or 0)


def _loop_task(loop_dir) -> str:
    if not loop_dir:
        return "embed"
    task = _read_json(Path(loop_dir) / "config.json").get("task") or "embed"
    return Path(task).name if "/" in str(task) else task


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _read_jsonl(path: Path) -> list[dict]:
    from autoembed.records import read_jsonl as _read_jsonl

    return _read_jsonl(Path(path))

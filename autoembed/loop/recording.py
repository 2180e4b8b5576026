"""The loop's recording: the write-ahead intents, the ledger's rows and the gate's verdicts in them, the meta-agent's
view (ledger.tsv, notes.md, api.md, the trials' traces and summaries; never held-out) and the run folder's
config.json.

Intents are written before a step takes effect and ledger rows carry unique ids, so a step replayed after a kill
adds nothing twice (engine.Loop.replay)."""

from __future__ import annotations

import ast
import dataclasses
import functools
import gzip
import inspect
import itertools
import json
import time
from pathlib import Path

from autoembed import bounded, editable
from autoembed.loop import gate
from autoembed.loop.jobs import (HELDOUT_DEFERRED, HELDOUT_SCORED, SCORED, SCREEN_MARGIN_SDS, SCREEN_REFERENCE_CRASHES,
                                 SLOW_RERUNS, Job, exception_text,
                                 gpu_here, heldout_entry, mean_or_none, placement_columns, slow_trial, split_scores,
                                 trial_pace, trial_problem, utc_now, was_interrupted)
from autoembed.loop.meta.base import Feedback
from autoembed.loop.spend import gateway_spend
from autoembed.records import append_jsonl, drop_partial_last_line, read_jsonl, write_text_atomic

VIEW_LOG_BYTES = 2 * 2**20  # of each log a trial's view copies for the meta-agent


class Recording:
    """The records of a Loop (mixed into engine.Loop, whose _setup gives it run_dir, ledger, repo, meta, _lock)."""

    def _write_config(self) -> None:
        write_text_atomic(self.run_dir / "config.json", json.dumps(self.config.__dict__, indent=2))

    def intents(self) -> list[dict]:
        drop_partial_last_line(self.intents_path)
        return read_jsonl(self.intents_path)

    def _intend(self, record: dict) -> None:
        with self._lock:
            append_jsonl(self.intents_path, {"time": utc_now(), "epoch": round(time.time(), 3), **record})

    def candidates(self) -> dict[int, dict]:
        return {r["id"]: r for r in self.intents() if r["op"] == "candidate"}

    def baseline_commit(self) -> str:
        return self.repo.repo.git.rev_list("--max-parents=0", "refs/heads/main").splitlines()[0]

    def best_commit(self) -> str:
        """The last kept commit in the ledger (the baseline before any keep)."""
        best = self.baseline_commit()
        for row in self.ledger.rows():
            if row["status"] == "keep" and row["kind"] in ("candidate", "rerun"):
                best = row["commit"]
        return best

    def scored_rows(self, commit: str) -> list[dict]:
        """The scored runs of this commit, and of the commits it was re-parented from with the file unchanged
        (the same file measured, before its incumbent moved)."""
        same = self._same_file_commits(commit)
        return [r for r in self.ledger.rows() if r["commit"] in same and r["status"] in SCORED]

    def _same_file_commits(self, commit: str) -> set[str]:
        same = {commit}
        for record in reversed(self.intents()):
            if record["op"] == "candidate" and record["commit"] in same and record.get("reparented_from") \
                    and record.get("same_file"):
                same.add(record["reparented_from"])
        return same

    def candidate_state(self, number: int) -> str:
        """pending (needs a smoke check and a trial) | rerun (inconclusive) | decided."""
        rows = [r for r in self.ledger.rows() if r.get("candidate") == number]
        if any(r["kind"] == "screen" and (r["status"] == "screened_out" or r["status"] == "crash" and not r.get("interrupted"))
               for r in rows):
            return "decided"
        rows = [r for r in rows if r["kind"] != "screen"]
        if not rows:
            return "pending"
        last = rows[-1]
        if last["status"] == "inconclusive":
            return "rerun"
        if last["status"] == "crash" and last.get("interrupted"):
            return "pending" if len(rows) == 1 else "rerun"
        return "decided"

    def screening(self) -> bool:
        """Screens are on (--screen) for this meta-agent: the search's points, never an LLM's one expensive idea."""
        return self.config.screen > 0 and self.config.meta == "search"

    def needs_screen(self, number: int) -> bool:
        return self.screening() and not any(r.get("candidate") == number and r["kind"] == "screen"
                                            and r["status"] == "screened" for r in self.ledger.rows())

    def incumbent_screens(self, commit: str) -> list[dict]:
        return [r for r in self.ledger.rows() if r["kind"] == "screen" and r.get("candidate") is None
                and r["commit"] == commit]

    def screen_reference_due(self) -> bool:
        """The incumbent has no screen to compare against yet (nor has it crashed its screens too often)."""
        rows = self.incumbent_screens(self.best_commit())
        crashes = sum(1 for r in rows if r["status"] == "crash" and not r.get("interrupted"))
        return not any(r["status"] == "screened" for r in rows) and crashes < SCREEN_REFERENCE_CRASHES

    def _record_screen(self, job: Job, scores: dict) -> None:
        """A screen's row: never gated, never kept, no held-out. The incumbent's is its reference (screened); a
        candidate's is screened (promoted to a full trial) or screened_out, by the rule in jobs.py."""
        extra = {**scores, "heldout": None, "screen_share": self.config.screen}
        if job.candidate is None:
            self._append_row(job, "screened", reason="the incumbent's screen: the reference for its candidates' screens",
                             extra=extra)
            return
        best = self.best_commit()
        reference = [r for r in self.incumbent_screens(best) if r["status"] == "screened"]
        if not reference:  # the incumbent changed while it ran (trials side by side): the one it was built on
            best = self.candidates()[job.candidate]["parent"]
            reference = [r for r in self.incumbent_screens(best) if r["status"] == "screened"]
        if not reference:
            self._append_row(job, "screened", reason="promoted: the incumbent has no screen to compare with", extra=extra)
            return
        ref = mean_or_none([r["gate_value"] for r in reference if r.get("gate_split") == scores["gate_split"]])
        if ref is None:
            self._append_row(job, "screened", reason="promoted: no incumbent screen on the same split", extra=extra)
            return
        margin = SCREEN_MARGIN_SDS * self.gate_config.prior_run_sd
        diff = scores["gate_value"] - ref
        full = mean_or_none([r["gate_value"] for r in self.scored_rows(best)])
        extra.update(screen_diff=round(diff, 6), screen_margin=margin,
                     screen_estimate=None if full is None else full + diff)
        if diff >= -margin:
            self._append_row(job, "screened", reason=f"promoted: screen {diff:+.4f} against the incumbent's, within "
                                                     f"the margin -{margin:.4f}", extra=extra)
        else:
            self._append_row(job, "screened_out", reason=f"screened out: screen {diff:+.4f} against the incumbent's, "
                                                         f"below the margin -{margin:.4f}; no full trial", extra=extra)

    def _contained(self, job: Job, what: str, fn, status: str = "invalid"):
        """fn(); or, when it raises, the candidate's row (status, the exception's type and message), written before
        anything else, and None. A candidate's file can make the loop's own code raise (a compiler's recursion limit,
        a merge tool, a parser); it decides that candidate, never the loop, nor every --resume after it."""
        try:
            return fn()
        except Exception as exc:
            self._append_row(job, status, reason=f"{what} raised {exception_text(exc)}",
                             extra={"error": type(exc).__name__})
            return None

    def _record_contained(self, job: Job, result, wall_s: float | None) -> None:
        """record(); when gating or recording raises, the trial's row is a crash naming the exception."""
        self._contained(job, "gating and recording this trial", lambda: self.record(job, result, wall_s), status="crash")

    def _rerun_if_slow(self, job: Job, result, wall_s: float | None) -> bool:
        """A trial that trained far fewer steps than the incumbent's runs at its budget (a loaded machine:
        jobs.slow_trial) is re-run, not gated: its row is a crash marked slow and interrupted (it says nothing about
        its file: planning runs it again, the meta-agent is not told). After SLOW_RERUNS such rows the commit is
        gated on what it has, and its row says so. True: the row is written."""
        if result is None or not job.trial_id or trial_problem(result):
            return False
        slow = slow_trial(trial_pace(self.run_dir / "trials" / job.trial_id), self.scored_rows(self.best_commit()))
        if not slow:
            return False
        earlier = [r for r in self.ledger.rows() if r.get("slow") and r["status"] == "crash" and (
            r.get("candidate") == job.candidate if job.candidate is not None
            else r["kind"] == job.kind and r["commit"] == job.commit)]
        if len(earlier) >= SLOW_RERUNS:
            self._slow_notes[job.trial_id] = (f"{slow}, gated all the same after {len(earlier)} slow re-runs "
                                              f"(slow each time: the file, not the machine)")
            return False
        cost, tokens = gateway_spend(result.meta)
        gpu = gpu_here(job.gpu, result.meta)
        wall = round(wall_s, 1) if wall_s is not None else None
        self._append_row(job, "crash", reason=f"re-run, not gated: {slow}", extra={
            "trial_cost_usd": cost, "tokens": tokens, "wall_s": wall, "gpu": gpu,
            "gpu_s": wall if wall is not None and gpu else 0.0, **placement_columns(result.meta),
            "interrupted": True, "slow": True})
        return True

    @functools.cached_property
    def _slow_notes(self) -> dict[str, str]:
        return {}

    def record(self, job: Job, result, wall_s: float | None) -> None:
        if job.kind != "screen" and self._rerun_if_slow(job, result, wall_s):
            return
        meta = result.meta if result is not None else {}
        score = getattr(result, "score", None)
        cost, tokens = gateway_spend(meta)
        gpu = gpu_here(job.gpu, meta)
        common = {"trial_cost_usd": cost, "tokens": tokens,
                  "wall_s": round(wall_s, 1) if wall_s is not None else None,
                  "gpu": gpu, "gpu_s": round(wall_s, 1) if wall_s is not None and gpu else 0.0,
                  **placement_columns(meta)}
        problem = trial_problem(result)
        if problem:  # an interrupted trial says nothing about its file: its candidate is tried again
            interrupted = was_interrupted(meta)
            self._append_row(job, "crash", reason=problem, extra={**common, "interrupted": interrupted or None})
            return
        if job.kind == "screen":
            per_query = self._load_per_query(job.trial_id)["submission"]
            split = "validation" if "validation" in per_query else "dev"
            metric = self._metric_of(meta)
            self._record_screen(job, {"validation": split_scores(score, "validation", metric),
                                      "dev": split_scores(score, "dev", metric), "gate_split": split,
                                      "gate_value": gate.mean_score(per_query[split]), **common})
            return
        if job.candidate is not None and not self._measured_on_incumbent(job, common):
            return
        per_query = self._load_per_query(job.trial_id)
        split = "validation" if "validation" in per_query["submission"] else "dev"
        value = gate.mean_score(per_query["submission"][split])
        metric = self._metric_of(meta)
        scores = {"validation": split_scores(score, "validation", metric), "dev": split_scores(score, "dev", metric),
                  "gate_split": split, "gate_value": value, **common}
        if job.kind in ("baseline", "remeasure"):  # the incumbent's runs: people compare held-out against them
            heldout = self._heldout_of(job.trial_id, gpu)
            self._append_row(job, "keep", reason="A/A baseline run" if job.kind == "baseline" else "incumbent re-measured",
                             extra={**scores, "heldout": HELDOUT_SCORED}, heldout=heldout)
            return
        verdict, split = self._gate(job, split)
        scores.update(gate_split=split, gate_value=gate.mean_score(per_query["submission"][split]))
        heldout = heldout_entry(score, metric)  # present only when the trial scored it anyway (never asked to defer)
        self._append_row(job, verdict.outcome, reason=verdict.reason, heldout=heldout,
                         extra={**scores, "diff": verdict.diff, "ci_low": verdict.ci_low, "ci_high": verdict.ci_high,
                                "runs": verdict.runs_candidate, "incumbent_runs": verdict.runs_incumbent,
                                "se": verdict.se, "se_query": verdict.se_query, "run_sd": verdict.run_sd,
                                "heldout": HELDOUT_SCORED if heldout or verdict.outcome == "keep" else HELDOUT_DEFERRED})
        if verdict.outcome == "keep":
            self.repo.set_best(job.commit)
            self.fill_heldout()

    def _measured_on_incumbent(self, job: Job, common: dict) -> bool:
        """Whether the candidate's trial measured a file built on the incumbent it is now gated against. Side by
        side on several GPUs another candidate may be kept first: this one is re-parented onto it, and if its file
        is unchanged (the kept edit was in it already) the trial counts, with job.commit moved to the new commit; if the
        merge changed the file, the trial measured no candidate of the new incumbent, so its row says so and the
        merged file is tried again (or, when the edit does not merge, the row says that). False: the row is written."""
        cand = self.candidates()[job.candidate]
        ran = editable.file_hash(self.repo.read(job.commit))
        moved = self._on_incumbent(job.candidate, cand, trial=(job, common))
        if moved is None:
            return False
        if moved["file_hash"] == ran:
            job.commit = moved["commit"]
            return True
        self._append_row(job, "crash", reason=f"the incumbent changed while this trial ran; its edit, merged onto the new "
                                              f"incumbent, is another file ({moved['commit'][:10]}), tried again",
                         extra={**common, "interrupted": True})
        return False

    def _gate(self, job: Job, split: str) -> tuple[gate.Verdict, str]:
        """The verdict, on validation when every run on both sides has it, else on dev (recorded in the row)."""
        incumbent = self.best_commit()
        cand_rows = self.scored_rows(job.commit) + [{"trial_id": job.trial_id}]
        inc_rows = self.scored_rows(incumbent)
        if any(split not in self._load_per_query(r["trial_id"])["submission"] for r in cand_rows + inc_rows):
            split = "dev"
        groups: dict[str, list[float]] = {}  # run-to-run noise: the mean scores of every commit's runs on this split
        for row in [r for r in self.ledger.rows() if r["status"] in SCORED] + [{"commit": job.commit, **cand_rows[-1]}]:
            runs = self._load_per_query(row["trial_id"])["submission"]
            if split in runs:
                groups.setdefault(row["commit"], []).append(gate.mean_score(runs[split]))
        noise, _ = gate.run_sd(list(groups.values()), self.gate_config.prior_run_sd, self.gate_config.prior_dof)
        cand = [self._load_per_query(r["trial_id"])["submission"][split] for r in cand_rows]
        inc = [self._load_per_query(r["trial_id"])["submission"][split] for r in inc_rows]
        return gate.decide(cand, inc, noise, self.gate_config), split

    def _load_per_query(self, trial_id: str) -> dict:
        if trial_id not in self._per_query:
            path = self.run_dir / "trials" / trial_id / "per_query.json.gz"
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                self._per_query[trial_id] = json.load(fh)
        return self._per_query[trial_id]

    def _append_row(self, job: Job, status: str, *, reason: str, extra: dict | None = None,
                    heldout: dict | None = None) -> None:
        if job.trial_id:  # the trial's pace (steps, pairs/s, budget: jobs.trial_pace), and a slow trial's note
            extra = {**trial_pace(self.run_dir / "trials" / job.trial_id), **(extra or {})}
            note = self._slow_notes.pop(job.trial_id, None)
            if note and status in SCORED:
                reason, extra = f"{reason}; {note}", {**extra, "slow_gated": True}
        cand = self.candidates().get(job.candidate) if job.candidate is not None else None
        first_row = cand is not None and not any(r.get("candidate") == job.candidate for r in self.ledger.rows())
        meta_usage = (cand or {}).get("meta_usage", {}) if first_row else {}
        row = {"row_id": job.trial_id or f"candidate-{job.candidate:04d}-{status}", "trial_id": job.trial_id or None,
               # the baseline is iteration 0 even when candidate 1 was proposed while it ran (prefetch)
               "iteration": job.candidate if job.candidate is not None else (
                   0 if job.kind == "baseline" else len(self.candidates())),
               "candidate": job.candidate, "kind": job.kind, "commit": job.commit,
               "parent": (cand or {}).get("parent"), "target": self.target.name, "meta": self.config.meta,
               "task_model": self.config.task_model if self.target.name == "harness" else None,
               "status": status, "reason": reason, "description": (cand or {}).get("description", job.kind),
               "hypothesis": (cand or {}).get("hypothesis"),
               "gpu": job.gpu, "time": utc_now(), "meta_tokens": (meta_usage.get("input_tokens") or 0) + (meta_usage.get("output_tokens") or 0),
               "meta_cost_usd": meta_usage.get("cost_usd"), **(extra or {})}
        row["cost_usd"] = (row.get("trial_cost_usd") or 0.0) + (row["meta_cost_usd"] or 0.0)
        with self._lock:
            added = self.ledger.append(row, heldout=heldout)
        if not added:
            return
        shown = f" {row['gate_split']} {row['gate_value']:.4f}" if row.get("gate_value") is not None and status != "duplicate" else ""
        diff = f" diff {row['diff']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]" if row.get("diff") is not None else ""
        self.say(f"{row['row_id']}: {job.kind} {status}{shown}{diff}: {reason.splitlines()[0] if reason else ''}")
        if cand is not None and status not in ("inconclusive", "screened") and not row.get("interrupted"):
            self._tell(cand, row)
        self._write_view()

    def _tell(self, cand: dict, row: dict) -> None:
        """The meta-agent hears a decided candidate's outcome; its bookkeeping failing is its own, not the loop's."""
        try:
            self.meta.observe(self._feedback(cand, row))
        except Exception as exc:
            self.say(f"candidate {cand['id']}: the meta-agent's observe() raised {exception_text(exc)}")

    def _feedback(self, cand: dict, row: dict) -> Feedback:
        rows = self.scored_rows(cand["commit"])
        value = mean_or_none([r["gate_value"] for r in rows]) if rows else row.get("gate_value")
        if row["status"] in ("invalid", "crash"):
            value = None
        elif row["status"] == "screened_out":  # a bad value on the full trials' scale, so TPE learns from it
            value = row.get("screen_estimate")
        return Feedback(cand["id"], row["status"], row.get("reason") or "", value, cand.get("handle") or {},
                        hypothesis=cand.get("hypothesis") or "")

    def _write_view(self) -> None:
        """ledger.tsv (dev and validation only), notes.md, api.md, and the trials' traces; never held-out."""
        self.view_dir.mkdir(parents=True, exist_ok=True)
        (self.view_dir / "ledger.tsv").write_text(self.ledger.view())
        if not getattr(self, "_api_written", False):  # from the code this process runs, once per loop process
            write_text_atomic(self.view_dir / "api.md", api_doc(self.target))
            self._api_written = True
        notes = self.view_dir / "notes.md"
        if not notes.exists():
            notes.write_text("# notes\n\nThe meta-agent's memory across iterations.\n")
        for row in self.ledger.rows():
            trial_id = row.get("trial_id")
            if not trial_id:
                continue
            dest = self.view_dir / "trials" / trial_id
            if dest.is_dir():
                continue
            copy_trial_view(self.run_dir / "trials" / trial_id, dest, row)


def copy_trial_view(src: Path, dest: Path, row: dict) -> None:
    """What a meta-agent may read of a trial: its trace, its log, and a summary with dev and validation only."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("trace.md", "agent.log"):  # head and tail only: an agent decides how big its logs are
        if (src / name).is_file():
            bounded.copy_head_tail(src / name, dest / name, VIEW_LOG_BYTES)
    summary = {k: row.get(k) for k in ("trial_id", "kind", "commit", "status", "reason", "gate_split", "validation", "dev",
                                       "diff", "ci_low", "ci_high", "runs", "description", "hypothesis")}
    write_text_atomic(dest / "summary.json", json.dumps(summary, indent=2, default=str))


def api_doc(target) -> str:
    """view/api.md: what the target file may call, generated from the code itself (signatures and first docstring
    lines), so the meta-agent reads the API of the code that runs its file, never a copy that drifted."""
    _, adapter = editable.split(target.baseline.read_text())
    banner = list(itertools.takewhile(lambda line: line.startswith("#"), adapter.splitlines()[1:]))
    head = [f"# The API {target.filename} is written against", "",
            f"Generated from the code when this view was written. The banner of {target.filename}:", "",
            *[f"> {line.lstrip('# ').rstrip()}" for line in banner], ""]
    body = _harness_api() if target.name == "harness" else _recipe_api(adapter)
    return "\n".join(head + body) + "\n"


def _harness_api() -> list[str]:
    from autoembed.agents import harness_runtime as rt
    from autoembed.llm import base

    env = rt.HarnessEnv
    with editable._AST_LOCK:
        init = ast.parse(inspect.cleandoc("\n" + inspect.getsource(env.__init__)))
    lines = ["## `env` (autoembed.agents.harness_runtime.HarnessEnv)", "", "```python"]
    lines += [f"env.{n.target.attr}: {ast.unparse(n.annotation)}" for n in ast.walk(init)
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Attribute) and not n.target.attr.startswith("_")]
    for name, fn in vars(env).items():
        if inspect.isfunction(fn) and not name.startswith("_"):
            lines.append(f"env.{name}{_signature(fn, drop_first=True)}{_doc(fn)}")
    lines += [f"env.Tool{_signature(rt.Tool)}{_doc(rt.Tool)}", f"class HarnessStopped(BaseException){_doc(rt.HarnessStopped)}",
              "```", "", "## autoembed.llm.base (Message, Response, ToolCall; `llm` is what env.llm() returns)", "",
              "```python"]
    lines += [f"{cls.__name__}{_signature(cls)}{_doc(cls)}" for cls in (base.Message, base.Response, base.ToolCall)]
    lines += [f"llm.complete{_signature(base.LLM.complete, drop_first=True)}{_doc(base.LLM.complete)}", "```"]
    return lines


def _signature(obj, drop_first: bool = False) -> str:
    """inspect.signature, written as the source spells it (string annotations unquoted, dataclass factories shown)."""
    sig = inspect.signature(obj)
    factories = {f.name: f.default_factory for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
    parts, star = [], False
    for p in list(sig.parameters.values())[int(drop_first):]:
        if p.kind == p.KEYWORD_ONLY and not star:
            parts.append("*")
        star = star or p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            default = factories[p.name]() if factories.get(p.name, dataclasses.MISSING) is not dataclasses.MISSING else p.default
            text += (" = " if p.annotation is not p.empty else "=") + repr(default)
        parts.append(text)
    ret = "" if sig.return_annotation is sig.empty or inspect.isclass(obj) else f" -> {_annotation(sig.return_annotation)}"
    return f"({', '.join(parts)}){ret}"


def _annotation(annotation) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__qualname__", repr(annotation))


def _doc(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    if doc.startswith(f"{getattr(obj, '__name__', '')}("):  # a dataclass's generated __doc__ is its signature again
        return ""
    return _first_paragraph(doc)


def _first_paragraph(doc: str) -> str:
    return "  # " + " ".join(doc.split("\n\n")[0].split()) if doc else ""


def _recipe_api(adapter: str) -> list[str]:
    """The recipe's `run` (class Run of its fixed adapter), read with ast: the file imports torch when it runs."""
    with editable._AST_LOCK:
        tree = ast.parse(adapter)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    helps = {}  # --pool -> args.pool's help text
    for call in ast.walk(functions["parse_args"]) if "parse_args" in functions else ():
        if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "add_argument" and call.args:
            flag = ast.literal_eval(call.args[0]).lstrip("-").replace("-", "_")
            helps[flag] = next((ast.literal_eval(k.value) for k in call.keywords if k.arg == "help"), "")
    run = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Run")
    lines = ["## `run`: what train(run) gets (class Run of the fixed adapter)", "", "```python"]
    for method in [n for n in run.body if isinstance(n, ast.FunctionDef)]:
        if method.name == "__init__":
            for node in ast.walk(method):
                if isinstance(node, ast.Assign):
                    lines += _attribute_lines(node, functions, helps, adapter)
        elif not method.name.startswith("_"):
            lines.append(f"run.{method.name}{_ast_signature(method)}{_ast_doc(method)}")
    return lines + ["```"]


def _attribute_lines(node: ast.Assign, functions: dict, helps: dict, source: str) -> list[str]:
    """run.NAME = its value (a function: its signature), with the line's comment or the option's help beside it."""
    target = node.targets[0]
    names = target.elts if isinstance(target, ast.Tuple) else [target]
    values = node.value.elts if isinstance(node.value, ast.Tuple) and len(node.value.elts) == len(names) else [node.value] * len(names)
    line = source.splitlines()[node.lineno - 1]
    comment = line.split("  # ", 1)[1] if "  # " in line else ""
    out = []
    for name, value in zip(names, values):
        if not (isinstance(name, ast.Attribute) and getattr(name.value, "id", "") == "self") or name.attr.startswith("_"):
            continue
        if isinstance(value, ast.Name) and value.id in functions:
            fn = functions[value.id]
            out.append(f"run.{name.attr}{_ast_signature(fn, drop_first=False)}{_ast_doc(fn)}")
            continue
        expr = ast.unparse(value)
        note = helps.get(expr.split(".", 1)[1], "") if expr.startswith("args.") else comment
        out.append(f"run.{name.attr} = {expr}" + (f"  # {note}" if note else ""))
    return out


def _ast_signature(fn: ast.FunctionDef, drop_first: bool = True) -> str:
    args = fn.args
    if drop_first and args.args:
        args = ast.arguments(posonlyargs=args.posonlyargs, args=args.args[1:], vararg=args.vararg,
                             kwonlyargs=args.kwonlyargs, kw_defaults=args.kw_defaults, kwarg=args.kwarg,
                             defaults=args.defaults[1:] if len(args.defaults) == len(args.args) else args.defaults)
    return f"({ast.unparse(args)})" + (f" -> {ast.unparse(fn.returns)}" if fn.returns else "")


def _ast_doc(fn: ast.FunctionDef) -> str:
    return _first_paragraph(ast.get_docstring(fn) or "")

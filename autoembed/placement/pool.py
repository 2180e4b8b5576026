"""Run trials over places: one trial per slot (a GPU, or a CPU slot where a place has no GPU), every place kept
busy, and a trial whose place failed tried again on another place.

    from autoembed.placement.docker_engine import DockerPlace
    from autoembed.placement.place import LocalPlace
    from autoembed.placement.pool import run_pool
    places = [LocalPlace("here", gpus=["0", "1"]), DockerPlace("box2", "ssh://me@box2", gpus=["0", "1", "2", "3"])]
    run_dirs = run_pool([{"agent": "recipe", "hours": 0.5}] * 12, places)

Each trial's meta.json says where it ran: meta["placement"] = {place, kind, gpu, attempts, failed: [...]}, where
failed lists the earlier attempts (place, gpu, reason, the folder that attempt left). A place that failed and no
longer works (its engine does not answer) takes no more trials; one that still works does, but a retried trial
goes to another place while there is one.
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from autoembed.paths import traces_dir
from autoembed.placement.place import Place, PlaceFailed, Say, read_meta
from autoembed.records import write_text_atomic

DEFAULT_ATTEMPTS = 3


class NoPlaceLeft(RuntimeError):
    """Every place failed and stopped working."""


class Pool:
    def __init__(self, places: list[Place], *, max_attempts: int = DEFAULT_ATTEMPTS, say: Say | None = None):
        if not places:
            raise ValueError("no places given: pass at least one (LocalPlace('local') is this machine)")
        names = [p.name for p in places]
        if len(set(names)) != len(names):
            raise ValueError(f"two places share a name: {', '.join(names)}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.places = list(places)
        self.max_attempts = max_attempts
        self.say = say or (lambda msg: print(f"[placement] {msg}", file=sys.stderr, flush=True))
        per_place = [[(p, gpu) for gpu in p.slots()] for p in places]
        # interleaved, so that a short grid spreads over every place rather than filling the first
        self._free = [slot for row in _zip_longest(per_place) for slot in row]
        self.size = len(self._free)
        self._retired: dict[str, str] = {}
        self._cond = threading.Condition()

    def slot_labels(self) -> list[str]:
        """One label per slot ("place:gpu", or "place:cpuN"): what a loop plans its parallel candidates over."""
        labels = []
        for place in self.places:
            labels += [f"{place.name}:{gpu}" if gpu is not None else f"{place.name}:cpu{i}"
                       for i, gpu in enumerate(place.slots())]
        return labels

    # -- slots ------------------------------------------------------------------------------------
    def _acquire(self, avoid: set[str]) -> tuple[Place, str | None]:
        with self._cond:
            while True:
                live = [p for p in self.places if p.name not in self._retired]
                if not live:
                    raise NoPlaceLeft("every place failed: " + "; ".join(f"{n}: {r}" for n, r in self._retired.items()))
                fresh = {p.name for p in live} - avoid
                wanted = fresh or {p.name for p in live}  # only places this trial failed on are left: use them
                for i, (place, gpu) in enumerate(self._free):
                    if place.name in wanted:
                        return self._free.pop(i)
                self._cond.wait()

    def _release(self, place: Place, gpu: str | None) -> None:
        with self._cond:
            if place.name not in self._retired:
                self._free.append((place, gpu))
            self._cond.notify_all()

    def _retire_if_broken(self, place: Place) -> None:
        problem = place.problem()
        if problem:
            with self._cond:
                self._retired[place.name] = problem
                self._free = [(p, g) for p, g in self._free if p.name != place.name]
                self._cond.notify_all()
            self.say(f"{place.name} takes no more trials: {problem}")

    # -- trials -----------------------------------------------------------------------------------
    def run_trial(self, run_kwargs: dict, say: Say | None = None) -> Path:
        """Run one trial (autoembed.trial.run.run() keyword arguments, `agent` included) on the first free slot; retry it
        elsewhere when its place fails. Returns the run folder, whose meta.json has the placement record."""
        from autoembed.trial.run import new_run_id

        if "agent" not in run_kwargs:
            raise ValueError("a trial spec needs 'agent' (and may have any other autoembed.trial.run.run() argument)")
        out = Path(run_kwargs.get("out") or traces_dir() / new_run_id(run_kwargs["agent"]))
        task = str(run_kwargs.get("task", "embed"))
        say = say or self.say
        failed: list[dict] = []
        for attempt in range(1, self.max_attempts + 1):
            try:
                place, gpu = self._acquire({f["place"] for f in failed})
            except NoPlaceLeft as exc:
                return _record_unplaced(out, failed, str(exc))
            placement = {"place": place.name, "kind": place.kind, "gpu": gpu, "attempts": attempt, "failed": list(failed),
                         "side_by_side": len(place.slots()), **({"url": place.url} if hasattr(place, "url") else {})}
            where = f"{place.name}" + (f" GPU {gpu}" if gpu is not None else "")
            say(f"{out.name}: attempt {attempt} on {where}")
            try:
                place.ready(task, say)
                return place.run_trial({**run_kwargs, "out": out, "placement": placement}, gpu,
                                       lambda line, w=where: say(f"{out.name} @ {w}: {line}"))
            except PlaceFailed as exc:
                say(f"{out.name}: {where} failed: {exc.reason.splitlines()[0] if exc.reason else ''}")
                failure = {"place": place.name, "kind": place.kind, "gpu": gpu, "reason": exc.reason, "at": _now()}
                last = attempt == self.max_attempts
                failure["run_dir"] = str(out if last else _set_aside(out, attempt, exc.reason))
                failed.append(failure)
                self._retire_if_broken(place)
            finally:
                self._release(place, gpu)
        return _record_unplaced(out, failed, f"the trial failed on its place {self.max_attempts} times")

    def run_all(self, specs: list[dict]) -> list[Path]:
        """Every spec's run folder, in the order given; trials run side by side, one per free slot."""
        if not specs:
            return []
        with ThreadPoolExecutor(min(self.size, len(specs)), thread_name_prefix="placement") as pool:
            futures = [pool.submit(self.run_trial, spec) for spec in specs]
            return [f.result() for f in futures]


def run_pool(specs: list[dict], places: list[Place] | None = None, *, max_attempts: int = DEFAULT_ATTEMPTS,
             say: Say | None = None) -> list[Path]:
    """Run the trial specs over the places (default: this machine, one trial at a time) and return their folders."""
    from autoembed.placement.place import LocalPlace

    return Pool(places or [LocalPlace("local")], max_attempts=max_attempts, say=say).run_all(specs)


def _set_aside(out: Path, attempt: int, reason: str) -> Path:
    """Move a failed attempt's folder out of the way of the next attempt, keeping it for the record; its meta.json
    says the place failed (a trial whose process died with its engine never got to say how it ended)."""
    aside = out.with_name(f"{out.name}.attempt{attempt}")
    if out.exists():
        out.rename(aside)
        meta = read_meta(aside)
        if meta:
            if meta.get("status") in ("starting", "running", "scoring"):
                meta["status"] = "place_failed"
            meta.setdefault("placement", {})["place_failed"] = reason
            _write_meta(aside, meta)
    return aside


def _record_unplaced(out: Path, failed: list[dict], reason: str) -> Path:
    """The trial's folder says where it failed: the last attempt's meta.json gains the placement record, or a
    folder is made for a trial whose attempts never started one (a job that died before it began)."""
    meta = read_meta(out) or {"run_id": out.name, "status": "failed_to_start", "failed_stage": "placement",
                              "exit_reason": "failed_to_start", "ended": _now()}
    if meta.get("status") in (None, "starting", "running"):
        meta["status"] = "failed_to_start"
    meta.setdefault("reason", reason)
    last = failed[-1] if failed else {}
    meta["placement"] = {"place": last.get("place"), "kind": last.get("kind"), "gpu": last.get("gpu"),
                         "attempts": len(failed), "failed": failed, "gave_up": reason}
    out.mkdir(parents=True, exist_ok=True)
    _write_meta(out, meta)
    return out


def _write_meta(run_dir: Path, meta: dict) -> None:
    write_text_atomic(run_dir / "meta.json", json.dumps(meta, indent=2))


def _zip_longest(rows: list[list]) -> list[list]:
    width = max((len(r) for r in rows), default=0)
    return [[r[i] for r in rows if i < len(r)] for i in range(width)]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def trial_result(run_dir: Path):
    """The TrialResult (run_dir, meta, score) of a folder a place returned, as autoembed.trial.run.run() gives it."""
    from autoembed.trial.run import TrialResult

    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    try:
        score = json.loads((run_dir / "score.json").read_text())
    except (OSError, ValueError):
        score = None
    return TrialResult(meta.get("run_id", run_dir.name), run_dir, meta, score)

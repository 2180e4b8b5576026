"""A place where trials run: this machine, a Docker engine, or a Slurm cluster, with its GPU slots.

A place runs one trial from `autoembed.trial.run.run()` keyword arguments and returns the trial's folder. It tells
two failures apart: a trial that ran and failed is the trial's result (returned like any other), while a place
that could not run it (the engine went away, the job died, the sandbox could not start there) raises
PlaceFailed, and the pool retries the trial elsewhere.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

KINDS = ("local", "docker", "slurm")

Say = Callable[[str], None]


class PlaceFailed(RuntimeError):
    """The place could not run the trial; run_dir is the attempt's folder when one was made."""

    def __init__(self, reason: str, run_dir: Path | None = None):
        super().__init__(reason)
        self.reason = reason
        self.run_dir = run_dir


class BadTrial(ValueError):
    """The trial's own arguments are wrong (preflight refused them): no place would run it, so no retry."""


class Place(ABC):
    """name: how records and messages call it; gpus: its GPU ids, one trial per GPU at a time; without GPUs,
    cpu_slots trials at a time on its CPUs."""

    kind = "local"
    # whether the place is checked after every trial, clean or not: a trial whose Docker engine went away under it
    # may still end "clean" (its commands failed, the scripted or real model carried on), so it is rerun
    recheck_after_every_trial = False

    def __init__(self, name: str, gpus: list[str] | tuple[str, ...] = (), cpu_slots: int = 1):
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"place name {name!r}: use letters, digits, '-', '_' or '.'")
        gpus = [str(g).strip() for g in gpus]
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"place {name}: a GPU is listed twice in {gpus}")
        if cpu_slots < 1:
            raise ValueError(f"place {name}: cpu_slots must be at least 1, got {cpu_slots}")
        self.name = name
        self.gpus = gpus
        self.cpu_slots = cpu_slots
        self._prepared: set[str] = set()
        self._prepare_lock = threading.Lock()

    def slots(self) -> list[str | None]:
        """One entry per trial that may run here at once: a GPU id, or None for a CPU slot."""
        return list(self.gpus) if self.gpus else [None] * self.cpu_slots

    def ready(self, task: str, say: Say) -> None:
        """Make the place able to run trials of this task (once per place and task); raises PlaceFailed."""
        with self._prepare_lock:
            if task not in self._prepared:
                self.prepare(task, say)
                self._prepared.add(task)

    def prepare(self, task: str, say: Say) -> None:
        """What a place needs before its first trial of a task (the task image on a Docker engine)."""

    def problem(self) -> str | None:
        """Why the place cannot run trials now (the engine does not answer), or None."""
        return None

    @abstractmethod
    def run_trial(self, run_kwargs: dict, gpu: str | None = None, say: Say | None = None) -> Path:
        """Run one trial here on that GPU slot; its folder is run_kwargs["out"]."""

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "gpus": self.gpus}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, gpus={self.gpus})"


class LocalPlace(Place):
    """This machine, in this process: the trial runs as autoembed.trial.run.run() does from the command line."""

    kind = "local"

    def run_trial(self, run_kwargs: dict, gpu: str | None = None, say: Say | None = None) -> Path:
        from autoembed.placement.worker import run_trial_here

        outcome = run_trial_here({**run_kwargs, "progress": say}, gpu)
        return outcome_run_dir(outcome, self)


def outcome_run_dir(outcome: dict, place: Place) -> Path:
    """The run folder from a worker's outcome, or the matching exception: BadTrial for refused input, PlaceFailed
    when the trial could not start there or did not end cleanly on a place that no longer works."""
    run_dir = Path(outcome["run_dir"]) if outcome.get("run_dir") else None
    if outcome.get("bad_input"):
        raise BadTrial(outcome["error"])
    if outcome.get("error"):  # no agent ran, or the trial's process broke: say first whether the place is gone
        problem = place.problem()
        raise PlaceFailed(f"{problem}\n{outcome['error']}" if problem else outcome["error"], run_dir)
    if not outcome.get("clean") or place.recheck_after_every_trial:  # the trial's own result, unless the place
        # itself went away under it
        problem = place.problem()
        if problem:
            raise PlaceFailed(f"the place stopped working during the trial: {problem}", run_dir)
    return run_dir


def read_meta(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return {}

"""`--meta search`: no LLM. It turns the knobs the target file declares (ALL_CAPS constants with a range beside
them) with Optuna's TPE through ask/tell. Its state is Optuna's journal file in the run folder, so a resumed
loop continues the same study. It goes through exactly the loop's commit, smoke check, trial and gate path,
and is the baseline an LLM meta-agent must beat.

It starts where the value is: its first proposals are the incumbent's neighbours, one knob a small step at a time
(WARM_FIRST's knobs first, each the way it paid before, then their other way, then the rest of the knobs in file
order, up then down), each enqueued in the study just before it is asked for, so
a resumed loop goes on after the last one the journal holds; a step the gate kept is taken once more the same way
from the new incumbent (a line search: a knob that paid off once often pays off twice); then TPE takes over.

Before those single steps it proposes PRIOR_POINTS, points chosen from runs outside the loop (Optuna's own warm start:
enqueue what is known to work), so a short loop spends its first trials where the value was measured and then
searches around it; each knob of a point that the device's file does not declare is left out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from autoembed import editable
from autoembed.loop.meta.base import Feedback, MetaAgent, ProposeContext, Proposal

STUDY = "loop"
# the knobs that moved the score at the loop's budgets on a GPU (bench/RESULTS.md, "The recipe on a GPU" and the
# loop runs): the pool tokenized once (2.9x the pairs a second on an H100, the same steps), the pool's source weights
# (debian's alone +0.003 on validation, pycode's alone -0.001), learning rate and batch size (each with its CPU twin),
# then the fused optimizer (1.4x the pairs a second)
WARM_FIRST = ("PRETOKENIZE", "WEIGHT_DEBIAN", "WEIGHT_WORDNET", "WEIGHT_PYCODE", "LR", "CPU_LR", "BATCH_SIZE",
              "CPU_BATCH_SIZE", "FUSED_ADAMW")
# the way each of them went where validation rose (the source-weight lever: debian x2, pycode x1.5, wordnet x0.5; the
# loops' kept candidates: LR x2 and x3, batch 128); a knob not named here is stepped up first
FIRST_DIRECTION = {"WEIGHT_WORDNET": "down", "BATCH_SIZE": "down"}
# points chosen from runs outside the loop, proposed once each, in this order, before the single steps
# (bench/RESULTS.md, "The recipe on a GPU" and the loop runs): the source weights debian x2, pycode x1.5, wordnet x0.5
# gained on validation and held-out in three lever runs, each CI above 0 (+0.008 to +0.018 held-out at 1-2 minutes),
# and the pool tokenized once with the fused optimizer trains 3.3x the pairs a second at the same quality per step.
# First comes the same further along (debian x3, pycode x2, wordnet x0.25): from the second point, the 20-minute
# loop's single steps that way each raised debian and pycode on validation and lowered only wordnet, a domain
# held-out does not have (the next 20-minute loop kept it: +0.017 held-out). Discarded, the second point follows
# from the baseline; kept, the second is a step back from it.
PRIOR_POINTS = ({"PRETOKENIZE": True, "FUSED_ADAMW": True, "WEIGHT_DEBIAN": 3.0, "WEIGHT_PYCODE": 2.0,
                 "WEIGHT_WORDNET": 0.25},
                {"PRETOKENIZE": True, "FUSED_ADAMW": True, "WEIGHT_DEBIAN": 2.0, "WEIGHT_PYCODE": 1.5,
                 "WEIGHT_WORDNET": 0.5})
WARM_START_STEPS = 12  # at most this many warm-start proposals, then TPE
LOG_FACTOR = 2.0  # a log knob's step: times or divided by this
LINEAR_SHARE = 0.1  # a float or int knob's step: this share of its declared range
STEP_DIRECTIONS = ("up", "down")  # a warm step's direction, as neighbours() returns them and the plan lists them


class SearchMetaAgent(MetaAgent):
    name = "search"
    pipelined = True  # it may propose while trials run: Optuna knows which of its trials are still running

    def __init__(self, state_dir: Path, *, seed: int = 0, startup_trials: int = 5, warm_start: int = WARM_START_STEPS,
                 prior: tuple[dict, ...] = PRIOR_POINTS):
        self.warm_start = warm_start
        self.prior = prior if warm_start else ()
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        journal = Path(state_dir) / "optuna.journal"
        # only this loop's process writes the journal, so a lock file at start was left by a kill (kill -9 while a
        # proposal was being made beside a running trial); Optuna would wait its 30 s grace period for it
        Path(f"{journal}.lock").unlink(missing_ok=True)
        storage = JournalStorage(JournalFileBackend(str(journal)))
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
        self.study = optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler, direction="maximize",
                                         load_if_exists=True)

    def propose(self, ctx: ProposeContext) -> Proposal | None:
        knobs = editable.knobs_for(ctx.incumbent_source, ctx.device)  # a [cpu] knob turned for GPU trials is noise
        if not knobs:
            return None
        self._enqueue_warm_step(knobs)
        trial = self.study.ask({k.name: distribution(k) for k in knobs})
        prior = trial.user_attrs.get("prior") is not None
        warm = prior or trial.user_attrs.get("warm_start") is not None
        source = editable.set_knobs(ctx.incumbent_source, trial.params)
        proposed = {k.name: k.value for k in editable.knobs(source)}
        changed = [f"{k.name}={editable.format_value(proposed[k.name])}" for k in knobs if proposed[k.name] != k.value]
        kind = "prior point" if prior else "warm start" if warm else "TPE"
        description = f"search ({kind}): " + (", ".join(changed) if changed else "the incumbent's knob values again")
        why = ("a point chosen before the loop from earlier runs" if prior else "a step from the incumbent" if warm
               else "TPE's next point")
        return Proposal(source, description, {"trial_number": trial.number},
                        hypothesis="knobs: " + (", ".join(changed) or "the incumbent's values") + f" ({why})")

    def _enqueue_warm_step(self, knobs: list[editable.Knob]) -> None:
        """Enqueue the next step of warm_start_plan that leads somewhere new, unless one waits already (enqueued
        by a process killed before it asked). The journal is the only state: a resume never enqueues a step twice."""
        trials = self.study.get_trials(deepcopy=False)
        # a re-parented step's measured point is a trial of its own with the same index: one step, counted once
        done = {t.user_attrs["warm_start"] for t in trials if t.user_attrs.get("warm_start") is not None}
        if len(done) >= self.warm_start or any(t.state == TrialState.WAITING for t in trials):
            return
        current = {k.name: k.value for k in knobs}
        seen = [t.params for t in trials]

        def new_point(changes: dict):
            point = {**current, **changes}
            if None not in changes.values() and not any(all(n in p and p[n] == v for n, v in point.items())
                                                          for p in seen):
                return point
            return None

        if (prior := self._next_prior(trials, knobs, current, new_point)) is not None:
            self.study.enqueue_trial(prior[1], user_attrs={"prior": prior[0]})
            return
        again = self._step_again(trials, knobs, current)
        if again is not None and (point := new_point({again[0]: again[1]})) is not None:
            self.study.enqueue_trial(point, user_attrs={**again[2]})
            return
        plan = warm_start_plan(knobs)
        for index in range(max(done, default=-1) + 1, len(plan)):
            name, value, direction = plan[index]
            if (point := new_point({name: value})) is not None:
                self.study.enqueue_trial(point, user_attrs={"warm_start": index, "knob": name, "direction": direction})
                return

    def _next_prior(self, trials, knobs: list[editable.Knob], current: dict, new_point) -> tuple[int, dict] | None:
        """(index, point) of the first prior point not proposed yet: its knobs that this file declares for this
        device, set in the incumbent; None when all were proposed (or lead nowhere new)."""
        proposed = {t.user_attrs["prior"] for t in trials if t.user_attrs.get("prior") is not None}
        declared = {k.name: k for k in knobs}
        for index, point in enumerate(self.prior):
            if index in proposed:
                continue
            changes = {n: v for n, v in point.items() if n in declared and declared[n].contains(v)}
            if changes and (full := new_point(changes)) is not None:
                return index, full
        return None

    @staticmethod
    def _step_again(trials, knobs: list[editable.Knob], current: dict) -> tuple[str, Any, dict] | None:
        """(knob, value, user attrs) of the kept warm step taken once more the same way from the incumbent it made,
        or None: no warm step made this incumbent, or its step again was enqueued already."""
        maker = next((t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("knob")
                      and _same_point(t.params, current)), None)
        if maker is None or any(t.user_attrs.get("again_after") == maker.number for t in trials):
            return None
        name, direction = maker.user_attrs["knob"], maker.user_attrs["direction"]
        knob = next((k for k in knobs if k.name == name), None)
        if knob is None:
            return None
        value = neighbours(knob)[STEP_DIRECTIONS.index(direction)]
        return name, value, {"warm_start": maker.user_attrs["warm_start"], "knob": name, "direction": direction,
                             "again_after": maker.number}

    def rebase(self, source: str, old_parent: str, new_parent: str) -> str | None:
        """Its proposal is a step from the incumbent it was made on: the knobs it turned there, set in the new
        incumbent, so what the kept candidate turned stays turned (only the lines whose value differs are
        rewritten, so a knob it did not turn keeps its text)."""
        try:
            before = {k.name: k.value for k in editable.knobs(old_parent)}
            return editable.set_knobs(new_parent, {k.name: k.value for k in editable.knobs(source)
                                                   if k.name not in before or before[k.name] != k.value})
        except editable.EditableError:
            return None

    def reparented(self, handle: dict, source: str) -> None:
        """The point its trial will measure, on the Optuna trial, so observe() tells the study that point."""
        trial = self._trial(handle.get("trial_number"))
        if trial is None or trial.state != TrialState.RUNNING:
            return
        values = {k.name: k.value for k in editable.knobs(source)}
        measured = {name: values.get(name, value) for name, value in trial.params.items()}
        self.study._storage.set_trial_user_attr(trial._trial_id, "measured", measured)

    def observe(self, feedback: Feedback) -> None:
        if "baseline_source" in feedback.handle:
            self._add_baseline(feedback.handle["baseline_source"], feedback.value)
            return
        trial = self._trial(feedback.handle.get("trial_number"))
        if trial is None or trial.state != TrialState.RUNNING:
            return  # not ours, or told already (a resumed loop replays its last step)
        measured = trial.user_attrs.get("measured")
        if feedback.value is None:
            self.study.tell(trial.number, state=TrialState.FAIL)
        elif measured is None or _same_point(measured, trial.params):
            self.study.tell(trial.number, feedback.value)
        else:  # re-parented: the value belongs to the point measured, which the study hears as a trial of its own
            self.study.tell(trial.number, state=TrialState.FAIL)
            attrs = {k: v for k, v in trial.user_attrs.items() if k != "measured"}
            self.study.add_trial(optuna.trial.create_trial(
                params=measured, distributions=trial.distributions, value=feedback.value,
                user_attrs={**attrs, "measured_for": trial.number}))

    def _trial(self, number: int | None):
        return next((t for t in self.study.get_trials(deepcopy=False) if t.number == number), None)

    def _add_baseline(self, source: str, value: float | None) -> None:
        """The baseline's measured score as a finished trial, so TPE starts from what it already knows."""
        if value is None or any(t.user_attrs.get("baseline") for t in self.study.get_trials(deepcopy=False)):
            return
        knobs = editable.knobs(source)
        self.study.add_trial(optuna.trial.create_trial(
            params={k.name: k.value for k in knobs}, distributions={k.name: distribution(k) for k in knobs},
            value=value, user_attrs={"baseline": True}))


def _same_point(params: dict, current: dict) -> bool:
    """The trial's knob values are the incumbent's (a float written back to the file may differ in its last digits)."""
    return all(name in params and (math.isclose(params[name], value, rel_tol=1e-6)
                                   if isinstance(value, float) and isinstance(params[name], float)
                                   else params[name] == value) for name, value in current.items())


def warm_start_plan(knobs: list[editable.Knob]) -> list[tuple[str, Any, str]]:
    """(knob, value, direction), two steps per knob from its value (value None where there is none): each of
    WARM_FIRST's knobs its FIRST_DIRECTION way, then each of them the other way, then the other knobs in file order,
    up then down. Two per knob whatever the values, so an index means one step."""
    first = sorted((k for k in knobs if k.name in WARM_FIRST), key=lambda k: WARM_FIRST.index(k.name))
    rest = [k for k in knobs if k.name not in WARM_FIRST]

    def step(knob: editable.Knob, preferred: bool) -> tuple[str, Any, str]:
        way = FIRST_DIRECTION.get(knob.name, "up")
        if not preferred:
            way = STEP_DIRECTIONS[1 - STEP_DIRECTIONS.index(way)]
        return knob.name, neighbours(knob)[STEP_DIRECTIONS.index(way)], way

    return ([step(k, True) for k in first] + [step(k, False) for k in first]
            + [(k.name, value, way) for k in rest for value, way in zip(neighbours(k), STEP_DIRECTIONS)])


def neighbours(knob: editable.Knob) -> tuple[Any, Any]:
    """(up, down): one step from the knob's value each way within its declaration, None where it has none; a
    choice's neighbours are the choices beside it."""
    value = knob.value
    if knob.kind == "choice":
        i = knob.choices.index(value)
        steps = [knob.choices[i + 1] if i + 1 < len(knob.choices) else None, knob.choices[i - 1] if i > 0 else None]
    elif knob.kind == "log":
        steps = [value * LOG_FACTOR, value / LOG_FACTOR]
    elif knob.kind == "int":
        delta = max(1, round(LINEAR_SHARE * (knob.high - knob.low)))
        steps = [value + delta, value - delta]
    else:
        delta = LINEAR_SHARE * (knob.high - knob.low)
        steps = [value + delta, value - delta]
    if knob.kind != "choice":
        steps = [min(knob.high, max(knob.low, _rounded(v))) for v in steps]
    up, down = (None if v is None or v == value else v for v in steps)
    return up, down


def _rounded(value):
    return float(f"{value:.4g}") if isinstance(value, float) else value


def distribution(knob: editable.Knob):
    if knob.kind == "choice":
        return CategoricalDistribution(list(knob.choices))
    if knob.kind == "int":
        return IntDistribution(int(knob.low), int(knob.high))
    return FloatDistribution(float(knob.low), float(knob.high), log=knob.kind == "log")

"""`--meta search`: no LLM. It turns the knobs the target file declares (ALL_CAPS constants with a range beside
them) with Optuna's TPE through ask/tell. Its state is Optuna's journal file in the run folder, so a resumed
loop continues the same study. It goes through exactly the loop's commit, smoke check, trial and gate path,
and is the baseline an LLM meta-agent must beat."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from autoembed import editable
from autoembed.meta.base import Feedback, MetaAgent, ProposeContext, Proposal

STUDY = "loop"


class SearchMetaAgent(MetaAgent):
    name = "search"
    pipelined = True  # it may propose while trials run: Optuna knows which of its trials are still running

    def __init__(self, state_dir: Path, *, seed: int = 0, startup_trials: int = 5):
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
        trial = self.study.ask({k.name: distribution(k) for k in knobs})
        source = editable.set_knobs(ctx.incumbent_source, trial.params)
        proposed = {k.name: k.value for k in editable.knobs(source)}
        changed = [f"{k.name}={editable.format_value(proposed[k.name])}" for k in knobs if proposed[k.name] != k.value]
        description = "search (TPE): " + (", ".join(changed) if changed else "the incumbent's knob values again")
        return Proposal(source, description, {"trial_number": trial.number})

    def rebase(self, source: str, old_parent: str, new_parent: str) -> str | None:
        """Its proposal is a set of knob values: the same values, set in the new incumbent (only the lines whose
        value differs are rewritten, so a knob it did not turn keeps its text)."""
        try:
            current = {k.name: k.value for k in editable.knobs(new_parent)}
            return editable.set_knobs(new_parent, {k.name: k.value for k in editable.knobs(source)
                                                   if k.name not in current or current[k.name] != k.value})
        except editable.EditableError:
            return None

    def observe(self, feedback: Feedback) -> None:
        if "baseline_source" in feedback.handle:
            self._add_baseline(feedback.handle["baseline_source"], feedback.value)
            return
        number = feedback.handle.get("trial_number")
        if number is None or self._state(number) != TrialState.RUNNING:
            return  # not ours, or told already (a resumed loop replays its last step)
        if feedback.value is None:
            self.study.tell(number, state=TrialState.FAIL)
        else:
            self.study.tell(number, feedback.value)

    def _state(self, number: int) -> TrialState | None:
        for trial in self.study.get_trials(deepcopy=False):
            if trial.number == number:
                return trial.state
        return None

    def _add_baseline(self, source: str, value: float | None) -> None:
        """The baseline's measured score as a finished trial, so TPE starts from what it already knows."""
        if value is None or any(t.user_attrs.get("baseline") for t in self.study.get_trials(deepcopy=False)):
            return
        knobs = editable.knobs(source)
        self.study.add_trial(optuna.trial.create_trial(
            params={k.name: k.value for k in knobs}, distributions={k.name: distribution(k) for k in knobs},
            value=value, user_attrs={"baseline": True}))


def distribution(knob: editable.Knob):
    if knob.kind == "choice":
        return CategoricalDistribution(list(knob.choices))
    if knob.kind == "int":
        return IntDistribution(int(knob.low), int(knob.high))
    return FloatDistribution(float(knob.low), float(knob.high), log=knob.kind == "log")

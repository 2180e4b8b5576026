"""The search meta-agent starts where the value is: its first proposals are the incumbent's neighbours, one knob at a
time, the source weights first (then LR, batch size and the fused optimizer), each the way it paid before and then
the other way, each enqueued in Optuna's journal once, also across a resume; then TPE. And the harness target
declares knobs that search turns."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

from autoembed import editable
from autoembed.agents.harness import FIXED_ADAPTER_SHA256 as HARNESS_SHA256
from autoembed.loop.meta.base import Feedback, ProposeContext
from autoembed.loop.meta.search import PRIOR_POINTS, WARM_START_STEPS, SearchMetaAgent
from autoembed.loop.smoke import smoke_check, static_check
from autoembed.paths import REPO_ROOT

RECIPE = (REPO_ROOT / "harnesses" / "recipe.py").read_text()
HARNESS = (REPO_ROOT / "harnesses" / "baseline.py").read_text()
FIRST = {"gpu": ["PRETOKENIZE", "WEIGHT_DEBIAN", "WEIGHT_WORDNET", "WEIGHT_PYCODE", "LR", "BATCH_SIZE", "FUSED_ADAMW"],
         "cpu": ["WEIGHT_DEBIAN", "WEIGHT_WORDNET", "WEIGHT_PYCODE", "CPU_LR", "CPU_BATCH_SIZE"]}
DOWN_FIRST = {"WEIGHT_WORDNET", "BATCH_SIZE"}  # where validation rose when they went down (bench/RESULTS.md)
ONE_WAY = {"PRETOKENIZE", "FUSED_ADAMW"}  # off by default: turning on is their only step


def up_and_down(k: editable.Knob) -> list:
    """A log knob doubled and halved, a float or int knob a tenth of its range up and down, a choice the next and
    the previous one; clipped to the range; None where a step changes nothing."""
    v = k.value
    if k.kind == "choice":
        i = list(k.choices).index(v)
        return [k.choices[j] if 0 <= j < len(k.choices) else None for j in (i + 1, i - 1)]
    if k.kind == "log":
        raw = [v * 2, v / 2]
    else:
        delta = (k.high - k.low) / 10
        raw = [v + max(1, round(delta)), v - max(1, round(delta))] if k.kind == "int" else [v + delta, v - delta]
    clipped = [min(k.high, max(k.low, float(f"{x:.4g}") if isinstance(x, float) else x)) for x in raw]
    return [None if c == v else c for c in clipped]


def expected_steps(source: str, device: str | None, first: list[str]) -> list[dict]:
    """Each step as {knob: value}, worked out here from the declarations: each of the first knobs the way it paid
    (DOWN_FIRST: down, else up), then each of them the other way, then the other knobs in file order, up then down;
    a step that changes nothing left out."""
    knobs = editable.knobs_for(source, device)
    firsts = [k for name in first for k in knobs if k.name == name]
    ways = {k.name: up_and_down(k)[::-1] if k.name in DOWN_FIRST else up_and_down(k) for k in firsts}
    steps = [(k.name, ways[k.name][0]) for k in firsts] + [(k.name, ways[k.name][1]) for k in firsts]
    steps += [(k.name, c) for k in knobs if k.name not in first for c in up_and_down(k)]
    return [{name: c} for name, c in steps if c is not None]


def changes(source: str, incumbent: str) -> dict:
    before = {k.name: k.value for k in editable.knobs(incumbent)}
    return {k.name: k.value for k in editable.knobs(source) if k.value != before[k.name]}


def ctx(source: str, device: str | None, iteration: int = 1) -> ProposeContext:
    return ProposeContext(iteration=iteration, incumbent_source=source, view_dir=REPO_ROOT, device=device)


def warm_indices(agent: SearchMetaAgent) -> list[int]:
    return [t.user_attrs["warm_start"] for t in agent.study.get_trials() if "warm_start" in t.user_attrs]


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_a_fresh_search_first_proposes_the_incumbents_neighbours_in_order_then_tpe(tmp_path, device):
    agent = SearchMetaAgent(tmp_path / "meta", seed=3, prior=())
    agent.observe(Feedback(0, "keep", "", 0.5, {"baseline_source": RECIPE}))  # the baseline's runs, as the loop says
    expected = expected_steps(RECIPE, device, FIRST[device])[:WARM_START_STEPS]
    back = [name for name in FIRST[device] if name not in ONE_WAY]
    assert [next(iter(step)) for step in expected[:len(FIRST[device]) + len(back)]] == FIRST[device] + back
    weights = [{"WEIGHT_DEBIAN": 2.0}, {"WEIGHT_WORDNET": 0.5}, {"WEIGHT_PYCODE": 2.0}]
    assert expected[:4] == ([{"PRETOKENIZE": True}] + weights if device == "gpu" else weights + [{"CPU_LR": 2e-4}])
    assert expected[len(FIRST[device])] == {"WEIGHT_DEBIAN": 0.5}
    proposals = []
    for i in range(len(expected) + 2):
        proposal = agent.propose(ctx(RECIPE, device, i + 1))
        proposals.append(proposal)
        agent.observe(Feedback(i + 1, "discard", "", 0.5 - 0.01 * (i % 3), proposal.handle))
    assert [changes(p.source, RECIPE) for p in proposals[:len(expected)]] == expected
    for proposal, step in zip(proposals, expected):
        (name, value), = step.items()
        assert proposal.description == f"search (warm start): {name}={editable.format_value(value)}"
    assert all(p.description.startswith("search (TPE): ") for p in proposals[len(expected):])
    assert warm_indices(agent) == sorted(set(warm_indices(agent))) and len(warm_indices(agent)) == len(expected)

    # the same seed, the same proposals (warm start and TPE)
    again = SearchMetaAgent(tmp_path / "again", seed=3, prior=())
    again.observe(Feedback(0, "keep", "", 0.5, {"baseline_source": RECIPE}))
    for i, proposal in enumerate(proposals):
        repeat = again.propose(ctx(RECIPE, device, i + 1))
        assert repeat.source == proposal.source
        again.observe(Feedback(i + 1, "discard", "", 0.5 - 0.01 * (i % 3), repeat.handle))


def test_a_resumed_search_never_enqueues_a_step_twice(tmp_path):
    state = tmp_path / "meta"
    first = SearchMetaAgent(state, prior=())
    made = [first.propose(ctx(RECIPE, "gpu", i + 1)) for i in range(3)]
    first.observe(Feedback(1, "discard", "", 0.4, made[0].handle))
    first.observe(Feedback(2, "keep", "", 0.6, made[1].handle))  # made[2] is still running when the loop is killed
    first._enqueue_warm_step(editable.knobs_for(RECIPE, "gpu"))  # killed after enqueuing the next step, before asking

    resumed = SearchMetaAgent(state, prior=())  # --resume: the same journal
    assert sorted(warm_indices(resumed)) == [0, 1, 2, 3]
    expected = expected_steps(RECIPE, "gpu", FIRST["gpu"])
    later = [resumed.propose(ctx(RECIPE, "gpu", i + 4)) for i in range(3)]
    assert [changes(p.source, RECIPE) for p in made + later] == expected[:6]
    indices = warm_indices(resumed)
    assert len(indices) == len(set(indices)) == 6, indices
    states = {t.number: t.state for t in resumed.study.get_trials()}
    assert states[made[2].handle["trial_number"]] == TrialState.RUNNING and TrialState.WAITING not in states.values()


def test_a_kept_step_is_taken_once_more_the_same_way_then_the_steps_go_on(tmp_path):
    """WEIGHT_DEBIAN=2 is kept, so the next proposal doubles it again (4, the top of its range); that one is
    discarded: the next step is WEIGHT_WORDNET's, from the new incumbent. (On a CPU: a GPU's first step is
    PRETOKENIZE, which has no step again.)"""
    agent = SearchMetaAgent(tmp_path / "meta", prior=())
    agent.observe(Feedback(0, "keep", "", 0.5, {"baseline_source": RECIPE}))
    up = agent.propose(ctx(RECIPE, "cpu"))
    assert changes(up.source, RECIPE) == {"WEIGHT_DEBIAN": 2.0}
    agent.observe(Feedback(1, "keep", "", 0.52, up.handle))
    again = agent.propose(ctx(up.source, "cpu", 2))
    assert changes(again.source, RECIPE) == {"WEIGHT_DEBIAN": 4.0}
    assert again.description == "search (warm start): WEIGHT_DEBIAN=4.0"
    agent.observe(Feedback(2, "discard", "", 0.51, again.handle))
    following = agent.propose(ctx(up.source, "cpu", 3))
    assert changes(following.source, RECIPE) == {"WEIGHT_DEBIAN": 2.0, "WEIGHT_WORDNET": 0.5}


def test_a_kept_one_way_step_is_not_taken_again(tmp_path):
    """PRETOKENIZE=True (a GPU's first step) is kept; a choice at its end has no step again: the weights come next."""
    agent = SearchMetaAgent(tmp_path / "meta", prior=())
    agent.observe(Feedback(0, "keep", "", 0.5, {"baseline_source": RECIPE}))
    on = agent.propose(ctx(RECIPE, "gpu"))
    assert changes(on.source, RECIPE) == {"PRETOKENIZE": True}
    agent.observe(Feedback(1, "keep", "", 0.52, on.handle))
    assert changes(agent.propose(ctx(on.source, "gpu", 2)).source, on.source) == {"WEIGHT_DEBIAN": 2.0}


def test_a_step_kept_while_later_ones_ran_is_still_taken_again_and_only_once(tmp_path):
    """Pipelined: the next step (WEIGHT_WORDNET's) was proposed while the step up ran; the step up is kept after
    that. The next proposal from the new incumbent is the step up again, and a step again is never enqueued twice
    (the journal is its memory, also across a resume). At the top of a range there is no step again; the way back
    down comes after each first knob's first way."""
    state = tmp_path / "meta"
    agent = SearchMetaAgent(state, prior=())
    agent.observe(Feedback(0, "keep", "", 0.5, {"baseline_source": RECIPE}))
    up, beside = agent.propose(ctx(RECIPE, "cpu", 1)), agent.propose(ctx(RECIPE, "cpu", 2))
    assert changes(beside.source, RECIPE) == {"WEIGHT_WORDNET": 0.5}
    agent.observe(Feedback(1, "keep", "", 0.52, up.handle))
    again = agent.propose(ctx(up.source, "cpu", 3))
    assert changes(again.source, RECIPE) == {"WEIGHT_DEBIAN": 4.0}
    resumed = SearchMetaAgent(state, prior=())
    nxt = resumed.propose(ctx(up.source, "cpu", 4))
    assert changes(nxt.source, RECIPE) == {"WEIGHT_DEBIAN": 2.0, "WEIGHT_PYCODE": 2.0}
    resumed.observe(Feedback(3, "keep", "", 0.53, again.handle))
    at_top = resumed.propose(ctx(again.source, "cpu", 5))
    assert changes(at_top.source, RECIPE) == {"WEIGHT_DEBIAN": 4.0, "CPU_LR": 2e-4}
    rest = [changes(resumed.propose(ctx(again.source, "cpu", 6 + i)).source, again.source) for i in range(3)]
    # WEIGHT_DEBIAN's way down from 4 is 2, a point measured already: left out
    assert rest == [{"CPU_BATCH_SIZE": 64}, {"WEIGHT_WORDNET": 2.0}, {"WEIGHT_PYCODE": 0.5}]


def test_a_step_proposed_before_a_keep_is_rebased_as_a_step_and_the_study_hears_the_point_measured(tmp_path):
    """PRETOKENIZE=True is kept while WEIGHT_DEBIAN=2 waits (proposed on the baseline). Re-parented, the waiting step
    keeps the kept knob turned (it does not undo it), the study hears its value for the point measured, and that
    step, kept, is taken again from the incumbent it made."""
    agent = SearchMetaAgent(tmp_path / "meta", prior=())
    agent.observe(Feedback(0, "keep", "", 0.5, {"baseline_source": RECIPE}))
    first, waiting = agent.propose(ctx(RECIPE, "gpu", 1)), agent.propose(ctx(RECIPE, "gpu", 2))
    assert changes(waiting.source, RECIPE) == {"WEIGHT_DEBIAN": 2.0}
    agent.observe(Feedback(1, "keep", "", 0.52, first.handle))
    assert changes(agent.rebase(waiting.source, RECIPE, RECIPE), RECIPE) == {"WEIGHT_DEBIAN": 2.0}
    moved = agent.rebase(waiting.source, RECIPE, first.source)
    assert changes(moved, RECIPE) == {"PRETOKENIZE": True, "WEIGHT_DEBIAN": 2.0}
    agent.reparented(waiting.handle, moved)
    agent.observe(Feedback(2, "keep", "", 0.54, waiting.handle))
    trials = {t.number: t for t in agent.study.get_trials()}
    assert trials[waiting.handle["trial_number"]].state == TrialState.FAIL  # its asked point was never measured
    heard = [t for t in trials.values() if t.user_attrs.get("measured_for") == waiting.handle["trial_number"]]
    assert len(heard) == 1 and heard[0].state == TrialState.COMPLETE and heard[0].value == 0.54
    assert heard[0].params["PRETOKENIZE"] is True and heard[0].params["WEIGHT_DEBIAN"] == 2.0
    again = agent.propose(ctx(moved, "gpu", 3))
    assert changes(again.source, moved) == {"WEIGHT_DEBIAN": 4.0}


PRIOR = {"gpu": [{"PRETOKENIZE": True, "FUSED_ADAMW": True, "WEIGHT_DEBIAN": 3.0, "WEIGHT_PYCODE": 2.0,
                  "WEIGHT_WORDNET": 0.25},
                 {"PRETOKENIZE": True, "FUSED_ADAMW": True, "WEIGHT_DEBIAN": 2.0, "WEIGHT_PYCODE": 1.5,
                  "WEIGHT_WORDNET": 0.5}],
         "cpu": [{"WEIGHT_DEBIAN": 3.0, "WEIGHT_PYCODE": 2.0, "WEIGHT_WORDNET": 0.25},  # a CPU file's knobs only
                 {"WEIGHT_DEBIAN": 2.0, "WEIGHT_PYCODE": 1.5, "WEIGHT_WORDNET": 0.5}]}


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_the_prior_points_come_first_once_each_then_the_single_steps_from_the_baseline(tmp_path, device):
    """The points chosen before the loop are the first proposals, in order (their knobs that this device's trials
    read); each discarded, the single steps follow from the baseline as without them; a resumed search never
    proposes them again."""
    assert PRIOR_POINTS == tuple(PRIOR["gpu"])
    state = tmp_path / "meta"
    agent = SearchMetaAgent(state)
    agent.observe(Feedback(0, "keep", "", 0.5, {"baseline_source": RECIPE}))
    for i, point in enumerate(PRIOR[device]):
        prior = agent.propose(ctx(RECIPE, device, 1 + i))
        assert changes(prior.source, RECIPE) == point
        assert prior.description.startswith("search (prior point): ") and "chosen before the loop" in prior.hypothesis
        agent.observe(Feedback(1 + i, "discard", "", 0.49, prior.handle))
    expected = expected_steps(RECIPE, device, FIRST[device])
    resumed = SearchMetaAgent(state)
    steps = [resumed.propose(ctx(RECIPE, device, 3 + i)) for i in range(4)]
    assert [changes(p.source, RECIPE) for p in steps] == expected[:4]
    assert all(p.description.startswith("search (warm start): ") for p in steps)


def test_a_kept_prior_point_is_searched_around(tmp_path):
    """Kept, the first prior point is the new incumbent: the second comes next, as a step back from it (the
    weights it turned); discarded, the single steps go on from the first (the speed switches it turned on have no
    step left; debian doubled again to the top of its range, wordnet, at the bottom of its range, has no step down,
    pycode doubled, then the learning rate)."""
    agent = SearchMetaAgent(tmp_path / "meta")
    agent.observe(Feedback(0, "keep", "", 0.5, {"baseline_source": RECIPE}))
    prior = agent.propose(ctx(RECIPE, "gpu"))
    agent.observe(Feedback(1, "keep", "", 0.52, prior.handle))
    back = agent.propose(ctx(prior.source, "gpu", 2))
    assert changes(back.source, prior.source) == {"WEIGHT_DEBIAN": 2.0, "WEIGHT_PYCODE": 1.5, "WEIGHT_WORDNET": 0.5}
    agent.observe(Feedback(2, "discard", "", 0.51, back.handle))
    steps = [changes(agent.propose(ctx(prior.source, "gpu", 3 + i)).source, prior.source) for i in range(3)]
    assert steps == [{"WEIGHT_DEBIAN": 4.0}, {"WEIGHT_PYCODE": 4.0}, {"LR": 1e-4}]


def test_a_prior_value_outside_the_files_declaration_is_left_out(tmp_path):
    narrow = RECIPE.replace("WEIGHT_WORDNET = 1.0  # knob: log 0.25..4.0", "WEIGHT_WORDNET = 1.0  # knob: log 0.75..4.0")
    assert narrow != RECIPE
    agent = SearchMetaAgent(tmp_path / "meta")
    first = agent.propose(ctx(narrow, "cpu"))
    assert changes(first.source, narrow) == {"WEIGHT_DEBIAN": 3.0, "WEIGHT_PYCODE": 2.0}


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_a_search_never_turns_a_knob_of_the_other_device(tmp_path, device):
    other = {k.name: k.value for k in editable.knobs(RECIPE) if k.device not in (None, device)}
    assert other
    agent = SearchMetaAgent(tmp_path / "meta", startup_trials=3)
    for i in range(WARM_START_STEPS + 8):
        proposal = agent.propose(ctx(RECIPE, device, i + 1))
        values = {k.name: k.value for k in editable.knobs(proposal.source)}
        assert {n: values[n] for n in other} == other, proposal.description
        agent.observe(Feedback(i + 1, "discard", "", math.sin(i), proposal.handle))


def test_the_harness_declares_the_knobs_a_search_turns_with_todays_behaviour_as_defaults():
    knobs = {k.name: k for k in editable.knobs(HARNESS)}
    assert {n: k.value for n, k in knobs.items()} == {"MAX_TURNS": 200, "OUTPUT_LIMIT": 10_000, "READ_FILE_LIMIT": 10_000,
                                                      "FINISH_MARGIN_SHARE": 0.1, "TEMPERATURE": None}
    assert editable.adapter_hash(HARNESS) == HARNESS_SHA256


def test_the_search_on_the_harness_proposes_knob_changes_that_pass_the_smoke_check(tmp_path):
    agent = SearchMetaAgent(tmp_path / "meta")
    expected = expected_steps(HARNESS, "gpu", [])
    proposals = []
    for i in range(len(expected) + 2):
        proposals.append(agent.propose(ctx(HARNESS, "gpu", i + 1)))
        agent.observe(Feedback(i + 1, "discard", "", 0.1 * (i % 4), proposals[-1].handle))
    assert [changes(p.source, HARNESS) for p in proposals[:len(expected)]] == expected
    assert {"MAX_TURNS", "OUTPUT_LIMIT", "READ_FILE_LIMIT", "FINISH_MARGIN_SHARE", "TEMPERATURE"} == \
        {n for step in expected for n in step}
    for proposal in proposals:
        assert changes(proposal.source, HARNESS) and static_check(proposal.source, HARNESS_SHA256) is None
    # the full smoke check (one scripted turn in a process) on a step that turns the temperature and the margin
    turned = editable.set_knobs(HARNESS, {"TEMPERATURE": 0.3, "FINISH_MARGIN_SHARE": 0.05, "OUTPUT_LIMIT": 2500})
    result = smoke_check("harness", turned, HARNESS_SHA256, tmp_path / "smoke", sandbox="none", task="embed")
    assert result.ok, result.error


def editable_part(**values) -> dict:
    """The harness's editable part run as the harness process runs it, with some knobs set."""
    names: dict = {}
    exec(compile(editable.split(editable.set_knobs(HARNESS, values))[0], "baseline.py", "exec"), names)  # noqa: S102
    return names


class FakeEnv:
    def __init__(self, seconds: list[float]):
        self.prompt, self.seconds, self.calls = "task", list(seconds), 0

    def seconds_left(self) -> float:
        return self.seconds.pop(0) if len(self.seconds) > 1 else self.seconds[0]

    def complete(self, llm, messages, **kwargs):
        self.calls += 1
        return SimpleNamespace(text="done", tool_calls=[], provider_state=None)


@pytest.mark.parametrize("share, declared, turns", [(0.1, 120, 0), (0.05, 120, 1), (0.1, 3.0, 1), (0.02, 120, 1)])
def test_the_finish_margin_is_a_share_of_the_budget_under_the_runtimes_cap(share, declared, turns):
    """100 s left at the start, 8 s at the first turn: a tenth of the budget (10 s) stops it, a twentieth (5 s) does
    not, nor does a FINISH_MARGIN_S the runtime scaled below 8 s; the margin is 5 s at least."""
    names = editable_part(FINISH_MARGIN_SHARE=share)
    names["FINISH_MARGIN_S"] = declared  # as harness_runtime.scale_finish_margin leaves it
    env = FakeEnv([100.0, 8.0])
    assert names["run_task"](env, object(), []) == turns and env.calls == turns


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_the_temperature_knob_reaches_the_providers_request(provider, monkeypatch):
    from autoembed.llm.anthropic_llm import AnthropicLLM
    from autoembed.llm.base import LLMError, Message
    from autoembed.llm.openai_llm import OpenAILLM

    def client():
        return AnthropicLLM("claude-x", api_key="k") if provider == "anthropic" else OpenAILLM("gpt-x", api_key="k")

    sent = []

    def call(*args):
        sent.append(args[-1])
        raise LLMError("stop here")

    for temperature in (None, 0.3):
        llm = editable_part(TEMPERATURE=temperature)["with_temperature"](client())
        llm._call = call
        with pytest.raises(LLMError):
            llm.complete([Message("user", text="hi")], system="s", tools=None, max_tokens=16)
    assert "temperature" not in sent[0] and sent[1]["temperature"] == 0.3
    assert editable_part(TEMPERATURE=0.3)["with_temperature"](SimpleNamespace()) is not None  # a client without request()

"""Knob declarations in an editable file, device-tagged knobs, and the search meta-agent turning only the knobs
that act where the trials run."""

from __future__ import annotations

import pytest

from autoembed import editable
from autoembed.meta.base import ProposeContext
from autoembed.meta.search import SearchMetaAgent
from autoembed.paths import REPO_ROOT

RECIPE = (REPO_ROOT / "harnesses" / "recipe.py").read_text()
TOY = """LR = 5e-5  # knob[gpu]: log 5e-6..3e-4
CPU_LR = 1e-4  # knob[cpu]: log 5e-6..1e-3
SCALE = 20.0  # knob: float 5..50
BATCH = 32  # knob[cpu]: choice 8,16,32
""" + editable.BANNER + "\nprint('adapter')\n"


def test_device_tags_are_parsed_and_kept_by_set_knobs():
    knobs = {k.name: k for k in editable.knobs(TOY)}
    assert {n: k.device for n, k in knobs.items()} == {"LR": "gpu", "CPU_LR": "cpu", "SCALE": None, "BATCH": "cpu"}
    assert knobs["LR"].low == 5e-6 and knobs["BATCH"].choices == (8, 16, 32)
    changed = editable.set_knobs(TOY, {"CPU_LR": 2e-4, "BATCH": 16})
    assert "CPU_LR = 0.0002  # knob[cpu]: log 5e-6..1e-3" in changed and "BATCH = 16  # knob[cpu]:" in changed
    assert {k.name: k.device for k in editable.knobs(changed)} == {n: k.device for n, k in knobs.items()}


def test_knobs_for_a_device():
    assert [k.name for k in editable.knobs_for(TOY, "gpu")] == ["LR", "SCALE"]
    assert [k.name for k in editable.knobs_for(TOY, "cpu")] == ["CPU_LR", "SCALE", "BATCH"]
    assert [k.name for k in editable.knobs_for(TOY, None)] == ["LR", "CPU_LR", "SCALE", "BATCH"]


@pytest.mark.parametrize("line", ["X = 1  # knob[tpu]: int 0..3", "X = 1  # knob: integer 0..3", "X = 1  # knob[cpu] int 0..3"])
def test_a_malformed_knob_names_its_line_and_the_form(line):
    with pytest.raises(editable.EditableError, match=r"line 1: a knob must read .*knob\[cpu\]"):
        editable.knobs(line + "\n" + editable.BANNER + "\n")


def test_the_recipe_tags_its_device_knobs():
    devices = {k.name: k.device for k in editable.knobs(RECIPE)}
    assert {n for n, d in devices.items() if d == "cpu"} == {"CPU_LR", "CPU_BATCH_SIZE", "CPU_MAX_SEQ_LENGTH", "CPU_BF16"}
    assert {n for n, d in devices.items() if d == "gpu"} == {"LR", "BATCH_SIZE", "MAX_SEQ_LENGTH"}


@pytest.mark.parametrize("device", ["gpu", "cpu", None])
def test_search_turns_only_the_knobs_that_act_on_the_trials_device(tmp_path, device):
    agent = SearchMetaAgent(tmp_path, startup_trials=3)
    base = {k.name: k.value for k in editable.knobs(RECIPE)}
    turned = set()
    for i in range(12):
        proposal = agent.propose(ProposeContext(iteration=i + 1, incumbent_source=RECIPE, view_dir=tmp_path, device=device))
        values = {k.name: k.value for k in editable.knobs(proposal.source)}
        changed = {n for n in values if values[n] != base[n]}
        turned |= changed
        # the commit message names exactly the knobs it changed, with their new values
        listed = dict(part.split("=", 1) for part in proposal.description.removeprefix("search (TPE): ").split(", "))
        assert listed == {n: editable.format_value(values[n]) for n in changed}, proposal.description
        agent.study.tell(proposal.handle["trial_number"], float(i))
    devices = {k.name: k.device for k in editable.knobs(RECIPE)}
    assert turned == {n for n, d in devices.items() if device is None or d in (None, device)}

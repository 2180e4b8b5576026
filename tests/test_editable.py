"""Knob declarations in an editable file, device-tagged knobs, and the search meta-agent turning only the knobs
that act where the trials run."""

from __future__ import annotations

import pytest

from autoembed import editable
from autoembed.loop.meta.base import ProposeContext
from autoembed.loop.meta.search import SearchMetaAgent
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
    assert {n for n, d in devices.items() if d == "gpu"} == {"LR", "BATCH_SIZE", "MAX_SEQ_LENGTH", "FUSED_ADAMW",
                                                            "LENGTH_CHUNKS", "COMPILE", "PRETOKENIZE", "HARD_NEGATIVES",
                                                            "HARD_NEGATIVE_MINER", "HARD_NEGATIVE_MARGIN",
                                                            "CACHED_BATCH_MULTIPLE"}


@pytest.mark.parametrize("device", ["gpu", "cpu", None])
def test_search_turns_only_the_knobs_that_act_on_the_trials_device(tmp_path, device):
    agent = SearchMetaAgent(tmp_path, startup_trials=3, warm_start=0)  # TPE alone: tests/test_search_warm_start.py
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
    acting = {n for n, d in devices.items() if device is None or d in (None, device)}
    # never a knob of the other device; and nearly all of the rest within 12 proposals (a two-valued knob may keep
    # its default through one seeded run, as COMPILE does with every knob of both devices in play)
    assert turned <= acting and len(acting - turned) <= 1, acting - turned


def test_a_knob_value_too_deep_to_parse_is_an_editable_error_not_a_recursion_error():
    """ast.literal_eval of 1+1+...+1 (3,000 terms) overflows the parser's recursion limit: the search's knob
    reading must name the line, not raise RecursionError out of the loop."""
    deep = "+".join(["1"] * 3000)
    source = RECIPE.replace("LR = 5e-5", f"LR = {deep}", 1)
    assert source != RECIPE
    with pytest.raises(editable.EditableError, match="not a literal"):
        editable.knobs(source)


def test_the_size_cap_names_itself_and_counts_bytes():
    editable.check_size("x" * editable.MAX_TARGET_BYTES)
    with pytest.raises(editable.EditableError, match="256 KB"):
        editable.check_size("é" * (editable.MAX_TARGET_BYTES // 2 + 1))  # two bytes each in UTF-8

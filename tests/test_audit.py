"""`autoembed audit`'s own logic: how a case's ending is judged, the table, the exit code; a bad-input row through
the real CLI (refused, and a command that is not refused); and the damaged-ledger message the audit found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoembed.integrity import outcome
from autoembed.integrity.outcome import ATTACK, BAD_INPUT, CLEAN, ERROR, FAULT, Row


def score(status="ok", scored_as="final_model", reasons=()):
    return {"status": status, "scored_as": scored_as, "reasons": list(reasons)}


@pytest.mark.parametrize("kind,ending,ok", [
    (ATTACK, "blocked", True), (ATTACK, "detected", True), (ATTACK, "not detected", False), (ATTACK, "survived", False),
    (FAULT, "survived", True), (FAULT, "lost", False), (FAULT, "blocked", False),
    (BAD_INPUT, "refused", True), (BAD_INPUT, "traceback", False), (BAD_INPUT, "accepted", False),
    (CLEAN, "clean", True), (CLEAN, "flagged", False), (CLEAN, "detected", False),
    (ATTACK, ERROR, False), (FAULT, ERROR, False), (CLEAN, ERROR, False)])
def test_each_kind_passes_only_on_its_own_endings(kind, ending, ok):
    row = Row("c", kind, ending, "why")
    assert row.ok is ok
    shown = outcome.passed(kind, ending)
    assert shown == (ending if ok or ending == ERROR else outcome.FAILED[kind])


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown case kind"):
        Row("c", "attacks", "blocked", "why")


def test_a_cheat_is_detected_only_when_flagged_for_its_reason_and_scored_as_the_base():
    codes = ("lineage",)
    flagged = score("flagged", "base_model", ["lineage: a weight matrix turned around"])
    assert outcome.trial_verdict({}, flagged, codes) == (
        "detected", "score.json flagged, scored as the base model: lineage: a weight matrix turned around")
    # flagged for another reason: the cheat itself went unseen
    assert outcome.trial_verdict({}, score("flagged", "base_model", ["tampering: task.py"]), codes)[0] == "not detected"
    # the right reason, but its own score counted
    assert outcome.trial_verdict({}, score("flagged", "final_model", ["lineage: x"]), codes)[0] == "not detected"
    assert outcome.trial_verdict({}, score(), codes)[0] == "not detected"
    assert outcome.trial_verdict({"status": "score_failed"}, None, codes)[0] == "not detected"
    assert outcome.trial_verdict({}, score("broken", "base_model", ["too_large: 950 MB"]), ("too_large",))[0] == "detected"


def test_a_clean_agent_must_be_scored_as_itself_with_no_finding():
    meta = {"result": "clean", "exit_reason": "finished", "scores": {"dev": {"score": 0.5, "base": 0.4}}}
    assert outcome.clean_verdict(meta, score())[0] == "clean"
    assert outcome.clean_verdict(meta, score("flagged", "base_model", ["contamination: notes.txt"]))[0] == "flagged"
    assert outcome.clean_verdict(meta, score("ok", "final_model", ["note"]))[0] == "flagged"
    assert outcome.clean_verdict({**meta, "result": "not clean"}, score())[0] == "not clean"
    assert outcome.clean_verdict(meta, None)[0] == "not clean"
    # an honest agent that never saved a model proves nothing either way: an audit error, not a pass
    missing = score("broken", "base_model", ["missing_final_model: final_model/ is missing"])
    assert outcome.clean_verdict(meta, missing)[0] == ERROR


def test_table_tally_and_exit_code():
    rows = [Row("read sealed/ [bwrap]", ATTACK, "blocked", "ModuleNotFoundError | x", 3.2),
            Row("a | b", FAULT, "lost", "no\nmeta.json", 1.0)]
    lines = outcome.table(rows).splitlines()
    assert lines[0] == "| case | kind | outcome | reason | s |" and len(lines) == 4
    assert lines[2] == "| read sealed/ [bwrap] | attack | blocked | ModuleNotFoundError \\| x | 3 |"
    assert "| LOST | no meta.json |" in lines[3]  # a failing row names the failure; a reason stays on one line
    assert outcome.exit_code(rows) == 1 and outcome.tally(rows).startswith("FAIL: 2 cases")
    assert outcome.exit_code(rows[:1]) == 0 and outcome.tally(rows[:1]).startswith("PASS: 1 cases (1 blocked); 0 failed")
    assert outcome.exit_code([]) == 1, "an empty audit shows nothing: it must not pass"
    long = Row("x", CLEAN, "clean", "y" * 500)
    assert len(outcome.table([long]).splitlines()[2]) < 300


def test_bad_input_rows_through_the_real_cli(tmp_path):
    from autoembed.integrity import bad_input

    class FakeBench:  # only what _one reads: where the case's traces go
        cases = tmp_path

    refused = bad_input._one(FakeBench, "report of a missing folder", ["report", str(tmp_path / "nope")], {},
                             "no ledger.jsonl")
    assert refused.outcome == "refused" and refused.ok and "exit 2: autoembed report: error: no ledger.jsonl" in refused.reason
    accepted = bad_input._one(FakeBench, "a valid command", ["audit", "--help"], {}, "anything")
    assert accepted.outcome == "accepted" and not accepted.ok and "exit 0" in accepted.reason


def test_a_damaged_ledger_is_named_in_one_line_not_a_decoder_message(tmp_path):
    """Found by the audit: `autoembed report` on a folder whose ledger.jsonl is not JSON printed only the decoder's
    'Expecting property name ...' without naming the file."""
    from autoembed.cli import main

    (tmp_path / "ledger.jsonl").write_text('{"row_id": "r1", "status": "keep"}\n{not json\n\n')
    with pytest.raises(ValueError, match=rf"{tmp_path / 'ledger.jsonl'} line 2 is not a JSON record"):
        from autoembed.loop.ledger import Ledger

        Ledger(tmp_path).rows()
    assert main(["report", str(tmp_path)]) == 2
    (tmp_path / "ledger.jsonl").write_text(json.dumps([1, 2]) + "\n")
    with pytest.raises(ValueError, match="line 1 is not a JSON object"):
        from autoembed.loop.ledger import Ledger

        Ledger(tmp_path).rows()
    Path(tmp_path / "ledger.jsonl").write_bytes(b'{"a": 1}\n\xff\xfe\n')
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        from autoembed.loop.ledger import Ledger

        Ledger(tmp_path).rows()


def test_the_suite_covers_every_group_and_an_only_filter_narrows_it(monkeypatch):
    from autoembed.integrity import suite

    monkeypatch.setattr(suite, "engines", lambda: (["bwrap", "docker"], []))
    labels = [label for label, _ in suite.plan(object(), suite.GROUPS, None)]
    assert labels[0] == "bad input" and {"escape bwrap", "escape docker"} <= set(labels)
    for needle in ("re-initialised", "another architecture", "tokenizer changed", "link out", "huge", "NaN",
                   "runs the submitter's code", "train on dev", "gzip", "base64", "edit task.py", "sandbox killed",
                   "gpu oom", "disk full", "llm api errors", "clean recipe", "loop killed mid-score"):
        assert any(needle in label for label in labels), needle
    assert [label for label, _ in suite.plan(object(), suite.GROUPS, "escape")] == ["escape bwrap", "escape docker"]
    # an engine that is missing is a failing row, never a skipped one
    monkeypatch.setattr(suite, "engines", lambda: (["bwrap"], [Row("sandbox engine docker", ATTACK, ERROR, "no engine")]))
    [(label, thunk)] = [u for u in suite.plan(object(), ("escape",), None) if u[0] == "engines"]
    assert [r.ok for r in thunk()] == [False]

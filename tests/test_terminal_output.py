"""What a meta-agent writes reaches the terminal escaped (issue 18): a candidate whose description holds terminal
escapes (set the title, write the clipboard, return to the line start, erase it, print a fake green result line)
goes through a loop (simulated trials, tests/loop_driver.py) and its report; the description is shown, and no line
printed holds a raw control character."""

from __future__ import annotations

from autoembed import editable
from autoembed.integrity.host_bounds import RAW_CONTROLS, TERMINAL_ATTACK
from autoembed.paths import REPO_ROOT
from autoembed.loop.report import report
from tests import loop_driver
from tests.loop_driver import FilesMeta

GOOD = editable.set_knobs((REPO_ROOT / "harnesses" / "recipe.py").read_text(), {"SYMMETRIC_LOSS": True, "LR": 1e-4})


def test_a_meta_agent_description_with_escapes_prints_escaped(tmp_path):
    said: list[str] = []
    loop = loop_driver.make_loop(tmp_path / "run", 1, meta_agent=FilesMeta([(GOOD, TERMINAL_ATTACK)]), say=said.append)
    assert loop.run() == 0
    printed: list[str] = []
    report(tmp_path / "run", out=printed.append)
    for text in ("\n".join(said), "\n".join(printed)):
        assert not [c for c in RAW_CONTROLS if c in text], text[-500:]
    assert any("pwned-title" in line for line in said)  # the loop's progress showed it, made inert
    assert any("pwned-title" in line for line in printed)  # and the report's ledger


def test_a_ledger_reason_with_escapes_prints_escaped_in_the_report(tmp_path):
    """A row's reason quotes what a trial's agent wrote (a crash's last line): the report prints it escaped."""
    from autoembed.loop.ledger import Ledger

    Ledger(tmp_path).append({"row_id": "trial-0001", "iteration": 0, "kind": "baseline", "commit": "abc", "status": "crash",
                             "reason": "the agent crashed: " + TERMINAL_ATTACK, "description": "baseline"})
    printed: list[str] = []
    report(tmp_path, out=printed.append)
    text = "\n".join(printed)
    assert not [c for c in RAW_CONTROLS if c in text], text[-500:]
    assert "the agent crashed: \\x1b]0;pwned-title\\x07" in text

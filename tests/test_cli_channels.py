"""A CLI agent's output is read within bounds (issue 18): the process inside a real bwrap sandbox prints a 64 MiB
line with no newline, then a well-formed event line, then 60 MB of short lines. The host reads the long line a chunk
at a time and records it as cut, still parses the line after it, and agent.log stops at its cap with a last line
saying how much was cut."""

from __future__ import annotations

import json
import time

import pytest

from autoembed import bounded
from autoembed.agents.base import TrialContext
from autoembed.agents.cli import base as cli_base
from autoembed.agents.cli.base import CliAgent
from autoembed.sandbox.base import SandboxConfig
from autoembed.sandbox.bwrap import BwrapSandbox, bwrap_problem
from autoembed.trace import Event, TraceWriter, read_trace

pytestmark = pytest.mark.skipif(bwrap_problem() is not None, reason=f"bwrap unusable here: {bwrap_problem()}")

FLOOD = r"""
import os, sys
def put(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
chunk = b"x" * 2 ** 20
for _ in range(64):
    put(chunk)
put(b"\n" + b'{"say": "after the long line"}\n')
line = b"y" * 1023 + b"\n"
for _ in range(60 * 1024):
    put(line)
"""


class FloodingCli(CliAgent):
    """A 'CLI' that is a Python program printing the flood; its parser turns {"say": ...} lines into events."""

    name = "flooder"
    binary = "python3"
    max_turns = 1

    def argv(self, ctx, prompt, first):
        return [ctx.sandbox.python, "-c", FLOOD]

    def parse_line(self, line):
        try:
            record = json.loads(line)
        except ValueError:
            return []
        return [Event("assistant", text=record["say"])] if isinstance(record, dict) and "say" in record else []


def test_a_cli_flood_and_a_newline_less_line_are_cut_and_said(tmp_path):
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    box = BwrapSandbox(SandboxConfig(workdir=workdir, deadline=time.time() + 120))
    box.start()
    try:
        ctx = TrialContext(workdir=workdir, sandbox=box, deadline=time.time() + 120, prompt="go", model=None,
                           trace=TraceWriter(tmp_path / "trace.jsonl", source="flooder"), raw_log=tmp_path / "agent.log",
                           run_dir=tmp_path, progress=lambda line: None, reprompt_margin_s=0)
        outcome = FloodingCli().run(ctx)
    finally:
        box.stop()
    assert outcome.exit_reason == "finished", outcome.detail
    events = read_trace(tmp_path / "trace.jsonl")
    errors = [e.text for e in events if e.kind == "error"]
    assert any(f"a line of {64 * 2 ** 20 + 1} bytes from python3 was cut at {cli_base.MAX_LINE} bytes" in e for e in errors)
    assert "after the long line" in [e.text for e in events if e.kind == "assistant"]
    log = tmp_path / "agent.log"
    assert bounded.MAX_LOG_BYTES - 2 ** 20 < log.stat().st_size <= bounded.MAX_LOG_BYTES + 4096
    last = json.loads(log.read_bytes().splitlines()[-1])
    assert last["type"] == "autoembed_cut" and "more bytes were cut" in last["text"]
    assert b"[autoembed: " in log.read_bytes()[: cli_base.MAX_LINE + 200]  # the cut line is marked where it was cut

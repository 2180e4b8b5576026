"""Bounded reading of an agent's streams (autoembed/bounded.py) and escaping of what it wrote (autoembed/textsafe.py):
a newline-less line far over the bound is read a chunk at a time and cut, a log stops at its cap and says so, the
loop's view copies a head and a tail, and no control character survives the escaper."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from autoembed import bounded, textsafe

ATTACK = "\x1b]0;pwned-title\x07\x1b]52;c;cHduZWQ=\x07\r\x1b[2K\x1b[32m[autoembed] result: clean"


class Flood:
    """A stream of `size` bytes of one byte value, made a chunk at a time (never held whole), then `tail`."""

    def __init__(self, size: int, tail: bytes = b""):
        self.left, self.tail, self.largest_read = size, tail, 0

    def read1(self, n: int) -> bytes:
        self.largest_read = max(self.largest_read, n)
        if self.left > 0:
            step = min(n, self.left)
            self.left -= step
            return b"x" * step
        data, self.tail = self.tail[:n], self.tail[n:]
        return data


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_300_mb_line_without_newline_is_read_in_chunks_and_cut():
    stream = Flood(300 * 2 ** 20, b"\nafter\n")
    before, samples, done = _rss(), [], threading.Event()
    sampler = threading.Thread(target=lambda: [samples.append(_rss()) for _ in iter(lambda: done.wait(0.005), True)])
    sampler.start()
    try:
        got = [(len(line.data), line.cut) for line in bounded.lines(stream, max_line=1 << 20)]
    finally:
        done.set()
        sampler.join()
    assert got == [(1 << 20, 300 * 2 ** 20 + 1 - (1 << 20)), (6, 0)]  # the cut part counts the newline
    assert stream.largest_read <= bounded.CHUNK
    assert samples and max(samples) - before < 32 * 2 ** 20


def test_lines_keep_short_lines_whole_across_chunk_edges():
    class Chunks:
        def __init__(self, parts):
            self.parts = list(parts)

        def read1(self, n):
            return self.parts.pop(0) if self.parts else b""

    lines = list(bounded.lines(Chunks([b"ab", b"c\nd", b"ef\n\ng", b"h"]), max_line=10))
    assert [(line.data, line.cut) for line in lines] == [(b"abc\n", 0), (b"def\n", 0), (b"\n", 0), (b"gh", 0)]
    cut = list(bounded.lines(Chunks([b"0123456789abc\nok\n"]), max_line=4))
    assert cut[0].cut == 10 and cut[0].marked() == b"0123 ... [autoembed: 10 more bytes of this line cut]\n"
    assert cut[1].data == b"ok\n"


def test_a_capped_log_stops_at_its_cap_and_says_how_much_was_cut(tmp_path):
    log = bounded.CappedLog(tmp_path / "agent.log", cap=1000)
    for _ in range(50):
        log.write(b"z" * 99 + b"\n")
    log.write(b"small\n")  # nothing after the first drop: the log stays a prefix of what was sent
    log.close()
    lines = (tmp_path / "agent.log").read_bytes().splitlines()
    assert len(lines) == 11 and all(line == b"z" * 99 for line in lines[:10])
    assert json.loads(lines[-1]) == {"type": "autoembed_cut",
                                     "text": "agent.log reached its cap of 1000 bytes; 4006 more bytes were cut"}


def test_pump_keeps_a_bounded_tail(tmp_path):
    tail = bounded.Tail(100)
    with bounded.CappedLog(tmp_path / "out.log", cap=10_000) as log:
        bounded.pump(Flood(0, b"".join(b"line %d\n" % i for i in range(5000))), log, tail)
    assert tail.text().endswith("line 4999\n") and len(tail.text()) == 100
    assert (tail.text().encode() in (tmp_path / "out.log").read_bytes()) is False  # the log was cut before the end


def test_the_view_copies_a_head_and_a_tail(tmp_path):
    src = tmp_path / "agent.log"
    src.write_bytes(b"H" * 1000 + b"M" * 10_000 + b"T" * 1000)
    bounded.copy_head_tail(src, tmp_path / "copy", limit=2000)
    data = (tmp_path / "copy").read_bytes()
    assert data.startswith(b"H" * 1000) and data.endswith(b"T" * 1000) and b"M" not in data
    assert b"[autoembed: 10000 bytes cut from the middle of this copy]" in data
    small = tmp_path / "small"
    small.write_bytes(b"whole")
    bounded.copy_head_tail(small, tmp_path / "copy2", limit=2000)
    assert (tmp_path / "copy2").read_bytes() == b"whole"


def test_escape_leaves_no_control_character():
    shown = textsafe.escape(ATTACK + "\x08\x9b\u202e\x00\x7f")
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c == "\u202e" for c in shown)
    assert shown.startswith("\\x1b]0;pwned-title\\x07\\x1b]52;c;cHduZWQ=\\x07\\r\\x1b[2K\\x1b[32m[autoembed] result")
    assert shown.endswith("\\x08\\x9b\\u202e\\x00\\x7f")
    assert textsafe.escape("one\ntwo\r", keep_newlines=True) == "one\ntwo\\r"
    assert textsafe.escape("one\ntwo") == "one\\ntwo"
    assert textsafe.escape("tab\tand é ✓") == "tab\tand é ✓"  # printable text and tabs pass unchanged
    said = []
    textsafe.escaping(said.append)(ATTACK)
    assert "\x1b" not in said[0] and said[0].endswith("[autoembed] result: clean")


def test_the_loop_view_copies_a_bounded_part_of_a_trial_log(tmp_path):
    from autoembed.loop.recording import VIEW_LOG_BYTES, copy_trial_view as _copy_trial_view

    trial, view = tmp_path / "trial", tmp_path / "view"
    trial.mkdir()
    (trial / "agent.log").write_bytes(b"a" * (8 * VIEW_LOG_BYTES))
    (trial / "trace.md").write_text("# Trace\n")
    _copy_trial_view(trial, view, {"trial_id": "trial-0001"})
    assert (view / "agent.log").stat().st_size < VIEW_LOG_BYTES + 200
    assert b"bytes cut from the middle of this copy" in (view / "agent.log").read_bytes()
    assert (view / "trace.md").read_text() == "# Trace\n"


def test_trace_jsonl_stops_at_its_cap_and_says_so(tmp_path):
    from autoembed.trace import Event, TraceWriter, read_trace

    trace = TraceWriter(tmp_path / "trace.jsonl", source="any", max_bytes=10_000)
    for _ in range(100):
        trace.emit(Event("assistant", text="z" * 500))
    events = read_trace(tmp_path / "trace.jsonl")
    assert (tmp_path / "trace.jsonl").stat().st_size <= 10_000 + 300 and trace.dropped > 70
    assert events[-1].kind == "error" and "reached its cap of 10000 bytes" in events[-1].text
    assert [e.kind for e in events[:-1]] == ["assistant"] * (len(events) - 1)

"""Byte streams from an agent to the host, read and kept within bounds: the agent decides how much it writes, the
host decides how much it reads at once, keeps in memory and puts on its disk, and says where it cut.

    log = CappedLog(run_dir / "agent.log", MAX_LOG_BYTES)
    for line in lines(proc.stderr, max_line=MAX_LINE):   # never more than max_line + CHUNK bytes in memory
        log.write(line.marked())                         # past the cap: dropped, counted
    log.close()                                          # one last line says how many bytes were cut

A line longer than max_line is cut: its first max_line bytes are kept and the rest is read in chunks and thrown
away up to the next newline, so one newline-less gigabyte costs the host a chunk at a time.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

CHUNK = 1 << 16
MAX_LINE = 1 << 16  # a line of text an agent printed (its stderr, a training script's output)
MAX_LOG_BYTES = 50 * 2**20  # agent.log and every other log of what an agent printed


@dataclass
class Line:
    data: bytes  # at most max_line bytes, with its newline when nothing was cut
    cut: int = 0  # bytes of this line read and thrown away

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace").rstrip("\n")

    def marked(self) -> bytes:
        """The line as a log keeps it: a cut line ends with a marker saying how much of it was cut."""
        if not self.cut:
            return self.data if self.data.endswith(b"\n") else self.data + b"\n"
        return self.data + f" ... [autoembed: {self.cut} more bytes of this line cut]\n".encode()


def lines(stream, max_line: int = MAX_LINE, chunk: int = CHUNK) -> Iterator[Line]:
    """The lines of a binary stream, read at most `chunk` bytes at a time; a line over max_line bytes is cut."""
    read = getattr(stream, "read1", None) or stream.read
    kept, cut = bytearray(), 0
    while data := read(chunk):
        start = 0
        while start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline + 1
            room = max(0, max_line - len(kept))
            kept += data[start:min(end, start + room)]
            cut += max(0, end - start - room)
            start = end
            if newline >= 0:
                yield Line(bytes(kept), cut)
                kept, cut = bytearray(), 0
    if kept or cut:
        yield Line(bytes(kept), cut)


class CappedLog:
    """A host file an agent's output is appended to, up to `cap` bytes; the rest is counted, not written, and
    close() appends one JSON line saying how much was cut. Safe to share between threads."""

    def __init__(self, path: str | Path, cap: int = MAX_LOG_BYTES):
        self.path = Path(path)
        self.cap = cap
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")
        self.written = self._fh.tell()
        self.dropped = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> bool:
        """Append data whole, or drop it whole once it would pass the cap; False when dropped."""
        with self._lock:
            if self._fh.closed or self.dropped or self.written + len(data) > self.cap:  # the log stays a prefix
                self.dropped += len(data)
                return False
            self._fh.write(data)
            self._fh.flush()
            self.written += len(data)
            return True

    def close(self) -> None:
        with self._lock:
            if self._fh.closed:
                return
            if self.dropped:
                notice = {"type": "autoembed_cut", "text": f"{self.path.name} reached its cap of {self.cap} bytes; "
                                                            f"{self.dropped} more bytes were cut"}
                self._fh.write((json.dumps(notice) + "\n").encode())
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Tail:
    """The last `size` bytes of what went by (a crash's output, a training script's summary block)."""

    def __init__(self, size: int):
        self.size = size
        self._buf = bytearray()

    def add(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > 2 * self.size:
            del self._buf[:-self.size]

    def text(self) -> str:
        return bytes(self._buf[-self.size:]).decode("utf-8", errors="replace")


def pump(stream, log: CappedLog | None, tail: Tail | None = None, max_line: int = MAX_LINE, on_line=None) -> None:
    """Read a process's output to its end: each line (cut past max_line) into the log and the tail, and to on_line."""
    for line in lines(stream, max_line):
        data = line.marked()
        if log is not None:
            log.write(data)
        if tail is not None:
            tail.add(data)
        if on_line is not None:
            on_line(line)


def copy_head_tail(src: str | Path, dest: str | Path, limit: int) -> None:
    """Copy a host file whole if it holds at most `limit` bytes, else its first and last limit/2 bytes with a line
    between them saying how many bytes were cut (the view a meta-agent reads of a trial's logs)."""
    with open(src, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        if size <= limit:
            data = fh.read(limit)
        else:
            half = limit // 2
            head = fh.read(half)
            fh.seek(size - half)
            data = head + f"\n... [autoembed: {size - 2 * half} bytes cut from the middle of this copy] ...\n".encode() + fh.read(half)
    Path(dest).write_bytes(data)

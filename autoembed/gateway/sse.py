"""Server-sent events read incrementally from the bytes the gateway passes through (a copy; the client gets
the bytes untouched). Only what usage accounting needs: each event's name and its data parsed as JSON.
Lines end in CRLF, LF or CR; a blank line ends an event (the SSE spec)."""

from __future__ import annotations

import json
import re
from typing import Iterator

_EOL = re.compile(rb"\r\n|\r|\n")


class SSEReader:
    def __init__(self):
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, dict]]:
        self._buffer += chunk
        while True:
            match = _EOL.search(self._buffer)
            if not match or (match.group() == b"\r" and match.end() == len(self._buffer)):
                return  # no whole line yet (a lone CR at the end may be the first half of CRLF)
            line, self._buffer = self._buffer[:match.start()], self._buffer[match.end():]
            if line:
                self._field(line.decode("utf-8", "replace"))
                continue
            parsed = self._dispatch()
            if parsed is not None:
                yield parsed

    def close(self) -> Iterator[tuple[str | None, dict]]:
        """The last event of a stream cut short, or of a server that omits the final blank line."""
        if self._buffer:
            self._field(self._buffer.rstrip(b"\r").decode("utf-8", "replace"))
            self._buffer = b""
        parsed = self._dispatch()
        if parsed is not None:
            yield parsed

    def _field(self, line: str) -> None:
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)

    def _dispatch(self) -> tuple[str | None, dict] | None:
        event, data = self._event, self._data
        self._event, self._data = None, []
        if not data:
            return None
        try:
            payload = json.loads("\n".join(data))
        except ValueError:  # "[DONE]" and the like
            return None
        return (event, payload) if isinstance(payload, dict) else None

"""Server-sent events read incrementally from the bytes the gateway passes through (a copy; the client gets
the bytes untouched). Only what usage accounting needs: each event's name and its data parsed as JSON."""

from __future__ import annotations

import json
import re
from typing import Iterator

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class SSEReader:
    def __init__(self):
        self._buffer = b""

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, dict]]:
        self._buffer += chunk
        while True:
            match = _BOUNDARY.search(self._buffer)
            if not match:
                return
            frame, self._buffer = self._buffer[:match.start()], self._buffer[match.end():]
            parsed = _parse(frame)
            if parsed is not None:
                yield parsed

    def close(self) -> Iterator[tuple[str | None, dict]]:
        """A last frame without its blank line (a stream cut short, or a server that omits it)."""
        frame, self._buffer = self._buffer, b""
        parsed = _parse(frame) if frame.strip() else None
        if parsed is not None:
            yield parsed


def _parse(frame: bytes) -> tuple[str | None, dict] | None:
    event, data = None, []
    for line in frame.decode("utf-8", "replace").splitlines():
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    try:
        payload = json.loads("\n".join(data)) if data else None
    except ValueError:  # "[DONE]" and the like
        return None
    return (event, payload) if isinstance(payload, dict) else None

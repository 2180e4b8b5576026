"""Writing and reading the JSON records every part leaves (meta.json, score.json, ledger.jsonl, ...) so that a
crash or a kill at any moment leaves the old file or the whole new one, never half of one."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def write_text_atomic(path: str | Path, text: str, *, fsync: bool = False) -> None:
    """Write to a temporary file in the same folder, then rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # the process's umask applies, as to open()
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data, *, indent: int | None = 2, fsync: bool = False, strict: bool = False) -> None:
    """`data` as JSON, atomically. strict: NaN and infinity are refused (JSON has no such numbers) instead of
    written as bare NaN; values JSON cannot hold are written as their str() unless strict."""
    text = json.dumps(data, indent=indent, allow_nan=not strict, default=None if strict else str)
    write_text_atomic(path, text + ("\n" if indent is not None else ""), fsync=fsync)


def read_json(path: str | Path, default=None):
    """The JSON in `path`, or `default` when it is missing or not JSON (a record being written for the first time)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def append_jsonl(path: str | Path, record: dict) -> None:
    """One line, flushed and synced: an appended record survives a crash of the writer."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path, what: str = "a loop's records", fix: str = "give the run folder a loop wrote "
               "(traces/loops/<run-id>)") -> list[dict]:
    """Every record of a JSON-lines file ([] when it is missing); a damaged file is a ValueError naming the file,
    the line and the fix."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): not {what}; {fix}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:  # one line naming the file, not a bare decoder message
            raise ValueError(f"{path} line {number} is not a JSON record ({exc.msg}): the file is damaged or not "
                             f"{what}; {fix}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {number} is not a JSON object: {fix}")
        rows.append(row)
    return rows


def drop_partial_last_line(path: str | Path) -> None:
    """A kill mid-write can leave a last line without its newline: it was never committed, so drop it."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


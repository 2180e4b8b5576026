"""The editable files (harnesses/baseline.py, harnesses/recipe.py): the banner between the part a meta-agent
may change and the fixed adapter below it, the adapter's hash, and the knobs the editable part declares.

A knob is an ALL_CAPS constant above the banner with its range declared beside it:

    LR = 5e-5  # knob: log 5e-6..3e-4
    BATCH_SIZE = 256  # knob: choice 32,64,128,256
    WARMUP_FRACTION = 0.1  # knob: float 0.0..0.3
    MAX_TURNS = 200  # knob: int 20..400
    CPU_LR = 1e-4  # knob[cpu]: log 5e-6..1e-3

A knob tagged `[cpu]` or `[gpu]` acts only when trials run on that device (the recipe reads CPU_LR on a CPU and LR
on a GPU), so a search over trials on a GPU leaves the `[cpu]` knobs alone, and the other way round.

Read as text, never imported: the host does not run code a model wrote.
"""

from __future__ import annotations

import ast
import hashlib
import re
import threading
from dataclasses import dataclass
from typing import Any

BANNER = "# ===== FIXED ADAPTER: the meta-agent must not edit below this line ====="
KNOB_LINE = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)\s*=\s*(?P<value>[^#]+?)\s*#\s*knob(?:\[(?P<device>cpu|gpu)\])?:\s*"
                       r"(?P<kind>log|float|int|choice)\s+"
                       r"(?P<range>[^#]+?)\s*(?:#.*)?$")
ASSIGNMENT = re.compile(r"^[A-Z][A-Z0-9_]*\s*=")
KNOB_MARK = re.compile(r"#\s*knob\b")
KINDS = ("log", "float", "int", "choice")
# The largest target file the loop takes (the baseline harness is ~20 KB): an edit over it is refused, and a proposal
# over it is an invalid candidate, so no file a model writes makes the host compile, hash, diff or commit megabytes.
MAX_TARGET_BYTES = 256 * 1024


class EditableError(ValueError):
    """A file that breaks the editable-file contract (no banner, a malformed knob)."""


def split(source: str) -> tuple[str, str]:
    """(editable part, fixed adapter): the text above the banner line and the text below it."""
    if source.count(BANNER) != 1:
        raise EditableError(f"expected exactly one fixed-adapter banner line ({BANNER!r}); restore it from the baseline")
    above, below = source.split(BANNER, 1)
    return above, below


def adapter_hash(source: str) -> str:
    return hashlib.sha256(split(source)[1].encode()).hexdigest()


def check_adapter(source: str, expected_sha256: str, name: str = "the file") -> None:
    if adapter_hash(source) != expected_sha256:
        raise EditableError(f"{name}: the fixed adapter (below the banner) was edited; only the part above it may change")


def check_size(source: str, name: str = "the file") -> None:
    """EditableError when the file is over MAX_TARGET_BYTES (as UTF-8)."""
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > MAX_TARGET_BYTES:
        raise EditableError(f"{name} is {size:,} bytes, over the target file's cap of {MAX_TARGET_BYTES // 1024} KB "
                            "(editable.MAX_TARGET_BYTES): keep the file small, change it in place")


def file_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str  # log | float | int | choice
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None  # as the file has it now
    device: str | None = None  # "cpu" | "gpu": it acts only when trials run there; None: everywhere

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return self.low <= value <= self.high


def knobs(source: str) -> list[Knob]:
    """The knobs declared above the banner, in file order."""
    found = []
    for lineno, line in enumerate(split(source)[0].splitlines(), 1):
        match = KNOB_LINE.match(line)
        if match:
            found.append(_parse_knob(match, lineno))
        elif KNOB_MARK.search(line) and ASSIGNMENT.match(line):
            raise EditableError(f"line {lineno}: a knob must read `NAME = value  # knob: log|float|int|choice RANGE` "
                                f"(or `# knob[cpu]:` / `# knob[gpu]:` for one that acts on one device only), "
                                f"got {line.strip()!r}")
    names = [k.name for k in found]
    if len(names) != len(set(names)):
        raise EditableError(f"a knob is declared twice: {sorted(n for n in names if names.count(n) > 1)}")
    return found


def knobs_for(source: str, device: str | None) -> list[Knob]:
    """The knobs that act when trials run on `device` ("cpu" | "gpu"; None: unknown or mixed, so all of them)."""
    return [k for k in knobs(source) if device is None or k.device in (None, device)]


def _parse_knob(match: re.Match, lineno: int) -> Knob:
    name, kind, spec = match["name"], match["kind"], match["range"].strip()
    value = _literal(match["value"], f"line {lineno} ({name})")
    if kind == "choice":
        choices = tuple(_literal(part, f"line {lineno} ({name})") for part in spec.split(","))
        knob = Knob(name, kind, choices=choices, value=value, device=match["device"])
    else:
        low_text, sep, high_text = spec.partition("..")
        if not sep:
            raise EditableError(f"line {lineno} ({name}): a {kind} knob's range reads LOW..HIGH, got {spec!r}")
        low, high = _literal(low_text, name), _literal(high_text, name)
        if not low < high or (kind == "log" and low <= 0):
            raise EditableError(f"line {lineno} ({name}): bad range {spec!r} for a {kind} knob")
        knob = Knob(name, kind, low=low, high=high, value=value, device=match["device"])
    if not knob.contains(value):
        raise EditableError(f"line {lineno} ({name}): the value {value!r} is outside its declared range {spec!r}")
    return knob


# Python 3.11 (3.11.7 here) can fail two threads building ASTs at once with "SystemError: AST constructor recursion
# depth mismatch" (its counter is not per thread): the loop reads knobs in its main thread while trials run in
# others (seen as a simulated trial that "did not start" on two GPUs, under load)
_AST_LOCK = threading.Lock()


def _literal(text: str, where: str) -> Any:
    try:
        with _AST_LOCK:
            return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, RecursionError, MemoryError):  # 1+1+...+1 overflows the AST's recursion limit
        raise EditableError(f"{where}: {text.strip()[:80]!r} is not a literal") from None


def set_knobs(source: str, values: dict[str, Any]) -> str:
    """The source with those knobs' values replaced on their own lines; the adapter is untouched."""
    above, below = split(source)
    declared = {k.name: k for k in knobs(source)}
    unknown = set(values) - set(declared)
    if unknown:
        raise EditableError(f"not knobs of this file: {sorted(unknown)}")
    lines = above.splitlines(keepends=True)
    for i, line in enumerate(lines):
        match = KNOB_LINE.match(line.rstrip("\n"))
        if match and match["name"] in values:
            knob, value = declared[match["name"]], values[match["name"]]
            if not knob.contains(value):
                raise EditableError(f"{knob.name} = {value!r} is outside its declared range")
            start, end = match.span("value")
            lines[i] = line[:start] + format_value(value) + line[end:]
    return "".join(lines) + BANNER + below


def format_value(value: Any) -> str:
    """Floats to 4 significant digits (a knob's value stays readable in the file and its diff)."""
    if isinstance(value, float):
        return repr(float(f"{value:.4g}"))
    return repr(value)

"""Text an agent or a model wrote, made safe to print on a terminal: every control character shown as a visible
escape, so no byte of it can move the cursor, erase a line, set the window title (OSC 0) or write the clipboard
(OSC 52).

    print(f"[autoembed] {escape(line)}")          # one line: a newline in it is shown as \\n
    print(escape(block, keep_newlines=True))      # a multi-line block: newlines kept, every other control escaped

What is escaped: the C0 controls but tab (ESC, BEL, CR, backspace, ...), DEL, the C1 controls (U+0080-U+009F: a
terminal may read U+009B as CSI), and the bidi overrides and isolates (they reorder what a reader sees). Each
becomes \\xNN or \\uNNNN; printable text, tabs and non-ASCII letters pass unchanged.
"""

from __future__ import annotations

import re

_BIDI = "\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f{_BIDI}\u2028\u2029]")
_UNSAFE_KEEP_NEWLINES = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}\u2028\u2029]")


_NAMED = {"\n": "\\n", "\r": "\\r"}


def _visible(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def escape(text, keep_newlines: bool = False) -> str:
    """str(text) with its control characters shown as escapes (\\x1b, \\x07, \\r, ...); keep_newlines: a multi-line
    block keeps its line breaks (a CR is still escaped, so a line cannot be overwritten)."""
    return (_UNSAFE_KEEP_NEWLINES if keep_newlines else _UNSAFE).sub(_visible, str(text))


def escaping(say):
    """A say(message) that prints through `say` with every control character of the message escaped."""
    return lambda message: say(escape(message))

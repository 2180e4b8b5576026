"""Man pages (held-out only): the NAME line's summary -> the start of the DESCRIPTION section.

Pages come from Debian packages fetched with `apt-get download` and unpacked with `dpkg-deb -x`
into a temp dir. The roff is turned to text by a small converter here (not groff), so the output
depends on the page sources only, not on which groff a machine happens to have.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from .common import Item, is_trivial_query, norm_text, one_line, squash, truncate

PACKAGES = ["manpages", "manpages-dev", "libssl-doc", "libx11-doc", "tcl8.6-doc", "libcurl4-doc", "git-man"]

SPECIAL = {
    "em": "\u2014", "en": "\u2013", "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'",
    "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "ga": "`", "ti": "~", "ha": "^", "hy": "-",
    "mi": "-", "pl": "+", "mu": "\u00d7", "di": "\u00f7", "<=": "<=", ">=": ">=", "!=": "!=",
    "->": "->", "<-": "<-", "rs": "\\", "sl": "/", "lh": "", "rh": "", "fm": "'", "sq": "\u25a1", "**": "*",
}
PARAGRAPH = {"PP", "P", "LP", "TP", "HP", "TQ"}
ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB", "SB"}


def unescape(text: str) -> str:
    text = re.sub(r"\\[hvwlLDoxXbSRNZ]'[^']*'", "", text)
    text = re.sub(r"\\f(\(..|\[[^\]]*\]|.)", "", text)
    text = re.sub(r"\\s[+-]?(\d|\(\d\d|\[\d+\])", "", text)
    text = re.sub(r"\\\*(\(..|\[[^\]]*\]|.)", "", text)
    text = re.sub(r"\\n[+-]?(\(..|\[[^\]]*\]|.)", "", text)
    text = re.sub(r"\\\((..)", lambda m: SPECIAL.get(m.group(1), ""), text)
    text = re.sub(r"\\\[([^\]]*)\]", lambda m: SPECIAL.get(m.group(1), ""), text)
    text = text.replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ").replace("\\~", " ")
    text = re.sub(r"\\[&^|%:c0!tdu/,)]", "", text)
    text = re.sub(r"\\(.)", r"\1", text)
    return text


def _args(rest: str) -> list[str]:
    return [m.group(1) if m.group(1) is not None else m.group(2)
            for m in re.finditer(r'"((?:[^"]|"")*)"|(\S+)', rest)]


def roff_sections(source: str) -> dict[str, str]:
    """Section name -> plain text, for one page. Filled text is joined into paragraphs, as groff
    would; .nf blocks keep their lines."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    buffer: list[str] = []
    fill = True
    in_macro = False

    def flush() -> None:
        if buffer and current is not None:
            sections[current].append((" " if fill else "\n").join(buffer))
        buffer.clear()

    for raw in source.replace("\\\n", "").splitlines():
        if in_macro:
            in_macro = not raw.startswith("..")
            continue
        if raw.startswith((".\\\"", "'\\\"")) or raw.strip() in (".", "'"):
            continue
        if not raw.startswith((".", "'")):
            if not raw.strip():
                flush()
            else:
                buffer.append(unescape(raw))
            continue
        match = re.match(r"[.']\s*(\S+)\s*(.*)", raw)
        if not match:
            continue
        req, rest = match.group(1), match.group(2)
        if req in ("de", "de1", "am"):
            in_macro = True
        elif req == "SH":
            flush()
            current = one_line(unescape(" ".join(_args(rest)))).upper()
            sections.setdefault(current, [])
        elif req in ("nf", "EX"):
            flush()
            fill = False
        elif req in ("fi", "EE"):
            flush()
            fill = True
        elif req in PARAGRAPH or req in ("SS", "IP", "sp", "br"):
            flush()
            args = _args(rest)
            if req in ("SS", "IP") and args:
                buffer.append(unescape(args[0] if req == "IP" else " ".join(args)))
                if req == "SS":
                    flush()
        elif req in ALTERNATING:
            buffer.append(unescape("".join(_args(rest))))
        elif req in ("B", "I", "SM", "BX"):
            buffer.append(unescape(" ".join(_args(rest))))
        # anything else is layout, not text
    flush()
    return {name: squash("\n".join(paras)) for name, paras in sections.items()}


def page_item(path: Path, package: str) -> Item | None:
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        source = fh.read()
    if re.match(r"\s*\.so\s", source):
        return None  # a link to another page
    sections = roff_sections(source)
    name = one_line(sections.get("NAME", ""))
    description = sections.get("DESCRIPTION", "")
    if not name or " - " not in name or len(description) < 100:
        return None
    names, _, summary = name.partition(" - ")
    summary = summary.strip()
    doc = truncate(description)
    if is_trivial_query(summary, doc):
        return None
    page = path.name.removesuffix(".gz")
    return Item(domain="manpages", group=f"{package}:{page}", key=f"{package}/{page}",
                query=summary, doc=doc)


def load_items(extracted: dict[str, Path]) -> tuple[list[Item], dict]:
    """extracted: package name -> the folder it was unpacked into."""
    items: list[Item] = []
    seen: set[str] = set()
    stats = {"pages": 0, "skipped": 0, "duplicate": 0}
    for package, root in extracted.items():
        for path in sorted((root / "usr/share/man").rglob("*.gz")):
            if path.is_symlink() or not path.is_file():
                continue
            stats["pages"] += 1
            item = page_item(path, package)
            if item is None:
                stats["skipped"] += 1
                continue
            keys = ["q:" + norm_text(item.query), "d:" + norm_text(item.doc)]
            if any(k in seen for k in keys):
                stats["duplicate"] += 1
                continue
            seen.update(keys)
            items.append(item)
    stats["items"] = len(items)
    return items, stats

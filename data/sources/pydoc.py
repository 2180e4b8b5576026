"""Python library reference (held-out only), from Debian python3.11-doc's HTML:
the first sentence of an entry -> its signature plus the rest of the entry.

An entry is a Sphinx <dl class="py function|method|class|..."> under library/. Nested entries
(methods of a class) are entries of their own and are left out of their parent's text.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from .common import Item, first_sentence, is_trivial_query, norm_text, one_line, squash, truncate

HTML_DIR = "usr/share/doc/python3.11/html/library"
KINDS = {"function", "method", "class", "exception", "classmethod", "staticmethod", "decorator",
         "decoratormethod", "coroutinefunction", "coroutinemethod", "abstractmethod"}
BREAKS = {"p", "div", "pre", "li", "dt", "dd", "table", "tr", "h1", "h2", "h3", "blockquote", "br"}


class _Entries(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.entries: list[dict] = []
        self._stack: list[dict] = []  # open py entries, innermost last
        self._dl: list[bool] = []  # for each open <dl>: is it a py entry?
        self._skip = 0  # inside a headerlink anchor

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "dl":
            is_entry = len(classes) == 2 and classes[0] == "py" and classes[1] in KINDS
            self._dl.append(is_entry)
            if is_entry:
                self._stack.append({"kind": classes[1], "id": "", "sig": [], "body": [], "state": "new"})
            return
        if not self._stack:
            return
        top = self._stack[-1]
        if tag == "dt" and top["state"] == "new":
            top["state"], top["id"] = "sig", attrs.get("id") or ""
        elif tag == "dd" and top["state"] == "sig_done":
            top["state"] = "body"
        elif tag == "a" and "headerlink" in classes:
            self._skip += 1
        elif tag in BREAKS and top["state"] == "body":
            top["body"].append("\n\n" if tag == "p" else "\n")

    def handle_endtag(self, tag):
        if tag == "dl" and self._dl:
            if self._dl.pop():
                self.entries.append(self._stack.pop())
            return
        if not self._stack:
            return
        top = self._stack[-1]
        if tag == "dt" and top["state"] == "sig":
            top["state"] = "sig_done"
        elif tag == "a" and self._skip:
            self._skip -= 1
        elif tag in BREAKS and top["state"] == "body":
            top["body"].append("\n\n" if tag == "p" else "\n")

    def handle_data(self, data):
        if not self._stack or self._skip:
            return
        top = self._stack[-1]
        if top["state"] == "sig":
            top["sig"].append(data)
        elif top["state"] == "body":
            top["body"].append(data)


def _clean_body(parts: list[str]) -> str:
    text = "".join(parts)
    paragraphs = [one_line(p) for p in re.split(r"\n\s*\n", text)]
    return squash("\n".join(p for p in paragraphs if p))


def page_items(path: Path) -> list[Item]:
    parser = _Entries()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    page = path.name.removesuffix(".html")
    items = []
    for entry in parser.entries:
        signature = one_line("".join(entry["sig"]))
        body = _clean_body(entry["body"])
        if not signature or not body or not entry["id"]:
            continue
        first_para = body.split("\n", 1)[0]
        query = first_sentence(first_para)
        rest = body[len(query):].strip() if body.startswith(query) else body
        doc = truncate(signature + "\n" + rest)
        if len(query.split()) < 4 or len(doc) < 60 or is_trivial_query(query, doc, min_words=4):
            continue
        items.append(Item(domain="pydoc", group=f"pydoc:{page}", key=entry["id"], query=query, doc=doc))
    return items


def load_items(extracted: Path) -> tuple[list[Item], dict]:
    items: list[Item] = []
    seen: set[str] = set()
    stats = {"pages": 0, "duplicate": 0}
    for path in sorted((extracted / HTML_DIR).glob("*.html")):
        stats["pages"] += 1
        for item in page_items(path):
            keys = ["k:" + item.key, "q:" + norm_text(item.query), "d:" + norm_text(item.doc)]
            if any(k in seen for k in keys):
                stats["duplicate"] += 1
                continue
            seen.update(keys)
            items.append(item)
    stats["items"] = len(items)
    stats["groups"] = len({i.group for i in items})
    return items, stats

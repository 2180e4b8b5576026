"""WordNet 3.0 (Debian wordnet-base): gloss (definition) -> the synset's lemma names.

group = the document text (the lemma list), not the synset: many synsets share one lemma list
("bank" has ten noun senses), and identical documents must not straddle a split.
"""

from __future__ import annotations

import re
from pathlib import Path

from .common import Item, is_trivial_query, norm_text, one_line

POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}


def parse_line(line: str) -> tuple[str, list[str], str] | None:
    """One data.* line -> (synset id, lemma names, definition without its examples)."""
    if line.startswith("  ") or "|" not in line:
        return None  # license header
    head, _, gloss = line.partition("|")
    fields = head.split()
    offset, pos, count = fields[0], fields[2], int(fields[3], 16)
    lemmas = []
    for i in range(count):
        word = re.sub(r"\((a|p|ip)\)$", "", fields[4 + 2 * i])
        lemmas.append(word.replace("_", " "))
    # the gloss is "definition; "example"; "example"" -- keep the definition only, since the
    # examples usually contain the lemma itself and would make the task lexical
    definition = re.split(r';\s*"', gloss.strip(), maxsplit=1)[0].strip().rstrip(";").strip()
    return f"{pos}{offset}", lemmas, one_line(definition)


def load_items(wordnet_dir: Path) -> tuple[list[Item], dict]:
    items: list[Item] = []
    stats = {"synsets": 0, "trivial": 0}
    for pos, filename in POS_FILES.items():
        with open(wordnet_dir / filename, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parsed = parse_line(line)
                if not parsed:
                    continue
                stats["synsets"] += 1
                synset, lemmas, definition = parsed
                doc = ", ".join(dict.fromkeys(lemmas))
                if is_trivial_query(definition, doc, min_words=2):
                    stats["trivial"] += 1
                    continue
                items.append(Item(domain="wordnet", group=norm_text(doc), key=synset,
                                  query=definition, doc=doc))
    stats["items"] = len(items)
    stats["groups"] = len({i.group for i in items})
    return items, stats

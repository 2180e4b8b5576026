"""Near-duplicate detection across splits: exact normalized text and shared 13-grams.

A 13-gram is 13 consecutive lowercased whitespace tokens, the unit the contamination audit uses.
Grams are kept as Python hashes: stable within one process, which is all a build or a test needs.
"""

from __future__ import annotations

from collections.abc import Iterable

N = 13


def grams(text: str, n: int = N) -> set[int]:
    tokens = text.lower().split()
    return {hash(tuple(tokens[i: i + n])) for i in range(len(tokens) - n + 1)}


class TextIndex:
    """Normalized texts and 13-grams of one side of a split boundary."""

    def __init__(self) -> None:
        self.texts: set[str] = set()
        self.grams: set[int] = set()

    def add(self, text: str) -> None:
        self.texts.add(" ".join(text.lower().split()))
        self.grams.update(grams(text))

    def add_all(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.add(text)

    def hits(self, text: str) -> bool:
        """Does text duplicate, or share a 13-gram with, anything indexed here?"""
        if " ".join(text.lower().split()) in self.texts:
            return True
        tokens = text.lower().split()
        return any(hash(tuple(tokens[i: i + N])) in self.grams for i in range(len(tokens) - N + 1))

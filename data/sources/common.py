"""What every source module shares: the Item record, text clean-up, and fetching into temp dirs."""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

MAX_CHARS = 2000  # the model reads 256 tokens; ~2,000 characters is already past that


@dataclass
class Item:
    """One query -> document pair. group is the split unit (source package, module, synset)."""

    domain: str
    group: str
    key: str  # unique within the domain; becomes the query id (and the doc id when the doc is unique)
    query: str
    doc: str


def squash(text: str) -> str:
    """Collapse runs of spaces and tabs and trailing whitespace, keep paragraph breaks."""
    lines = [re.sub(r"[ \t]+", " ", line).rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def one_line(text: str) -> str:
    return " ".join(text.split())


def truncate(text: str, limit: int = MAX_CHARS) -> str:
    """Cut at the last line or word break before limit, so no passage ends mid-word."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    for sep in ("\n", " "):
        pos = cut.rfind(sep)
        if pos > limit // 2:
            return cut[:pos].rstrip()
    return cut


def norm_text(text: str) -> str:
    """The text as compared for exact duplicates: lowercased, whitespace-collapsed."""
    return " ".join(text.lower().split())


def first_sentence(paragraph: str) -> str:
    """Text up to the first '. ' (or '.' at the end), ignoring common abbreviations."""
    text = one_line(paragraph)
    for match in re.finditer(r"[.!?](\s|$)", text):
        head = text[: match.start() + 1]
        if re.search(r"\b(e\.g|i\.e|etc|vs|cf|Dr|Mr|approx|resp|incl)\.$", head):
            continue
        return head
    return text


def is_trivial_query(query: str, doc: str, min_words: int = 3) -> bool:
    """Too short to mean anything, a cross-reference stub, or literally contained in its document."""
    words = query.split()
    if len(words) < min_words or len(query) < 12:
        return True
    if re.match(r"^(see|same as|alias (for|of)|deprecated|obsolete|an alias)\b", query.strip(), re.I):
        return True
    return norm_text(query) in norm_text(doc)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def apt_download(package: str, dest: Path) -> Path:
    """`apt-get download` into dest (never installs), returns the .deb path."""
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.glob(f"{package}_*.deb"))
    if not existing:
        subprocess.run(["apt-get", "download", "-q", package], cwd=dest, check=True,
                       stdout=subprocess.DEVNULL)
        existing = sorted(dest.glob(f"{package}_*.deb"))
    if not existing:
        raise RuntimeError(f"apt-get download {package} left no .deb in {dest}; run apt-get update first")
    return existing[-1]


def deb_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                          capture_output=True, text=True).stdout.strip()


def dpkg_extract(deb: Path, dest: Path) -> Path:
    """`dpkg -x` into a temp dir (the files never land in /usr)."""
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / ".extracted"
    if not marker.exists():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
        marker.write_text(deb.name)
    return dest

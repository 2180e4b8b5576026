"""Debian package metadata: synopsis -> long description (English, from Translation-en).

Reads the apt list files of the configured suites (run `apt-get update -o Acquire::Languages=en`
first; the image turns Translation-en off by default). group = the *source* package, because the
binaries built from one source share most of their description text.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .common import Item, is_trivial_query, norm_text, squash, truncate

APT_HELPER = "/usr/lib/apt/apt-helper"


def read_list(path: Path) -> str:
    """apt stores lists compressed (lz4 here); apt-helper cat-file reads any of its formats."""
    return subprocess.run([APT_HELPER, "cat-file", str(path)], check=True, capture_output=True,
                          text=True, errors="replace").stdout


def stanzas(text: str):
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and last:
                fields[last] += "\n" + line
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if fields:
            yield fields


def _version_key(version: str):
    # good enough to pick the newest of the few versions a suite stack offers (updates > release)
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", version)]


def list_files(lists_dir: Path) -> tuple[list[Path], list[Path]]:
    packages = sorted(p for p in lists_dir.glob("*_binary-amd64_Packages*") if not p.name.endswith(".diff"))
    translations = sorted(lists_dir.glob("*_i18n_Translation-en*"))
    if not packages or not translations:
        raise FileNotFoundError(
            f"{lists_dir}: no *_Packages or *_Translation-en lists; run "
            "`apt-get update -o Acquire::Languages=en` first"
        )
    return packages, translations


def release_info(lists_dir: Path) -> dict[str, dict[str, str]]:
    """Suite, Version and Date of every InRelease file: what 'the apt lists' meant on build day."""
    info = {}
    for path in sorted(lists_dir.glob("*InRelease")):
        fields = next(stanzas(path.read_text(errors="replace").split("\n-----BEGIN PGP SIGNATURE")[0]
                              .split("\n\n", 1)[-1]), {})
        info[path.name] = {k: fields.get(k, "") for k in ("Suite", "Codename", "Version", "Date")}
    return info


def description_body(raw: str) -> str:
    """Debian's long-description format: a leading space per line, ' .' for a blank line."""
    lines = []
    for line in raw.splitlines():
        line = line[1:] if line.startswith(" ") else line
        lines.append("" if line.strip() == "." else line)
    return squash("\n".join(lines))


def load_items(lists_dir: Path) -> tuple[list[Item], dict]:
    packages, translations = list_files(lists_dir)
    by_md5: dict[str, tuple[str, str]] = {}
    for path in translations:
        for st in stanzas(read_list(path)):
            md5, desc = st.get("Description-md5"), st.get("Description-en")
            if md5 and desc:
                synopsis, _, body = desc.partition("\n")
                by_md5[md5] = (synopsis.strip(), description_body(body))
    newest: dict[str, dict[str, str]] = {}
    for path in packages:
        for st in stanzas(read_list(path)):
            name = st.get("Package")
            if not name:
                continue
            if name not in newest or _version_key(st.get("Version", "")) > _version_key(newest[name].get("Version", "")):
                newest[name] = st
    items: list[Item] = []
    seen: set[tuple[str, str]] = set()
    stats = {"binary_packages": len(newest), "no_translation": 0, "trivial": 0, "duplicate": 0}
    for name in sorted(newest):
        st = newest[name]
        found = by_md5.get(st.get("Description-md5", ""))
        if not found:
            stats["no_translation"] += 1
            continue
        synopsis, body = found
        source = st.get("Source", name).split()[0]  # "Source: foo (1.2-3)" names a different version
        doc = truncate(body)
        if len(doc) < 80 or is_trivial_query(synopsis, doc):
            stats["trivial"] += 1
            continue
        # binaries of one source often repeat a description or a synopsis verbatim: keep the first
        dup_keys = [(source, "d:" + norm_text(doc)), (source, "q:" + norm_text(synopsis))]
        if any(k in seen for k in dup_keys):
            stats["duplicate"] += 1
            continue
        seen.update(dup_keys)
        items.append(Item(domain="debian", group=source, key=name, query=synopsis, doc=doc))
    stats["items"] = len(items)
    stats["groups"] = len({i.group for i in items})
    return items, stats

"""Did the agent change the files it was given? task.py, timer.sh, instructions.md and the data files
are compared with the sha256 recorded when the workdir was seeded (the harness-side seed manifest).

Without a manifest, what is deterministic is recomputed: task.py (from the template, the task and the
base model path it names) and the data files (from the harness's own data). timer.sh and
instructions.md carry the deadline, which only the manifest knows, so they are reported unchecked.
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

from autoembed import nofollow
from autoembed.task.base_model import file_sha256
from autoembed.task.seed import AGENT_FILES, data_sources, render_task_py
from autoembed.task.spec import TaskSpec


def expected_hashes(spec: TaskSpec, base_model: str, workdir: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """(relative path -> sha256 of what seeding writes, files that cannot be recomputed).
    A sandbox may have seeded task.py with another BASE_MODEL path: the one the workdir's task.py
    names is used (whatever it names, lineage judges the submitted weights)."""
    if workdir is not None:
        base_model = _named_base_model(workdir) or base_model
    expected = {"task.py": hashlib.sha256(render_task_py(spec, base_model).encode("utf-8")).hexdigest()}
    for rel, source in data_sources(spec).items():
        expected[rel] = file_sha256(source)
    return expected, [f for f in AGENT_FILES if f not in expected]


def _named_base_model(workdir: Path) -> str | None:
    try:
        text = nofollow.read_text(workdir, "task.py", limit=20000)
    except OSError:
        return None
    match = re.search(r"^BASE_MODEL = (.+)$", text, re.M)
    try:
        value = ast.literal_eval(match.group(1)) if match else None
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


def seeded_hashes(manifest: dict | None, spec: TaskSpec, base_model: str,
                  workdir: Path | None = None) -> tuple[dict[str, str], list[str], str]:
    """(expected hashes, unchecked files, "manifest" | "recomputed")."""
    if manifest is not None:
        return dict(manifest["files"]), [], "manifest"
    expected, unchecked = expected_hashes(spec, base_model, workdir)
    return expected, unchecked, "recomputed"


def check_tampering(workdir: Path, manifest: dict | None, spec: TaskSpec, base_model: str) -> dict:
    """{"flagged", "reasons", "source": "manifest"|"recomputed", "modified", "missing", "replaced",
    "added", "unchecked"}."""
    workdir = Path(workdir)
    expected, unchecked, source = seeded_hashes(manifest, spec, base_model, workdir)
    modified, missing, replaced = [], [], []
    for rel, sha in sorted(expected.items()):
        try:  # a link anywhere on the path (not only at the file) is never followed
            if nofollow.file_sha256(workdir, rel) != sha:
                modified.append(rel)
        except nofollow.LinkRefused:
            replaced.append(rel)
        except (FileNotFoundError, NotADirectoryError):
            missing.append(rel)
    seeded_dirs = {str(Path(rel).parent) for rel in expected if rel.startswith("data/")}
    added = sorted(
        str(p.relative_to(workdir)) for d in seeded_dirs if (workdir / d).is_dir() and not (workdir / d).is_symlink()
        for p in (workdir / d).iterdir() if str(p.relative_to(workdir)) not in expected
    )
    reasons = []
    if modified:
        reasons.append(f"seeded files were modified: {modified}")
    if missing:
        reasons.append(f"seeded files were deleted: {missing}")
    if replaced:
        reasons.append(f"seeded files were replaced by links or folders: {replaced}")
    if added:
        reasons.append(f"files were added to the seeded data folders: {added[:10]}")
    report = {"flagged": bool(reasons), "reasons": reasons, "source": source, "modified": modified,
              "missing": missing, "replaced": replaced, "added": added, "unchecked": unchecked}
    if source == "recomputed":
        report["note"] = ("no seed manifest was found: task.py and the data were checked against what seeding "
                          f"writes; {unchecked} hold the deadline and were not checked")
    return report


def seeded_unchanged(workdir: Path, expected: dict[str, str]) -> set[str]:
    """Relative paths of seeded files that are still as seeded (the contamination scan skips them)."""
    out = set()
    for rel, sha in expected.items():
        try:
            if nofollow.file_sha256(workdir, rel) == sha:
                out.add(rel)
        except OSError:
            continue
    return out

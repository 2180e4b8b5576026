"""Is final_model/ a valid submission? Checks before, while and after loading it, none of which crash.

Each problem is a Finding with a code, a status ("broken": the submission does not work as a model;
"flagged": it breaks a rule) and a message that names the fix. The model is loaded only when the
static checks pass: no pickle, no symlink leaving the workdir, sentence-transformers modules only,
nothing named outside final_model (references.py), a sane size, finite weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from autoembed.sealed import references

# Pickle-based formats: loading them can run code. Safetensors only.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
SIZE_FACTOR = 10  # final_model may be at most this many times the base model's bytes ...
MAX_BYTES = 2 * 1024**3  # ... and at most 2 GiB (unless the base itself is over 1 GiB: then 2x the base)
MODULE_PREFIX = "sentence_transformers."  # modules.json may name only sentence-transformers' own modules
PROBES = (
    "How do I list the files in a directory?",
    "library for parsing command-line options",
    "def add(a, b):\n    return a + b",
    "a small domesticated carnivorous mammal",
    "",
    "x" * 2000,
)


@dataclass
class Finding:
    code: str
    status: str  # "broken" or "flagged"
    message: str


def size_limit(base_bytes: int) -> int:
    return min(SIZE_FACTOR * base_bytes, max(MAX_BYTES, 2 * base_bytes))


def folder_bytes(folder: Path) -> int:
    """Apparent size (st_size, so a sparse file counts in full) of the regular files under folder."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total


def escaping_symlinks(workdir: Path, limit: int = 20) -> list[tuple[str, str]]:
    """(relative path, target) of symlinks under workdir whose target resolves outside it."""
    real = Path(os.path.realpath(workdir))
    out = []
    for root, dirs, files in os.walk(workdir):  # followlinks=False: a symlinked dir is listed, not entered
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                target = Path(os.path.realpath(path))
                if target != real and real not in target.parents:
                    out.append((str(path.relative_to(workdir)), os.readlink(path)))
                    if len(out) >= limit:
                        return out
    return out


def check_static(workdir: Path, base_bytes: int, final: Path | None = None,
                 base: Path | None = None) -> tuple[list[Finding], dict]:
    """Everything that can be checked without loading: returns (findings, facts). final: the submission's folder
    (default workdir/final_model; a trial passes the copy it froze). base: the base model's folder, whose own
    references (references.outside_references) a submission may keep."""
    findings: list[Finding] = []
    facts: dict = {}
    final = Path(final) if final is not None else workdir / "final_model"
    escapes = escaping_symlinks(workdir)
    if escapes:
        facts["symlinks_outside"] = [f"{p} -> {t}" for p, t in escapes]
        findings.append(Finding("symlink_outside_workdir", "flagged",
                                f"symlinks point outside the workdir: {facts['symlinks_outside'][:5]}; "
                                "keep every file of the submission inside the workdir"))
    left_behind = workdir / "final_model"
    if final != left_behind and not final.exists() and left_behind.is_dir() and not left_behind.is_symlink():
        findings.append(Finding("not_frozen", "broken",
                                "final_model/ was not copied out of the workdir: the freeze refused it before copying "
                                "(meta.json final_model.error says why: over the size limit, too many files, too deep, "
                                "or unreadable); save only the model"))
        return findings, facts
    if final.is_symlink() or not final.is_dir():
        what = "a symlink" if final.is_symlink() else ("a file" if final.exists() else "missing")
        findings.append(Finding("missing_final_model", "broken",
                                f"final_model/ is {what}; save the model with model.save('final_model') in the workdir"))
        return findings, facts
    if any(p.startswith("final_model") for p, _ in escapes):
        findings.append(Finding("final_model_symlink", "broken",
                                "final_model/ holds symlinks that leave the workdir; copy the files in instead"))
        return findings, facts
    special = sorted(str(p.relative_to(final)) for p in final.rglob("*")
                     if not p.is_symlink() and not p.is_dir() and not p.is_file())
    if special:
        findings.append(Finding("not_loadable", "broken",
                                f"final_model/ holds special files (pipes, sockets, devices): {special[:5]}; save plain files"))
        return findings, facts
    size = folder_bytes(final)
    facts["bytes"] = size
    facts["max_bytes"] = size_limit(base_bytes)
    if size > facts["max_bytes"]:
        findings.append(Finding("too_large", "broken",
                                f"final_model/ holds {size / 1e6:.0f} MB, over the limit of {facts['max_bytes'] / 1e6:.0f} MB "
                                f"({SIZE_FACTOR}x the base model, at most {MAX_BYTES / 2**30:.0f} GiB); save only the model"))
        return findings, facts
    pickles = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        findings.append(Finding("pickle_weights", "broken",
                                f"final_model/ holds pickle files {pickles[:5]}; save weights as safetensors "
                                "(model.save() does by default) and delete the pickle files"))
    modules = _module_types(final)
    facts["modules"] = modules
    unsafe = [m for m in modules if not m.startswith(MODULE_PREFIX)]
    if unsafe:
        findings.append(Finding("unsafe_module", "broken",
                                f"modules.json names modules outside sentence-transformers: {unsafe}; keep the base model's modules"))
    if isinstance(modules, list) and not modules and (final / "modules.json").exists():
        findings.append(Finding("not_loadable", "broken", "modules.json is not a valid list of modules"))
    outside = references.outside_references(final, base)
    if outside:
        facts["outside_references"] = outside
        findings.append(Finding("outside_reference", "broken",
                                f"final_model names what lies outside it, so it is not loaded: {'; '.join(outside[:5])}"))
    weights = sorted(p for p in final.rglob("*.safetensors") if p.is_file() and not p.is_symlink())
    if not weights:
        findings.append(Finding("not_loadable", "broken", "final_model/ holds no .safetensors weights; save with model.save()"))
    else:
        bad = _nonfinite_tensors(weights, final)
        if bad is None:
            findings.append(Finding("not_loadable", "broken", "a .safetensors file in final_model/ cannot be read"))
        elif bad:
            facts["nonfinite_tensors"] = bad[:10]
            findings.append(Finding("nan_weights", "broken",
                                    f"weights hold NaN or inf values ({len(bad)} tensors, e.g. {bad[:3]}); "
                                    "save a checkpoint from before training diverged"))
    return findings, facts


def _module_types(final: Path) -> list[str]:
    path = final / "modules.json"
    if not path.is_file():
        return []
    try:
        modules = json.loads(path.read_text())
        return [str(m.get("type", "")) for m in modules]
    except (ValueError, AttributeError, TypeError):
        return []


def _nonfinite_tensors(weights: list[Path], final: Path) -> list[str] | None:
    from safetensors import safe_open

    bad = []
    try:
        for path in weights:
            with safe_open(str(path), framework="pt") as fh:
                for key in fh.keys():
                    tensor = fh.get_tensor(key)
                    if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                        bad.append(f"{path.relative_to(final)}:{key}")
    except Exception:  # noqa: BLE001 - any unreadable file is a broken submission, never a crash
        return None
    return bad


def load_submission(final: Path, device: str, base: Path | None = None):
    """SentenceTransformer(final_model), offline, without remote code. Raises on failure, and before reading
    anything when final names what lies outside it (base: as in check_static; the base model passes itself)."""
    from sentence_transformers import SentenceTransformer

    from autoembed.task.base_model import offline_env

    outside = references.outside_references(Path(final), base)
    if outside:
        raise ValueError(f"{final} names what lies outside it: {'; '.join(outside[:5])}")
    offline_env()
    return SentenceTransformer(str(final), device=device, trust_remote_code=False, local_files_only=True)


def probe(model, base_dim: int) -> tuple[list[Finding], dict]:
    """Encode probe sentences: the output must be finite and base_dim wide."""
    try:
        emb = np.asarray(model.encode(list(PROBES), convert_to_numpy=True, batch_size=8, show_progress_bar=False))
    except Exception as exc:  # noqa: BLE001
        return [Finding("not_loadable", "broken", f"encoding probe sentences failed: {type(exc).__name__}: {exc}")], {}
    facts = {"embedding_dim": int(emb.shape[-1]) if emb.ndim == 2 else None, "base_dim": base_dim}
    findings = []
    if emb.ndim != 2 or emb.shape[1] != base_dim:
        findings.append(Finding("wrong_embedding_dim", "broken",
                                f"embeddings have shape {tuple(emb.shape)}, expected (n, {base_dim}) like the base model; "
                                "keep the base model's modules and output size"))
    if not np.isfinite(emb).all():
        findings.append(Finding("nan_outputs", "broken", "the model outputs NaN or inf embeddings on probe sentences"))
    return findings, facts


def check_submission(workdir: Path, base_bytes: int, base_dim: int, device: str = "cpu", final: Path | None = None,
                     base: Path | None = None):
    """Returns (report, model or None). report: {"ok", "findings": [...], facts...}. final, base: as in check_static."""
    workdir = Path(workdir)
    final = Path(final) if final is not None else workdir / "final_model"
    findings, facts = check_static(workdir, base_bytes, final, base)
    model = None
    if not any(f.status == "broken" for f in findings):
        try:
            model = load_submission(final, device, base)
        except Exception as exc:  # noqa: BLE001 - a submission that does not load is broken, never a crash
            findings.append(Finding("not_loadable", "broken",
                                    f"SentenceTransformer('final_model') failed: {type(exc).__name__}: {str(exc)[:300]}"))
        else:
            more, probe_facts = probe(model, base_dim)
            findings += more
            facts.update(probe_facts)
            if any(f.status == "broken" for f in more):
                model = None
    report = {"ok": not findings, "findings": [asdict(f) for f in findings], **facts}
    return report, model

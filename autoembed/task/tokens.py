"""Token features of fixed texts, computed once with a SentenceTransformer's own preprocessing and cached.

The evaluation texts never change, so their token ids are computed once with the model's own
preprocessing (SentenceTransformer.preprocess, the path encode_query / encode_document take, with
the model's "query" / "document" prompts) and cached on disk, keyed by a fingerprint of the
tokenizer, max_seq_length, prompt and the texts (and in memory, a few sets per process).
autoembed.task.encode runs the model's forward on them.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import weakref
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT_VERSION = 1
ROLES = ("query", "document")
PREPROCESS_CHUNK = 1024  # texts per preprocess call when filling the cache
MEMORY_ENTRIES = 16  # token sets kept in memory per process


class UnsupportedFeatures(Exception):
    """The model's preprocessing output cannot be cached as per-token ids."""


@dataclass
class Tokens:
    """Unpadded per-token features of a list of texts, stored back to back."""

    lengths: np.ndarray  # (n,) tokens of each stored text
    text_index: np.ndarray  # (n,) which input text each stored row is
    features: dict[str, np.ndarray]  # key -> (sum(lengths),) values, attention_mask excluded
    meta: dict  # dtypes, pad values, padding side, per-batch constants (modality, prompt_length)

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())


# ---------------------------------------------------------------------------------------------
# Tokenizing, with a disk cache
# ---------------------------------------------------------------------------------------------


def role_prompt(model, role: str) -> str | None:
    """The prompt encode_query / encode_document would use: the model's prompt named after the
    role, else its default prompt, else none."""
    prompts = getattr(model, "prompts", None) or {}
    if role in prompts:
        return prompts[role]
    default = getattr(model, "default_prompt_name", None)
    return prompts.get(default) if default else None


_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(model) -> str:
    """A hash of everything that decides the token ids: the tokenizer's full definition (vocab,
    normalizer, pre-tokenizer, post-processor), the first module's config and the library versions."""
    try:
        tokenizer = model.tokenizer
    except AttributeError:
        raise UnsupportedFeatures("the model's first module has no tokenizer") from None
    if tokenizer is None:
        raise UnsupportedFeatures("the model's first module has no tokenizer")
    try:
        return _fingerprints[tokenizer]
    except (KeyError, TypeError):
        pass
    import sentence_transformers
    import transformers

    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        # truncation / padding are call-time state that the tokenizer library writes into the backend
        definition.pop("truncation", None)
        definition.pop("padding", None)
        digest.update(json.dumps(definition, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        digest.update(repr(tokenizer).encode())
    first = model[0]
    config = first.get_config_dict() if hasattr(first, "get_config_dict") else {}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(
        json.dumps(
            [
                type(tokenizer).__name__,
                type(first).__name__,
                getattr(tokenizer, "padding_side", None),
                getattr(tokenizer, "pad_token_id", None),
                getattr(tokenizer, "do_lower_case", None),
                sentence_transformers.__version__,
                transformers.__version__,
            ]
        ).encode()
    )
    fingerprint = digest.hexdigest()
    try:
        _fingerprints[tokenizer] = fingerprint
    except TypeError:
        pass
    return fingerprint


def texts_digest(texts: list[str]) -> str:
    digest = hashlib.sha256(str(len(texts)).encode())
    for text in texts:
        raw = text.encode("utf-8", "surrogatepass")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


def cache_key(model, texts: list[str], role: str) -> str:
    parts = {
        "format": FORMAT_VERSION,
        "tokenizer": tokenizer_fingerprint(model),
        "max_seq_length": getattr(model, "max_seq_length", None),
        "role": role,
        "prompt": role_prompt(model, role),
        "texts": texts_digest(texts),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


_memory: "OrderedDict[str, Tokens]" = OrderedDict()


def clear_memory_cache() -> None:
    """Forget token sets held in this process (the disk cache stays)."""
    _memory.clear()


def tokenize(model, texts: list[str], role: str, cache_dir: Path | None = None, stats: dict | None = None) -> Tokens:
    """Token features of texts as model.encode_query (role="query") or encode_document
    (role="document") would compute them; from memory, else from cache_dir, else computed and saved.
    stats (optional) records where they came from under "source"."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    key = cache_key(model, texts, role)
    if key in _memory:
        _memory.move_to_end(key)
        note_source(stats, "memory")
        return _memory[key]
    path = Path(cache_dir) / f"{key}.npz" if cache_dir is not None else None
    tokens = _load(path) if path is not None and path.is_file() else None
    if tokens is not None and len(tokens.lengths) == len(texts):
        note_source(stats, "disk")
    else:
        tokens = _compute(model, texts, role)
        note_source(stats, "computed")
        if path is not None:
            _save(path, tokens)
    _memory[key] = tokens
    while len(_memory) > MEMORY_ENTRIES:
        _memory.popitem(last=False)
    return tokens


def note_source(stats: dict | None, source: str) -> None:
    if stats is not None:
        stats.setdefault("source", []).append(source)


def _compute(model, texts: list[str], role: str) -> Tokens:
    prompt = role_prompt(model, role)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)  # less padding per call
    lengths, pieces = [], {}
    meta: dict = {"dtypes": {}, "pad": {}, "constants": None, "padding_side": None}
    for start in range(0, len(order), PREPROCESS_CHUNK):
        batch = [texts[i] for i in order[start : start + PREPROCESS_CHUNK]]
        features = model.preprocess(batch, prompt=prompt, task=role)
        mask = features.get("attention_mask")
        if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.shape[0] != len(batch):
            raise UnsupportedFeatures("preprocess gave no (batch, length) attention_mask")
        mask = mask.bool()
        row_len = mask.sum(dim=1)
        side = _padding_side(mask, row_len)
        if meta["padding_side"] not in (None, side) and not bool((row_len == mask.shape[1]).all()):
            raise UnsupportedFeatures("padding side changes between batches")
        if side != "none":
            meta["padding_side"] = side
        constants = {}
        for name, value in features.items():
            if name == "attention_mask":
                continue
            if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                pieces.setdefault(name, []).append(value[mask].numpy())
                meta["dtypes"][name] = str(value.dtype).removeprefix("torch.")
                if (~mask).any() and name not in meta["pad"]:
                    meta["pad"][name] = value[~mask][0].item()
            elif isinstance(value, (str, int, float, bool)) or value is None:
                constants[name] = value
            else:
                raise UnsupportedFeatures(f"preprocess output {name!r} is not a per-token tensor")
        if meta["constants"] is None:
            meta["constants"] = constants
        elif meta["constants"] != constants:
            raise UnsupportedFeatures(f"preprocess constants differ between batches: {meta['constants']} vs {constants}")
        lengths.append(row_len.numpy())
    meta["padding_side"] = meta["padding_side"] or "right"
    meta["constants"] = meta["constants"] or {}
    features = {}
    for name, parts in pieces.items():
        flat = np.concatenate(parts)
        if flat.dtype == np.int64 and (flat.size == 0 or (flat.min() >= -(2**31) and flat.max() < 2**31)):
            flat = flat.astype(np.int32)  # half the disk and memory; widened back per batch
        features[name] = flat
    return Tokens(
        lengths=np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64),
        text_index=np.asarray(order, dtype=np.int64),
        features=features,
        meta=meta,
    )


def _padding_side(mask: torch.Tensor, row_len: torch.Tensor) -> str:
    positions = torch.arange(mask.shape[1])
    if bool((row_len == mask.shape[1]).all()):
        return "none"
    if torch.equal(mask, positions[None, :] < row_len[:, None]):
        return "right"
    if torch.equal(mask, positions[None, :] >= (mask.shape[1] - row_len)[:, None]):
        return "left"
    raise UnsupportedFeatures("attention_mask is not a contiguous left or right padded block")


def _save(path: Path, tokens: Tokens) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.npz")  # threads of one process too
    arrays = {f"f_{name}": values for name, values in tokens.features.items()}
    np.savez(tmp, lengths=tokens.lengths, text_index=tokens.text_index, meta=np.array(json.dumps(tokens.meta)), **arrays)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one


def _load(path: Path) -> Tokens | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return Tokens(
                lengths=data["lengths"],
                text_index=data["text_index"],
                features={k[2:]: data[k] for k in data.files if k.startswith("f_")},
                meta=json.loads(str(data["meta"])),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged cache entry is recomputed and overwritten

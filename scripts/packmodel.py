"""Pack a sentence-transformers model folder small enough to travel to the GPU box (weights in bf16,
high and low bytes split apart, then xz), and unpack it there to an fp32 model.safetensors.

    python scripts/packmodel.py pack SRC_MODEL_DIR DEST_DIR      (here)
    python scripts/packmodel.py unpack DEST_DIR OUT_MODEL_DIR    (there)
"""
import json, lzma, shutil, sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def pack(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for p in src.rglob("*"):
        if p.is_file() and p.name != "model.safetensors" and not p.name.startswith("."):
            (dest / "files" / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest / "files" / p.relative_to(src))
    sd = load_file(src / "model.safetensors")
    header, chunks, offset = [], [], 0
    for name, t in sd.items():
        kind = "bf16" if t.is_floating_point() else str(t.dtype).removeprefix("torch.")
        raw = (t.to(torch.bfloat16) if kind == "bf16" else t).contiguous().view(torch.uint8).numpy().reshape(-1)
        header.append({"name": name, "shape": list(t.shape), "kind": kind, "offset": offset, "nbytes": raw.size})
        chunks.append(raw)
        offset += raw.size
    blob = np.concatenate(chunks)
    shuffled = np.concatenate([blob[0::2], blob[1::2]]).tobytes()  # exponent bytes together compress well
    (dest / "weights.xz").write_bytes(lzma.compress(shuffled, preset=6))
    (dest / "header.json").write_text(json.dumps({"total": int(blob.size), "tensors": header}))


def unpack(dest: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(dest / "files", out)
    meta = json.loads((dest / "header.json").read_text())
    shuffled = np.frombuffer(lzma.decompress((dest / "weights.xz").read_bytes()), dtype=np.uint8)
    half = (meta["total"] + 1) // 2
    blob = np.empty(meta["total"], dtype=np.uint8)
    blob[0::2], blob[1::2] = shuffled[:half], shuffled[half:]
    sd = {}
    for h in meta["tensors"]:
        raw = torch.from_numpy(blob[h["offset"]:h["offset"] + h["nbytes"]].copy())
        dtype = torch.bfloat16 if h["kind"] == "bf16" else getattr(torch, h["kind"])
        t = raw.view(dtype).reshape(h["shape"])
        sd[h["name"]] = t.float() if h["kind"] == "bf16" else t
    save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    # safetensors writes its file 0600 whatever the umask; the agent's uid must read it (bwrap, 2026-12-06)
    (out / "model.safetensors").chmod(0o644)
    print(f"unpacked {len(sd)} tensors to {out}")


if __name__ == "__main__":
    {"pack": pack, "unpack": unpack}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))

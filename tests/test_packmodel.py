"""scripts/packmodel.py carries the base model to the GPU box: what it unpacks is a model the sandbox's uid can
read (safetensors writes its file 0600 whatever the umask; every trial there crashed on it, 2026-12-06) with the
packed tensors' values (floats through bf16)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

from autoembed.paths import REPO_ROOT


def test_an_unpacked_model_is_open_to_others_and_holds_the_packed_tensors(tmp_path):
    src = tmp_path / "model"
    (src / "1_Pooling").mkdir(parents=True)
    (src / "modules.json").write_text("[]")
    (src / "1_Pooling" / "config.json").write_text("{}")
    tensors = {"w": torch.randn(3, 5), "ids": torch.arange(4, dtype=torch.int64)}
    save_file(tensors, src / "model.safetensors")
    script = str(REPO_ROOT / "scripts" / "packmodel.py")
    subprocess.run([sys.executable, script, "pack", str(src), str(tmp_path / "pack")], check=True)
    old = os.umask(0o077)  # the strictest shell: the script must not depend on the umask for the weights
    try:
        subprocess.run([sys.executable, script, "unpack", str(tmp_path / "pack"), str(tmp_path / "out")], check=True)
    finally:
        os.umask(old)
    weights = tmp_path / "out" / "model.safetensors"
    assert stat.S_IMODE(weights.stat().st_mode) & 0o044 == 0o044, oct(weights.stat().st_mode)
    got = load_file(weights)
    assert torch.equal(got["ids"], tensors["ids"])
    assert torch.equal(got["w"], tensors["w"].to(torch.bfloat16).float())
    assert (tmp_path / "out" / "1_Pooling" / "config.json").read_text() == "{}"

"""Host-side reads of an agent's workdir never follow a link: static links anywhere on the path, '..', and a
folder swapped for a symlink by rename-exchange in a loop while the host reads (the attack that once returned a
sealed qrels file to a harness tool). Both the openat2 path and the O_NOFOLLOW fallback are tested."""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import threading

import pytest

from autoembed import nofollow

RENAME_EXCHANGE = 2
AT_FDCWD = -100


@pytest.fixture(params=["openat2", "fallback"])
def mode(request, monkeypatch):
    monkeypatch.setattr(nofollow, "_openat2_works", None if request.param == "openat2" else False)
    return request.param


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "workdir"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("safe")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("SECRET")
    return root, outside


def test_plain_reads_work(tree, mode):
    root, _ = tree
    assert nofollow.read_text(root, "d/f") == "safe" and nofollow.read_bytes(root, "d/f", limit=2) == b"sa"
    assert nofollow.file_sha256(root, "d/f") == hashlib.sha256(b"safe").hexdigest()


def test_links_and_escapes_are_refused(tree, mode):
    root, outside = tree
    (root / "leaf").symlink_to(outside / "f")
    (root / "dirlink").symlink_to(outside)
    (root / "inner").symlink_to("d")  # even a link that stays inside is refused: nothing is followed
    for rel in ("leaf", "dirlink/f", "inner/f", "../outside/f", str(outside / "f")):
        with pytest.raises(nofollow.LinkRefused):
            nofollow.read_text(root, rel)
    with pytest.raises(FileNotFoundError):
        nofollow.read_text(root, "d/missing")


def test_a_fifo_cannot_hang_the_host(tree, mode):
    root, _ = tree
    os.mkfifo(root / "pipe")
    with pytest.raises(nofollow.LinkRefused, match="regular"):
        nofollow.read_text(root, "pipe")


def _exchange_loop(a: bytes, b: bytes, stop: threading.Event) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    while not stop.is_set():
        libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)


def _race(root, outside, read, attempts: int = 3000) -> dict[str, int]:
    """Swap root/d (a folder) and root/s (a symlink to outside) in a loop while reading d/f attempts times."""
    (root / "s").symlink_to(outside)
    stop = threading.Event()
    swapper = threading.Thread(target=_exchange_loop, args=(bytes(root / "d"), bytes(root / "s"), stop), daemon=True)
    swapper.start()
    seen = {"safe": 0, "SECRET": 0, "refused": 0}
    try:
        for _ in range(attempts):
            try:
                seen[read()] += 1
            except (nofollow.LinkRefused, FileNotFoundError, NotADirectoryError):
                seen["refused"] += 1
    finally:
        stop.set()
        swapper.join()
    return seen


def test_rename_exchange_race_never_reaches_outside(tree, mode):
    root, outside = tree
    seen = _race(root, outside, lambda: nofollow.read_text(root, "d/f"))
    assert seen["SECRET"] == 0, seen
    assert seen["safe"] > 0 and seen["refused"] > 0, f"the race did not happen: {seen}"


def test_the_race_is_real_for_a_naive_open(tree):
    """Positive control: the same race does leak through a plain open(), so the test above can fail."""
    root, outside = tree
    seen = _race(root, outside, lambda: (root / "d" / "f").read_text())
    assert seen["SECRET"] > 0, seen


def test_copy_tree_copies_files_and_leaves_links_out(tree, mode, tmp_path):
    root, outside = tree
    model = root / "final_model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "w.safetensors").write_bytes(b"\x00" * 10)
    (model / "stolen.txt").symlink_to(outside / "f")
    (model / "stolen_dir").symlink_to(outside)
    os.mkfifo(model / "pipe")
    hashes, left_out = nofollow.copy_tree(root, "final_model", tmp_path / "copy")
    assert hashes == {"config.json": hashlib.sha256(b"{}").hexdigest(),
                      "sub/w.safetensors": hashlib.sha256(b"\x00" * 10).hexdigest()}
    assert sorted(left_out) == ["pipe", "stolen.txt", "stolen_dir"]
    assert nofollow.tree_hashes(tmp_path / "copy") == hashes
    assert not (tmp_path / "copy" / "stolen.txt").exists()
    (root / "linked_model").symlink_to(model)
    with pytest.raises(nofollow.LinkRefused):
        nofollow.copy_tree(root, "linked_model", tmp_path / "copy2")


# ------------------------------------------------------------------------------------------------
# bounded copies: sizes measured before a byte is copied, holes kept as holes (issue 18)
# ------------------------------------------------------------------------------------------------


def _allocated(folder) -> int:
    return sum(os.lstat(os.path.join(base, name)).st_blocks * 512
               for base, dirs, files in os.walk(folder) for name in dirs + files)


def test_a_sparse_terabyte_is_refused_before_anything_is_copied(tmp_path):
    final = tmp_path / "workdir" / "final_model"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    with open(final / "pad", "wb") as fh:
        fh.truncate(2 ** 40)
    with pytest.raises(nofollow.TooLarge, match="too_large") as refused:
        nofollow.copy_tree(tmp_path / "workdir", "final_model", tmp_path / "frozen", max_bytes=2 * 2 ** 30)
    assert refused.value.facts["apparent_bytes"] == 2 ** 40 + 2 and refused.value.facts["allocated_bytes"] < 2 ** 20
    assert not (tmp_path / "frozen").exists()


def test_blocks_allocated_past_the_end_of_a_small_file_count(tmp_path):
    final = tmp_path / "workdir" / "final_model"
    final.mkdir(parents=True)
    (final / "small").write_bytes(b"")
    subprocess.run(["fallocate", "--keep-size", "-l", "8M", str(final / "small")], check=True)
    assert (final / "small").stat().st_size == 0
    with pytest.raises(nofollow.TooLarge, match="allocated"):
        nofollow.copy_tree(tmp_path / "workdir", "final_model", tmp_path / "frozen", max_bytes=4 * 2 ** 20)


def test_holes_stay_holes_and_the_hash_is_of_the_whole_content(tmp_path):
    final = tmp_path / "workdir" / "final_model"
    final.mkdir(parents=True)
    with open(final / "sparse.bin", "wb") as fh:
        fh.seek(100 * 2 ** 20)
        fh.write(b"middle")
        fh.seek(300 * 2 ** 20)
        fh.write(b"end")
        fh.truncate(400 * 2 ** 20)  # and a hole at the end
    hashes, left_out = nofollow.copy_tree(tmp_path / "workdir", "final_model", tmp_path / "frozen",
                                          max_bytes=2 * 2 ** 30)
    copy = tmp_path / "frozen" / "sparse.bin"
    assert copy.stat().st_size == 400 * 2 ** 20 and _allocated(tmp_path / "frozen") < 2 ** 20
    assert copy.read_bytes() == (final / "sparse.bin").read_bytes()
    assert hashes == {"sparse.bin": nofollow.file_sha256(final, "sparse.bin")} == nofollow.tree_hashes(tmp_path / "frozen")
    assert left_out == []


def test_too_many_entries_or_too_deep_a_tree_is_refused(tmp_path):
    wide = tmp_path / "wide" / "final_model"
    wide.mkdir(parents=True)
    for i in range(30):
        (wide / f"f{i}").write_text("x")
    with pytest.raises(nofollow.TooLarge, match="more than 20 files"):
        nofollow.copy_tree(tmp_path / "wide", "final_model", tmp_path / "frozen", max_entries=20)
    deep = tmp_path / "deep" / "final_model"
    (deep / "/".join(["d"] * (nofollow.MAX_DEPTH + 2))).mkdir(parents=True)
    with pytest.raises(nofollow.TooLarge, match="nested deeper"):
        nofollow.copy_tree(tmp_path / "deep", "final_model", tmp_path / "frozen2")
    assert not (tmp_path / "frozen").exists() and not (tmp_path / "frozen2").exists()

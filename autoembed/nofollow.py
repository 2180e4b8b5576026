"""Host-side reads of a folder an agent controls (its workdir), never following a link anywhere on the path.

An agent can swap a folder for a symlink between a host process's check and its open (rename-exchange in a
loop), so "resolve, check, open" is not safe. Every open here goes through openat2(2) with RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS relative to a directory fd, so the kernel refuses, atomically, any
path that leaves the root or passes through a link. Where openat2 is missing (Linux < 5.6) the same guarantee
comes from walking one component at a time with O_NOFOLLOW from the parent's fd.

    data = read_bytes(workdir, ".evals.jsonl", limit=1 << 20)
    hashes = copy_tree(workdir, "final_model", run_dir / "final_model")
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import shutil
import stat
from pathlib import Path

SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(platform.machine())
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
CHUNK = 1 << 20


class LinkRefused(OSError):
    """The path passes through a symlink or leaves the root; nothing was opened."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_openat2_works: bool | None = None


def _openat2(dir_fd: int, rel: str, flags: int) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(SYS_OPENAT2, dir_fd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        code = ctypes.get_errno()
        if code in (errno.ELOOP, errno.EXDEV):  # a symlink on the path / a path leaving the root
            raise LinkRefused(code, f"{rel}: passes through a link or leaves the folder; not followed")
        raise OSError(code, f"{rel}: {os.strerror(code)}")
    return fd


def _walk_open(dir_fd: int, rel: str, flags: int) -> int:
    """The fallback: one component at a time, each opened with O_NOFOLLOW from its parent's fd."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts:
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=dir_fd)
    current = os.dup(dir_fd)
    try:
        for i, part in enumerate(parts):
            if part == "..":
                raise LinkRefused(errno.EXDEV, f"{rel}: '..' leaves the folder; not followed")
            last = i == len(parts) - 1
            part_flags = (flags if last else os.O_RDONLY | os.O_DIRECTORY) | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(part, part_flags, dir_fd=current)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(os.lstat(part, dir_fd=current).st_mode):
                    raise LinkRefused(errno.ELOOP, f"{rel}: passes through a link; not followed") from None
                raise
            os.close(current)
            current = fd
        return current
    except BaseException:
        os.close(current)
        raise


def open_beneath(root: str | os.PathLike, rel: str, flags: int = os.O_RDONLY) -> int:
    """An fd for root/rel, refusing any link on the way (root itself included) and any path leaving root."""
    global _openat2_works
    if os.path.isabs(rel):
        raise LinkRefused(errno.EXDEV, f"{rel}: an absolute path; give one relative to {root}")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if _openat2_works is not False and SYS_OPENAT2:
            try:
                fd = _openat2(root_fd, rel or ".", flags)
                _openat2_works = True
                return fd
            except OSError as exc:
                if exc.errno != errno.ENOSYS or isinstance(exc, LinkRefused):
                    raise
                _openat2_works = False
        return _walk_open(root_fd, rel, flags)
    finally:
        os.close(root_fd)


def _open_regular(root, rel: str) -> int:
    """An fd for a regular file (O_NONBLOCK so a FIFO planted there cannot hang the host)."""
    fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LinkRefused(errno.EINVAL, f"{rel}: not a regular file; not read")
    return fd


def is_file(root, rel: str) -> bool:
    """root/rel is a regular file reached without any link."""
    try:
        os.close(_open_regular(root, rel))
        return True
    except OSError:
        return False


def read_tail(root, rel: str, size: int) -> bytes:
    """The last `size` bytes of a regular file (a log the agent appends to)."""
    with os.fdopen(_open_regular(root, rel), "rb") as fh:
        fh.seek(max(0, os.fstat(fh.fileno()).st_size - size))
        return fh.read(size)


def read_bytes(root, rel: str, limit: int | None = None) -> bytes:
    fd = _open_regular(root, rel)
    with os.fdopen(fd, "rb") as fh:
        return fh.read() if limit is None else fh.read(limit)


def read_text(root, rel: str, limit: int | None = None) -> str:
    return read_bytes(root, rel, limit).decode("utf-8", errors="replace")


def file_sha256(root, rel: str) -> str:
    digest = hashlib.sha256()
    with os.fdopen(_open_regular(root, rel), "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


class TooLarge(OSError):
    """A folder over a copy's bounds (bytes, entries or depth); nothing of it is left copied. facts says what was
    measured: apparent and allocated bytes, entries, the limit."""

    def __init__(self, message: str, facts: dict):
        super().__init__(errno.EFBIG, message)
        self.facts = facts

    def __str__(self) -> str:
        return self.strerror


MAX_ENTRIES = 10_000  # files and folders in a copied tree (a sentence-transformers model has about 15)
MAX_DEPTH = 32


def copy_tree(root, rel: str, dest: str | os.PathLike, max_bytes: int | None = None,
              max_entries: int = MAX_ENTRIES) -> tuple[dict[str, str], list[str]]:
    """Copy the regular files and folders under root/rel into dest (created; must not exist), never following a
    link. Returns ({path relative to dest: sha256 of what was copied}, [what was left out: links, pipes, ...]).
    Raises FileNotFoundError when root/rel is missing and LinkRefused when it is itself reached through a link.

    Sizes are measured (lstat only) before a byte is copied: when the files' apparent size (st_size) or their
    allocated size (st_blocks) passes max_bytes, or the tree passes max_entries or MAX_DEPTH, TooLarge is raised
    and nothing is copied; the copy itself checks the same bounds again. Holes stay holes (SEEK_DATA/SEEK_HOLE):
    a sparse file costs the host only the blocks that hold data, so `truncate -s 1T` inside costs nothing here."""
    dest = Path(dest)
    top = open_beneath(root, rel, os.O_RDONLY | os.O_DIRECTORY)
    try:
        budget = _Budget(max_bytes, max_entries)
        _walk(top, "", budget, copy=None)
        dest.mkdir(parents=True, exist_ok=False)
        hashes: dict[str, str] = {}
        left_out: list[str] = []
        copied = _Budget(max_bytes, max_entries)
        try:
            _walk(top, "", copied, copy=(dest, hashes, left_out))
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    finally:
        os.close(top)
    return hashes, left_out


class _Budget:
    def __init__(self, max_bytes: int | None, max_entries: int):
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.apparent = self.allocated = self.entries = 0

    def add(self, rel: str, st: os.stat_result, depth: int) -> None:
        self.entries += 1
        if stat.S_ISREG(st.st_mode):
            self.apparent += st.st_size
            self.allocated += st.st_blocks * 512
        facts = {"apparent_bytes": self.apparent, "allocated_bytes": self.allocated, "entries": self.entries,
                 "max_bytes": self.max_bytes, "max_entries": self.max_entries, "max_depth": MAX_DEPTH, "at": rel}
        if depth > MAX_DEPTH:
            raise TooLarge(f"too_large: {rel} is nested deeper than {MAX_DEPTH} folders", facts)
        if self.entries > self.max_entries:
            raise TooLarge(f"too_large: more than {self.max_entries} files and folders", facts)
        if self.max_bytes is not None and max(self.apparent, self.allocated) > self.max_bytes:
            raise TooLarge(f"too_large: at least {max(self.apparent, self.allocated)} bytes (apparent "
                           f"{self.apparent}, allocated {self.allocated}), over the limit of {self.max_bytes}", facts)


def _walk(dir_fd: int, prefix: str, budget: _Budget, copy, depth: int = 1) -> None:
    """Measure (copy=None) or copy (copy=(dest, hashes, left_out)) the entries under dir_fd, depth first."""
    names: list[str] = []
    with os.scandir(dir_fd) as entries:  # counted as they are read: a million names are never listed whole
        for entry in entries:
            names.append(entry.name)
            if budget.entries + len(names) > budget.max_entries:
                raise TooLarge(f"too_large: more than {budget.max_entries} files and folders",
                               {"entries": budget.entries + len(names), "max_entries": budget.max_entries,
                                "at": prefix or "."})
    for name in sorted(names):
        rel = f"{prefix}{name}"
        st = os.lstat(name, dir_fd=dir_fd)
        budget.add(rel, st, depth)
        if stat.S_ISDIR(st.st_mode):
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                if copy is not None:
                    (copy[0] / rel).mkdir()
                _walk(child, rel + "/", budget, copy, depth + 1)
            finally:
                os.close(child)
        elif copy is None:
            continue
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                now = os.fstat(fd)
                if not stat.S_ISREG(now.st_mode) or (now.st_size, now.st_blocks) != (st.st_size, st.st_blocks):
                    copy[2].append(rel)  # swapped or grown since it was measured
                    continue
                copy[1][rel] = _copy_sparse(fd, st.st_size, copy[0] / rel)
            finally:
                os.close(fd)
        else:
            copy[2].append(rel)


_ZEROS = bytes(CHUNK)


def _copy_sparse(src: int, size: int, dest: Path) -> str:
    """Copy the data regions of src (at most size bytes) into a new file at the same offsets, leaving its holes
    as holes; the sha256 of the whole content (holes read as zeros, as any reader sees them)."""
    digest = hashlib.sha256()
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        offset = 0
        while offset < size:
            data_at = _seek(src, offset, os.SEEK_DATA, size)
            _hash_zeros(digest, data_at - offset)
            hole_at = min(_seek(src, data_at, os.SEEK_HOLE, size), size)
            position = data_at
            while position < hole_at:
                block = os.pread(src, min(CHUNK, hole_at - position), position)
                if not block:  # shrank under us: what was read is what was copied
                    hole_at = size = position
                    break
                os.pwrite(out, block, position)
                digest.update(block)
                position += len(block)
            offset = hole_at
        os.ftruncate(out, size)  # a hole at the end stays a hole
    finally:
        os.close(out)
    return digest.hexdigest()


def _seek(fd: int, offset: int, whence: int, size: int) -> int:
    try:
        return os.lseek(fd, offset, whence)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data after offset: the rest is a hole
            return size
        if exc.errno == errno.EINVAL:  # no SEEK_DATA here: all of it is data
            return offset if whence == os.SEEK_DATA else size
        raise


def _hash_zeros(digest, count: int) -> None:
    while count > 0:
        step = min(count, CHUNK)
        digest.update(memoryview(_ZEROS)[:step])
        count -= step


def tree_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every regular file under a folder the host owns (the frozen copy), by relative path."""
    return {rel: file_sha256(folder, rel) for rel in _regular_files(Path(folder))}


def _regular_files(folder: Path) -> list[str]:
    out = []
    for base, dirs, files in os.walk(folder):
        for name in files:
            path = Path(base, name)
            if path.is_file() and not path.is_symlink():
                out.append(str(path.relative_to(folder)))
    return sorted(out)

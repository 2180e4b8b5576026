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


def copy_tree(root, rel: str, dest: str | os.PathLike) -> tuple[dict[str, str], list[str]]:
    """Copy the regular files and folders under root/rel into dest (created; must not exist), never following a
    link. Returns ({path relative to dest: sha256 of what was copied}, [what was left out: links, pipes, ...]).
    Raises FileNotFoundError when root/rel is missing and LinkRefused when it is itself reached through a link."""
    dest = Path(dest)
    top = open_beneath(root, rel, os.O_RDONLY | os.O_DIRECTORY)
    dest.mkdir(parents=True, exist_ok=False)
    hashes: dict[str, str] = {}
    left_out: list[str] = []
    try:
        _copy_dir(top, "", dest, hashes, left_out)
    finally:
        os.close(top)
    return hashes, left_out


def _copy_dir(dir_fd: int, prefix: str, dest: Path, hashes: dict, left_out: list) -> None:
    for name in sorted(os.listdir(dir_fd)):
        rel = f"{prefix}{name}"
        st = os.lstat(name, dir_fd=dir_fd)
        if stat.S_ISDIR(st.st_mode):
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                (dest / rel).mkdir()
                _copy_dir(child, rel + "/", dest, hashes, left_out)
            finally:
                os.close(child)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the lstat
                os.close(fd)
                left_out.append(rel)
                continue
            digest = hashlib.sha256()
            with os.fdopen(fd, "rb") as src, open(dest / rel, "xb") as out:
                while block := src.read(CHUNK):
                    digest.update(block)
                    out.write(block)
            hashes[rel] = digest.hexdigest()
        else:
            left_out.append(rel)


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

"""Who the agent is on the host: never uid 0.

Run as root, every sandbox runs the agent as one dedicated unprivileged uid and gid (SANDBOX_ID, or
AUTOEMBED_SANDBOX_UID / AUTOEMBED_SANDBOX_GID): a set-uid file it makes is that uid's, root-only host files
(mode 0600) stay closed to it, and what it leaves in the workdir is owned by that uid. Run as an ordinary user,
the agent is that user (it has nothing more to lose). Before the agent starts, the workdir is handed over to
that uid (its root and what the host seeded), and the gateway's socket is made reachable by it and by root only.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import struct
from pathlib import Path

SANDBOX_ID = 61_000  # no system account uses it (Debian's dynamic range 61184-65519 starts above)


class IdentityError(RuntimeError):
    pass


def sandbox_ids() -> tuple[int, int]:
    """(uid, gid) the agent runs as; never (0, anything) and never gid 0."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    uid = _id_from_env("AUTOEMBED_SANDBOX_UID", SANDBOX_ID)
    gid = _id_from_env("AUTOEMBED_SANDBOX_GID", uid)
    try:
        owner = pwd.getpwuid(uid).pw_name
    except KeyError:
        owner = None
    if owner is not None and not owner.startswith("autoembed"):
        raise IdentityError(f"the sandbox uid {uid} belongs to the account {owner!r}: an agent would act as it; "
                            f"set AUTOEMBED_SANDBOX_UID to a uid no account uses")
    return uid, gid


def _id_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) == 0:
        raise IdentityError(f"{name}={raw!r}: give a positive number (an unused uid/gid; 0 is root)")
    return int(raw)


def hand_over(workdir: Path, uid: int, gid: int) -> None:
    """Make the workdir (and what the host seeded in it) the sandbox uid's, links included but never followed.
    Every folder also gets a default ACL granting that uid rwx, so what the host writes there later (a CLI's config,
    the recipe's script) is the agent's to change too. Call before the agent starts: nothing inside can race it."""
    workdir = Path(workdir)
    if (os.getuid(), os.getgid()) == (uid, gid):
        return
    os.chown(workdir, uid, gid)
    _default_acl(str(workdir), uid)
    for folder, dirs, files in os.walk(workdir):
        for name in dirs + files:
            path = os.path.join(folder, name)
            os.chown(path, uid, gid, follow_symlinks=False)
            if name in dirs and not os.path.islink(path):
                _default_acl(path, uid)


ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF


def _default_acl(folder: str, uid: int) -> None:
    """system.posix_acl_default in the kernel's binary form (version 2; tag, perm, id entries sorted by tag):
    owner rwx, the sandbox uid rwx, group r-x, mask rwx, other r-x. Without setfacl, which few hosts install."""
    entries = [(ACL_USER_OBJ, 7, ACL_UNDEFINED_ID), (ACL_USER, 7, uid), (ACL_GROUP_OBJ, 5, ACL_UNDEFINED_ID),
               (ACL_MASK, 7, ACL_UNDEFINED_ID), (ACL_OTHER, 5, ACL_UNDEFINED_ID)]
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)
    try:
        os.setxattr(folder, "system.posix_acl_default", value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        # a filesystem without ACLs: what the host writes after the start stays read-only to the agent


def grant_socket(socket_path: Path, uid: int, gid: int) -> None:
    """The gateway's socket: connectable by the sandbox uid (and root), by no other user."""
    socket_path = Path(socket_path)
    st = os.lstat(socket_path)
    if not stat.S_ISSOCK(st.st_mode):
        raise IdentityError(f"{socket_path} is not a socket")
    if (os.getuid(), os.getgid()) != (uid, gid):
        os.chown(socket_path, uid, gid, follow_symlinks=False)
    os.chmod(socket_path, 0o600)
    folder = socket_path.parent
    # its folder: searchable by the sandbox uid (to reach the socket), listable and writable by its owner only
    os.chmod(folder, 0o711 if os.stat(folder).st_uid != uid else 0o700)


def forbid_shared_writes() -> None:
    """Add group and other write to this process's umask (never loosen it): what a trial makes on the host (its
    run folder, logs, records) is not writable by other users, whatever umask the process started with."""
    previous = os.umask(0o022)
    os.umask(previous | 0o022)


def first_unreadable(path: Path) -> tuple[Path, int] | None:
    """(the first path, its mode) under path, path included, that a user who is neither owner nor group could not
    use: a folder it cannot list and enter, a file it cannot read. The agent runs as such a user when the host is
    root; what a root shell with umask 077 unpacked is closed to it. None: all of it is open. The folders above path
    do not count: a sandbox binds path at its own place and makes the folders on the way itself, open (a Python
    under /root, mode 0700, is how pyenv installs it)."""
    path = Path(os.path.abspath(path))
    for folder, dirs, files in os.walk(path):
        mode = os.stat(folder).st_mode
        if mode & (stat.S_IROTH | stat.S_IXOTH) != (stat.S_IROTH | stat.S_IXOTH):
            return Path(folder), stat.S_IMODE(mode)
        for name in files:
            mode = os.stat(os.path.join(folder, name)).st_mode
            if not mode & stat.S_IROTH:
                return Path(folder, name), stat.S_IMODE(mode)
    return None


def require_open_to(uid: int, path: Path, what: str) -> None:
    """Raise IdentityError naming the closed path and the chmod that opens it when path is closed to uid, the agent's
    (another uid than this root process: what a root shell with umask 077 unpacked, the agent could not load)."""
    if uid == os.getuid():
        return
    closed = first_unreadable(path)
    if closed:
        inside = os.path.relpath(closed[0], path)  # short: the error is one line of at most 300 characters
        raise IdentityError(f"{what} {path} is closed to the agent's uid {uid} ({inside}: mode {closed[1]:o}): "
                            f"chmod -R a+rX {path}")

"""No new user namespaces inside a sandbox that root started: a seccomp filter, inherited by everything below it.

bwrap run by root makes no user namespace of its own (one made by root would map the agent to host uid 0), so its
--disable-userns is not available; the agent, an unprivileged uid, could then make user namespaces of its own
(full capabilities over nothing of the host, but a large kernel surface). This filter refuses unshare() and clone()
with CLONE_NEWUSER (EPERM) and clone3() (ENOSYS, so the C library falls back to clone, whose flags can be read).
It is installed in the child before it execs bwrap or nsenter, so PID 1 and every command entered inherit it.
Architectures other than x86_64 and aarch64 are let through (the filter says so in `supported()`).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

CLONE_NEWUSER = 0x10000000
# AUDIT_ARCH value -> (clone, unshare, clone3) syscall numbers
ARCHES = {0xC000003E: (56, 272, 435), 0xC00000B7: (220, 97, 435)}  # x86_64, aarch64
X32_BIT = 0x40000000
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
LD_ABS_W, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


def supported() -> bool:
    return platform.machine() in ("x86_64", "aarch64")


def program() -> bytes:
    """The BPF program (struct sock_filter[]): labels resolved to relative jumps."""
    code: list[tuple] = [("ld", 4)]  # seccomp_data.arch
    for arch in ARCHES:
        code.append(("jeq", arch, f"arch{arch}", None))
    code.append(("ret", RET_ALLOW))
    for arch, (clone, unshare, clone3) in ARCHES.items():
        code += [("label", f"arch{arch}"), ("ld", 0)]  # seccomp_data.nr
        if arch == 0xC000003E:
            code.append(("jge", X32_BIT, "deny", None))  # the x32 ABI's numbers: refused outright
        code += [("jeq", clone3, "nosys", None), ("jeq", unshare, "flags", None), ("jeq", clone, "flags", None),
                 ("ret", RET_ALLOW)]
    code += [("label", "flags"), ("ld", 16),  # args[0], low 32 bits (little endian): the flags of clone and unshare
             ("jset", CLONE_NEWUSER, "deny", None), ("ret", RET_ALLOW),
             ("label", "deny"), ("ret", RET_ERRNO | errno.EPERM),
             ("label", "nosys"), ("ret", RET_ERRNO | errno.ENOSYS)]
    labels, index = {}, 0
    for op in code:
        if op[0] == "label":
            labels[op[1]] = index
        else:
            index += 1
    out, index = b"", 0
    for op in code:
        if op[0] == "label":
            continue
        if op[0] == "ld":
            out += struct.pack("HBBI", LD_ABS_W, 0, 0, op[1])
        elif op[0] == "ret":
            out += struct.pack("HBBI", RET, 0, 0, op[1])
        else:
            opcode = {"jeq": JEQ, "jge": JGE, "jset": JSET}[op[0]]
            jt = labels[op[2]] - index - 1
            jf = 0 if op[3] is None else labels[op[3]] - index - 1
            assert 0 <= jt < 256 and 0 <= jf < 256
            out += struct.pack("HBBI", opcode, jt, jf, op[1])
        index += 1
    return out


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PROGRAM = program()
_BUFFER = ctypes.create_string_buffer(_PROGRAM, len(_PROGRAM))
_FPROG = _SockFprog(len(_PROGRAM) // 8, ctypes.cast(_BUFFER, ctypes.c_void_p))
_LIBC = ctypes.CDLL(None, use_errno=True)


def install() -> None:
    """Install the filter in the calling process (a Popen preexec_fn: the child, before it execs). Root (with
    CAP_SYS_ADMIN) needs no no_new_privs for it; raises OSError if the kernel refuses."""
    if not supported():
        return
    if _LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(_FPROG), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter refused: {errno.errorcode.get(err, err)}")

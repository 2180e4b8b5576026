"""What a sandbox shows, shared by bwrap and the Docker image: an allowlist of read-only system trees,
the runtime folders outside them (this Python's install, node and the agent CLIs), and a clean
environment with a writable home inside the workdir.

An allowlist rather than "everything but the hidden paths": /opt, /srv, /work, /home, /var and the
rest of the host are simply absent, so a download cache or a data build left there cannot leak.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from autoembed.sandbox.hidden import is_within

SYSTEM_ROOTS = ("/usr", "/etc")  # bound read-only; /var, /tmp, /run get fresh empty ones
MERGED_USR = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # symlinks into /usr on Debian 12
STANDARD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
AGENT_BINARIES = ("node", "claude", "codex", "gemini")
HOME_NAME = ".home"


def python_prefixes() -> list[Path]:
    """This interpreter's install (and venv): torch, sentence-transformers and the base model live there."""
    return _unique([Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()])


def tool_prefixes() -> list[Path]:
    """Install roots of node and the agent CLIs when they live outside the system trees (nvm, ~/.local)."""
    found = []
    for name in AGENT_BINARIES:
        exe = shutil.which(name)
        if exe:
            found += [_install_root(Path(exe)), _install_root(Path(exe).resolve())]
    return _unique([p for p in found if not _under_system_roots(p)])


def runtime_paths(extra: list[Path] | tuple[Path, ...] = ()) -> list[Path]:
    """Host folders outside SYSTEM_ROOTS that must be visible (read-only) at their own paths."""
    paths = [*python_prefixes(), *tool_prefixes(), *(Path(os.path.abspath(p)) for p in extra)]
    return _unique([p for p in paths if not _under_system_roots(p)])


def inside_path_var(python: str | None = None) -> str:
    """PATH inside: the sandbox's Python first (so `python3` has torch), then the system, then node/CLI bins."""
    tools = [str(Path(exe).parent) for exe in map(shutil.which, AGENT_BINARIES) if exe]
    return ":".join(dict.fromkeys([str(Path(python or sys.executable).parent), *STANDARD_PATH, *tools]))


SANDBOX_USER = "agent"  # the name the agent's processes go by (no passwd entry holds the sandbox uid)


def clean_env(workdir_inside: str, cuda_visible_devices: str, extra: dict[str, str] | None = None,
              python: str | None = None) -> dict[str, str]:
    env = {
        "PATH": inside_path_var(python),
        "HOME": f"{workdir_inside}/{HOME_NAME}",
        # the sandbox uid has no passwd entry: getpass.getuser() reads these first (torch 2.11's import of its
        # compile cache asks for the user name and died of KeyError 'getpwuid(): uid not found' without them)
        "USER": SANDBOX_USER,
        "LOGNAME": SANDBOX_USER,
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": cuda_visible_devices,
    }
    env.update(extra or {})
    return env


def prepare_home(workdir: Path, python: str | None = None) -> Path:
    """The writable HOME inside (CLIs keep their state there). Its .profile restores PATH, because
    Debian's /etc/profile resets it for every login shell (`bash -lc`, which exec and codex use)."""
    home = workdir / HOME_NAME
    home.mkdir(parents=True, exist_ok=True)
    (home / ".profile").write_text(
        "# written by autoembed: /etc/profile resets PATH, this puts the sandbox's Python first again\n"
        f"export PATH={inside_path_var(python)}\n"
    )
    return home


def _install_root(exe: Path) -> Path:
    parts = exe.parts
    if "node_modules" in parts:  # <prefix>/lib/node_modules/<pkg>/...: the whole node prefix
        index = parts.index("node_modules")
        prefix = Path(*parts[:index])
        return prefix.parent if prefix.name == "lib" else prefix
    return exe.parent.parent if exe.parent.name == "bin" else exe.parent


def _under_system_roots(path: Path) -> bool:
    roots = [Path(r) for r in SYSTEM_ROOTS] + [Path(r).resolve() for r in MERGED_USR if Path(r).exists()]
    return any(is_within(path, root) for root in roots)


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))

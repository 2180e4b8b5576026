"""What goes into the Docker task image's root filesystem, and the mmdebstrap command that makes it.

- Debian: the suite whose python3 has this Python's minor version, variant minbase, plus DEBIAN_PACKAGES
  and the task's environment/debian-packages.txt. dpkg leaves out docs, man pages and info; a last hook
  deletes the rest of the system text (hidden.SYSTEM_TEXT: apt's and dpkg's package descriptions).
- Python: this machine's installed distributions that the sandbox runtime (RUNTIME_REQUIREMENTS) and the
  task (environment/requirements.txt) need, with their dependencies, copied file by file (their RECORD)
  into Debian python3's /usr/local/lib/python3.X/dist-packages. They are the host's own builds, so a GPU
  machine's CUDA torch and its nvidia-* libraries go in as they are, and nothing is downloaded. A held-out
  wheel (hidden.HELDOUT_PYTHON_PACKAGES) among them stops the build: it must not be in the image at all.
- node and the agent CLIs: this machine's node binary and the CLIs' npm packages, at their host paths
  (layout.inside_path_var names those folders).

Everything but Debian is laid out in a staging folder that mmdebstrap's sync-in hook copies into the chroot.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from autoembed.sandbox import layout
from autoembed.sandbox.hidden import HELDOUT_PYTHON_PACKAGES, SYSTEM_TEXT

FORMAT = "3"  # bump when staging changes in a way the fingerprint cannot see
SUITES = {"3.11": "bookworm", "3.13": "trixie"}  # Debian suite whose python3 is that version
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_VAR = "AUTOEMBED_DEBIAN_MIRROR"
# bash/coreutils/grep/sed/findutils/util-linux come with minbase (Essential); mount: the sandbox tests try it;
# python-is-python3: agents type `python` (the audit's escape program did, and found no such command).
DEBIAN_PACKAGES = ("python3", "python-is-python3", "git", "procps", "ca-certificates", "tzdata", "mount", "ripgrep",
                   "xz-utils", "libstdc++6")
# What autoembed's in-sandbox code imports: the harness process's LLM clients (autoembed.llm) and its process
# plumbing (psutil, autoembed.sandbox.procs).
RUNTIME_REQUIREMENTS = ("anthropic", "openai", "google-genai", "tenacity", "psutil")
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
                 "/usr/share/lintian/*")
SOURCE_DATE_EPOCH = "1700000000"  # mmdebstrap's output is then the same for the same mirror state
IMAGE_PYTHON = "/usr/bin/python3"


class RootfsError(RuntimeError):
    pass


@dataclass
class Recipe:
    suite: str
    mirror: str
    debian_packages: list[str]
    distributions: list[importlib.metadata.Distribution]
    node_files: list[Path] = field(default_factory=list)  # host files copied to the same path
    node_links: list[Path] = field(default_factory=list)  # host symlinks (the CLIs' bin entries) recreated

    @property
    def site_packages(self) -> str:
        return f"/usr/local/lib/python{python_version()}/dist-packages"

    def fingerprint(self) -> str:
        """A content hash of everything the rootfs is made of: cheap (the RECORDs hold the files' hashes)."""
        digest = hashlib.sha256(f"{FORMAT}\n{self.site_packages}\n".encode())
        digest.update(("\n".join(self.mmdebstrap_argv(Path("/staging"))) + "\n--\n").encode())
        for dist in self.distributions:
            digest.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
            digest.update((dist.read_text("RECORD") or "").encode())
        for path in [*self.node_files, *self.node_links]:
            info = path.lstat()
            digest.update(f"{path} {info.st_size} {info.st_mtime_ns} {os.readlink(path) if path.is_symlink() else ''}\n"
                          .encode())
        return digest.hexdigest()[:16]

    def mmdebstrap_argv(self, staging: Path) -> list[str]:
        """mmdebstrap writing the rootfs as a tar to stdout: Debian, then the staging folder, then no system text
        and an empty /root (the host's home is hidden in every sandbox; Debian's skeleton there would shadow it)."""
        remove = " ".join(f'"$1"{p}' for p in (*SYSTEM_TEXT, "/root"))
        return ["mmdebstrap", "--variant=minbase", "--format=tar", f"--include={','.join(self.debian_packages)}",
                *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
                f"--customize-hook=sync-in {staging} /",
                f'--customize-hook=rm -rf {remove} && mkdir -m 700 "$1"/root',
                "--skip=cleanup/apt",  # its own cleanup would leave apt's lists/ folder (the hook removed it all)
                self.suite, "-", self.mirror]


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def recipe(task_environment: Path) -> Recipe:
    version = python_version()
    if version not in SUITES:
        raise RootfsError(f"the task image's Python must be this Python's version ({version}), and no Debian suite "
                          f"has it as python3 (known: {', '.join(f'{v} in {s}' for v, s in SUITES.items())}); "
                          "run autoembed with one of those, or use --sandbox bwrap")
    packages = list(dict.fromkeys([*DEBIAN_PACKAGES, *_listed(task_environment / "debian-packages.txt")]))
    requirements = [*RUNTIME_REQUIREMENTS, *_listed(task_environment / "requirements.txt")]
    files, links = node_install()
    return Recipe(suite=SUITES[version], mirror=os.environ.get(MIRROR_VAR, DEFAULT_MIRROR).rstrip("/"),
                  debian_packages=packages, distributions=distribution_closure(requirements),
                  node_files=files, node_links=links)


def _listed(path: Path) -> list[str]:
    """One name a line; # comments and blank lines ignored."""
    if not path.is_file():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


# -- Python ------------------------------------------------------------------------------------------
def distribution_closure(requirements: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions these requirements need, dependencies included (markers evaluated here)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [Requirement(r) for r in requirements]
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            raise RootfsError(f"the task image needs the Python package {req.name}, which is not installed here: "
                              f"pip install {req.name}") from None
        found[name] = dist
        for extra in req.extras:
            pending += _requires(dist, extra)
        pending += _requires(dist, "")
    heldout = sorted(set(found) & {canonicalize_name(p) for p in HELDOUT_PYTHON_PACKAGES})
    if heldout:
        raise RootfsError(f"the task image would hold the held-out package(s) {', '.join(heldout)}, pulled in by "
                          "its requirements (tasks/<name>/environment/requirements.txt): drop what needs them")
    return [found[name] for name in sorted(found)]


def _requires(dist, extra: str) -> list[Requirement]:
    reqs = [Requirement(text) for text in dist.requires or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": extra})]


def site_files(dist) -> list[tuple[Path, str]]:
    """(host file, path relative to site-packages) of a distribution; console scripts (outside) are left out."""
    if dist.files is None:
        raise RootfsError(f"{dist.metadata['Name']} has no RECORD (installed in a way pip cannot list): "
                          "reinstall it with pip")
    out = []
    for rel in dist.files:
        if rel.parts and rel.parts[0] == "..":
            continue
        source = Path(dist.locate_file(rel))
        if source.is_file():
            out.append((source, str(rel)))
    return out


# -- node and the agent CLIs ---------------------------------------------------------------------------
def node_install() -> tuple[list[Path], list[Path]]:
    """Host files of node and the agent CLIs' packages, and the CLIs' bin symlinks. Empty without node."""
    files: list[Path] = []
    links: list[Path] = []
    for name in layout.AGENT_BINARIES:
        exe = shutil.which(name)
        if not exe:
            continue
        entry = Path(exe)
        if entry.is_symlink():
            links.append(entry)
        real = entry.resolve()
        package = _npm_package_root(real)
        files += sorted(p for p in package.rglob("*") if p.is_file() or p.is_symlink()) if package else [real]
    return list(dict.fromkeys(files)), list(dict.fromkeys(links))


def _npm_package_root(path: Path) -> Path | None:
    """<prefix>/lib/node_modules/<pkg> or .../node_modules/@scope/<pkg> holding path, or None (a plain binary)."""
    parts = path.parts
    if "node_modules" not in parts:
        return None
    index = parts.index("node_modules")  # the outermost: the CLI's own package, its dependencies inside
    width = 3 if parts[index + 1].startswith("@") else 2
    return Path(*parts[: index + width])


# -- staging ------------------------------------------------------------------------------------------
def stage(recipe_: Recipe, dest: Path) -> int:
    """Lay out the Python distributions and node files under dest (as the rootfs will hold them); bytes staged.
    Files are hard-linked where the filesystem allows, so staging costs no copy."""
    total = 0
    site = dest / recipe_.site_packages.lstrip("/")
    for dist in recipe_.distributions:
        for source, rel in site_files(dist):
            total += _place(source, site / rel)
    for source in recipe_.node_files:
        total += _place(source, dest / str(source).lstrip("/"))
    for link in recipe_.node_links:
        target = dest / str(link).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_symlink():
            target.symlink_to(os.readlink(link))
    return total


def _place(source: Path, target: Path) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_symlink():
        if not target.is_symlink():
            target.symlink_to(os.readlink(source))
        return 0
    try:
        os.link(source, target)
    except FileExistsError:
        pass
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)
    return source.stat().st_size

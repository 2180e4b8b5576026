"""Host paths no sandbox may show.

The sealed scorer and held-out data, earlier traces, the user's home and the harness's state, and
system text that could hold held-out passages (the held-out sets are built from man pages, Debian
package descriptions and Python docs, which live in these trees). bwrap mounts an empty tmpfs over
each of them that lies inside a visible tree; the Docker image is built without them.
"""

from __future__ import annotations

import os
import site
import sysconfig
from pathlib import Path

from autoembed import paths

# Where the text of the held-out domains lives on a Debian machine.
SYSTEM_TEXT = (
    "/usr/share/man",
    "/usr/share/doc",  # also python3.11-doc's library reference
    "/usr/share/info",
    "/var/lib/apt",  # package lists: every package's description
    "/var/lib/dpkg",  # status: the installed packages' descriptions
    "/var/cache/apt",
    "/usr/share/wordnet",
    "/usr/share/dictd",
    # Beyond the list, the same kinds of text in other places:
    "/var/cache",  # man's index.db holds every NAME line
    "/var/lib/swcatalog",  # AppStream catalogues: package descriptions
    "/var/lib/app-info",
    "/usr/share/metainfo",
    "/usr/share/doc-base",
    "/usr/share/gtk-doc",
)

# The held-out code set is built from these PyPI wheels (data/sources.lock.json, pypi_heldout_wheels). A copy
# installed on the host (optuna, the loop's optimizer, pulls in sqlalchemy at the very version held out) would
# hand the agent held-out functions verbatim, so every installed copy is hidden like the system text.
HELDOUT_PYTHON_PACKAGES = ("astroid", "django", "nltk", "paramiko", "pylint", "sphinx", "sqlalchemy", "twisted")

# Not text, but a way out: the Docker socket is root on the host, other engines' state holds other
# sandboxes' files. None of these is in a visible tree by default; listed for whoever widens one.
ESCAPE_HATCHES = ("/run", "/var/run", "/var/lib/docker", "/var/lib/containerd")


def default_hidden() -> list[Path]:
    return [paths.SEALED_DIR, paths.traces_dir(), Path.home(), paths.home(),
            *map(Path, SYSTEM_TEXT), *map(Path, ESCAPE_HATCHES), *installed_heldout_packages()]


def installed_heldout_packages() -> list[Path]:
    """Installed copies of the held-out wheels in this Python's site folders: the package and its .dist-info."""
    site_dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    found = []
    for folder in map(Path, sorted(site_dirs)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            name = entry.name.lower()
            stem = name.split("-", 1)[0] if name.endswith((".dist-info", ".egg-info")) else name
            if stem in HELDOUT_PYTHON_PACKAGES:
                found.append(entry)
    return found


def hidden_paths(extra: list[Path] | tuple[Path, ...] = ()) -> list[Path]:
    """The defaults plus `extra` (SandboxConfig.hidden), absolute and resolved, without duplicates.

    Both the path as given and its resolved target are kept, so a symlinked home is hidden under
    either name.
    """
    seen: dict[str, Path] = {}
    for path in [*default_hidden(), *map(Path, extra)]:
        absolute = Path(os.path.abspath(path))
        for candidate in (absolute, absolute.resolve()):
            seen.setdefault(str(candidate), candidate)
    return list(seen.values())


def is_within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents

"""Releases a trial's fixed-size workdir even when the process that mounted it is killed.

WorkdirVolume starts `python workdir_guard.py WORKDIR IMAGE` in a session of its own (a SIGKILL
of the trial's process group leaves it standing) and holds the write end of its stdin. The guard waits for one
line or for end of file: a line is the owner asking for the release; end of file with no line means the owner
died (SIGKILL, OOM, a crash). Either way the guard does the one release: the workdir's content is copied out to a
plain folder (links kept as links), the filesystem unmounted (lazily if a stray process still holds it), the
image deleted, and the plain folder put at the workdir's path, so the run folder reads as it would have.

Standard library only: it starts in a fraction of a second and imports nothing the trial's Python may break.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class ReleaseError(RuntimeError):
    pass


def release(workdir: Path, image: Path) -> None:
    """Idempotent: a release cut short (by a second kill) finishes when run again."""
    workdir, image = Path(workdir), Path(image)
    keep = workdir.with_name(workdir.name + ".out")
    if os.path.ismount(workdir):
        if keep.exists():  # an earlier copy was cut short: copy again, from the mounted content
            _run(["rm", "-rf", str(keep)])
        keep.mkdir()
        _run(["cp", "-a", "--no-dereference", f"{workdir}/.", str(keep)])
        try:
            _run(["umount", str(workdir)])
        except ReleaseError:  # still busy (a stray process of a `none` sandbox): detach it, the copy is out already
            _run(["umount", "--lazy", str(workdir)])
    image.unlink(missing_ok=True)
    if keep.is_dir():
        workdir.rmdir()
        keep.rename(workdir)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ReleaseError(f"{' '.join(argv[:2])} failed: {done.stderr.strip()[-300:]}")


def main(argv: list[str]) -> int:
    workdir, image = Path(argv[0]), Path(argv[1])
    # its own session keeps a terminal's Ctrl-C and a SIGKILL of the trial's group away, but a scheduler signals
    # every process of a job (scancel: SIGTERM to all of them): the guard outlives its owner to do its one job
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    asked = sys.stdin.readline()  # blocks until the owner asks, or its end of the pipe closes (it died)
    try:
        release(workdir, image)
    except (ReleaseError, OSError) as exc:
        _say(f"the workdir {workdir} was not released ({'asked' if asked else 'its owner died'}): {exc}")
        return 1
    if not asked:
        _say(f"the owner of {workdir} died; its workdir was released")
    return 0


def _say(line: str) -> None:
    try:
        print(f"[autoembed] {line}", file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):  # the owner's stderr went with it
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

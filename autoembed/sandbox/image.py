"""The Docker task image: a minimal Debian root filesystem plus what a trial needs, tagged once.

The root filesystem is made by mmdebstrap from the Debian mirror (rootfs.py says what goes in: Python 3,
this machine's torch, sentence-transformers and LLM clients, node and the agent CLIs) and streamed into
`docker import` as an untagged image labelled with its content hash. tasks/<name>/environment/Dockerfile
is then built on top (BASE_IMAGE: that image), adding the autoembed package without autoembed/sealed/;
only this result is tagged, autoembed-<task>:<hash>. Both are reused while their hash holds, so a code
change rebuilds only the thin top layer; a new build prunes the old tag.

    python -m autoembed.sandbox.image [--task embed] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from autoembed import paths
from autoembed.sandbox import rootfs

ROOTFS_LABEL = "autoembed.rootfs"  # its value: the rootfs recipe's fingerprint
PART_LABEL = "autoembed.part"  # rootfs on the imported base; the Dockerfile sets task on the tagged image
PREFIX_VAR = "AUTOEMBED_IMAGE_PREFIX"
BUILD_TIMEOUT_S = 3600


class ImageBuildError(RuntimeError):
    pass


def image_prefix() -> str:
    """Repository prefix; two checkouts sharing one engine can keep their images apart with another."""
    return os.environ.get(PREFIX_VAR) or "autoembed"


def task_repository(task: str) -> str:
    return f"{image_prefix()}-{Path(task).name}"


# -- the root filesystem -------------------------------------------------------------------------------
def docker_client(timeout: int = 60):
    import docker  # imported here: bwrap and none must work without an engine

    return docker.from_env(timeout=timeout)


def image_exists(client, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def find_rootfs(client, fingerprint: str) -> str | None:
    """The id of the imported rootfs with this fingerprint, if this engine has it. Images built on it inherit
    its labels; it alone has no parent."""
    for image in client.images.list(all=True, filters={"label": f"{ROOTFS_LABEL}={fingerprint}"}):
        if image.labels.get(PART_LABEL) == "rootfs" and not image.attrs.get("Parent"):
            return image.id
    return None


def ensure_rootfs(client, task: str, *, force: bool = False, progress=print) -> str:
    """The id of the task's rootfs image, made by mmdebstrap if this engine lacks it."""
    try:
        recipe = rootfs.recipe(paths.task_dir(task) / "environment")
    except rootfs.RootfsError as exc:
        raise ImageBuildError(str(exc)) from None
    fingerprint = recipe.fingerprint()
    found = find_rootfs(client, fingerprint)
    if found and not force:
        return found
    check_build_tools(recipe.mirror, recipe.suite)
    with tempfile.TemporaryDirectory(prefix="autoembed-rootfs-") as tmp:
        staged = rootfs.stage(recipe, Path(tmp))
        progress(f"building the task's root filesystem: Debian {recipe.suite} from {recipe.mirror} with "
                 f"{len(recipe.debian_packages)} packages, {len(recipe.distributions)} Python distributions from "
                 f"this machine and the agent CLIs ({staged / 1e9:.1f} GB); a few minutes, once")
        image_id = _import_rootfs(client, recipe, Path(tmp), fingerprint, progress)
    if found and found != image_id:
        _remove_quietly(client, found)
    return image_id


def check_build_tools(mirror: str, suite: str) -> None:
    """mmdebstrap installed and the mirror answering, or one clear error before minutes are spent."""
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError("mmdebstrap is not installed, and the task image is built with it: "
                              "apt-get install mmdebstrap (scripts/setup.sh --test does)")
    url = f"{mirror}/dists/{suite}/InRelease"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=20):
            pass
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing here
        raise ImageBuildError(f"the Debian mirror does not answer ({url}: {exc}); the task image is built from "
                              f"it: set {rootfs.MIRROR_VAR} to a reachable mirror") from None


def _import_rootfs(client, recipe, staging: Path, fingerprint: str, progress) -> str:
    env = {**os.environ, "SOURCE_DATE_EPOCH": rootfs.SOURCE_DATE_EPOCH}
    proc = subprocess.Popen(recipe.mmdebstrap_argv(staging), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    log: list[str] = []
    start = time.time()

    def read_log() -> None:
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            log.append(line)
            if line.startswith(("I: running", "I: downloading", "I: extracting", "I: installing", "I: creating")):
                progress(f"  [{time.time() - start:4.0f} s] mmdebstrap: {line[3:100]}")

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    answer = ""
    try:
        chunks = iter(lambda: proc.stdout.read(1 << 20), b"")
        answer = client.api.import_image_from_stream(
            chunks, changes=["WORKDIR /", "ENV LANG=C.UTF-8", f"LABEL {ROOTFS_LABEL}={fingerprint}",
                             f"LABEL {PART_LABEL}=rootfs"])
    except Exception as exc:  # noqa: BLE001 - mmdebstrap's own error says more; raised below
        answer = f"docker import failed: {exc}"
    finally:
        proc.stdout.close()
        code = proc.wait()
        reader.join()
    if code != 0:
        raise ImageBuildError(f"mmdebstrap could not make the root filesystem from {recipe.mirror} (exit {code}; "
                              f"is the mirror reachable? {rootfs.MIRROR_VAR} sets another):\n" + "\n".join(log[-15:]))
    image_id = find_rootfs(client, fingerprint)
    if image_id is None:
        raise ImageBuildError(f"docker import of the root filesystem produced no image: {str(answer)[-500:]}")
    progress(f"  [{time.time() - start:4.0f} s] root filesystem imported: {image_id[7:19]}")
    return image_id


# -- the task image --------------------------------------------------------------------------------------
def task_context(task: str, dest: Path) -> Path:
    """The build context: the task's environment/ folder plus autoembed without sealed/."""
    env_dir = paths.task_dir(task) / "environment"
    if not (env_dir / "Dockerfile").is_file():
        raise ImageBuildError(f"{env_dir}/Dockerfile is missing: every task ships one (see tasks/embed)")
    shutil.copytree(env_dir, dest, dirs_exist_ok=True)
    shutil.copytree(paths.PACKAGE_DIR, dest / "autoembed",
                    ignore=shutil.ignore_patterns("sealed", "__pycache__", "*.pyc"))
    return dest


def context_hash(context: Path, build_args: dict[str, str]) -> str:
    digest = hashlib.sha256(repr(sorted(build_args.items())).encode())
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(context)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _one_build_at_a_time(client, repository: str):
    """Processes of this machine that ensure one repository on one engine take turns (the parallel test workers,
    trials started together): a second one waits for the first's build, then finds its tag, instead of building
    the same image beside it and leaving one of the two untagged."""
    engine = getattr(getattr(client, "api", None), "base_url", "")
    key = hashlib.sha256(f"{engine}|{repository}".encode()).hexdigest()[:16]
    try:
        fd = os.open(Path(tempfile.gettempdir()) / f"autoembed-image-{key}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:  # another user's lock file (a sticky /tmp refuses it): build unserialized, as before
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # let go when the file closes, or when its process dies
        yield
    finally:
        os.close(fd)


def ensure_task_image(task: str = paths.DEFAULT_TASK, client=None, *, force: bool = False, progress=print) -> str:
    """The tag of the task's image, building the rootfs and/or the top layer if missing."""
    client = client or docker_client(BUILD_TIMEOUT_S)
    with _one_build_at_a_time(client, task_repository(task)):
        return _ensure_task_image(task, client, force, progress)


def _ensure_task_image(task: str, client, force: bool, progress) -> str:
    base = ensure_rootfs(client, task, force=force, progress=progress)
    repository = task_repository(task)
    with tempfile.TemporaryDirectory(prefix="autoembed-image-") as tmp:
        context = task_context(task, Path(tmp))
        build_args = {"BASE_IMAGE": base, "PYTHON": rootfs.IMAGE_PYTHON}
        tag = f"{repository}:{context_hash(context, build_args)}"
        if image_exists(client, tag) and not force:
            return tag
        replaced = _image_id(client, tag)
        progress(f"building {tag} from {paths.task_dir(task)}/environment/Dockerfile")
        log: list[str] = []
        # network none: the build needs none, and an engine without a bridge (a placement engine) can build too
        for chunk in client.api.build(path=str(context), tag=tag, buildargs=build_args, rm=True, forcerm=True,
                                      pull=False, decode=True, network_mode="none"):
            if "error" in chunk:
                raise ImageBuildError(f"docker build of {tag} failed: {chunk['error']}\n{''.join(log[-20:])}")
            log.append(chunk.get("stream", ""))
    if not image_exists(client, tag):
        raise ImageBuildError(f"docker build of {tag} produced no image:\n{''.join(log[-20:])}")
    _drop_replaced(client, tag, replaced)
    _prune(client, repository, keep=tag)  # their rootfs goes with them unless this tag stands on it
    _prune(client, f"{image_prefix()}-base", keep="")  # the two-tag layout before the mmdebstrap rootfs
    return tag


def _image_id(client, tag: str) -> str | None:
    return client.images.get(tag).id if image_exists(client, tag) else None


def _drop_replaced(client, tag: str, replaced: str | None) -> None:
    """A forced rebuild moves the tag; the image it left behind would linger untagged."""
    if replaced and replaced != _image_id(client, tag):
        _remove_quietly(client, replaced)


def _prune(client, repository: str, keep: str) -> None:
    for image in client.images.list(name=repository):
        for tag in image.tags:
            if tag != keep and tag.startswith(repository + ":"):
                _remove_quietly(client, tag)


def _remove_quietly(client, tag: str) -> None:
    import docker

    try:
        client.images.remove(tag)
    except docker.errors.APIError:
        pass  # in use by a container, or already gone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build (or reuse) the Docker image a task's sandbox runs in.")
    parser.add_argument("--task", default=paths.DEFAULT_TASK)
    parser.add_argument("--force", action="store_true", help="rebuild even if an image with the same hash exists")
    args = parser.parse_args(argv)
    start = time.time()
    client = docker_client(BUILD_TIMEOUT_S)
    try:
        tag = ensure_task_image(args.task, client, force=args.force, progress=lambda line: print(line, flush=True))
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size_gb = client.images.get(tag).attrs["Size"] / 1e9
    print(f"image {tag}: {size_gb:.2f} GB, ready in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

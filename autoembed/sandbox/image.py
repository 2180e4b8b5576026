"""The Docker task image, built offline.

Images cannot be pulled here, so the base image is this machine's own software: a tar of the
system trees and this Python's install (the hidden paths and a few big unused trees left out),
streamed into `docker import`. tasks/<name>/environment/Dockerfile is then built on top with the
base as the BASE_IMAGE build argument, adding the autoembed package without autoembed/sealed/.
Both images are tagged by a content hash and reused while it holds; a new build prunes the old tags.

    python -m autoembed.sandbox.image [--task embed] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from autoembed import paths
from autoembed.sandbox import layout
from autoembed.sandbox.hidden import hidden_paths, is_within

BASE_REPOSITORY = "autoembed-base"
FORMAT = "2"  # bump when the rootfs recipe changes in a way the fingerprint cannot see
# Big trees no trial uses; leaving them out saves minutes of build on a fresh CI machine.
IMAGE_SKIP = ("/usr/lib/google-cloud-sdk", "/usr/lib/jvm", "/usr/lib/debug")
BUILD_TIMEOUT_S = 3600


class ImageBuildError(RuntimeError):
    pass


def task_repository(task: str) -> str:
    return f"autoembed-{Path(task).name}"


# -- what goes into the base image -----------------------------------------------------------------
def rootfs_members() -> list[str]:
    """Paths (relative to /) archived into the base image."""
    members = [root for root in layout.SYSTEM_ROOTS if os.path.isdir(root)]
    members += [name for name in layout.MERGED_USR if os.path.lexists(name)]
    members += [str(p) for p in layout.runtime_paths() if p.exists()]
    return [m.lstrip("/") for m in dict.fromkeys(members)]


def rootfs_excludes(members: list[str]) -> list[str]:
    """Hidden paths and skipped trees inside the archived members, plus the harness's own copy of
    autoembed (the Dockerfile adds one without sealed/)."""
    trees = [Path("/", m) for m in members]
    candidates = [*hidden_paths(), *map(Path, IMAGE_SKIP), paths.PACKAGE_DIR]
    excludes = [str(p).lstrip("/") for p in candidates if any(is_within(p, t) for t in trees)]
    for prefix in layout.python_prefixes():  # the editable install's hooks point at the repo
        for site in prefix.glob("lib/python3*/site-packages"):
            rel = str(site).lstrip("/")
            excludes += [f"{rel}/__editable__*autoembed*", f"{rel}/autoembed-*.dist-info", f"{rel}/autoembed.pth"]
    return sorted(dict.fromkeys(excludes))


def base_fingerprint(members: list[str], excludes: list[str]) -> str:
    """Cheap content hash of what the base image mirrors: the recipe, the installed Python
    distributions, the Debian packages, and the agent CLIs' files."""
    digest = hashlib.sha256()
    digest.update(f"{FORMAT}\n{sys.version}\n{sys.executable}\n".encode())
    digest.update("\n".join(members + ["--"] + excludes).encode())
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                   if d.metadata["Name"] and d.metadata["Name"].lower() != "autoembed")
    digest.update("\n".join(dists).encode())
    dpkg_status = Path("/var/lib/dpkg/status")
    if dpkg_status.is_file():
        digest.update(hashlib.sha256(dpkg_status.read_bytes()).digest())
    for name in layout.AGENT_BINARIES:
        exe = shutil.which(name)
        if exe:
            real = Path(exe).resolve()
            stat = real.stat()
            digest.update(f"{name} {real} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# -- building ----------------------------------------------------------------------------------------
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


def ensure_base_image(client=None, *, force: bool = False, progress=print) -> str:
    client = client or docker_client(BUILD_TIMEOUT_S)
    members = rootfs_members()
    excludes = rootfs_excludes(members)
    tag = f"{BASE_REPOSITORY}:{base_fingerprint(members, excludes)}"
    if image_exists(client, tag) and not force:
        return tag
    replaced = _image_id(client, tag)
    progress(f"building {tag} from this machine's filesystem ({', '.join('/' + m for m in members)}); "
             "this takes a few minutes once")
    argv = ["tar", "--create", "--file=-", "--directory=/", "--numeric-owner", "--anchored",
            "--warning=no-file-changed", "--warning=no-file-removed", "--warning=no-file-ignored",
            *(f"--exclude={x}" for x in excludes), "--", *members]
    tar = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(tar.stderr.read()), daemon=True)
    reader.start()
    try:
        chunks = iter(lambda: tar.stdout.read(1 << 20), b"")
        client.api.import_image_from_stream(chunks, repository=BASE_REPOSITORY, tag=tag.split(":", 1)[1],
                                            changes=["WORKDIR /", "ENV LANG=C.UTF-8"])
    finally:
        tar.stdout.close()
        code = tar.wait()
        reader.join()
    if code not in (0, 1):  # 1: a file changed while being read (logs), harmless
        _remove_quietly(client, tag)
        raise ImageBuildError(f"tar of the rootfs failed ({code}): {b''.join(errors).decode(errors='replace')[-2000:]}")
    _drop_replaced(client, tag, replaced)
    _prune(client, BASE_REPOSITORY, keep=tag)
    return tag


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


def ensure_task_image(task: str = paths.DEFAULT_TASK, client=None, *, force: bool = False, progress=print) -> str:
    """The tag of the task's image, building the base and/or the task image if missing."""
    client = client or docker_client(BUILD_TIMEOUT_S)
    base = ensure_base_image(client, force=force, progress=progress)
    with tempfile.TemporaryDirectory(prefix="autoembed-image-") as tmp:
        context = task_context(task, Path(tmp))
        build_args = {"BASE_IMAGE": base, "PYTHON": sys.executable}
        tag = f"{task_repository(task)}:{context_hash(context, build_args)}"
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
    _prune(client, task_repository(task), keep=tag)
    _prune(client, BASE_REPOSITORY, keep=base)  # old bases are free once their task images are gone
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
    tag = ensure_task_image(args.task, client, force=args.force)
    size_gb = client.images.get(tag).attrs["Size"] / 1e9
    print(f"image {tag}: {size_gb:.2f} GB, ready in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

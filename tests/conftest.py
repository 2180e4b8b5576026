"""Fixtures shared by the sandbox tests: things an agent must not be able to see."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from autoembed import paths
from tests import sandbox_attacks as attacks


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist (pyproject's addopts), each worker's torch takes its share of the cores, not all of them:
    two workers each spinning as many threads as the machine has cores run torch several times slower than one.
    Set in this worker and in the environment of the Python subprocesses its tests start."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_the_cores_between_workers()


def pytest_runtest_setup(item):
    """Tests marked slow (real training or encoding, minutes on 2 cores) run only when asked for with -m slow."""
    if item.get_closest_marker("slow") and "slow" not in (item.config.getoption("markexpr") or ""):
        pytest.skip("marked slow (real training or encoding, minutes on CPU): run with -m slow")


@pytest.fixture(scope="module")
def sealed_canary():
    """A file planted in autoembed/sealed/ for the duration of a test module."""
    path = paths.SEALED_DIR / f"_escape_test_canary_{uuid.uuid4().hex[:8]}.txt"
    path.write_text(attacks.SEALED_CANARY)
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def trace_file():
    """An earlier trial's trace under the traces folder."""
    run_dir = paths.traces_dir() / f"_escape_test_{uuid.uuid4().hex[:8]}"
    run_dir.mkdir(parents=True)
    (run_dir / "trace.jsonl").write_text('{"kind": "assistant", "text": "an earlier trial"}\n')
    yield run_dir / "trace.jsonl"
    shutil.rmtree(run_dir)

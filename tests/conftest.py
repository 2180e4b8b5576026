"""Fixtures shared by the sandbox tests: things an agent must not be able to see."""

from __future__ import annotations

import shutil
import uuid

import pytest

from autoembed import paths
from tests import sandbox_attacks as attacks


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

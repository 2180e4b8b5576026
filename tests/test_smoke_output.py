"""The smoke check reads a candidate recipe's output within bounds (issue 18): a candidate that prints a 300 MB line
with no newline and a 60 MB flood inside bwrap fails its smoke check with a short error, its agent.log stops at the
cap with a line saying how much was cut, and the loop's process stays flat in memory."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from autoembed import bounded
from autoembed.loop import smoke
from autoembed.agents.recipe import FIXED_ADAPTER_SHA256, TRAIN_SCRIPT
from autoembed.sandbox.bwrap import bwrap_problem
from tests.test_recipe import RECIPE_FLOOD
from tests.tiny_task import shared_tiny_task

pytestmark = pytest.mark.skipif(bwrap_problem() is not None, reason=f"bwrap unusable here: {bwrap_problem()}")


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_flooding_recipe_candidate_is_read_within_bounds(tmp_path_factory, tmp_path, monkeypatch):
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("AUTOEMBED_HOME", str(base / "autoembed_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = shared_tiny_task(base)
    head, future, rest = TRAIN_SCRIPT.read_text().partition("from __future__ import annotations\n")
    source = head + future + RECIPE_FLOOD + rest
    before, samples, done = _rss(), [], threading.Event()
    sampler = threading.Thread(target=lambda: [samples.append(_rss()) for _ in iter(lambda: done.wait(0.02), True)])
    sampler.start()
    try:
        result = smoke.smoke_check("recipe", source, FIXED_ADAPTER_SHA256, tmp_path / "smoke", sandbox="bwrap",
                                   task=str(task))
    finally:
        done.set()
        sampler.join()
    assert not result.ok and "the recipe exited with 5" in result.error
    assert len(result.error) < smoke.OUTPUT_CHARS + 200
    log = tmp_path / "smoke" / "agent.log"
    assert bounded.MAX_LOG_BYTES - 2 ** 20 < log.stat().st_size <= bounded.MAX_LOG_BYTES + 4096
    assert json.loads(log.read_bytes().splitlines()[-1])["type"] == "autoembed_cut"
    assert max(samples) - before < 64 * 2 ** 20, f"the loop's process grew by {(max(samples) - before) / 2 ** 20:.0f} MiB"

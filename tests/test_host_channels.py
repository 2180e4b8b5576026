"""What an agent sends the host is bounded and printed safely, attacked from inside a real trial in bwrap and in Docker (issue 18):
one hostile harness, run once for the module, whose code (running inside the sandbox) leaves a 1 TiB sparse file
in final_model/, floods its stderr with 400 MB, writes a 300 MB line with no newline on its event channel, forges
tool calls whose text holds terminal escapes (set the title, write the clipboard, return to the line start, erase
it, print a fake green result line) and crashes with the same text in its traceback.

The host must copy nothing of the terabyte (refused before a byte is copied, recorded as too_large), keep agent.log
at its cap with a line saying how much was cut, keep its own memory flat while the giant line goes by, and print no
raw control character of the agent's anywhere (progress lines and the summary block).
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from autoembed import bounded
from autoembed.agents.harness import MAX_EVENT_LINE
from autoembed.integrity.host_bounds import (GIANT_LINE_MB, RAW_CONTROLS, STDERR_MB, agent_rss, allocated_bytes,
                                             hostile_harness)
from autoembed.sandbox.bwrap import bwrap_problem
from autoembed.sandbox.factory import docker_problem
from tests.tiny_task import shared_tiny_task


@pytest.fixture(scope="module", params=["bwrap", "docker"])
def hostile(request, tmp_path_factory):
    """The trial in each engine (run with the default progress printer), the host process's RSS sampled while the
    agent ran, and everything the trial printed."""
    import autoembed.sealed.scorer  # noqa: F401 - loaded now, so the trial's preload adds nothing to the RSS measured
    from autoembed.trial.run import run

    engine = request.param
    problem = bwrap_problem() if engine == "bwrap" else docker_problem()
    if problem:
        pytest.skip(f"{engine} unusable here: {problem}")
    base = tmp_path_factory.getbasetemp()
    folder = tmp_path_factory.mktemp(f"hostile-{engine}")
    harness, script = hostile_harness(folder)
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOEMBED_HOME", str(base / "autoembed_home"))
        mp.setenv("AUTOEMBED_TRACES", str(base / "unused_traces"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        task = shared_tiny_task(base)
        with agent_rss() as rss, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result = run(f"harness:{harness}", task=str(task), hours=0.05, sandbox=engine, model=f"scripted:{script}",
                         out=folder / "run", check_key=False)
    return {"result": result, "rss": rss, "stdout": out.getvalue(), "stderr": err.getvalue()}


def test_a_sparse_terabyte_in_final_model_is_refused_before_a_byte_is_copied(hostile):
    result = hostile["result"]
    meta = result.meta
    assert meta["exit_reason"] == "crashed" and "gave up" in meta["exit_detail"]  # the program ran to its end
    refused = meta["final_model"]["too_large"]
    assert refused["apparent_bytes"] >= 2 ** 40 and refused["max_bytes"] < 2 ** 40
    assert not (result.run_dir / "final_model").exists()
    assert any("too_large" in problem for problem in meta["problems"]) and meta["result"] == "not clean"
    assert result.score["scored_as"] == "base_model" and result.score["status"] == "broken"
    assert [r.split(":")[0] for r in result.score["reasons"]][:1] == ["not_frozen"], result.score["reasons"]
    # the run folder (the released workdir, which still holds the sparse file, included) costs the host little
    assert allocated_bytes(result.run_dir) < 200 * 2 ** 20, allocated_bytes(result.run_dir)


def test_a_stderr_flood_leaves_agent_log_at_its_cap_with_a_cut_notice(hostile):
    log = hostile["result"].run_dir / "agent.log"
    size = log.stat().st_size
    assert bounded.MAX_LOG_BYTES - 2 ** 20 < size <= bounded.MAX_LOG_BYTES + 4096, size
    last = json.loads(log.read_bytes().splitlines()[-1])
    assert last["type"] == "autoembed_cut" and "more bytes were cut" in last["text"]
    cut = int(last["text"].split("; ")[1].split()[0])
    assert cut > (STDERR_MB - 60) * 2 ** 20  # most of the flood was read (the harness was not blocked) and dropped


def test_a_giant_line_on_the_event_channel_keeps_the_host_memory_flat(hostile):
    rss = hostile["rss"]
    growth = max(rss["samples"]) - rss["before"]
    assert growth < 64 * 2 ** 20, f"the host trial process grew by {growth / 2 ** 20:.0f} MiB"
    errors = [json.loads(line) for line in (hostile["result"].run_dir / "trace.jsonl").read_text().splitlines()]
    cut = [e["text"] for e in errors if e["kind"] == "error" and "was cut at" in (e.get("text") or "")]
    assert cut and f"of {GIANT_LINE_MB * 2 ** 20 + 1} bytes was cut at {MAX_EVENT_LINE} bytes" in cut[0]


def test_terminal_escapes_from_the_agent_print_as_visible_escapes(hostile):
    printed = hostile["stdout"] + hostile["stderr"]
    for char in RAW_CONTROLS:
        assert char not in printed, f"{char!r} reached the terminal"
    assert "harness bash: \\x1b]0;pwned-title\\x07" in hostile["stderr"]  # the forged call was shown, escaped
    crashed = [line for line in hostile["stdout"].splitlines() if line.startswith("reason: the agent crashed: ")]
    assert crashed and "\\x1b[32m[autoembed] result: clean" in crashed[0]  # the summary block quotes it, escaped
    assert "\n[autoembed] result: clean" not in printed and "result: NOT CLEAN" in hostile["stdout"]

"""examples/notebook.ipynb executed with nbclient, as a researcher would run it: a trial, a loop, their tables
(HTML reprs) and plots, the frames, and reopening a folder. The default suite runs it with simulated trials
(SIMULATE = True: tests/compare_driver.py); the slow suite runs real trials on a tiny copy of the task."""

from __future__ import annotations

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from autoembed.paths import REPO_ROOT
from tests import compare_driver

NOTEBOOK = REPO_ROOT / "examples" / "notebook.ipynb"


def execute(params: dict, env: dict, timeout: int) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    saved = dict(os.environ)
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb


def outputs(nb) -> tuple[list[str], int]:
    html, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            html += [data["text/html"]] if "text/html" in data else []
            images += "image/png" in data
            assert out.get("output_type") != "error", out
    return html, images


def check(nb) -> None:
    html, images = outputs(nb)
    text = "\n".join(html)
    assert images >= 2, "the trial's and the loop's plots"
    assert "<b>trial trial</b>" in text and "normalized" in text and "change 95% CI" in text
    assert "<b>loop loop</b>" in text and "baseline" in text and "gate_value" in text
    assert "run_dir" in text and "<th>dataset</th>" in text  # the frames, rendered as tables


def test_notebook_runs_a_trial_and_a_loop_with_simulated_trials(tmp_path):
    nb = execute({"SIMULATE": True, "TASK": "embed", "TRIAL_HOURS": 0.001, "LOOP_HOURS": 1.0, "SANDBOX": "none",
                  "OUT": str(tmp_path / "nb")},
                 {"PYTHONPATH": str(REPO_ROOT), "AUTOEMBED_HOME": str(tmp_path / "home")}, timeout=300)
    check(nb)
    text = "\n".join(outputs(nb)[0])
    score = json.loads((tmp_path / "nb" / "trial" / "score.json").read_text())
    normalized = (score["heldout"]["mean"]["ndcg@10"] - compare_driver.LADDER["base"]) / 0.1
    assert f"{normalized:.4f}" in text, "the trial's table shows its normalized held-out score"
    assert (tmp_path / "nb" / "loop" / "ledger.jsonl").is_file() and (tmp_path / "nb" / "trial" / "score.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(3300)
def test_notebook_runs_a_real_trial_and_loop_on_the_tiny_task(tmp_path):
    from tests.tiny_task import shared_tiny_task

    task = shared_tiny_task(tmp_path)
    nb = execute({"SIMULATE": False, "TASK": str(task), "TRIAL_HOURS": 0.02, "LOOP_HOURS": 0.3, "SANDBOX": "bwrap",
                  "OUT": str(tmp_path / "nb")},
                 {"PYTHONPATH": str(REPO_ROOT), "AUTOEMBED_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
                  "AUTOEMBED_TRACES": str(tmp_path / "traces")}, timeout=3000)
    check(nb)
    assert "no reference ladder for embed|fast:3x10" in "\n".join(outputs(nb)[0])

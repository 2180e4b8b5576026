"""Placement on this machine, cheaply: a pool whose first place is a Docker engine that does not answer retries the
trial on this machine and records both attempts; every place failing leaves a folder that says so; bad places and
bad trial specs are refused with a clear message. The two-engine and Slurm runs are in test_placement_engines.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoembed.paths import REPO_ROOT
from autoembed.placement.docker_engine import DockerPlace
from autoembed.placement.place import BadTrial, LocalPlace, Place
from autoembed.placement.pool import Pool, run_pool, trial_result
from autoembed.placement.slurm import SlurmPlace
from autoembed.placement.config import load_places
from autoembed.sandbox.bwrap import bwrap_problem
from tests.tiny_task import keyless_tiny_task

BASELINE = REPO_ROOT / "harnesses" / "baseline.py"


def quick_trial(tmp_path: Path, task: Path, name: str, steps: list[dict] | None = None) -> dict:
    """A scripted harness trial that finishes in seconds (the scripted model answers without calling a tool)."""
    script = tmp_path / f"{name}.json"
    script.write_text(json.dumps(steps or [{"text": "Nothing to do: done."}]))
    return {"agent": f"harness:{BASELINE}", "model": f"scripted:{script}", "task": str(task), "hours": 0.05,
            "sandbox": "bwrap", "check_key": False, "out": tmp_path / name}


def meta_of(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "meta.json").read_text())


@pytest.mark.skipif(bwrap_problem() is not None, reason=f"bwrap unusable here: {bwrap_problem()}")
def test_a_trial_whose_engine_does_not_answer_is_retried_here_and_both_attempts_are_recorded(tmp_path_factory,
                                                                                             monkeypatch, tmp_path):
    task = keyless_tiny_task(tmp_path_factory, monkeypatch)
    gone = DockerPlace("gone", f"unix://{tmp_path}/no-engine.sock")
    here = LocalPlace("here", cpu_slots=2)  # two trials may run here at once: each gets half the host's share
    messages: list[str] = []
    pool = Pool([gone, here], say=messages.append)
    [run_dir] = pool.run_all([quick_trial(tmp_path, task, "t1")])

    meta = meta_of(run_dir)
    assert run_dir == tmp_path / "t1" and meta["status"] == "scored", meta.get("reason")
    placement = meta["placement"]
    assert (placement["place"], placement["kind"], placement["gpu"], placement["attempts"]) == ("here", "local", None, 2)
    [failure] = placement["failed"]
    assert failure["place"] == "gone" and failure["kind"] == "docker" and "does not answer" in failure["reason"]
    assert meta["sandbox"]["kind"] == "bwrap" and meta["exit_reason"] == "finished", meta.get("exit_detail")
    assert any("gone takes no more trials" in m for m in messages), messages
    assert [p.name for p, _ in pool._free] == ["here", "here"], "the dead engine's slot must be gone"
    fit = meta["limits"]["fit"]
    assert placement["side_by_side"] == 2 and fit["concurrent"] == 2
    from autoembed.sandbox.host_fit import fit_memory

    assert fit["memory_gb"] == fit_memory(fit["memory_gb"]["requested"], 2), fit
    assert "shared by 2 trial(s) side by side" in fit["memory_gb"]["reason"]
    result = trial_result(run_dir)  # what the loop gets back from a pool
    assert result.run_id == meta["run_id"] and result.score["dev"] and result.meta["placement"] == placement


def test_when_every_place_fails_the_trial_folder_says_where_and_why(tmp_path):
    places = [DockerPlace("a", f"unix://{tmp_path}/a.sock"), DockerPlace("b", f"unix://{tmp_path}/b.sock")]
    [run_dir] = run_pool([{"agent": "recipe", "out": tmp_path / "t"}], places, say=lambda m: None)
    meta = meta_of(run_dir)
    assert meta["status"] == "failed_to_start" and meta["failed_stage"] == "placement"
    assert [f["place"] for f in meta["placement"]["failed"]] == ["a", "b"]
    assert meta["placement"]["attempts"] == 2 and "every place failed" in meta["placement"]["gave_up"]
    assert (tmp_path / "t.attempt1").exists() is False  # no attempt made a folder: nothing set aside


def test_a_grid_fills_every_slot_of_every_place(tmp_path):
    """Slots are handed out interleaved and in parallel: with 2 + 1 slots, three trials run at once."""
    import threading
    import time

    running, peak, lock = [], [0], threading.Lock()

    class Probe(Place):  # a real place of our own whose trials only wait: shows the scheduling, not a trial
        def run_trial(self, run_kwargs, gpu=None, say=None):
            with lock:
                running.append((self.name, gpu))
                peak[0] = max(peak[0], len(running))
            time.sleep(0.5)
            with lock:
                running.remove((self.name, gpu))
            Path(run_kwargs["out"]).mkdir()
            (Path(run_kwargs["out"]) / "meta.json").write_text(json.dumps({"placement": run_kwargs["placement"]}))
            return Path(run_kwargs["out"])

    places = [Probe("x", gpus=["0", "1"]), Probe("y", gpus=["7"])]
    assert Pool(places).slot_labels() == ["x:0", "x:1", "y:7"]  # what a loop given --places plans over
    dirs = run_pool([{"agent": "recipe", "out": tmp_path / f"t{i}"} for i in range(6)], places, say=lambda m: None)
    seen = [(meta_of(d)["placement"]["place"], meta_of(d)["placement"]["gpu"]) for d in dirs]
    assert peak[0] == 3 and set(seen) == {("x", "0"), ("x", "1"), ("y", "7")}
    side_by_side = {meta_of(d)["placement"]["place"]: meta_of(d)["placement"]["side_by_side"] for d in dirs}
    assert side_by_side == {"x": 2, "y": 1}, "a trial's limits are its place's share: one per slot there"
    assert seen[:3] == [("x", "0"), ("y", "7"), ("x", "1")], "the first trials go to different places first"


def test_bad_places_and_specs_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="must start with unix://"):
        DockerPlace("e", "http://host:2375")
    with pytest.raises(ValueError, match="listed twice"):
        LocalPlace("here", gpus=["0", "0"])
    with pytest.raises(ValueError, match="share a name"):
        Pool([LocalPlace("a"), LocalPlace("a")])
    with pytest.raises(ValueError, match="cluster must be one of"):
        SlurmPlace("s", cluster="pbs")
    with pytest.raises(ValueError, match="needs 'agent'"):
        Pool([LocalPlace("a")]).run_trial({"hours": 1})
    with pytest.raises(BadTrial, match="unknown agent|agent"):
        run_pool([{"agent": "no-such-agent", "out": tmp_path / "bad"}], [LocalPlace("a")], say=lambda m: None)
    assert not (tmp_path / "bad").exists(), "bad input must be refused before a run folder exists"

    conf = tmp_path / "places.toml"
    conf.write_text('[[place]]\nname = "box"\nkind = "docker"\nurl = "unix:///x.sock"\ngpus = [0, 1]\n'
                    '[[place]]\nname = "c"\nkind = "slurm"\njobs = 4\ncluster = "local"\n')
    box, cluster = load_places(conf)
    assert (box.kind, box.url, box.slots()) == ("docker", "unix:///x.sock", ["0", "1"])
    assert (cluster.kind, cluster.slots()) == ("slurm", [None] * 4)
    conf.write_text('[[place]]\nname = "box"\nkind = "docker"\ngpu = ["0"]\nurl = "unix:///x.sock"\n')
    with pytest.raises(ValueError, match=r"places.toml place 1: unknown key\(s\) gpu"):
        load_places(conf)
    from autoembed.loop.config import LoopConfig, validate as _validate

    with pytest.raises(ValueError, match=r"places.toml place 1: unknown key"):  # the loop refuses it before it starts
        _validate(LoopConfig(places=str(conf)))

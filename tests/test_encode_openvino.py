"""CPU encoding through OpenVINO gives the torch fp32 numbers: embeddings within 1e-4 at f32, a real fast subset's
metrics within 0.002 at the precision the scorer uses, and a model whose weights change is recompiled (an agent
evaluates between optimizer steps)."""

from __future__ import annotations

import pytest
import torch

from autoembed.task import encode
from autoembed.task.base_model import offline_env, resolve_base_model
from autoembed.task.data import load_retrieval_task
from autoembed.task.evaluate import evaluate_model, load_model
from autoembed.task.spec import load_spec

openvino = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def model():
    offline_env()
    spec = load_spec("embed")
    loaded = load_model(str(resolve_base_model(spec.base_model, spec.base_model_sha256)), "cpu")
    loaded.max_seq_length = spec.max_seq_length
    return loaded


@pytest.fixture(scope="module")
def texts() -> list[str]:
    spec = load_spec("embed")
    task = load_retrieval_task(spec.dev_dir / "pycode", "pycode").subset(20, 60)
    return list(task.corpus.values())


def encode_with(model, texts, monkeypatch, *, openvino_on: bool, amp=None) -> torch.Tensor:
    monkeypatch.setenv("AUTOEMBED_OPENVINO", "1" if openvino_on else "0")
    return encode.encode_texts(model, texts, "document", torch.device("cpu"), cache_dir=None, amp_dtype=amp)


def test_openvino_f32_matches_torch_fp32(model, texts, monkeypatch):
    monkeypatch.setenv("AUTOEMBED_OPENVINO", "1")  # opt-in: off by default
    assert encode.openvino_forward(model, None) is not None, "the base model should take the OpenVINO path"
    exact = encode_with(model, texts, monkeypatch, openvino_on=False)
    fast = encode_with(model, texts, monkeypatch, openvino_on=True)
    assert (exact - fast).abs().max().item() < 1e-4


def test_changed_weights_are_recompiled(model, texts, monkeypatch):
    before = encode_with(model, texts[:8], monkeypatch, openvino_on=True)
    layer = model[0].auto_model.encoder.layer[0].output.dense
    saved = layer.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.weight.mul_(1.5)  # in place, as an optimizer step does
        exact = encode_with(model, texts[:8], monkeypatch, openvino_on=False)
        fast = encode_with(model, texts[:8], monkeypatch, openvino_on=True)
    finally:
        with torch.no_grad():
            layer.weight.copy_(saved)
    assert (before - fast).abs().max().item() > 1e-3, "the compiled model still had the old weights"
    assert (exact - fast).abs().max().item() < 1e-4


def test_a_machine_where_openvino_cannot_compile_falls_back_to_torch(model, texts, monkeypatch):
    def cannot(*args, **kwargs):
        raise RuntimeError("CPU plugin: cannot read /sys/devices/system/cpu")

    exact = encode_with(model, texts[:8], monkeypatch, openvino_on=False)
    monkeypatch.setattr(openvino, "convert_model", cannot)
    encode._openvino_models.clear()
    fallen_back = encode_with(model, texts[:8], monkeypatch, openvino_on=True)
    assert torch.equal(exact, fallen_back)


def test_other_module_stacks_keep_the_torch_path(model):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    assert encode.openvino_forward(model, torch.float16) is None  # no OpenVINO twin for fp16 autocast
    with_dense = SentenceTransformer(modules=[*model, Dense(384, 16)], device="cpu")
    assert encode.openvino_forward(with_dense, None) is None


@pytest.mark.slow
def test_a_fast_subset_scores_the_same_at_the_default_precision(model, monkeypatch):
    """wordnet's documented fast subset (200 queries x 1000 docs): every metric within 0.002 of torch fp32."""
    spec = load_spec("embed")
    tasks = {"wordnet": load_retrieval_task(spec.dev_dir / "wordnet", "wordnet").subset(spec.fast_queries, spec.fast_docs)}
    monkeypatch.setenv("AUTOEMBED_OPENVINO", "0")
    exact = evaluate_model(model, tasks, device="cpu", bootstrap=0, amp_dtype=None)
    monkeypatch.setenv("AUTOEMBED_OPENVINO", "1")
    fast = evaluate_model(model, tasks, device="cpu", bootstrap=0)  # "auto": what the scorer uses on CPU
    for metric in ("ndcg@10", "mrr@10", "recall@10", "recall@100"):
        assert fast["mean"][metric] == pytest.approx(exact["mean"][metric], abs=0.002), metric

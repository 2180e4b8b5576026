"""bf16 on CPU (AUTOEMBED_CPU_PRECISION=bf16: the Linear layers from weights cast once; bf16-all: the whole model).
The Linear twin gives exactly what torch's own bf16 autocast gives (an independent computation) and stays within the
tolerance of the exact fp32 path on a real slice; twins are rebuilt when the weights change and fall back to fp32
where they cannot run; the exact path stays the default."""

from __future__ import annotations

import pytest
import torch

from autoembed.task import encode
from autoembed.task.base_model import offline_env, resolve_base_model
from autoembed.task.data import load_retrieval_task
from autoembed.task.evaluate import evaluate_model, load_model
from autoembed.task.spec import load_spec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    offline_env()
    spec = load_spec("embed")
    loaded = load_model(str(resolve_base_model(spec.base_model, spec.base_model_sha256)), "cpu").eval()
    loaded.max_seq_length = spec.max_seq_length
    return loaded


@pytest.fixture(scope="module")
def pycode():  # long texts (up to the 256-token cap): where bf16 has the most room to drift
    spec = load_spec("embed")
    return load_retrieval_task(spec.dev_dir / "pycode", "pycode").subset(8, 32)


@pytest.fixture(scope="module")
def wordnet():  # short texts: a real ranking at a cost that fits the test budget
    spec = load_spec("embed")
    return load_retrieval_task(spec.dev_dir / "wordnet", "wordnet").subset(60, 240)


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch):
    monkeypatch.setenv("AUTOEMBED_OPENVINO", "0")
    monkeypatch.delenv(encode.CPU_PRECISION_ENV, raising=False)
    encode._bf16_twins.clear()


def bf16(model, texts, stats=None):
    return encode.encode_texts(model, texts, "document", CPU, None, amp_dtype=torch.bfloat16, stats=stats)


def fp32(model, texts):
    return encode.encode_texts(model, texts, "document", CPU, None, amp_dtype=None)


def test_precision_choice_and_its_bad_value(monkeypatch):
    monkeypatch.setattr(encode, "cpu_has_bf16", lambda: True)
    assert encode.DEFAULT_CPU_PRECISION == "fp32" and encode.default_amp_dtype(CPU) is None  # exact by default
    monkeypatch.setenv(encode.CPU_PRECISION_ENV, "bf16")
    assert encode.default_amp_dtype(CPU) == torch.bfloat16
    assert encode.encoder_name(CPU, torch.bfloat16) == "torch-bf16-linear"
    assert encode.default_amp_dtype(torch.device("cuda")) == torch.float16  # the GPU path does not read it
    monkeypatch.setattr(encode, "cpu_has_bf16", lambda: False)  # no oneDNN bf16 kernels: bf16 would be emulated
    assert encode.default_amp_dtype(CPU) is None
    monkeypatch.setenv(encode.CPU_PRECISION_ENV, "half")
    with pytest.raises(ValueError, match="AUTOEMBED_CPU_PRECISION='half'.*fp32"):
        encode.default_amp_dtype(CPU)
    from autoembed.sealed import scorer

    with pytest.raises(ValueError, match="AUTOEMBED_CPU_PRECISION"):  # the scorer refuses before anything runs
        scorer._resolve("embed", None, "cpu", None)


def test_bf16_twin_is_torch_autocast_without_the_casts(model, pycode):
    texts = list(pycode.corpus.values())
    stats: dict = {}
    ours = bf16(model, texts, stats)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = encode.encode_texts(model, texts, "document", CPU, None, amp_dtype=None)
    assert (ours - autocast).abs().max().item() < 1e-6
    assert stats["encoder"] == ["torch-bf16-linear"]
    exact = fp32(model, texts)
    assert not torch.equal(ours, exact), "the bf16 path ran in fp32"
    assert (ours * exact).sum(dim=1).min().item() > 0.999


def test_bf16_all_casts_the_whole_model(model, pycode, monkeypatch):
    monkeypatch.setenv(encode.CPU_PRECISION_ENV, "bf16-all")
    monkeypatch.setattr(encode, "cpu_has_bf16", lambda: True)
    texts = list(pycode.corpus.values())[:8]
    stats: dict = {}
    whole = bf16(model, texts, stats)
    monkeypatch.setenv(encode.CPU_PRECISION_ENV, "bf16")
    linear_only = bf16(model, texts)
    assert stats["encoder"] == ["torch-bf16-all"]
    assert not torch.equal(whole, linear_only), "bf16-all reused the Linear-only twin"
    assert (whole * fp32(model, texts)).sum(dim=1).min().item() > 0.995


def test_bf16_scores_a_slice_within_tolerance_of_fp32(model, wordnet, monkeypatch):
    """What the scorer runs with AUTOEMBED_CPU_PRECISION=bf16 against the default exact path, on a real slice (60
    queries x 240 wordnet docs). bf16-all moved this slice by 0.0022; bf16 stays opt-in all the same, since it moved
    a whole fine-tuned fast subset by 0.0027 (bench/RESULTS.md)."""
    monkeypatch.setattr(encode, "cpu_has_bf16", lambda: True)
    tasks = {"wordnet": wordnet}
    exact = evaluate_model(model, tasks, device="cpu", bootstrap=0)
    monkeypatch.setenv(encode.CPU_PRECISION_ENV, "bf16")
    fast = evaluate_model(model, tasks, device="cpu", bootstrap=0)
    assert (exact["dtype"], exact["encoder"]) == ("float32", "torch-float32")
    assert (fast["dtype"], fast["encoder"]) == ("bfloat16", "torch-bf16-linear")
    for metric in ("ndcg@10", "mrr@10", "recall@10", "recall@100"):
        assert fast["mean"][metric] == pytest.approx(exact["mean"][metric], abs=0.002), metric


def test_changed_weights_rebuild_the_twin(model, pycode):
    texts = list(pycode.corpus.values())[:8]
    before = bf16(model, texts)
    layer = model[0].auto_model.encoder.layer[0].output.dense
    saved = layer.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.weight.mul_(1.5)  # in place, as an optimizer step does
        after = bf16(model, texts)
        exact = fp32(model, texts)
    finally:
        with torch.no_grad():
            layer.weight.copy_(saved)
    assert (before - after).abs().max().item() > 1e-3, "the twin still had the old weights"
    assert (after * exact).sum(dim=1).min().item() > 0.999


def test_a_twin_that_cannot_be_built_falls_back_to_fp32(model, pycode, monkeypatch):
    texts = list(pycode.corpus.values())[:8]

    def cannot(_model):
        raise RuntimeError("deepcopy: cannot pickle a C extension's handle")

    monkeypatch.setattr(encode, "_bf16_twin", cannot)
    stats: dict = {}
    assert torch.equal(bf16(model, texts, stats), fp32(model, texts))
    assert stats["encoder"] == ["torch-bf16-linear+fp32-fallback"]


def test_a_twin_whose_forward_fails_falls_back_to_fp32(model, pycode, monkeypatch):
    texts = list(pycode.corpus.values())[:8]

    def fails(self, x):
        raise RuntimeError("mkldnn_linear: bf16 is not supported on this CPU")

    monkeypatch.setattr(encode.Bf16Linear, "forward", fails)
    stats: dict = {}
    assert torch.equal(bf16(model, texts, stats), fp32(model, texts))
    assert stats["encoder"] == ["torch-bf16-linear+fp32-fallback"]

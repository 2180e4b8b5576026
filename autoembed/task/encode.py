"""Fast encoding of fixed texts with any SentenceTransformer.

The evaluation texts never change, so their token ids are computed once and cached (autoembed.task.tokens).
Encoding sorts texts by token count, packs
batches up to a token budget (little padding), and runs SentenceTransformer.forward under
inference_mode, with fp16 autocast on GPU and fp32 on CPU; AUTOEMBED_CPU_PRECISION=bf16 runs every nn.Linear in
bf16 from weights cast once per model state (cpu_precision(); LayerNorm and residuals in fp32, as bf16 autocast).
Any module stack works (Transformer + Pooling + Normalize, Dense, ...): only the tokenization is taken apart,
the forward is the model's.

A model whose preprocessing yields something other than padded per-token tensors (images,
flattened varlen batches) is encoded through model.encode_query / encode_document instead.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from autoembed.task.tokens import Tokens, UnsupportedFeatures, note_source, tokenize
from autoembed.task.tokens import clear_memory_cache  # noqa: F401 - callers clear the token memory through encode


def default_token_budget(device: torch.device) -> int:
    return 65536 if device.type == "cuda" else 8192


CPU_PRECISION_ENV = "AUTOEMBED_CPU_PRECISION"
CPU_PRECISIONS = ("fp32", "bf16", "bf16-all")
# The exact path stays the default: neither bf16 mode keeps every fast subset within 0.002 nDCG@10 of fp32 (bf16
# moved a fine-tuned model's dev/wordnet by 0.0027, bf16-all the base model's heldout/pydoc by 0.0043;
# bench/RESULTS.md).
DEFAULT_CPU_PRECISION = "fp32"


def cpu_precision() -> str:
    """How the CPU encodes: AUTOEMBED_CPU_PRECISION, else DEFAULT_CPU_PRECISION.
    fp32: the exact path. bf16: every nn.Linear in bf16 from weights cast once (the numbers of bf16 autocast;
    attention runs on their bf16 outputs, LayerNorm and the residual sums in fp32). bf16-all: the whole model in bf16.
    A bf16 mode on a CPU without oneDNN bf16 kernels runs fp32 (emulated bf16 would be slower)."""
    choice = os.environ.get(CPU_PRECISION_ENV, "").strip().lower() or DEFAULT_CPU_PRECISION
    if choice not in CPU_PRECISIONS:
        raise ValueError(f"{CPU_PRECISION_ENV}={choice!r}: expected one of {list(CPU_PRECISIONS)} "
                         "(fp32 is the exact path)")
    return choice if choice == "fp32" or cpu_has_bf16() else "fp32"


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_amp_dtype(device: torch.device) -> torch.dtype | None:
    # fp16 keeps 3 more mantissa bits than bf16, so rankings move less against fp32; CPUs have no fast fp16
    if device.type == "cuda":
        return torch.float16
    return None if cpu_precision() == "fp32" else torch.bfloat16


def encoder_name(device: torch.device, amp_dtype: torch.dtype | None) -> str:
    """Which forward encode_tokens runs for (device, amp_dtype), as recorded in a score."""
    if device.type == "cpu" and os.environ.get("AUTOEMBED_OPENVINO", "0") == "1" and amp_dtype in OPENVINO_PRECISION:
        return f"openvino-{OPENVINO_PRECISION[amp_dtype]}"
    if device.type == "cpu" and amp_dtype == torch.bfloat16:
        return "torch-bf16-all" if cpu_precision() == "bf16-all" else "torch-bf16-linear"
    return f"torch-{str(amp_dtype or torch.float32).removeprefix('torch.')}" + ("-autocast" if amp_dtype else "")


def plan_batches(lengths: np.ndarray, token_budget: int, max_rows: int = 16384) -> list[np.ndarray]:
    """Row positions of each batch: longest first, each batch as many rows as fit in token_budget
    padded tokens (rows * its longest row), at least one."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_rows, token_budget // longest))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def encode_tokens(
    model,
    tokens: Tokens,
    role: str,
    device: torch.device,
    token_budget: int | None = None,
    amp_dtype: torch.dtype | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """(n_texts, dim) float32 L2-normalized embeddings on device, in the original text order.
    stats (optional) records the forward that ran under "encoder" (encoder_name, "+fp32-fallback" where the fast
    forward could not run)."""
    device = torch.device(device)
    token_budget = token_budget or default_token_budget(device)
    n = len(tokens.lengths)
    if n == 0:
        raise ValueError("nothing to encode: the text list is empty")
    batches = plan_batches(tokens.lengths, token_budget)
    packed, spans = _pack(tokens, batches)
    on_device = {name: torch.from_numpy(values).to(device, non_blocking=True) for name, values in packed.items()}
    constants = tokens.meta.get("constants", {})
    outputs = []
    torch_forward = lambda features: model(features, task=role)  # noqa: E731
    forward = openvino_forward(model, amp_dtype, torch_forward) if device.type == "cpu" else None
    fell_back = []
    if forward is None and device.type == "cpu" and amp_dtype == torch.bfloat16:
        forward = bf16_linear_forward(model, role, torch_forward, on_fallback=lambda: fell_back.append(1))
    autocast_dtype = None if forward is not None else amp_dtype  # OpenVINO and the bf16 twin run their own precision
    forward = forward or torch_forward
    with torch.inference_mode(), _autocast(device, autocast_dtype), _attention_kernels(device):
        for offset, rows, width in spans:
            features = {name: values[offset : offset + rows * width].view(rows, width) for name, values in on_device.items()}
            for name, dtype in tokens.meta["dtypes"].items():
                features[name] = features[name].to(getattr(torch, dtype))
            features["attention_mask"] = features["attention_mask"].long()
            features.update(constants)
            out = forward(features)
            outputs.append(out["sentence_embedding"].float())
    if stats is not None:
        name = encoder_name(device, amp_dtype) + ("+fp32-fallback" if fell_back else "")
        stats.setdefault("encoder", []).append(name)
    sorted_emb = torch.cat(outputs)
    position = torch.from_numpy(np.concatenate(batches)).to(device)
    text_index = torch.from_numpy(tokens.text_index).to(device)[position]
    embeddings = torch.empty_like(sorted_emb)
    embeddings[text_index] = sorted_emb
    bad = ~torch.isfinite(embeddings).all(dim=1)
    if amp_dtype is not None and bool(bad.any()):
        # fp16 overflow in a fine-tuned model is our problem, not the submission's: redo in fp32
        redo = np.flatnonzero(np.isin(tokens.text_index, bad.nonzero().flatten().cpu().numpy()))
        sub = _select(tokens, redo)
        embeddings[torch.from_numpy(sub.text_index).to(device)] = encode_tokens(
            model, _reindex(sub), role, device, token_budget, None, stats
        )[: len(redo)]
    return F.normalize(embeddings, dim=-1)


def _pack(tokens: Tokens, batches: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[tuple[int, int, int]]]:
    """All batches padded and laid end to end in one array per feature (one host-to-device copy each)."""
    lengths = tokens.lengths
    starts = np.cumsum(lengths) - lengths
    side = tokens.meta.get("padding_side", "right")
    spans, total = [], 0
    for rows in batches:
        width = max(int(lengths[rows].max()), 1)
        spans.append((total, len(rows), width))
        total += len(rows) * width
    names = list(tokens.features)
    packed = {name: np.full(total, tokens.meta["pad"].get(name, 0), dtype=tokens.features[name].dtype) for name in names}
    packed["attention_mask"] = np.zeros(total, dtype=np.int8)
    for (offset, n_rows, width), rows in zip(spans, batches):
        row_len = lengths[rows]
        columns = np.arange(width)[None, :]
        mask = columns < row_len[:, None] if side == "right" else columns >= (width - row_len)[:, None]
        source = np.repeat(starts[rows] - (np.cumsum(row_len) - row_len), row_len) + np.arange(row_len.sum())
        block = slice(offset, offset + n_rows * width)
        flat_mask = mask.reshape(-1)
        packed["attention_mask"][block] = flat_mask
        for name in names:
            target = packed[name][block]
            target[flat_mask] = tokens.features[name][source]
    return packed, spans


def _select(tokens: Tokens, rows: np.ndarray) -> Tokens:
    starts = np.cumsum(tokens.lengths) - tokens.lengths
    take = np.concatenate([np.arange(starts[r], starts[r] + tokens.lengths[r]) for r in rows]) if len(rows) else np.zeros(0, np.int64)
    return Tokens(
        lengths=tokens.lengths[rows],
        text_index=tokens.text_index[rows],
        features={name: values[take] for name, values in tokens.features.items()},
        meta=tokens.meta,
    )


def _reindex(tokens: Tokens) -> Tokens:
    """The same rows, with text_index renumbered 0..n-1 in their current order."""
    return Tokens(tokens.lengths, np.arange(len(tokens.lengths)), tokens.features, tokens.meta)


def _attention_kernels(device: torch.device):
    """Leave cuDNN out of scaled_dot_product_attention on GPU: it builds a graph for every new batch
    shape (7 s for the first pass over a 20k-document task on an H100, in every new process), and
    packed batches come in many shapes; the flash and memory-efficient kernels need no build."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


# ---------------------------------------------------------------------------------------------
# bf16 on CPU, opt-in (AUTOEMBED_CPU_PRECISION=bf16 | bf16-all): oneDNN's bf16 kernels (AMX, AVX512-BF16)
# ---------------------------------------------------------------------------------------------

_bf16_twins: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class Bf16Linear(torch.nn.Module):
    """An nn.Linear whose weight and bias were cast to bf16 once: the numbers of bf16 autocast (inputs cast to
    bf16, bf16 out) without autocast's cast and dispatch on every call. Attention runs on the bf16 outputs; LayerNorm
    and the residual sums stay in fp32, since a bf16 output added to an fp32 residual promotes back to fp32."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight = torch.nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias)


def bf16_linear_forward(model, role: str, fallback, on_fallback=lambda: None):
    """A drop-in for model(features) that runs a twin of model whose nn.Linear layers are Bf16Linear; the twin is
    kept per model object and rebuilt when any weight changes (an optimizer step bumps a tensor's version). Where
    the twin cannot be built, or its forward fails (a module that wants fp32 inputs), fallback(features) runs, for
    that batch and every later one of this model state."""
    try:
        state = tuple((p.data_ptr(), p._version) for p in model.parameters())
        cached = _bf16_twins.get(model)
        whole = cpu_precision() == "bf16-all"
        if cached is None or cached[0] != (state, whole):
            cached = [(state, whole), _bf16_twin(model, whole)]
            _bf16_twins[model] = cached
    except Exception:  # noqa: BLE001 - a model we cannot copy is encoded exactly
        cached = [None, None]

    def forward(features: dict) -> dict:
        if cached[1] is not None:
            try:
                out = cached[1](features, task=role)
                out["sentence_embedding"] = out["sentence_embedding"].float()
                return out
            except Exception:  # noqa: BLE001
                cached[1] = None
        on_fallback()
        return fallback(features)

    return forward


def _bf16_twin(model, whole: bool = False):
    twin = copy.deepcopy(model)
    if whole:
        return twin.to(torch.bfloat16).eval()
    for parent in list(twin.modules()):
        for name, child in parent.named_children():
            if type(child) is torch.nn.Linear:
                setattr(parent, name, Bf16Linear(child))
    return twin.eval()


# ---------------------------------------------------------------------------------------------
# OpenVINO on CPU, opt-in (AUTOEMBED_OPENVINO=1, pip install openvino): the same transformer, compiled. 2.8x
# torch's fp32 speed on one 32 x 256 batch, but only 1.07x over the scorer's fast subsets (bench/RESULTS.md)
# ---------------------------------------------------------------------------------------------

OPENVINO_PRECISION = {None: "f32", torch.float32: "f32", torch.bfloat16: "bf16"}
OPENVINO_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_openvino_models: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def openvino_forward(model, amp_dtype: torch.dtype | None = None, fallback=None):
    """A drop-in for model(features) that runs the first module's transformer under OpenVINO on the CPU and the
    rest (Pooling, Normalize) in torch; None where OpenVINO is not installed, the precision has no OpenVINO
    twin, or the model is anything but Transformer -> Pooling [-> Normalize] on text. The compiled model is
    kept per model object and rebuilt when any weight changes (an optimizer step bumps a tensor's version).
    Where OpenVINO cannot convert or compile (a sandbox that hides what it probes), fallback(features) runs."""
    if amp_dtype not in OPENVINO_PRECISION or os.environ.get("AUTOEMBED_OPENVINO", "0") != "1":
        return None
    try:
        import openvino
    except (ImportError, OSError):
        return None
    modules = list(model) if hasattr(model, "__iter__") else []
    if not modules or not _plain_text_transformer(modules[0]):
        return None
    rest = modules[1:]
    if not all(type(m).__name__ in ("Pooling", "Normalize") for m in rest):
        return None
    network = modules[0].auto_model
    state = (OPENVINO_PRECISION[amp_dtype], tuple((p.data_ptr(), p._version) for p in network.parameters()))
    cached = _openvino_models.get(model)
    if cached is None or cached[0] != state:
        cached = (state, {})
        _openvino_models[model] = cached
    compiled = cached[1]

    def forward(features: dict) -> dict:
        names = tuple(name for name in OPENVINO_INPUTS if name in features)
        if names not in compiled:
            compiled[names] = _compile(openvino, network, {name: features[name][:2, :8] for name in names}, state[0],
                                       fallback is not None)
        if compiled[names] is None:
            return fallback(features)
        hidden = compiled[names]({name: features[name].numpy() for name in names})[0]
        out = dict(features, token_embeddings=torch.from_numpy(hidden))
        for module in rest:
            out = module(out)
        return out

    return forward


def _compile(openvino, network, example: dict, precision: str, may_fail: bool):
    try:
        with _quiet_conversion():  # tracing warns about code paths a plain forward never takes
            converted = openvino.convert_model(network, example_input=example)
        return openvino.Core().compile_model(
            converted, "CPU", {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    except Exception:
        if not may_fail:
            raise
        return None


@contextlib.contextmanager
def _quiet_conversion():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def _plain_text_transformer(module) -> bool:
    return (type(module).__name__ == "Transformer" and hasattr(module, "auto_model")
            and getattr(module, "module_output_name", "token_embeddings") == "token_embeddings"
            and getattr(module, "modality_config", {"text": {"method": "forward"}}) ==
            {"text": {"method": "forward", "method_output_name": "last_hidden_state"}})


class _autocast:
    def __init__(self, device: torch.device, dtype: torch.dtype | None):
        self.ctx = torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False


def encode_texts(
    model,
    texts: list[str],
    role: str,
    device: torch.device,
    cache_dir: Path | None = None,
    token_budget: int | None = None,
    amp_dtype: torch.dtype | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """Embeddings of texts as encode_query / encode_document would give them (float32, normalized,
    on device), through the token cache when the model allows it. Identical texts are encoded once,
    so they get bit-identical embeddings and tie exactly (batch composition cannot split them)."""
    unique = list(dict.fromkeys(texts))
    if len(unique) < len(texts):
        position = {text: i for i, text in enumerate(unique)}
        emb = encode_texts(model, unique, role, device, cache_dir, token_budget, amp_dtype, stats)
        return emb[torch.tensor([position[text] for text in texts], device=emb.device)]
    try:
        tokens = tokenize(model, texts, role, cache_dir, stats)
    except UnsupportedFeatures as why:
        note_source(stats, f"fallback: {why}")
        if stats is not None:
            precision = str(amp_dtype or torch.float32).removeprefix("torch.")
            stats.setdefault("encoder", []).append(f"sentence-transformers-{precision}")
        encode = model.encode_query if role == "query" else model.encode_document
        with _autocast(device, amp_dtype):
            emb = encode(texts, batch_size=64, convert_to_tensor=True, device=str(device))
        return F.normalize(emb.float().to(device), dim=-1)
    if stats is not None:
        stats["tokens"] = stats.get("tokens", 0) + tokens.n_tokens
    return encode_tokens(model, tokens, role, device, token_budget, amp_dtype, stats)

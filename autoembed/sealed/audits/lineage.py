"""Is final_model a fine-tune of the base model? Same module stack, same architecture config (activation, eps,
layers, widths, pooling mode, normalization: compare_architecture), same parameter names and shapes,
every weight matrix still points the way the base's does (per-tensor cosine similarity), and the same
tokenizer: the same vocabulary (token -> id), special tokens and normalization, checked on the loaded
tokenizers and on probe texts (a re-ordered vocabulary with the base weights reads every text as other
tokens: the weights then belong to another model, whatever their cosine).

Threshold, from measurement (MNRL, batch 256, bf16, H100; min over weight matrices of the cosine to
the base): lr 5e-5, 1000 steps: 0.998; lr 2e-4, 1000 steps: 0.994; lr 1e-4 on the training pool,
3400 steps (5 epochs): 0.989 (relative L2 change 0.10, growing as steps^0.58, so a two-hour run at a
high constant lr stays near 0.8-0.9). A re-initialized or scratch-trained model is at |cos| < 0.1.
MIN_MATRIX_COSINE = 0.5 sits far from both. Vectors (biases, LayerNorm) are not judged: a bias near
zero can turn around under a legitimate fine-tune (measured cosines below 0 after 1000 steps).
"""

from __future__ import annotations

import torch

MIN_MATRIX_COSINE = 0.5
IGNORED_MODULES = ("Normalize",)  # no parameters: left out of the stack and the weights, its presence compared alone
MODULE_MAY_DIFFER = ("max_seq_length",)  # the recipe saves at the base's length, an agent may save at its own
ARCH_MAY_DIFFER = {  # transformers config keys that act only in training, on outputs the encoder does not use, or
    # record provenance and version (keys starting with "_", e.g. _name_or_path, are left out too)
    "transformers_version", "dtype", "torch_dtype", "use_cache", "gradient_checkpointing", "architectures",
    "attention_probs_dropout_prob", "hidden_dropout_prob", "classifier_dropout", "initializer_range",
    "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id", "problem_type",
    "tokenizer_class",  # the tokenizer itself is compared by compare_tokenizers
}
TOKENIZER_PROBES = (
    "How do I list the files in a directory?",
    "def parse_args(argv=None):\n    return ArgumentParser().parse_args(argv)",
    "Ünïcödé façade — naïve café, 東京, emoji 🙂",
    "UPPER lower MiXeD 12345 3.14 x_y-z/w",
)


def module_stack(model) -> list[str]:
    return [f"{type(m).__module__}.{type(m).__name__}" for m in model if type(m).__name__ not in IGNORED_MODULES]


def check_lineage(model, base) -> dict:
    """{"flagged", "reasons", "module_stack", "min_matrix_cosine", "mean_matrix_cosine", "relative_l2",
    "worst": [(name, cosine)...]} for a loaded SentenceTransformer against the loaded base."""
    reasons = []
    stack, base_stack = module_stack(model), module_stack(base)
    if stack != base_stack:
        reasons.append(f"module stack {stack} differs from the base model's {base_stack}")
    state = {k: v.detach() for k, v in model.state_dict().items()}
    base_state = {k: v.detach() for k, v in base.state_dict().items()}
    missing = sorted(set(base_state) - set(state))
    extra = sorted(set(state) - set(base_state))
    reshaped = sorted(k for k in set(state) & set(base_state) if state[k].shape != base_state[k].shape)
    if missing or extra or reshaped:
        reasons.append(f"parameters differ from the base model's: missing {missing[:5]}, extra {extra[:5]}, "
                       f"other shape {reshaped[:5]}")
    cosines: dict[str, float] = {}
    diff_sq = base_sq = 0.0
    for key, ref in base_state.items():
        cur = state.get(key)
        if cur is None or cur.shape != ref.shape or not ref.is_floating_point():
            continue
        a, b = cur.double().flatten().cpu(), ref.double().flatten().cpu()  # fp32 sums drift by 1e-5
        diff_sq += float((a - b).pow(2).sum())
        base_sq += float(b.pow(2).sum())
        if ref.dim() >= 2:
            cosines[key] = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    report = {
        "module_stack": stack,
        "n_matrices": len(cosines),
        "min_matrix_cosine": min(cosines.values()) if cosines else None,
        "mean_matrix_cosine": sum(cosines.values()) / len(cosines) if cosines else None,
        "relative_l2": (diff_sq / base_sq) ** 0.5 if base_sq else None,
        "worst": sorted(cosines.items(), key=lambda kv: kv[1])[:5],
        "threshold": MIN_MATRIX_COSINE,
    }
    architecture = compare_architecture(model, base)
    report["architecture"] = architecture
    reasons += [f"the architecture differs from the base model's: {line}" for line in architecture]
    tokenizer = compare_tokenizers(getattr(model, "tokenizer", None), getattr(base, "tokenizer", None))
    report["tokenizer"] = tokenizer
    if tokenizer["reasons"]:
        reasons.append("the tokenizer differs from the base model's: " + "; ".join(tokenizer["reasons"]))
    far = {k: c for k, c in cosines.items() if not c >= MIN_MATRIX_COSINE}  # NaN counts as far
    if far:
        reasons.append(f"{len(far)} of {len(cosines)} weight matrices are far from the base model's "
                       f"(cosine < {MIN_MATRIX_COSINE}, e.g. {sorted(far.items(), key=lambda kv: kv[1])[:3]}): "
                       "a swapped, re-initialized or scratch-trained model")
    report["flagged"] = bool(reasons)
    report["reasons"] = reasons
    return report


def compare_architecture(model, base) -> list[str]:
    """What differs, one line each, between the two models' architecture configs: the transformer's config as
    loaded (activation, eps, layers, widths, heads, position embeddings...), each module's own config (pooling
    mode, a Dense layer's activation...). The base weights under another config compute another function, so this
    is judged apart from the weights. What may differ by design: the sequence length (the recipe trains and saves
    at its own max_seq_length), settings that act only in training or record provenance (ARCH_MAY_DIFFER), and a
    Normalize module (the scorer compares embeddings by cosine, so a model re-assembled without it scores the
    same: flagging it would only catch honest agents)."""
    lines = []
    mods, base_mods = [m for m in model if type(m).__name__ not in IGNORED_MODULES], \
        [m for m in base if type(m).__name__ not in IGNORED_MODULES]
    for i, (mod, ref) in enumerate(zip(mods, base_mods)):
        if type(mod) is not type(ref):
            continue  # the module stack check names it
        name = f"module {i} ({type(mod).__name__})"
        lines += [f"{name}: {line}" for line in _diff(_module_config(mod), _module_config(ref))]
        config, base_config = (getattr(getattr(m, "auto_model", None), "config", None) for m in (mod, ref))
        if config is not None or base_config is not None:
            lines += [f"{name} config: {line}" for line in _diff(_config_dict(config), _config_dict(base_config))]
    return lines


def _module_config(module) -> dict:
    get = getattr(module, "get_config_dict", None)
    config = dict(get()) if callable(get) else {}
    return {k: v for k, v in config.items() if k not in MODULE_MAY_DIFFER}


def _config_dict(config) -> dict:
    body = config.to_dict() if config is not None else {}
    return {k: v for k, v in body.items() if k not in ARCH_MAY_DIFFER and not k.startswith("_")}


def _diff(config: dict, base_config: dict) -> list[str]:
    return [f"{key} is {config.get(key, '(unset)')!r}, the base model's {base_config.get(key, '(unset)')!r}"
            for key in sorted(set(config) | set(base_config), key=str) if config.get(key) != base_config.get(key)]


def compare_tokenizers(tok, base_tok) -> dict:
    """{"reasons": [...], "vocab_size", "base_vocab_size", "ids_moved", "probes_differ"}: what differs."""
    if tok is None or base_tok is None:
        return {"reasons": [] if tok is base_tok else ["one of the models has no tokenizer"]}
    reasons = []
    vocab, base_vocab = tok.get_vocab(), base_tok.get_vocab()
    moved = sum(1 for token, i in base_vocab.items() if vocab.get(token) != i)
    added = len(set(vocab) - set(base_vocab))
    if moved or added:
        reasons.append(f"{moved} of the base's {len(base_vocab)} tokens have another id or are gone, {added} added")
    special = {k: str(v) for k, v in sorted(getattr(tok, "special_tokens_map", {}).items())}
    base_special = {k: str(v) for k, v in sorted(getattr(base_tok, "special_tokens_map", {}).items())}
    if special != base_special:
        reasons.append(f"special tokens {special} differ from the base's {base_special}")
    differ = [text for text in TOKENIZER_PROBES if tok(text)["input_ids"] != base_tok(text)["input_ids"]]
    if differ:
        reasons.append(f"{len(differ)} of {len(TOKENIZER_PROBES)} probe texts tokenize differently "
                       f"(e.g. {differ[0][:40]!r})")
    return {"reasons": reasons, "vocab_size": len(vocab), "base_vocab_size": len(base_vocab),
            "ids_moved": moved, "tokens_added": added, "probes_differ": len(differ)}

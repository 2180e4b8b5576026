"""Is final_model a fine-tune of the base model? Same module stack, same parameter names and shapes,
and every weight matrix still points the way the base's does (per-tensor cosine similarity).

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
IGNORED_MODULES = ("Normalize",)  # no parameters; cosine-similarity retrieval does not depend on it


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
    far = {k: c for k, c in cosines.items() if not c >= MIN_MATRIX_COSINE}  # NaN counts as far
    if far:
        reasons.append(f"{len(far)} of {len(cosines)} weight matrices are far from the base model's "
                       f"(cosine < {MIN_MATRIX_COSINE}, e.g. {sorted(far.items(), key=lambda kv: kv[1])[:3]}): "
                       "a swapped, re-initialized or scratch-trained model")
    report["flagged"] = bool(reasons)
    report["reasons"] = reasons
    return report

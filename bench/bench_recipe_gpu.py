"""The recipe's training speed on a GPU against the FLOP bound of its batch, and what its speed knobs and
levers do to the held-out score. One process: the recipe (harnesses/recipe.py) is loaded as a module for each
variant, its knobs set, and its own train() / main() run.

    python bench/bench_recipe_gpu.py speed --json speed.json                      # pairs/s of each speed variant
    python bench/bench_recipe_gpu.py quality --steps 300 --json quality.json      # same steps: reference vs fast
    python bench/bench_recipe_gpu.py levers --minutes 1 --json levers.json        # same wall budget: each lever alone
    python bench/bench_recipe_gpu.py levers --minutes 1.3 --on prior --levers 7,8  # levers on top of the search's prior point
    python bench/bench_recipe_gpu.py tokenize --json tokenize.json                 # PRETOKENIZE's table: backend vs own call

speed: batch 256, 128 tokens at most (queries are shorter), the real pool; pairs/s over the timed steps (after
the warm-up steps, CUDA synchronized at both ends) against the FLOP bound: the model's matmul FLOPs (fwd x3 for
fwd+bwd) per pair at 32 query and 128 document tokens, and at the padded lengths the reference's batches really
have, over the bf16 peak a 8192^3 matmul reaches on this GPU in the same process.
quality / levers: each model scored on the validation and held-out tiers (full sets, the scorer's 256 tokens);
the change against the reference recipe paired per query (mean over tasks of the per-task mean difference,
95% CI = 1.96 paired SE: query sampling only, not seed-to-seed noise).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RECIPE = REPO / "harnesses" / "recipe.py"
DEVICE = "cuda"  # --device cpu: a dry run of this script on tiny sizes (no timing worth reading)

SPEED_VARIANTS = {
    "reference": {},
    "fused": {"FUSED_ADAMW": True},
    "fused+chunks2": {"FUSED_ADAMW": True, "LENGTH_CHUNKS": 2},
    "fused+chunks4": {"FUSED_ADAMW": True, "LENGTH_CHUNKS": 4},
    "fused+chunks4+compile": {"FUSED_ADAMW": True, "LENGTH_CHUNKS": 4, "COMPILE": True},
    "pretokenized": {"PRETOKENIZE": True},
    "fused+pretokenized": {"FUSED_ADAMW": True, "PRETOKENIZE": True},
    "fused+chunks4+pretokenized": {"FUSED_ADAMW": True, "LENGTH_CHUNKS": 4, "PRETOKENIZE": True},
}
FAST = {"FUSED_ADAMW": True, "LENGTH_CHUNKS": 4}
WARM_UP_STEPS = 20  # the throwaway run before the timed variants of `levers` and `quality`
LEVERS = {
    "reference": {},
    "hard negatives (base model, margin 0.95)": {"HARD_NEGATIVES": True},
    "hard negatives (BM25, margin 0.95)": {"HARD_NEGATIVES": True, "HARD_NEGATIVE_MINER": "bm25"},
    "source weights debian 2, pycode 1.5, wordnet 0.5": {"WEIGHT_DEBIAN": 2.0, "WEIGHT_PYCODE": 1.5, "WEIGHT_WORDNET": 0.5},
    "cached gradients, batch 256 x 4": {"CACHED_BATCH_MULTIPLE": 4},
    "base interpolation 0.5": {"BASE_INTERPOLATION": 0.5},
    "average of the last 30%": {"AVERAGE_LAST": 0.3},
    "batch 512": {"BATCH_SIZE": 512},
    "symmetric loss": {"SYMMETRIC_LOSS": True},
    "at most 256 tokens": {"MAX_SEQ_LENGTH": 256},
    "base interpolation 0.8": {"BASE_INTERPOLATION": 0.8},
    "lr 1e-4": {"LR": 1e-4},
    "source weights debian 3, pycode 2, wordnet 0.25": {"WEIGHT_DEBIAN": 3.0, "WEIGHT_PYCODE": 2.0, "WEIGHT_WORDNET": 0.25},
}


def base_point(on: str | None) -> dict:
    """--on: knob values every lever's run starts from, the reference's included: `prior` (the loop search's
    first prior point) or NAME=VALUE pairs, comma-separated, each value a Python literal."""
    import ast

    if not on:
        return {}
    if on == "prior":
        from autoembed.loop.meta.search import PRIOR_POINTS

        return dict(PRIOR_POINTS[0])
    point = {}
    for pair in on.split(","):
        name, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError(f"{pair!r} has no =VALUE")
            if f"\n{name.strip()} = " not in RECIPE.read_text():
                raise ValueError(f"no constant {name.strip()!r} in {RECIPE.name}")
            point[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as exc:
            print(f"--on {on!r}: {exc}; expected `prior` or NAME=VALUE pairs of the recipe's constants, e.g. "
                  "--on PRETOKENIZE=True,LR=1e-4", file=sys.stderr)
            raise SystemExit(2) from None
    return point


def load_recipe(knobs: dict):
    spec = importlib.util.spec_from_file_location(f"recipe_bench_{time.time_ns()}", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, value in knobs.items():
        if not hasattr(module, name):
            raise SystemExit(f"the recipe has no constant {name}")
        setattr(module, name, value)
    return module


class BenchRun:
    """train()'s run: the model on the GPU, a step budget, timing synchronized at the warm-up's end and the last step."""

    def __init__(self, model, pool: str, steps: int, warm: int, verbose: bool):
        import torch

        self.torch, self.model, self.device, self.on_gpu = torch, model, DEVICE, DEVICE == "cuda"
        self.pool, self.pool_limit, self.seed, self.max_steps = pool, None, 0, steps
        self.warm, self.verbose, self.t0, self.t1 = warm, verbose, None, None

    def log(self, msg):
        if self.verbose:
            print(f"    {msg}", flush=True)

    def seconds_left(self):
        return 1e9

    def progress(self):
        return 0.0

    def should_stop(self, step):
        if step == self.warm or step >= self.max_steps:
            if self.on_gpu:
                self.torch.cuda.synchronize()
            if step == self.warm:
                self.t0 = time.perf_counter()
            else:
                self.t1 = time.perf_counter()
        return "max_steps" if step >= self.max_steps else None


def matmul_peak_tflops(torch, n: int = 8192, reps: int = 10) -> float:
    if DEVICE != "cuda":
        n, reps = 256, 2
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(torch)
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(torch)
    return 2 * n ** 3 * reps / (time.perf_counter() - started) / 1e12


def sync(torch) -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def train_flops_per_pair(config, q_len: float, d_len: float) -> float:
    """Matmul FLOPs of one training pair: the encoder's linear layers and attention products on the query's and
    the document's tokens, forward x3 (forward + backward)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers

    def forward(length: float) -> float:
        linear = 2 * length * (4 * h * h + 2 * h * inter)
        attention = 2 * 2 * length * length * h
        return layers * (linear + attention)

    return 3 * (forward(q_len) + forward(d_len))


def padded_lengths(recipe, model, pool: str, batch: int, n_batches: int = 20) -> tuple[float, float]:
    """Mean padded tokens per query and per document in the reference's batches (one padded batch per side)."""
    queries, positives, groups = recipe.load_pairs(pool)
    stream = recipe.batch_stream(groups, batch, seed=0)
    q_lens, d_lens = [], []
    for _ in range(n_batches):
        _, indices = next(stream)
        q_lens.append(recipe.tokenize(model, [queries[i] for i in indices])["input_ids"].shape[1])
        d_lens.append(recipe.tokenize(model, [positives[i] for i in indices])["input_ids"].shape[1])
    return sum(q_lens) / len(q_lens), sum(d_lens) / len(d_lens)


def speed(args, base: str, pool: str) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    peak = matmul_peak_tflops(torch)
    model = SentenceTransformer(base, device=DEVICE)
    model.max_seq_length = 128
    reference = load_recipe({})
    q_pad, d_pad = padded_lengths(reference, model, pool, args.batch_size)
    config = model[0].auto_model.config
    nominal = train_flops_per_pair(config, 32, 128)
    padded = train_flops_per_pair(config, q_pad, d_pad)
    out = {"gpu": gpu_name(torch), "torch": torch.__version__, "matmul_peak_tflops": peak,
           "batch_size": args.batch_size, "padded_query_tokens": q_pad, "padded_document_tokens": d_pad,
           "gflop_per_pair_32_128": nominal / 1e9, "gflop_per_pair_padded": padded / 1e9,
           "bound_pairs_per_s_32_128": peak * 1e12 / nominal, "bound_pairs_per_s_padded": peak * 1e12 / padded,
           "variants": []}
    print(f"{out['gpu']}, torch {torch.__version__}: bf16 matmul peak {peak:.0f} TFLOP/s; reference batches pad to "
          f"{q_pad:.1f} query and {d_pad:.1f} document tokens; bound {out['bound_pairs_per_s_32_128']:.0f} pairs/s "
          f"at 32+128 tokens, {out['bound_pairs_per_s_padded']:.0f} at the padded lengths", flush=True)
    for name in args.variants.split(","):
        knobs = {"BATCH_SIZE": args.batch_size, "MAX_SEQ_LENGTH": 128, **SPEED_VARIANTS[name]}
        recipe = load_recipe(knobs)
        torch.manual_seed(0)
        model = SentenceTransformer(base, device=DEVICE)
        warm = args.warm_steps * (4 if knobs.get("COMPILE") else 1)
        run = BenchRun(model, pool, warm + args.steps, warm, args.verbose)
        started = time.perf_counter()
        summary = recipe.train(run)
        rate = args.steps * summary["batch_size"] / (run.t1 - run.t0)
        row = {"variant": name, "knobs": SPEED_VARIANTS[name], "pairs_per_s": rate, "timed_steps": args.steps,
               "warmup_steps": warm, "warmup_s": run.t0 - started, "last_loss": summary["last_loss"],
               "share_of_bound_32_128": rate / out["bound_pairs_per_s_32_128"],
               "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None}
        out["variants"].append(row)
        print(f"  {name}: {rate:.0f} pairs/s ({100 * row['share_of_bound_32_128']:.1f}% of the 32+128 bound), "
              f"warm-up {row['warmup_s']:.1f}s, loss {summary['last_loss']}", flush=True)
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return out


def tokenize_table(base: str, pool: str) -> dict:
    """PRETOKENIZE's set-up on the whole pool (CPU work): the recipe's TokenTable (the tokenizer's Rust backend in
    one call) against the tokenizer's own call in 8,192-text chunks, the same padded table required of both."""
    import torch
    from sentence_transformers import SentenceTransformer

    recipe = load_recipe({})
    model = SentenceTransformer(base, device="cpu")
    model.max_seq_length = 128
    queries, positives, _ = recipe.load_pairs(pool)
    out = {"cpus": torch.get_num_threads(), "sides": []}
    for name, texts in (("queries", queries), ("positives", positives)):
        started = time.perf_counter()
        table = recipe.TokenTable(model, texts).table
        backend_s = time.perf_counter() - started
        started = time.perf_counter()
        parts = [recipe.tokenize(model, texts[i:i + 8192]) for i in range(0, len(texts), 8192)]
        width = max(part["input_ids"].shape[1] for part in parts)
        own = {k: torch.cat([torch.nn.functional.pad(part[k], (0, width - part[k].shape[1])) for part in parts])
               for k in table}
        own_s = time.perf_counter() - started
        identical = all(torch.equal(table[k], own[k]) for k in own)
        out["sides"].append({"side": name, "texts": len(texts), "backend_s": backend_s, "own_call_s": own_s,
                             "ratio": own_s / backend_s, "identical": identical})
        print(f"  {name}: {len(texts)} texts, table {backend_s:.1f}s, own call {own_s:.1f}s "
              f"({own_s / backend_s:.2f}x), identical: {identical}", flush=True)
    return out


def gpu_name(torch) -> str:
    return torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (dry run)"


def load_tiers(names: list[str], size: tuple[int, int] | None = None) -> dict:
    from autoembed.sealed import heldout as sealed

    roots = {"validation": sealed.VALIDATION_DIR, "heldout": sealed.HELDOUT_DIR}
    tiers = {tier: sealed.load_heldout_tasks(root=roots[tier]) for tier in names}
    if size:
        tiers = {tier: {n: t.subset(*size) for n, t in tasks.items()} for tier, tasks in tiers.items()}
    return tiers


def score(model_path: str, tiers: dict) -> dict:
    from autoembed.task import evaluate as evaluator

    return {tier: evaluator.evaluate_model(model_path, tasks, device=DEVICE, bootstrap=0, return_per_query=True,
                                           max_seq_length=256) for tier, tasks in tiers.items()}


def paired(a: dict, b: dict) -> tuple[float, float]:
    """(mean over tasks of the per-task mean paired difference a - b, its standard error)."""
    import numpy as np

    means, variances = [], []
    for task in a:
        assert list(a[task]["query_ids"]) == list(b[task]["query_ids"])
        x = np.asarray(a[task]["ndcg@10"]) - np.asarray(b[task]["ndcg@10"])
        means.append(x.mean())
        variances.append(x.var(ddof=1) / len(x))
    return float(np.mean(means)), float(np.sqrt(np.sum(variances)) / len(means))


def train_and_score(variants: dict, argv_tail: list[str], args, base: str, pool: str, tiers: dict) -> dict:
    import torch

    rows, scores = [], {}

    def train(knobs: dict, out: str, tail: list[str]) -> None:
        load_recipe(knobs).main(["--pool", pool, "--base", base, "--out", out, "--device", DEVICE,
                                 "--seed", str(args.seed), *tail])

    with tempfile.TemporaryDirectory(prefix="recipe-bench-") as tmp:
        # the first run in a process pays its imports and the GPU's start-up inside its wall budget (the reference,
        # always first, trained 806 steps where the next variant trained 1,161 at the same 1.3 minutes, 2026-12-06):
        # a throwaway run of a few steps, of the first variant's knobs (the same code paths), pays them beforehand
        train(next(iter(variants.values())), str(Path(tmp) / "warm-up"),
              ["--minutes", "600", "--max-steps", str(WARM_UP_STEPS)])
        for name, knobs in variants.items():
            out = str(Path(tmp) / f"m{len(rows)}")
            started = time.perf_counter()
            train(knobs, out, argv_tail)
            seconds = time.perf_counter() - started
            scores[name] = score(out, tiers)
            row = {"variant": name, "knobs": knobs, "script_seconds": seconds,
                   **{tier: scores[name][tier]["mean"]["ndcg@10"] for tier in tiers}}
            reference = next(iter(scores))
            for tier in tiers:
                diff, se = paired(scores[name][tier]["per_query"], scores[reference][tier]["per_query"])
                row[f"{tier}_change"], row[f"{tier}_ci"] = diff, [diff - 1.96 * se, diff + 1.96 * se]
            rows.append(row)
            print(f"  {name}: {seconds:.1f}s; " + "; ".join(
                f"{tier} {row[tier]:.4f} ({row[f'{tier}_change']:+.4f} [{row[f'{tier}_ci'][0]:+.4f}, "
                f"{row[f'{tier}_ci'][1]:+.4f}])" for tier in tiers), flush=True)
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    return {"gpu": gpu_name(torch), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["speed", "quality", "levers", "tokenize"])
    p.add_argument("--pool", default=None, help="default: the embed task's pool")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--variants", default=",".join(SPEED_VARIANTS), help="speed: which variants, comma-separated")
    p.add_argument("--fast", default=None, choices=list(SPEED_VARIANTS),
                   help="quality: the speed variant set against the reference (default: FUSED_ADAMW, LENGTH_CHUNKS=4)")
    p.add_argument("--steps", type=int, default=100, help="speed: timed steps; quality: training steps")
    p.add_argument("--warm-steps", type=int, default=20, help="speed: untimed steps first (x4 with COMPILE)")
    p.add_argument("--minutes", type=float, default=1.0, help="levers: the script's wall budget for each")
    p.add_argument("--levers", default=None, help="levers: which, comma-separated indices into LEVERS (default all)")
    p.add_argument("--on", default=None, help="levers: every run (the reference's too) starts from these knob values: "
                                              "`prior` (the search's prior point) or NAME=VALUE,...")
    p.add_argument("--tiers", default="validation,heldout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda", help="cpu: a dry run on tiny sizes (with --pool-limit, --eval-size)")
    p.add_argument("--pool-limit", type=int, default=None, help="dry run: the first N pairs of the pool only")
    p.add_argument("--eval-size", default=None, metavar="Q,D", help="dry run: score subsets of Q queries, D documents")
    p.add_argument("--json", default=None)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    on = base_point(args.on)  # bad input stops here, before anything loads
    global DEVICE
    DEVICE = args.device
    from autoembed.task.base_model import offline_env, resolve_base_model
    from autoembed.task.spec import load_spec

    offline_env()
    spec = load_spec("embed")
    base = str(resolve_base_model(spec.base_model, spec.base_model_sha256))
    pool = args.pool or str(spec.pool_path)
    if args.pool_limit:  # a dry run: a small copy of the pool, spread over its sources
        import gzip

        small = Path(tempfile.mkdtemp(prefix="bench-pool-")) / "pairs.jsonl.gz"
        with gzip.open(pool, "rt", encoding="utf-8") as src, gzip.open(small, "wt", encoding="utf-8") as dst:
            dst.writelines(line for i, line in enumerate(src) if i % 1000 == 0 and i // 1000 < args.pool_limit)
        pool = str(small)
    started = time.time()
    if args.what == "speed":
        result = speed(args, base, pool)
    elif args.what == "tokenize":
        result = tokenize_table(base, pool)
    else:
        tiers = load_tiers(args.tiers.split(","), tuple(int(x) for x in args.eval_size.split(",")) if args.eval_size else None)
        if args.what == "quality":
            fast = SPEED_VARIANTS[args.fast] if args.fast else FAST
            variants = {"reference": {}, "fast (" + ", ".join(f"{k}={v}" for k, v in fast.items()) + ")": fast}
            tail = ["--minutes", "600", "--max-steps", str(args.steps), "--batch-size", str(args.batch_size)]
        else:
            names = list(LEVERS)
            if args.levers:
                names = [names[0]] + [names[int(i)] for i in args.levers.split(",") if int(i) != 0]
            label = " + ".join(f"{k}={v}" for k, v in on.items())
            variants = {(f"{name} on {label}" if on else name): {**on, **LEVERS[name]} for name in names}
            tail = ["--minutes", str(args.minutes)]
        result = train_and_score(variants, tail, args, base, pool, tiers)
    result["seconds"] = time.time() - started
    result["args"] = vars(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ceiling under CPU scoring: MiniLM-L6's matrix products on this CPU, exact fp32 against the faster products
the hardware has, each with its error against float64, in one run.

    PYTHONPATH=. python bench/bench_cpu_matmul.py [--tokens 4096] [--threads 2] [--reps 10] [--json out.json]

The encoder's linear layers are ~80% of a warm score's time (21 MFLOP per token of 23.5; bench/RESULTS.md), so a
method that cannot beat fp32 here by about 2.3x, at an error near fp32's, cannot bring the ten fast subsets from
~120 s to 60 s of encoding at fp32-equal rankings. Per method: GFLOP/s over one MiniLM layer's six products (Q, K,
V, output, FFN up, FFN down) for `--tokens` tokens, its ratio to fp32, and the largest relative error of an output
element against the same product in float64.

Methods:
- fp32:        torch's default (oneDNN, fp32 FMA): the scorer's exact path.
- fpmath-bf16: fp32 tensors with torch.backends.mkldnn.matmul.fp32_precision = "bf16": oneDNN rounds the inputs
               to bf16, accumulates and writes fp32 (AMX).
- bf16:        bf16 tensors in and out (what bf16 autocast and the opt-in bf16 encoder run).
- bf16x3:      each fp32 operand split into a bf16 high and low part, hi*hi + hi*lo + lo*hi as one product along a
               tripled inner dimension under fpmath-bf16 (fp32 out): near-fp32 error from bf16 units.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

HIDDEN, FFN = 384, 1536
LAYER = [(HIDDEN, HIDDEN)] * 4 + [(HIDDEN, FFN), (FFN, HIDDEN)]  # (in, out) of each nn.Linear in one BERT layer


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    high = x.bfloat16().float()
    return high, (x - high).bfloat16().float()


def _methods(xs: list[torch.Tensor], ws: list[torch.Tensor]) -> dict:
    bf_x, bf_w = [x.bfloat16() for x in xs], [w.bfloat16() for w in ws]
    tripled = []
    for x, w in zip(xs, ws):
        (xh, xl), (wh, wl) = _split(x), _split(w)
        tripled.append((torch.cat([xh, xh, xl], 1), torch.cat([wh, wl, wh], 0)))
    return {
        "fp32": ("ieee", lambda: [x @ w for x, w in zip(xs, ws)]),
        "fpmath-bf16": ("bf16", lambda: [x @ w for x, w in zip(xs, ws)]),
        "bf16": ("ieee", lambda: [x @ w for x, w in zip(bf_x, bf_w)]),
        "bf16x3": ("bf16", lambda: [a @ b for a, b in tripled]),
    }


def measure(tokens: int, reps: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(tokens, k, generator=gen) for k, _ in LAYER]
    ws = [torch.randn(k, n, generator=gen) / k ** 0.5 for k, n in LAYER]
    exact = [(x.double() @ w.double()) for x, w in zip(xs, ws)]
    flop = sum(2 * tokens * k * n for k, n in LAYER)
    rows = {}
    for name, (precision, run) in _methods(xs, ws).items():
        torch.backends.mkldnn.matmul.fp32_precision = precision
        try:
            outs = run()  # warm-up, and the outputs the error is read from
            start = time.perf_counter()
            for _ in range(reps):
                run()
            seconds = (time.perf_counter() - start) / reps
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = "ieee"
        error = max(((o.double() - e).abs().max() / e.abs().max()).item() for o, e in zip(outs, exact))
        rows[name] = {"seconds_per_layer": seconds, "gflops": flop / seconds / 1e9, "max_rel_error": error}
    for row in rows.values():
        row["x_fp32"] = rows["fp32"]["seconds_per_layer"] / row["seconds_per_layer"]
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.tokens, args.reps)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.tokens} tokens x one MiniLM layer's six products")
    print(f"{'method':<12} {'GFLOP/s':>8} {'x fp32':>7} {'max rel error':>14}")
    for name, row in rows.items():
        print(f"{name:<12} {row['gflops']:>8.1f} {row['x_fp32']:>7.2f} {row['max_rel_error']:>14.2e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                       "threads": args.threads, "tokens": args.tokens, "methods": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

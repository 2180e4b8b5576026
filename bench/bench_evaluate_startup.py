"""The agent's `task.evaluate` from a new process, as the agent runs it (`python -c "import task; task.evaluate()"`
in a seeded workdir), before and after the warm evaluator (autoembed/task/warm_eval.py).

    python bench/bench_evaluate_startup.py --json startup.json          # full dev sets on a GPU, fast subsets on a CPU

before: AUTOEMBED_WARM_EVAL=0, every call imports torch and sentence-transformers and starts CUDA itself; the
first call also tokenizes (the disk token cache is empty), the next ones read the cache.
after: the first call starts the warm evaluator and waits for it; the next calls, each a new process, only send
their request. Wall time of each process, measured from outside it, and the largest difference between the two
paths' per-task metrics (they must agree to 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CALL = ("import json, sys, task; r = task.evaluate(sys.argv[1], verbose=False); "
        "print('RESULT ' + json.dumps({k: r[k] for k in ('tasks', 'mean', 'seconds', 'device')}))")


def call(workdir: Path, model: str, warm: bool) -> tuple[float, dict]:
    # the server outlives no killed bench by long: it exits after 2 idle minutes
    env = {**os.environ, "AUTOEMBED_WARM_EVAL": "1" if warm else "0", "AUTOEMBED_WARM_EVAL_IDLE_S": "120",
           "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CALL, model], cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"task.evaluate failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return wall, json.loads(line[7:])


def max_difference(a: dict, b: dict) -> float:
    return max(abs(a["tasks"][t][k] - b["tasks"][t][k]) for t in a["tasks"] for k in a["tasks"][t]
               if isinstance(a["tasks"][t][k], float))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=int, default=2, help="calls without the warm evaluator")
    p.add_argument("--after", type=int, default=4, help="calls with it (the first one starts it)")
    p.add_argument("--model", default=None, help="the model to score (default: the base model)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from autoembed.task.base_model import offline_env
    from autoembed.task.seed import seed_workdir

    offline_env()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's SIGTERM still stops the server below
    with tempfile.TemporaryDirectory(prefix="eval-startup-") as tmp:
        workdir = Path(tmp) / "workdir"
        manifest = seed_workdir(workdir, hours=1.0)
        model = args.model or manifest["base_model"]
        rows = []
        try:
            for i in range(args.before):
                wall, result = call(workdir, model, warm=False)
                rows.append({"path": "before (in-process)", "call": i + 1, "wall_s": wall, "result": result})
                print(f"before #{i + 1}: {wall:.2f}s (scoring {result['seconds']:.2f}s on {result['device']}), "
                      f"ndcg@10 {result['mean']['ndcg@10']:.5f}", flush=True)
            for i in range(args.after):
                wall, result = call(workdir, model, warm=True)
                rows.append({"path": "after (warm evaluator)", "call": i + 1, "wall_s": wall, "result": result})
                print(f"after #{i + 1}: {wall:.2f}s (scoring {result['seconds']:.2f}s on {result['device']}), "
                      f"ndcg@10 {result['mean']['ndcg@10']:.5f}", flush=True)
        finally:
            log = workdir / ".cache" / "evaluator.log"
            for pid in re.findall(r"\(pid (\d+),", log.read_text() if log.exists() else ""):
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except ProcessLookupError:
                    pass
        before = [r for r in rows if r["path"].startswith("before")]
        after = [r for r in rows if r["path"].startswith("after")]
        diff = max(max_difference(before[0]["result"], r["result"]) for r in after) if before and after else None
        print(f"largest metric difference, warm evaluator vs in-process: {diff}")
        summary = {"rows": [{k: v for k, v in r.items() if k != "result"} | {"ndcg@10": r["result"]["mean"]["ndcg@10"],
                                                                           "scoring_s": r["result"]["seconds"],
                                                                           "device": r["result"]["device"]}
                            for r in rows], "max_metric_difference": diff}
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

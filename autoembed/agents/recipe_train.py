#!/usr/bin/env python3
"""The reference recipe: a plain MultipleNegativesRankingLoss fine-tune of the base model on the pool.

    python train.py --pool data/pool/pairs.jsonl.gz --base /path/to/base --out final_model --minutes 10

In-batch negatives (every other positive in the batch is a negative for a query), AdamW with linear
warmup and linear decay, bf16 autocast on a GPU, and a wall-clock budget instead of an epoch count:
the budget counts from the start of this script, so loading and saving fit inside it. No batch holds
two pairs of one group (one source package, module or synset), since their positives would be false
negatives for each other. The model is saved to --out at the end, and also on SIGTERM/SIGINT.

Standalone on purpose (torch, sentence-transformers and the standard library only): the recipe agent
copies this file into the workdir as train.py and runs it inside the sandbox.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import queue
import random
import shutil
import signal
import sys
import threading
import time
from collections import deque

START = time.time()
SCALE = 20.0  # cosine similarities times 20, as sentence-transformers' MultipleNegativesRankingLoss
WARMUP_FRACTION = 0.1  # of the run (by time or by --max-steps, whichever is further along)
SAVE_RESERVE_S = 10.0  # stop training this long before the budget ends, to save (at most 5% of the budget)
LOG_EVERY_S = 10.0
GPU_BATCH, CPU_BATCH = 256, 16

_stop_signal: list[int] = []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", required=True, help="jsonl(.gz) of {query, positive, group}")
    p.add_argument("--base", required=True, help="sentence-transformers model folder to start from")
    p.add_argument("--out", default="final_model", help="where the trained model is saved")
    p.add_argument("--minutes", type=float, required=True, help="wall-clock budget for the whole script")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {GPU_BATCH} on GPU, {CPU_BATCH} on CPU")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-seq-length", type=int, default=128, help="tokens per text while training")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: budget only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--pool-limit", type=int, default=None, help="read only the first N rows of the pool")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error(f"--minutes must be positive, got {args.minutes}")
    if args.batch_size is not None and args.batch_size < 2:
        p.error("--batch-size must be at least 2 (in-batch negatives need other pairs in the batch)")
    return args


def log(msg: str) -> None:
    print(f"[train {time.time() - START:7.1f}s] {msg}", flush=True)


def load_pairs(path: str, limit: int | None = None) -> tuple[list[str], list[str], list[str]]:
    """Queries, positives and groups; rows without a group form a group of their own."""
    opener = gzip.open if path.endswith(".gz") else open
    queries, positives, groups = [], [], []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if limit is not None and len(queries) >= limit:
                break
            if not line.strip():
                continue
            row = json.loads(line)
            query, positive = row.get("query"), row.get("positive")
            if not isinstance(query, str) or not isinstance(positive, str):
                raise SystemExit(f"{path}:{lineno}: expected string fields 'query' and 'positive', got {sorted(row)}")
            if not query.strip() or not positive.strip():
                continue
            queries.append(query)
            positives.append(positive)
            group = row.get("group")
            groups.append(f"{row.get('domain', '')}/{group}" if group is not None else f"#row{lineno}")
    return queries, positives, groups


def group_disjoint_batches(groups: list[str], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of full batches, none holding two items of one group.

    Each group's items are spread evenly over the epoch (item i of a group of n gets the sort key
    (i + u) / n), so big groups do not pile up at the end. An item whose group is already in the batch
    being filled waits, and each new batch first takes one waiting item per group, oldest groups first.
    What is left at the end (a part batch, items of a group larger than the number of batches) waits
    for the next epoch, which is shuffled anew.
    """
    by_group: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    keyed = []
    for members in by_group.values():
        rng.shuffle(members)
        n = len(members)
        keyed.extend(((i + rng.random()) / n, index) for i, index in enumerate(members))
    keyed.sort()
    batches: list[list[int]] = []
    waiting: dict[str, deque[int]] = {}
    batch: list[int] = []
    in_batch: set[str] = set()
    for _, index in keyed:
        group = groups[index]
        if group in in_batch:
            waiting.setdefault(group, deque()).append(index)
            continue
        batch.append(index)
        in_batch.add(group)
        while len(batch) == batch_size:
            batches.append(batch)
            batch, in_batch = [], set()
            for waiting_group in list(waiting):
                if len(batch) == batch_size:
                    break
                batch.append(waiting[waiting_group].popleft())
                in_batch.add(waiting_group)
                if not waiting[waiting_group]:
                    del waiting[waiting_group]
    return batches


def batch_stream(groups: list[str], batch_size: int, seed: int):
    """Endless batches, epoch after epoch, each epoch shuffled anew."""
    epoch = 0
    while True:
        batches = group_disjoint_batches(groups, batch_size, random.Random(seed * 1_000_003 + epoch))
        if not batches:
            raise SystemExit(f"the pool has fewer than {batch_size} distinct groups: lower --batch-size")
        yield from ((epoch, b) for b in batches)
        epoch += 1


def tokenize(model, texts: list[str]) -> dict:
    # sentence-transformers 6 renamed tokenize() to preprocess(); older versions only have tokenize()
    fn = getattr(model, "preprocess", None) or model.tokenize
    return fn(texts)


def prefetch(iterator, depth: int = 4):
    """Tokenize the next batches on a thread while the GPU works on this one."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for item in iterator:
                q.put(item)
        except BaseException as exc:  # surfaced in the training loop
            q.put(exc)
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def lr_factor(progress: float) -> float:
    """Linear warmup over the first WARMUP_FRACTION of the run, then linear decay to zero."""
    if progress < WARMUP_FRACTION:
        return max(progress / WARMUP_FRACTION, 0.01)
    return max(0.0, (1.0 - progress) / (1.0 - WARMUP_FRACTION))


def save(model, out: str, seq_length: int | None) -> None:
    """Write to a temporary folder, then move it into place: a kill mid-save leaves no half model at --out."""
    if seq_length is not None:
        model.max_seq_length = seq_length  # the base model's own setting, not the training truncation
    out = os.path.abspath(out)
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(tmp, out)
    log(f"saved {out}")


def _on_signal(signum, frame):
    _stop_signal.append(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget_end = START + args.minutes * 60
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

    import torch
    from sentence_transformers import SentenceTransformer

    try:  # the progress lines below say what happens; transformers' bars only add noise to the log
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    batch_size = args.batch_size or (GPU_BATCH if on_gpu else CPU_BATCH)
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True

    queries, positives, groups = load_pairs(args.pool, args.pool_limit)
    log(f"pool: {len(queries)} pairs in {len(set(groups))} groups from {args.pool}")
    model = SentenceTransformer(args.base, device=device)
    base_seq_length = model.max_seq_length
    model.max_seq_length = args.max_seq_length
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    log(f"model {args.base} on {device}; batch {batch_size}, lr {args.lr}, max {args.max_seq_length} tokens, "
        f"budget {args.minutes:.2f} min" + (f", at most {args.max_steps} steps" if args.max_steps else ""))

    def batches():
        for epoch, indices in batch_stream(groups, batch_size, args.seed):
            yield epoch, tokenize(model, [queries[i] for i in indices]), tokenize(model, [positives[i] for i in indices])

    train_start = time.time()
    train_end = budget_end - min(SAVE_RESERVE_S, 0.05 * args.minutes * 60)
    step, pairs_seen, epoch, last_log, loss_value = 0, 0, 0, 0.0, float("nan")
    losses: list[float] = []
    labels = torch.arange(batch_size, device=device)
    stop_reason = "budget"
    stream = prefetch(batches())
    step_seconds, last_step_end = 0.0, None  # moving average: no step is started that would end past the budget
    while True:
        now = time.time()
        if last_step_end is not None:
            step_seconds = now - last_step_end if step == 1 else 0.9 * step_seconds + 0.1 * (now - last_step_end)
        last_step_end = now
        if _stop_signal:
            stop_reason = f"signal {_stop_signal[0]}"
            break
        if args.max_steps is not None and step >= args.max_steps:
            stop_reason = "max_steps"
            break
        if now + step_seconds >= train_end:
            break
        progress = (now - train_start) / max(train_end - train_start, 1e-6)
        if args.max_steps:
            progress = max(progress, step / args.max_steps)
        lr = args.lr * lr_factor(min(progress, 1.0))
        for group in optimizer.param_groups:
            group["lr"] = lr

        epoch, q_features, d_features = next(stream)
        q_features = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in q_features.items()}
        d_features = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in d_features.items()}
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_gpu):
            q = model(q_features)["sentence_embedding"]
            d = model(d_features)["sentence_embedding"]
        q = torch.nn.functional.normalize(q.float(), dim=-1)
        d = torch.nn.functional.normalize(d.float(), dim=-1)
        loss = torch.nn.functional.cross_entropy(q @ d.T * SCALE, labels[: q.shape[0]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        pairs_seen += q.shape[0]

        if step == 1 or time.time() - last_log >= LOG_EVERY_S or step == args.max_steps:
            loss_value = loss.item()  # the only host sync: keep it to the log lines
            if not math.isfinite(loss_value):
                raise SystemExit(f"loss became {loss_value} at step {step}: lower --lr")
            losses.append(loss_value)
            last_log = time.time()
            rate = pairs_seen / max(last_log - train_start, 1e-6)
            rate_text = f"{rate:.0f}" if rate >= 10 else f"{rate:.1f}"
            log(f"step {step} | epoch {epoch} | loss {loss_value:.4f} | lr {lr:.2e} | {rate_text} pairs/s | "
                f"{max(0.0, budget_end - last_log) / 60:.1f} min left")

    model.eval()
    log(f"stopping ({stop_reason}) after {step} steps")
    save(model, args.out, base_seq_length)
    seconds = time.time() - START
    # a grep-able summary block, one key: value per line
    print("---", f"steps: {step}", f"pairs_seen: {pairs_seen}", f"epochs: {pairs_seen / max(len(queries), 1):.3f}",
          f"batch_size: {batch_size}", f"last_loss: {losses[-1] if losses else float('nan'):.4f}",
          f"train_seconds: {time.time() - train_start:.1f}", f"total_seconds: {seconds:.1f}",
          f"stop_reason: {stop_reason}", f"device: {device}", f"out: {os.path.abspath(args.out)}", sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

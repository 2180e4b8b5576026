#!/usr/bin/env python3
"""The training recipe: one file that fine-tunes the base embedding model on the pool, run as the task agent
with no LLM (`autoembed run recipe`), and the file the `--target recipe` meta-loop improves.

    python recipe.py --pool data/pool/pairs.jsonl.gz --base /path/to/base --out final_model --minutes 10

Everything above the FIXED ADAPTER banner is the method and may change: data choice, batching, loss,
optimizer, schedule, and the ALL_CAPS constants at the top. A constant with `# knob: KIND RANGE` beside it
is one the search meta-agent turns (KIND: log | float | int | choice; `knob[cpu]` and `knob[gpu]` act only on
that device, and a search turns only those of the device its trials run on). The adapter below the banner is
checked by hash: it parses the arguments, loads the base model, keeps the wall-clock budget (which counts
from the start of this script, so loading and saving fit inside it), and saves the model to --out at the
end, on SIGTERM/SIGINT, and when the editable part overruns the budget.

The baseline method: MultipleNegativesRankingLoss (in-batch negatives) with AdamW, linear warmup and
linear decay, bf16 autocast on a GPU, and no batch holding two pairs of one group (one source package,
module or synset), since their positives would be false negatives for each other. Speed knobs (fused AdamW with
pinned batches, length chunks, torch.compile) and levers (mined hard negatives, per-source sampling weights,
cached-gradient large batches, late-weight averaging, interpolation with the base) are there, each off.

Standalone on purpose (torch, sentence-transformers and the standard library only): the recipe agent
copies this file into the workdir as train.py and runs it inside the sandbox.
"""

from __future__ import annotations

# ===== EDITABLE: the meta-agent may change anything from here to the banner =====

import contextlib
import gzip
import json
import queue
import random
import threading
from collections import deque
from types import SimpleNamespace

LR = 5e-5  # knob[gpu]: log 5e-6..3e-4
BATCH_SIZE = 256  # knob[gpu]: choice 32,64,128,256,512
MAX_SEQ_LENGTH = 128  # knob[gpu]: choice 64,96,128,192,256
# On a CPU a run has minutes for a few dozen steps, not hours for thousands: short texts (64 tokens and batch 32
# cost 0.58x the CPU time per pair of 128 tokens and batch 16, measured), a batch that still gives in-batch
# negatives, and a larger LR so few steps move the model. bf16 autocast (only where the CPU has AMX/AVX512-BF16)
# is off: on the shared 2-core VM it saved no CPU time per step; a search may turn it on.
CPU_LR = 1e-4  # knob[cpu]: log 5e-6..1e-3
CPU_BATCH_SIZE = 32  # knob[cpu]: choice 8,16,32,64,128
CPU_MAX_SEQ_LENGTH = 64  # knob[cpu]: choice 32,48,64,96,128
CPU_BF16 = False  # knob[cpu]: choice False,True
SCALE = 20.0  # knob: float 5..50
WARMUP_FRACTION = 0.1  # knob: float 0.0..0.3
WEIGHT_DECAY = 0.01  # knob: log 1e-4..0.1
GRAD_CLIP = 1.0  # knob: log 0.1..10
SYMMETRIC_LOSS = False  # knob: choice False,True
LOG_EVERY_S = 10.0
# GPU speed, each off by default (the loop's baseline stays the reference recipe); none changes the loss.
# FUSED_ADAMW: the fused AdamW kernel, batches in pinned memory copied without blocking, a foreach grad clip.
# LENGTH_CHUNKS: each side of a batch (queries, documents) cut into this many chunks of similar length, each padded
# only to its own longest text (the same embeddings, far less padding where short and long texts mix).
# COMPILE: torch.compile the transformer (dynamic shapes); it costs a compile at the start.
# PRETOKENIZE: every text of the pool tokenized once before training (seconds, on all cores); each step then takes
# its rows of one padded table, cut to the batch's longest text (the same features the tokenizer would give), so the
# step waits on no tokenizer (the reference tokenizes each batch in Python: the host bound on a GPU).
FUSED_ADAMW = False  # knob[gpu]: choice False,True
LENGTH_CHUNKS = 1  # knob[gpu]: choice 1,2,4
COMPILE = False  # knob[gpu]: choice False,True
PRETOKENIZE = False  # knob[gpu]: choice False,True
# Levers, each off by default.
# HARD_NEGATIVES: one mined negative document per pair, from a ranking of the pool's documents for the pair's query
# (before training; cached in .cache/ per pool and setting): the highest-ranked candidate of another group, with
# another text, that scores below HARD_NEGATIVE_MARGIN x the positive's score (a candidate scoring near or above
# the positive is likely a false negative). HARD_NEGATIVE_MINER: who ranks, the base model (cosine; encoding the
# pool needs a GPU) or BM25 (bm25s, on the CPU's cores; a query whose positive is not in its top candidates gets
# no negative, since each of them scores above the positive).
HARD_NEGATIVES = False  # knob[gpu]: choice False,True
HARD_NEGATIVE_MINER = "model"  # knob[gpu]: choice 'model','bm25'
HARD_NEGATIVE_MARGIN = 0.95  # knob[gpu]: float 0.8..1.0
HARD_NEGATIVE_DEPTH = 20  # candidates looked at per query
# Sampling weight of each pool source (its domain): 2.0 shows its pairs twice per epoch, 0.5 half of them.
WEIGHT_DEBIAN = 1.0  # knob: log 0.25..4.0
WEIGHT_PYCODE = 1.0  # knob: log 0.25..4.0
WEIGHT_WORDNET = 1.0  # knob: log 0.25..4.0
# Cached gradients (GradCache, as sentence-transformers' CachedMultipleNegativesRankingLoss): an effective batch
# of CACHED_BATCH_MULTIPLE x the batch size, in-batch negatives across all of it, in the memory of one batch
# (embeddings without graph first, the loss's gradient on them, then each mini-batch again with its dropout).
CACHED_BATCH_MULTIPLE = 1  # knob[gpu]: choice 1,2,4,8
# Weight averaging: AVERAGE_LAST, the mean of the weights over the last share of training (every step);
# BASE_INTERPOLATION, the saved weights are base + x (trained - base) (1.0: the trained weights, 0.0: the base's).
AVERAGE_LAST = 0.0  # knob: float 0.0..0.5
BASE_INTERPOLATION = 1.0  # knob: float 0.0..1.0
GPU_LEVERS_ON_CPU = False  # the knob[gpu] levers also on a CPU (tests on tiny pools); a CPU run never needs them


def load_pairs(path: str, limit: int | None = None,
               domains: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Queries, positives and groups; rows without a group form a group of their own. Each kept row's
    domain (source) is appended to `domains` when one is given."""
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
            if domains is not None:
                domains.append(str(row.get("domain", "")))
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


def source_weights() -> dict[str, float]:
    return {"debian": WEIGHT_DEBIAN, "pycode": WEIGHT_PYCODE, "wordnet": WEIGHT_WORDNET}


def weighted_epoch(domains: list[str], weights: dict[str, float], rng: random.Random) -> list[int]:
    """One epoch's pair indices under per-source weights: each pair of a source of weight w appears floor(w)
    times, and once more with probability w - floor(w); a source not named keeps weight 1."""
    chosen = []
    for index, domain in enumerate(domains):
        weight = weights.get(domain, 1.0)
        copies = int(weight) + (rng.random() < weight - int(weight))
        chosen.extend([index] * copies)
    return chosen


def batch_stream(groups: list[str], batch_size: int, seed: int, domains: list[str] | None = None):
    """Endless batches, epoch after epoch, each epoch shuffled anew (sampled by source weight when any differs
    from 1; the reference's order otherwise)."""
    weights = source_weights()
    weighted = domains is not None and any(w != 1.0 for w in weights.values())
    if weighted and len({g for g, d in zip(groups, domains) if weights.get(d, 1.0) > 0}) < batch_size:
        raise SystemExit(f"the pool's sources of weight above 0 hold fewer than {batch_size} distinct groups: "
                         "lower the batch size or raise a source's weight")
    epoch = 0
    while True:
        rng = random.Random(seed * 1_000_003 + epoch)
        if weighted:
            chosen = weighted_epoch(domains, weights, random.Random(seed * 7_919 + epoch))
            draw = 0
            while len({groups[i] for i in chosen}) < batch_size:  # a small pool whose weights sampled under a batch
                draw += 1
                if draw > 1_000:
                    raise SystemExit(f"the source weights sampled fewer than {batch_size} distinct groups in 1,000 "
                                     "draws: raise the smallest weights or lower the batch size")
                chosen += weighted_epoch(domains, weights, random.Random((seed * 7_919 + epoch) * 131 + draw))
            batches = [[chosen[i] for i in batch]
                       for batch in group_disjoint_batches([groups[i] for i in chosen], batch_size, rng)]
        else:
            batches = group_disjoint_batches(groups, batch_size, rng)
        if not batches:
            raise SystemExit(f"the pool has fewer than {batch_size} distinct groups: lower the batch size")
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


def contrastive_loss(torch, q, d, negatives=None):
    """In-batch negatives: each query's positive against every other positive in the batch (and every mined
    negative document, when there are some)."""
    q = torch.nn.functional.normalize(q.float(), dim=-1)
    d = torch.nn.functional.normalize(d.float(), dim=-1)
    scores = q @ d.T * SCALE
    labels = torch.arange(q.shape[0], device=q.device)
    if negatives is not None and negatives.shape[0]:
        n = torch.nn.functional.normalize(negatives.float(), dim=-1)
        loss = torch.nn.functional.cross_entropy(torch.cat([scores, q @ n.T * SCALE], dim=1), labels)
    else:
        loss = torch.nn.functional.cross_entropy(scores, labels)
    if SYMMETRIC_LOSS:
        loss = (loss + torch.nn.functional.cross_entropy(scores.T, labels)) / 2
    return loss


def length_chunks(model, texts: list[str], chunks: int, pin: bool) -> list:
    """A side of a batch as [(positions or None, features)]: one padded batch, or `chunks` pieces of texts of
    similar length (by characters), each padded to its own longest; positions put the rows back in order."""
    import torch

    if chunks <= 1 or len(texts) < 2 * chunks:
        pieces = [(None, tokenize(model, texts))]
    else:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        size = -(-len(texts) // chunks)
        pieces = [(torch.tensor(order[s:s + size]), tokenize(model, [texts[i] for i in order[s:s + size]]))
                  for s in range(0, len(texts), size)]
    if pin:
        pieces = [(pos, {k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in feats.items()})
                  for pos, feats in pieces]
    return pieces


CHECK_ROWS = 512  # texts tokenized both ways before the table is trusted: spread over the list, and the longest
BACKEND_FEATURES = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def check_rows(texts: list[str]) -> list[int]:
    spread = range(0, len(texts), max(1, len(texts) // (CHECK_ROWS // 2)))
    longest = sorted(range(len(texts)), key=lambda i: -len(texts[i]))[:CHECK_ROWS // 4]
    edges = [i for i, t in enumerate(texts) if t != t.strip()][:CHECK_ROWS // 4]  # whitespace a tokenizer may strip
    return sorted(set(spread) | set(longest) | set(edges))


def backend_table(model, texts: list[str], rows: list[int], probe: dict) -> dict | None:
    """The whole table from the fast tokenizer's Rust backend in one call, without transformers' per-text Python
    (converting each encoding, then lists to tensors), which on a 16-core GPU box was most of PRETOKENIZE's 40 s.
    None where it cannot give what tokenize() gives for the check rows (probe): no fast tokenizer, left padding,
    another feature, or any difference."""
    import itertools

    import numpy as np
    import torch

    hf = getattr(getattr(model, "tokenizer", None), "_tokenizer", None) and model.tokenizer
    keys = [key for key, value in probe.items() if torch.is_tensor(value)]
    if not hf or hf.padding_side != "right" or any(key not in BACKEND_FEATURES for key in keys):
        return None
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(hf._tokenizer.to_str())  # a copy: the model's own keeps its settings
    backend.no_padding()
    backend.enable_truncation(max_length=model.max_seq_length, direction=hf.truncation_side)
    encodings = backend.encode_batch(texts, add_special_tokens=True)
    lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
    width = int(lengths.max())
    filled = np.arange(width)[None, :] < lengths[:, None]
    pads = {"input_ids": hf.pad_token_id, "attention_mask": 0, "token_type_ids": hf.pad_token_type_id}
    table = {}
    for key in keys:
        column = np.full((len(texts), width), pads[key], dtype=np.int64)
        attribute = BACKEND_FEATURES[key]
        column[filled] = np.fromiter(itertools.chain.from_iterable(getattr(e, attribute) for e in encodings),
                                     dtype=np.int64, count=int(lengths.sum()))
        table[key] = torch.from_numpy(column)
    sample, index = probe[keys[0]].shape[1], torch.as_tensor(rows)
    if width < sample or any(not torch.equal(table[key][index, :sample], probe[key]) for key in keys):
        return None
    return table


class TokenTable:
    """Texts tokenized once (PRETOKENIZE): one right-padded table per feature and each text's length; a batch's
    rows are the table's, cut to their longest, as the tokenizer pads a batch to its longest text."""

    def __init__(self, model, texts: list[str], chunk: int = 8192):
        import torch

        rows = check_rows(texts)
        probe = tokenize(model, [texts[i] for i in rows])
        self.extra = {key: value for key, value in probe.items() if not torch.is_tensor(value)}  # e.g. modality
        self.table = backend_table(model, texts, rows, probe)
        if self.table is None:  # the tokenizer's own call, chunk by chunk
            parts = [tokenize(model, texts[s:s + chunk]) for s in range(0, len(texts), chunk)]
            width = max(part["input_ids"].shape[1] for part in parts)
            self.table = {key: torch.cat([torch.nn.functional.pad(part[key], (0, width - part[key].shape[1]))
                                          for part in parts]) for key in parts[0] if torch.is_tensor(parts[0][key])}
        self.lengths = self.table["attention_mask"].sum(dim=1)

    def features(self, rows) -> dict:
        import torch

        index = torch.as_tensor(rows, dtype=torch.long)
        width = int(self.lengths[index].max())
        return {**{key: column[index, :width] for key, column in self.table.items()}, **self.extra}

    def side(self, rows: list[int], chunks: int, pin: bool) -> list:
        """A side of a batch as length_chunks gives it, from the table: one piece, or `chunks` pieces of rows of
        similar length, with the positions that put them back in order."""
        import torch

        if chunks <= 1 or len(rows) < 2 * chunks:
            pieces = [(None, self.features(rows))]
        else:
            lengths = self.lengths[torch.as_tensor(rows, dtype=torch.long)].tolist()
            order = sorted(range(len(rows)), key=lambda i: lengths[i])
            size = -(-len(rows) // chunks)
            pieces = [(torch.tensor(order[s:s + size]), self.features([rows[i] for i in order[s:s + size]]))
                      for s in range(0, len(rows), size)]
        if pin:
            pieces = [(pos, {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in feats.items()})
                      for pos, feats in pieces]
        return pieces


def embed(torch, model, side: list, device: str, autocast) -> "torch.Tensor":
    """The sentence embeddings of one side of a batch, rows in the batch's order."""
    outputs, positions = [], []
    for pos, features in side:
        features = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in features.items()}
        with autocast():
            outputs.append(model(features)["sentence_embedding"])
        positions.append(pos)
    if len(outputs) == 1 and positions[0] is None:
        return outputs[0]
    order = torch.cat(positions).to(device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=device)
    return torch.cat(outputs)[inverse]


def mine_hard_negatives(model, queries: list[str], positives: list[str], groups: list[str], device: str,
                        log, cache_dir: str = ".cache") -> list[int]:
    """For each pair, the index of the pair whose positive is its hard negative (-1: none passed): the base
    model (or BM25) ranks every positive for the query; the first of the top HARD_NEGATIVE_DEPTH from another
    group, with another text, scoring below HARD_NEGATIVE_MARGIN x the positive's score. Cached in cache_dir."""
    import hashlib
    import os
    import time

    import torch

    digest = hashlib.sha256(json.dumps([HARD_NEGATIVE_MINER, HARD_NEGATIVE_MARGIN, HARD_NEGATIVE_DEPTH,
                                        model.max_seq_length, len(queries)]).encode())
    for text in (*queries, *positives, *groups):
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    path = os.path.join(cache_dir, f"recipe-hard-negatives-{digest.hexdigest()[:24]}.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            mined = json.load(fh)
        if len(mined) == len(queries):
            log(f"hard negatives: {sum(m >= 0 for m in mined)} of {len(mined)} pairs, from {path}")
            return mined
    started = time.time()
    depth = min(HARD_NEGATIVE_DEPTH + 1, len(positives))
    if HARD_NEGATIVE_MINER == "bm25":
        rankings = bm25_rankings(queries, positives, depth)
    else:
        rankings = model_rankings(torch, model, queries, positives, device, depth)
    mined = []
    for i, (candidates, cand_scores, positive_score) in enumerate(rankings):
        limit = HARD_NEGATIVE_MARGIN * positive_score if positive_score is not None else float("-inf")
        mined.append(next((j for j, s in zip(candidates, cand_scores) if j != i and groups[j] != groups[i]
                           and positives[j] != positives[i] and s < limit), -1))
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(mined, fh)
    os.replace(tmp, path)
    log(f"hard negatives: {sum(m >= 0 for m in mined)} of {len(mined)} pairs mined in {time.time() - started:.1f}s")
    return mined


def model_rankings(torch, model, queries: list[str], positives: list[str], device: str, depth: int):
    """(top positives, their cosines, the pair's own positive's cosine) per query, by the model as it is now."""
    was_training = model.training
    model.eval()
    with torch.autocast(device_type="cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16,
                        enabled=str(device).startswith("cuda")):
        q = model.encode(queries, batch_size=512, convert_to_tensor=True, normalize_embeddings=True).float()
        d = model.encode(positives, batch_size=512, convert_to_tensor=True, normalize_embeddings=True).float()
    model.train(was_training)
    positive_scores = (q * d).sum(dim=1).tolist()
    for start in range(0, len(queries), 2048):
        scores, top = (q[start:start + 2048] @ d.T).topk(depth, dim=1)
        for row, (cand_scores, candidates) in enumerate(zip(scores.tolist(), top.tolist())):
            yield candidates, cand_scores, positive_scores[start + row]


def bm25_rankings(queries: list[str], positives: list[str], depth: int):
    """(top positives, their BM25 scores, the pair's own positive's score, or None when it is not among them)."""
    import os

    try:
        import bm25s
    except ImportError:
        raise SystemExit("HARD_NEGATIVE_MINER = 'bm25' needs the bm25s package, which this environment lacks: "
                         "use 'model'") from None
    retriever = bm25s.BM25(method="lucene")
    retriever.index(bm25s.tokenize(positives, stopwords="en", return_ids=False, show_progress=False),
                    show_progress=False)
    top, scores = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False),
                                     k=depth, show_progress=False, n_threads=os.cpu_count() or 1)
    for i, (candidates, cand_scores) in enumerate(zip(top.tolist(), scores.tolist())):
        own = next((s for j, s in zip(candidates, cand_scores) if j == i), None)
        yield candidates, cand_scores, own


class WeightAverage:
    """The running mean of the parameters over the steps it is given (AVERAGE_LAST)."""

    def __init__(self, torch, params):
        self.torch, self.params, self.mean, self.count = torch, params, None, 0

    def update(self) -> None:
        with self.torch.no_grad():
            if self.mean is None:
                self.mean = [p.detach().clone() for p in self.params]
            else:
                self.torch._foreach_lerp_(self.mean, [p.detach() for p in self.params], 1.0 / (self.count + 1))
        self.count += 1

    def apply(self) -> None:
        if self.mean is not None:
            with self.torch.no_grad():
                for p, m in zip(self.params, self.mean):
                    p.copy_(m)


def interpolate_with_base(torch, model, base_state: dict, factor: float) -> None:
    """Set each floating-point weight to base + factor x (trained - base)."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            base = base_state.get(name)
            if base is not None and tensor.is_floating_point():
                tensor.copy_(torch.lerp(base.to(tensor.device, tensor.dtype), tensor, factor))


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """AMX or AVX512-BF16 (Sapphire Rapids and later, Zen 4): where bf16 matmuls beat fp32 on a CPU."""
    try:
        with open(cpuinfo, encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def device_settings(on_gpu: bool) -> dict:
    """The learning rate, batch size, training length and autocast dtype for where the run trains."""
    if on_gpu:
        return {"lr": LR, "batch_size": BATCH_SIZE, "max_seq_length": MAX_SEQ_LENGTH, "autocast_dtype": "bfloat16"}
    bf16 = CPU_BF16 and cpu_has_fast_bf16()
    return {"lr": CPU_LR, "batch_size": CPU_BATCH_SIZE, "max_seq_length": CPU_MAX_SEQ_LENGTH,
            "autocast_dtype": "bfloat16" if bf16 else None}


def training_setup(run) -> SimpleNamespace:
    """The pairs, this device's settings and levers, the base weights kept for BASE_INTERPOLATION and the mined
    hard negatives; the model left in train mode."""
    model, device = run.model, run.device
    domains: list[str] = []
    queries, positives, groups = load_pairs(run.pool, run.pool_limit, domains)
    settings = device_settings(run.on_gpu)
    base_lr, max_seq_length = settings["lr"], settings["max_seq_length"]
    batch_size = min(settings["batch_size"], len(set(groups)))
    gpu_levers = run.on_gpu or GPU_LEVERS_ON_CPU
    multiple = max(1, min(CACHED_BATCH_MULTIPLE, len(set(groups)) // batch_size)) if gpu_levers else 1
    fast = gpu_levers and FUSED_ADAMW
    chunks = LENGTH_CHUNKS if gpu_levers else 1
    run.log(f"pool: {len(queries)} pairs in {len(set(groups))} groups from {run.pool}")
    model.max_seq_length = max_seq_length
    base_state = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                  if BASE_INTERPOLATION < 1.0 else None)
    negatives = (mine_hard_negatives(model, queries, positives, groups, device, run.log)
                 if HARD_NEGATIVES and gpu_levers else None)
    tables = None
    if PRETOKENIZE and gpu_levers:
        import time

        started = time.time()
        tables = (TokenTable(model, queries), TokenTable(model, positives))
        run.log(f"pre-tokenized {len(queries) + len(positives)} texts in {time.time() - started:.1f}s")
    model.train()
    return SimpleNamespace(queries=queries, positives=positives, groups=groups, domains=domains, settings=settings,
                           base_lr=base_lr, max_seq_length=max_seq_length, batch_size=batch_size, multiple=multiple,
                           fast=fast, chunks=chunks, base_state=base_state, negatives=negatives, tables=tables)


def training_batches(run, setup: SimpleNamespace):
    """(epoch, mini-batches) per step; a mini-batch is its query, positive and hard-negative sides, tokenized."""
    queries, positives, negatives, batch_size = setup.queries, setup.positives, setup.negatives, setup.batch_size
    pin = setup.fast and run.on_gpu

    def side(texts, rows):  # texts: queries or positives; rows: indices into them (and into their token table)
        if setup.tables is None:
            return length_chunks(run.model, [texts[i] for i in rows], setup.chunks, pin=pin)
        table = setup.tables[1] if texts is positives else setup.tables[0]
        return table.side(rows, setup.chunks, pin)

    for epoch, indices in batch_stream(setup.groups, batch_size * setup.multiple, run.seed,
                                       setup.domains if len(setup.domains) == len(setup.groups) else None):
        mini = []
        for s in range(0, len(indices), batch_size):
            part = indices[s:s + batch_size]
            negative_rows = [negatives[i] for i in part if negatives[i] >= 0] if negatives is not None else []
            mini.append((side(queries, part), side(positives, part),
                         side(positives, negative_rows) if negative_rows else None))
        yield epoch, mini


class Forward:
    """The model's embeddings of a mini-batch's sides under this device's autocast, and the RNG replay that lets
    cached_step run a forward again with the same dropout."""

    def __init__(self, torch, run, settings: dict):
        self.torch, self.run, self.settings = torch, run, settings

    def autocast(self):
        return self.torch.autocast(device_type="cuda" if self.run.on_gpu else "cpu", dtype=self.torch.bfloat16,
                                   enabled=self.settings["autocast_dtype"] is not None)

    def __call__(self, q_side, d_side, n_side):
        torch, model, device = self.torch, self.run.model, self.run.device
        return (embed(torch, model, q_side, device, self.autocast), embed(torch, model, d_side, device, self.autocast),
                embed(torch, model, n_side, device, self.autocast) if n_side is not None else None)

    def rng_state(self):
        return self.torch.get_rng_state(), (self.torch.cuda.get_rng_state() if self.run.on_gpu else None)

    @contextlib.contextmanager
    def replay(self, state):
        """Run with the RNG as it was (the same dropout masks as the first pass), then go on from where it was."""
        torch = self.torch
        now = self.rng_state()
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1])
        try:
            yield
        finally:
            torch.set_rng_state(now[0])
            if now[1] is not None:
                torch.cuda.set_rng_state(now[1])


def cached_step(torch, forward: Forward, mini):
    """GradCache: embeddings of every mini-batch without a graph, the loss and its gradient on them, then
    each mini-batch's forward again (same dropout) and backward from those gradients."""
    states, parts = [], []
    with torch.no_grad():
        for q_side, d_side, n_side in mini:
            states.append(forward.rng_state())
            parts.append(forward(q_side, d_side, n_side))
    leaves = [[t.detach().requires_grad_() if t is not None else None for t in part] for part in parts]
    q_all = torch.cat([part[0] for part in leaves])
    d_all = torch.cat([part[1] for part in leaves])
    n_list = [part[2] for part in leaves if part[2] is not None]
    loss = contrastive_loss(torch, q_all, d_all, torch.cat(n_list) if n_list else None)
    loss.backward()
    for (q_side, d_side, n_side), state, part in zip(mini, states, leaves):
        with forward.replay(state):
            outs = forward(q_side, d_side, n_side)
        pairs = [(o, leaf.grad) for o, leaf in zip(outs, part) if o is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    return loss.detach(), q_all.shape[0]


def train(run) -> dict:
    """Train run.model in place until run.should_stop(step) gives a reason; return the summary's numbers."""
    import time

    import torch

    model = run.model
    setup = training_setup(run)
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup.base_lr, weight_decay=WEIGHT_DECAY,
                                  **({"fused": True} if setup.fast else {}))
    if COMPILE and run.on_gpu:
        model[0].auto_model.compile(dynamic=True)
    average = WeightAverage(torch, [p for p in model.parameters() if p.requires_grad]) if AVERAGE_LAST > 0 else None
    run.log(f"batch {setup.batch_size}" + (f" x {setup.multiple} (cached gradients)" if setup.multiple > 1 else "")
            + f", lr {setup.base_lr}, max {setup.max_seq_length} tokens, autocast {setup.settings['autocast_dtype']}, "
            f"{run.seconds_left() / 60:.2f} min to train" + (f", at most {run.max_steps} steps" if run.max_steps else ""))
    stream = prefetch(training_batches(run, setup))
    train_start = time.time()
    try:
        stop_reason, step, pairs_seen, losses = training_steps(torch, run, setup, optimizer, average, stream,
                                                               train_start)
    finally:  # also when the adapter stops an overrunning loop: save the averaged / interpolated weights
        if average is not None:
            average.apply()
        if setup.base_state is not None:
            interpolate_with_base(torch, model, setup.base_state, BASE_INTERPOLATION)
    model.eval()
    return {"stop_reason": stop_reason, "steps": step, "pairs_seen": pairs_seen,
            "epochs": f"{pairs_seen / max(len(setup.queries), 1):.3f}", "batch_size": setup.batch_size * setup.multiple,
            "last_loss": f"{losses[-1] if losses else float('nan'):.4f}",
            "train_seconds": f"{time.time() - train_start:.1f}"}


def training_steps(torch, run, setup: SimpleNamespace, optimizer, average, stream, train_start: float) -> tuple:
    """Steps until run.should_stop gives a reason: (that reason, steps, pairs seen, the losses logged)."""
    import math
    import time

    forward = Forward(torch, run, setup.settings)
    step, pairs_seen, epoch, last_log, losses = 0, 0, 0, 0.0, []
    params = [p for p in run.model.parameters() if p.requires_grad]
    while True:
        stop_reason = run.should_stop(step)
        if stop_reason:
            return stop_reason, step, pairs_seen, losses
        progress = max(run.progress(), step / run.max_steps if run.max_steps else 0.0)
        lr = setup.base_lr * lr_factor(min(progress, 1.0))
        for group in optimizer.param_groups:
            group["lr"] = lr

        epoch, mini = next(stream)
        optimizer.zero_grad(set_to_none=True)
        if setup.multiple > 1:
            loss, pairs = cached_step(torch, forward, mini)
        else:
            q, d, n = forward(*mini[0])
            loss = contrastive_loss(torch, q, d, n)
            loss.backward()
            pairs = q.shape[0]
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP, **({"foreach": True} if setup.fast else {}))
        optimizer.step()
        step += 1
        pairs_seen += pairs
        if average is not None and progress >= 1.0 - AVERAGE_LAST:
            average.update()

        if step == 1 or time.time() - last_log >= LOG_EVERY_S or step == run.max_steps:
            loss_value = loss.item()  # the only host sync: keep it to the log lines
            if not math.isfinite(loss_value):
                raise SystemExit(f"loss became {loss_value} at step {step}: lower LR")
            losses.append(loss_value)
            last_log = time.time()
            rate = pairs_seen / max(last_log - train_start, 1e-6)
            rate_text = f"{rate:.0f}" if rate >= 10 else f"{rate:.1f}"
            run.log(f"step {step} | epoch {epoch} | loss {loss_value:.4f} | lr {lr:.2e} | {rate_text} pairs/s | "
                    f"{max(0.0, run.seconds_left()) / 60:.1f} min left")


# ===== FIXED ADAPTER: the meta-agent must not edit below this line =====
# The contract with the runner (autoembed/agents/recipe.py, the loop's smoke check): this file runs as a
# script inside the sandbox; the host checks the hash of everything below the banner and never imports it.
# The part above must define train(run) -> dict; `run` gives the model, device, pool and the budget.

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

START = time.time()
SAVE_RESERVE_S = 10.0  # stop training this long before the budget ends, to save (5% of a short budget, at least 3 s)
OVERRUN_GRACE_S = 5.0  # past the training end, the adapter stops the editable part and saves what it has
_stop_signal: list[int] = []


class BudgetOverrun(BaseException):
    """Raised in the training loop when it runs past its end: a BaseException, so `except Exception` in the
    editable part cannot swallow it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", required=True, help="jsonl(.gz) of {query, positive, group}")
    p.add_argument("--base", required=True, help="sentence-transformers model folder to start from")
    p.add_argument("--out", default="final_model", help="where the trained model is saved")
    p.add_argument("--minutes", type=float, required=True, help="wall-clock budget for the whole script")
    p.add_argument("--batch-size", type=int, default=None, help="override BATCH_SIZE and CPU_BATCH_SIZE")
    p.add_argument("--lr", type=float, default=None, help="override LR (and CPU_LR)")
    p.add_argument("--max-seq-length", type=int, default=None, help="override MAX_SEQ_LENGTH and CPU_MAX_SEQ_LENGTH (tokens while training)")
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


class Run:
    """What train() gets: the model and where it runs, the pool, and the budget."""

    def __init__(self, args, model, device: str, train_end: float):
        self.model, self.device, self.on_gpu = model, device, device.startswith("cuda")
        self.pool, self.pool_limit, self.seed, self.max_steps = args.pool, args.pool_limit, args.seed, args.max_steps
        self.train_start, self.train_end = time.time(), train_end
        self._last_check, self._step_seconds = None, 0.0
        self.steps = 0  # the last step count train() reported through should_stop
        self.log = log

    def seconds_left(self) -> float:
        return self.train_end - time.time()

    def progress(self) -> float:
        """Share of the training time used, 0..1."""
        return min(1.0, (time.time() - self.train_start) / max(self.train_end - self.train_start, 1e-6))

    def should_stop(self, step: int) -> str | None:
        """Why to stop before the next step (a signal, --max-steps, or a step that would end past the
        budget, by a moving average of the step time), else None."""
        now = time.time()
        self.steps = step
        if self._last_check is not None:
            took = now - self._last_check
            self._step_seconds = took if step <= 1 else 0.9 * self._step_seconds + 0.1 * took
        self._last_check = now
        if _stop_signal:
            return f"signal {_stop_signal[0]}"
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        if now + self._step_seconds >= self.train_end:
            return "budget"
        return None


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


def _on_overrun(signum, frame):
    raise BudgetOverrun()


def _apply_overrides(args) -> None:
    overrides = {"LR": args.lr, "MAX_SEQ_LENGTH": args.max_seq_length}
    if args.batch_size is not None:
        overrides.update(BATCH_SIZE=args.batch_size, CPU_BATCH_SIZE=args.batch_size)
    for name, value in overrides.items():
        if value is not None:
            if name not in globals():
                raise SystemExit(f"an override needs the constant {name} above the banner, and it is gone")
            globals()[name] = value
            if f"CPU_{name}" in globals():  # an override holds on every device
                globals()[f"CPU_{name}"] = value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _apply_overrides(args)
    budget_end = START + args.minutes * 60
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

    import torch
    from sentence_transformers import SentenceTransformer

    try:  # the progress lines say what happens; transformers' bars only add noise to the log
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass

    import random as _random

    _random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    model = SentenceTransformer(args.base, device=device)
    base_seq_length = model.max_seq_length
    log(f"model {args.base} on {device}; budget {args.minutes:.2f} min")
    train_end = budget_end - min(SAVE_RESERVE_S, max(3.0, 0.05 * args.minutes * 60))
    run = Run(args, model, device, train_end)
    signal.signal(signal.SIGALRM, _on_overrun)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, train_end + OVERRUN_GRACE_S - time.time()))
    try:
        summary = train(run)
    except BudgetOverrun:
        summary = {"stop_reason": "overran the budget (stopped by the adapter)", "steps": run.steps}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    model.eval()
    log(f"stopping ({summary.get('stop_reason')}) after {summary.get('steps', '?')} steps")
    save(model, args.out, base_seq_length)
    # a grep-able summary block, one key: value per line
    summary.update(total_seconds=f"{time.time() - START:.1f}", device=device, out=os.path.abspath(args.out))
    print("---", *(f"{key}: {value}" for key, value in summary.items()), sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # the model is saved: skip the interpreter's teardown (seconds with torch's threads near a deadline)

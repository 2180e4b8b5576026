"""One batch (32 x 256 tokens) through the base model's transformer: torch fp32 against OpenVINO at f32 and bf16
inference precision, same process; prints seconds per batch, the speed-up and how far the hidden states move.

    PYTHONPATH=. python bench/bench_openvino_batch.py
"""
import time, torch, openvino as ov
from autoembed.task.base_model import resolve_base_model, offline_env
from autoembed.task.spec import load_spec
offline_env()
s = load_spec("embed")
from sentence_transformers import SentenceTransformer
m = SentenceTransformer(str(resolve_base_model(s.base_model, s.base_model_sha256)), device="cpu").eval()
hf = m[0].auto_model
ids = torch.randint(1000, 20000, (32, 256)); mask = torch.ones_like(ids); tt = torch.zeros_like(ids)
t0 = time.perf_counter()
ovm = ov.convert_model(hf, example_input={"input_ids": ids[:2, :16], "attention_mask": mask[:2, :16], "token_type_ids": tt[:2, :16]})
print("convert", time.perf_counter() - t0)
core = ov.Core()
def t(fn, n=3):
    fn(); t0=time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter()-t0)/n
with torch.inference_mode():
    ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    a = t(lambda: hf(input_ids=ids, attention_mask=mask, token_type_ids=tt))
for prec in ("f32", "bf16"):
    t0 = time.perf_counter()
    c = core.compile_model(ovm, "CPU", {"INFERENCE_PRECISION_HINT": prec, "INFERENCE_NUM_THREADS": 2})
    ct = time.perf_counter() - t0
    inp = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": tt.numpy()}
    out = torch.from_numpy(c(inp)[0])
    b = t(lambda: c(inp))
    cos = torch.nn.functional.cosine_similarity(ref.mean(1), out.mean(1)).min()
    print(f"{prec}: compile {ct:.2f}s, {b:.3f}s/batch vs torch fp32 {a:.3f}s -> x{a/b:.2f}; cos {cos:.6f}; maxabs {(ref-out).abs().max():.2e}")

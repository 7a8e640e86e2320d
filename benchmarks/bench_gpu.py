"""GPU benchmark: fast rollouts vs HF generate, one GRPO step of ours, the same step by TRL.

One run on the GPU machine prints one table and writes markdown rows (``--md``) for docs/PERF.md:

  python benchmarks/bench_gpu.py --md $OUT/perf.md --json $OUT/bench.json            # all but TRL
  python benchmarks/bench_gpu.py --section trl --md $OUT/trl.md --json $OUT/trl.json # TRL's GRPOTrainer
  python benchmarks/bench_gpu.py --cpu-smoke                                          # every code path, tiny, CPU

Models are random-weight Qwen3 shapes (benchmarks/configs/*.json): tokens per second do not depend
on weight values. The tokenizer is synthetic (one word per id of the 151936-token vocabulary), so
prompts of exactly 128 tokens and any sampled id decode. Every section runs in try/except: a failure
is recorded in the table and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from projected_grpo import fastgen  # noqa: E402
from projected_grpo.rollout import generate as hf_generate  # noqa: E402

CONFIGS = ROOT / "benchmarks" / "configs"
DATE = "2026-11-28"
RESULTS: list[dict] = []  # one dict per table row
NOTES: list[str] = []


def log(*a):
    print(*a, flush=True)


def record(section: str, what: str, **kv):
    row = {"section": section, "what": what, **kv}
    RESULTS.append(row)
    if os.environ.get("BENCH_ROWS"):  # survives a timeout: one JSON line per row as it happens
        with open(os.environ["BENCH_ROWS"], "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
    log(f"[{section}] {what}: " + ", ".join(f"{k}={_f(v)}" for k, v in kv.items()))


def _f(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@contextlib.contextmanager
def section(name: str):
    t = time.perf_counter()
    log(f"\n=== {name}")
    try:
        yield
    except Exception as e:  # record and go on: one failure must not waste the device call
        tb = traceback.format_exc()
        log(tb)
        record(name, "ERROR", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
    finally:
        log(f"=== {name}: {time.perf_counter() - t:.1f}s")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- models, tokenizer
def synthetic_tokenizer(vocab: int, eos: int, pad: int):
    """One word per id ("t17"); whitespace split. Decodes any id; encodes "t1 t2 ..." exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = {f"t{i}": i for i in range(vocab)}
    names.pop(f"t{eos}"), names.pop(f"t{pad}")
    names["<|im_end|>"], names["<|endoftext|>"] = eos, pad
    tk = Tokenizer(models.WordLevel(vocab=names, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")
    tok.padding_side = "left"
    return tok


def model_config(name: str, smoke: bool):
    from transformers import AutoConfig

    if smoke:
        d = dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=512, hidden_size=64,
                 intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, tie_word_embeddings=True, eos_token_id=500, pad_token_id=501, bos_token_id=501,
                 rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=4096)
    else:
        d = json.loads((CONFIGS / f"{name}.json").read_text())
    d.pop("torch_dtype", None)
    return AutoConfig.for_model(**d)


def build_model(name: str, dtype, device, smoke: bool, layers: int | None = None):
    from transformers import AutoModelForCausalLM

    cfg = model_config(name, smoke)
    if layers is not None:
        cfg.num_hidden_layers = layers
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval().requires_grad_(False)
    tok = synthetic_tokenizer(cfg.vocab_size, cfg.eos_token_id, cfg.pad_token_id)
    return model, tok


def prompts_of(tok, n: int, length: int, seed: int = 0, vary: bool = False) -> list[str]:
    rng = random.Random(seed)
    V = min(tok.vocab_size - 20, 150000)
    out = []
    for i in range(n):
        L = length - (rng.randrange(length // 2) if vary else 0)
        out.append(" ".join(f"t{rng.randrange(2, V)}" for _ in range(L)))
    return out


def param_bytes(model) -> int:
    seen, tot = set(), 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        tot += p.numel() * p.element_size()
    return tot


def decode_weight_bytes(model) -> int:
    """Bytes a decode step reads from weights: all of them, except an untied input embedding (only
    B rows of it are read)."""
    tot = param_bytes(model)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if emb.data_ptr() != head.data_ptr():
        tot -= emb.numel() * emb.element_size()
    return tot


# ---------------------------------------------------------------------------- ceilings
def ceilings(smoke: bool) -> dict:
    if smoke or not torch.cuda.is_available():
        return {"copy_TBps": 1e-3, "read_TBps": 1e-3, "bf16_TFLOPs": 1e-3}
    x = torch.empty(2 * 1024 ** 3, dtype=torch.uint8, device="cuda")  # 2 GiB
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ts = []
    for _ in range(10):
        ev[0].record(); y.copy_(x); ev[1].record(); sync()
        ts.append(ev[0].elapsed_time(ev[1]) / 1e3)
    copy = 2 * x.numel() / statistics.median(ts) / 1e12  # read + written
    xf = x.view(torch.float32)
    ts = []
    for _ in range(10):
        ev[0].record(); xf.sum(); ev[1].record(); sync()
        ts.append(ev[0].elapsed_time(ev[1]) / 1e3)
    read = x.numel() / statistics.median(ts) / 1e12
    del x, y, xf
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(10):
        ev[0].record(); a @ b; ev[1].record(); sync()
        ts.append(ev[0].elapsed_time(ev[1]) / 1e3)
    mm = 2 * 8192 ** 3 / statistics.median(ts) / 1e12
    return {"copy_TBps": copy, "read_TBps": read, "bf16_TFLOPs": mm}


# ---------------------------------------------------------------------------- correctness on the device
def check_equal(smoke: bool, dev):
    name = "qwen3-0.6b"
    for dtype in (torch.float32, torch.bfloat16):
        model, tok = build_model(name, dtype, dev, smoke, layers=None if smoke else 4)
        prompts = prompts_of(tok, 8, 64 if not smoke else 16, seed=1, vary=True)
        n_new = 48 if not smoke else 12
        for greedy in (True, False):
            ref = hf_generate(model, tok, prompts, 1, n_new, greedy=greedy, temperature=1.0, seeds=list(range(8)))
            comps = (False, True) if dev.type == "cuda" else (False,)
            for comp in comps:
                got = fastgen.generate(model, tok, prompts, 1, n_new, greedy=greedy, temperature=1.0,
                                       seeds=list(range(8)), compile=comp)
                same = [a == b for a, b in zip(ref.completion_ids, got.completion_ids)]
                first = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                         for a, b in zip(ref.completion_ids, got.completion_ids)]
                record("check", f"fast vs hf {str(dtype)[6:]} {'greedy' if greedy else 'sampled'}"
                       f"{' compiled' if comp else ''} (4-layer 0.6B shape, 8 left-padded prompts, {n_new} tokens)",
                       rows_equal=f"{sum(same)}/{len(same)}", first_divergence=min(first))
        del model
    # compiled sampler against eager, bit for bit, on random logits
    if dev.type == "cuda":
        V = 151936
        logits = torch.randn(64, V, device=dev) * 3
        seeds = torch.randint(0, 2 ** 31 - 1, (64,), device=dev)
        pos = torch.tensor([7], device=dev)
        _, _, cs = fastgen.kernels(True)
        for tp in (1.0, 0.9):
            a = fastgen.sample_t(logits, seeds, pos, 0.7, tp)
            b = cs(logits, seeds, pos, 0.7, tp)
            from projected_grpo.sampling import sample
            c = sample(logits, seeds, 7, 0.7, tp)
            record("check", f"sampler top_p={tp}: compiled == eager == sampling.sample",
                   equal=bool(torch.equal(a, b) and torch.equal(a, c)))


# ---------------------------------------------------------------------------- decode throughput
def hf_stock_ms_per_step(model, tok, prompts, n1: int, n2: int) -> float:
    """Stock HF generate (sampling, bf16): ms per decode step from two lengths (prefill cancels)."""
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)

    def run(n):
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(**enc, do_sample=True, top_k=0, temperature=1.0, max_new_tokens=n, min_new_tokens=n,
                           pad_token_id=tok.pad_token_id)
        sync()
        return time.perf_counter() - t

    run(2)
    return (run(n2) - run(n1)) / (n2 - n1) * 1e3


def decode_bench(smoke: bool, dev, ceil: dict, shapes, batches, n_new: int, prompt_len: int, variants: bool):
    for name in shapes:
        with section(f"decode {name}"):
            model, tok = build_model(name, torch.bfloat16, dev, smoke)
            wbytes = decode_weight_bytes(model)
            kvt = fastgen.kv_bytes_per_token(model)
            for B in batches:
                prompts = prompts_of(tok, B, prompt_len, seed=B)
                avg_ctx = prompt_len + n_new / 2
                floor_ms = (wbytes + kvt * B * avg_ctx) / (ceil["copy_TBps"] * 1e12) * 1e3
                runs = [("fast", dict(compile=None, attn="bmm"))]
                if variants and B == batches[-1] and name == shapes[0]:
                    runs += [("fast graphs, no compile", dict(compile=False, attn="bmm")),
                             ("fast graphs, no compile, sdpa attention", dict(compile=False, attn="sdpa")),
                             ("fast no graphs, no compile", dict(compile=False, attn="bmm", cuda_graphs=False))]
                for label, kw in runs:
                    with section(f"{label} {name} b{B}"):
                        n = n_new if "no graphs" not in label else min(n_new, 64)
                        fastgen.generate(model, tok, prompts, 1, 16, seeds=list(range(B)), eos_token_id=-1, **kw)
                        st = fastgen.GenStats()
                        sync()
                        t = time.perf_counter()
                        r = fastgen.generate(model, tok, prompts, 1, n, seeds=list(range(B)), eos_token_id=-1,
                                             stats=st, **kw)
                        sync()
                        wall = time.perf_counter() - t
                        ms = st.decode_s / max(1, st.steps) * 1e3
                        fl = (wbytes + kvt * B * (prompt_len + n / 2)) / (ceil["copy_TBps"] * 1e12) * 1e3
                        record("decode", f"{label} {name} b{B}", new_tokens=n, ms_per_step=ms,
                               tok_per_s=r.n_tokens / (st.prefill_s + st.decode_s),
                               tok_per_s_incl_capture=r.n_tokens / wall, prefill_s=st.prefill_s,
                               capture_s=st.capture_s, graphs=st.graphs, floor_ms=fl, x_floor=ms / fl)
                with section(f"hf {name} b{B}"):
                    n1, n2 = (8, 40) if not smoke else (2, 6)
                    ms = hf_stock_ms_per_step(model, tok, prompts, n1, n2)
                    record("decode", f"hf generate {name} b{B}", new_tokens=f"{n1}->{n2}", ms_per_step=ms,
                           tok_per_s=B * 1e3 / ms, floor_ms=floor_ms, x_floor=ms / floor_ms)
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def extra_bench(smoke: bool, dev, ceil: dict, name: str, B: int, n_new: int, prompt_len: int):
    """Variants on one shape: top-p sampling, KV bucket 32, the project's own ``hf`` backend."""
    model, tok = build_model(name, torch.bfloat16, dev, smoke)
    wbytes, kvt = decode_weight_bytes(model), fastgen.kv_bytes_per_token(model)
    prompts = prompts_of(tok, B, prompt_len, seed=B)
    fl = (wbytes + kvt * B * (prompt_len + n_new / 2)) / (ceil["copy_TBps"] * 1e12) * 1e3
    for label, kw in (("fast (again)", {}), ("fast top_p=0.95", dict(top_p=0.95)), ("fast bucket 32", dict(bucket=32)),
                      ("fast bucket 128", dict(bucket=128))):
        with section(label):
            fastgen.generate(model, tok, prompts, 1, 16, seeds=list(range(B)), eos_token_id=-1, **kw)
            st = fastgen.GenStats()
            r = fastgen.generate(model, tok, prompts, 1, n_new, seeds=list(range(B)), eos_token_id=-1, stats=st, **kw)
            ms = st.decode_s / max(1, st.steps) * 1e3
            record("decode", f"{label} {name} b{B}", new_tokens=n_new, ms_per_step=ms,
                   tok_per_s=r.n_tokens / (st.prefill_s + st.decode_s), capture_s=st.capture_s, graphs=st.graphs,
                   floor_ms=fl, x_floor=ms / fl)
    with section("project hf backend"):
        Bh = min(64, len(prompts))
        ph = prompts[:Bh]
        times = []
        for n in (2, 8, 40):
            sync()
            t = time.perf_counter()
            hf_generate(model, tok, ph, 1, n, seeds=list(range(Bh)), batch_size=Bh)
            sync()
            times.append(time.perf_counter() - t)
        ms = (times[2] - times[1]) / 32 * 1e3  # a random model almost never samples EOS
        record("decode", f"project hf backend (generate + GumbelProcessor) {name} b{Bh}", new_tokens="8->40",
               ms_per_step=ms, tok_per_s=Bh * 1e3 / ms)


# ---------------------------------------------------------------------------- our GRPO step
def gpu_svd_factors(weight, rank, use_cache=True):
    """Randomised top-``rank`` SVD on the weight's device (benchmark only: adapter.svd_factors runs a
    full fp32 SVD on the CPU, minutes for a 1.7B model's 196 Linears; timing does not depend on it)."""
    w = weight.detach().float()
    q = min(rank + 8, *w.shape)
    U, S, V = torch.svd_lowrank(w, q=q, niter=2)
    return U[:, :rank].contiguous().cpu(), S[:rank].contiguous().cpu(), V[:, :rank].T.contiguous().cpu(), "bench"


def step_flops(model, batch_shapes, comp_tokens: int, rank: int, ckpt: bool) -> float:
    """Model FLOPs of forward + backward (input grads only: base weights are frozen) over padded
    micro-batches, knob branches included; recomputation not counted except the chunked LM head's."""
    cfg = model.config
    H, I, nl = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", H // cfg.num_attention_heads)
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    lin = [(H, nh * hd), (H, nkv * hd), (H, nkv * hd), (nh * hd, H), (H, I), (H, I), (I, H)]
    p_lin = nl * sum(a * b for a, b in lin)
    p_knob = nl * sum(rank * (a + b) for a, b in lin)
    tot = 0.0
    for B, L in batch_shapes:
        tok = B * L
        tot += 4 * (p_lin + p_knob) * tok  # fwd 2·P·tok, bwd (input grads) 2·P·tok
        tot += 3 * 4 * nl * B * L * L * nh * hd  # attention: fwd 4·L²·nh·hd per layer-row, bwd ~2×
    tot += 6 * cfg.vocab_size * H * comp_tokens  # LM head: fwd, recompute in bwd, input grad
    return tot


def our_step_bench(smoke: bool, dev, ceil: dict, name: str, prompts_n: int, G: int, T: int, prompt_len: int,
                   rank: int, micro: int, ckpt: bool, repeats: int, label: str):
    from projected_grpo import adapter as adapter_mod
    from projected_grpo.adapter import SVDAdapter
    from projected_grpo.config import DEFAULT_TARGETS
    from projected_grpo.grpo import completion_logprobs, grpo_loss, make_batch
    from projected_grpo.projection import Projector

    model, tok = build_model(name, torch.bfloat16 if dev.type == "cuda" else torch.float32, dev, smoke)
    orig = adapter_mod.svd_factors
    adapter_mod.svd_factors = gpu_svd_factors
    try:
        t = time.perf_counter()
        adapter = SVDAdapter.attach(model, DEFAULT_TARGETS, rank=rank, use_cache=False)
        sync()
        attach_s = time.perf_counter() - t
    finally:
        adapter_mod.svd_factors = orig
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    g = torch.Generator().manual_seed(0)
    basis = {}
    for n, m in adapter.modules.items():
        q, _ = torch.linalg.qr(torch.randn(m.rank, 4, generator=g))
        basis[n] = q.T.contiguous()
    projector = Projector(adapter, basis, "erase")
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-3)
    prompts = prompts_of(tok, prompts_n, prompt_len, seed=3)
    grader, problems, real = None, None, None
    try:
        from projected_grpo.env.grader import GraderPool
        from projected_grpo.env.loopholes import clean_completion, hack_completion, wrong_completion
        from projected_grpo.env.problems import load_problems

        problems = load_problems("builtin")[:prompts_n]
        grader = GraderPool(workers=16)
        mk = (clean_completion, lambda p, v: hack_completion(p, p.mode, v), wrong_completion)
        real = [(problems[i // G % len(problems)], mk[i % 3](problems[i // G % len(problems)], i))
                for i in range(prompts_n * G)]
    except Exception as e:  # grading is timed as N/A, the step goes on
        NOTES.append(f"grader unavailable: {type(e).__name__}: {e}")
        log("grader unavailable:", repr(e))
    rows_out = []
    try:
        for it in range(repeats + 1):
            torch.cuda.reset_peak_memory_stats() if dev.type == "cuda" else None
            sync()
            t0 = time.perf_counter()
            st = fastgen.GenStats()
            with adapter.merged():
                roll = fastgen.generate(model, tok, prompts, G, T, temperature=1.0,
                                        seeds=[it * 100000 + i for i in range(prompts_n * G)], stats=st)
            sync()
            t1 = time.perf_counter()
            grade_s = real_grade_s = None
            if grader is not None:
                grader.grade_many([(problems[i // G % len(problems)], roll.texts[i]) for i in range(len(roll.texts))])
                grade_s = time.perf_counter() - t1
                t = time.perf_counter()
                grader.grade_many(real)
                real_grade_s = time.perf_counter() - t
            t2 = time.perf_counter()
            rows = list(zip(roll.prompt_ids, roll.completion_ids))
            adv = torch.randn(len(rows), generator=g)
            shapes, n_comp = [], 0
            for mb in range(0, len(rows), micro):
                ids = list(range(mb, min(len(rows), mb + micro)))
                batch = make_batch([rows[i] for i in ids], tok.pad_token_id).to(dev)
                shapes.append(tuple(batch.input_ids.shape))
                n_comp += int(batch.completion_mask.sum())
                with adapter.capture_row_grads():
                    logp = completion_logprobs(model, batch)
                    loss, _ = grpo_loss(logp, logp.detach(), None, adv[ids].to(dev), batch.completion_mask, 0.2, 0.0,
                                        "fixed", T)
                    (loss * len(ids) / len(rows)).backward()
            sync()
            t3 = time.perf_counter()
            projector.apply(modify=True)
            params = [p for p in adapter.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            t4 = time.perf_counter()
            peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else float("nan")
            fl = step_flops(model, shapes, n_comp, rank, ckpt)
            step_s = t4 - t0 - (real_grade_s or 0.0)
            row = dict(step_s=step_s, gen_s=t1 - t0, gen_capture_s=st.capture_s, grade_s=grade_s,
                       grade_real_code_s=real_grade_s, fwd_bwd_s=t3 - t2, proj_opt_s=t4 - t3,
                       completion_tokens=roll.n_tokens, tok_per_s=roll.n_tokens / step_s,
                       gen_tok_per_s=roll.n_tokens / (t1 - t0), peak_GiB=peak,
                       train_TFLOPs=fl / (t3 - t2) / 1e12, mfu=fl / (t3 - t2) / 1e12 / ceil["bf16_TFLOPs"])
            log(f"  {label} iter {it}: " + ", ".join(f"{k}={_f(v)}" for k, v in row.items()))
            if it > 0 or repeats == 0:
                rows_out.append(row)
    finally:
        if grader is not None:
            grader.close()
    med = {k: (statistics.median([r[k] for r in rows_out]) if rows_out[0][k] is not None else None)
           for k in rows_out[0]}
    record("step", f"{label}: ours, {name}, {prompts_n}x{G}, {T} tok, rank {rank}, micro {micro}"
           f"{', grad ckpt' if ckpt else ''}", attach_s=attach_s, **med)
    del model, adapter, opt
    return med


# ---------------------------------------------------------------------------- TRL's GRPOTrainer
def trl_bench(smoke: bool, dev, name: str, prompts_n: int, G: int, T: int, prompt_len: int, steps: int):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    import trl

    model, tok = build_model(name, torch.bfloat16 if dev.type == "cuda" else torch.float32, dev, smoke)
    model.requires_grad_(True)
    prompts = prompts_of(tok, prompts_n, prompt_len, seed=3)
    from datasets.table import InMemoryTable

    # an explicit fingerprint: datasets' own hashing of the table state fails with some dill/pyarrow pairs
    ds = Dataset(InMemoryTable.from_pydict({"prompt": prompts * (steps + 2)}), fingerprint="bench-prompts")

    def reward(completions, **kw):
        return [random.random() for _ in completions]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            times.append(time.perf_counter() - self.t)
            log(f"  trl step {len(times)}: {times[-1]:.2f}s")

    micro = 16 if not smoke else 4
    args = GRPOConfig(output_dir="/tmp/trl_bench", per_device_train_batch_size=micro,
                      gradient_accumulation_steps=prompts_n * G // micro, num_generations=G,
                      max_completion_length=T, beta=0.0, max_steps=steps, logging_steps=1, report_to="none",
                      save_strategy="no", learning_rate=1e-5, temperature=1.0, top_p=1.0,
                      bf16=dev.type == "cuda", use_cpu=dev.type != "cuda", seed=0)
    peft = LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"], task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok,
                          peft_config=peft, callbacks=[Timer()])
    torch.cuda.reset_peak_memory_stats() if dev.type == "cuda" else None
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else float("nan")
    tail = times[1:] if len(times) > 1 else times
    step_s = statistics.median(tail)
    n_tok = prompts_n * G * T  # upper bound: a random model almost never samples EOS
    record("trl", f"TRL {trl.__version__} GRPOTrainer, {name}, LoRA r32, beta 0, {prompts_n}x{G}, {T} tok, "
           f"HF generate, grad ckpt (TRL default)", step_s=step_s, steps=len(times),
           all_steps=[round(x, 2) for x in times],
           tok_per_s=n_tok / step_s, peak_GiB=peak)
    return step_s


# ---------------------------------------------------------------------------- output
def versions() -> str:
    import transformers

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return f"{gpu}; torch {torch.__version__}, transformers {transformers.__version__}"


def write(md: str | None, js: str | None, header: str):
    log("\n" + "=" * 100)
    log(header)
    lines = [f"| date | what | numbers |", "|---|---|---|"]
    for r in RESULTS:
        nums = ", ".join(f"{k} {_f(v)}" for k, v in r.items() if k not in ("section", "what") and v is not None)
        lines.append(f"| {DATE} | [{r['section']}] {r['what']} | {nums} |")
    table = "\n".join(lines)
    log(table)
    for n in NOTES:
        log("note:", n)
    if md:
        Path(md).write_text(header + "\n\n" + table + "\n" + "".join(f"\nNote: {n}\n" for n in NOTES))
    if js:
        Path(js).write_text(json.dumps({"header": header, "rows": RESULTS, "notes": NOTES}, indent=1, default=str))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: exercise every code path")
    ap.add_argument("--section", default="main",
                    choices=["main", "trl", "check", "decode", "step", "big", "extra", "second"])
    ap.add_argument("--md")
    ap.add_argument("--json")
    ap.add_argument("--shapes", default="qwen3-0.6b,qwen3-1.7b,qwen3-4b")
    a = ap.parse_args()
    smoke = a.cpu_smoke
    dev = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    shapes = a.shapes.split(",") if not smoke else ["smoke"]
    P, G, PL = (16, 8, 128) if not smoke else (4, 2, 16)
    header = f"bench_gpu.py --section {a.section}: {versions()}; random-weight Qwen3 shapes, bf16, 128-token prompts"
    log(header)
    ceil = {"copy_TBps": 4.3, "read_TBps": 4.3, "bf16_TFLOPs": 790.0}
    with section("ceilings"):
        ceil = ceilings(smoke)
        record("ceilings", "device-to-device copy (R+W) / read (sum) / bf16 8192^3 matmul", **ceil)
    if a.section in ("main", "check", "second"):
        with section("check"):
            check_equal(smoke, dev)
    if a.section in ("main", "decode"):
        decode_bench(smoke, dev, ceil, shapes, [64, 256] if not smoke else [4, 8], 512 if not smoke else 24,
                     PL, variants=True)
    if a.section in ("main", "step"):
        s17 = shapes[1] if len(shapes) > 1 else shapes[0]
        for T in ((256, 512) if not smoke else (12,)):
            with section(f"our step {s17} T{T}"):
                our_step_bench(smoke, dev, ceil, s17, P, G, T, PL, rank=256 if not smoke else 8, micro=16,
                               ckpt=False, repeats=1, label=f"step T{T}")
    if a.section in ("main", "big"):
        with section("our step 4B T1024 (no-OOM check)"):
            our_step_bench(smoke, dev, ceil, shapes[-1], P, G, 1024 if not smoke else 16, PL,
                           rank=256 if not smoke else 8, micro=16, ckpt=True, repeats=0, label="4B T1024")
    if a.section in ("extra", "second"):
        with section("extra"):
            extra_bench(smoke, dev, ceil, shapes[0], 256 if not smoke else 8, 512 if not smoke else 24, PL)
    if a.section == "trl":
        s17 = shapes[1] if len(shapes) > 1 else shapes[0]
        with section("trl"):
            trl_bench(smoke, dev, s17, P, G, 256 if not smoke else 8, PL, steps=3 if not smoke else 2)
    write(a.md, a.json, header)


if __name__ == "__main__":
    main()

"""GPU benchmark of the trainer itself: `setup`, `basis_for`, `train_step` on random-weight model folders,
side by side with TRL's GRPOTrainer at the same shape; plus decode rows, SVD drivers, `pytest -m gpu`.

One call on the GPU machine prints one table and writes it as markdown (``--md``) and JSON (``--json``):

  python3 benchmarks/bench_gpu.py --budget-s 330 --md $OUT/perf.md --json $OUT/bench.json --junit $OUT/junit.xml
  python3 benchmarks/bench_gpu.py --section decode      # decode rows: fast vs HF generate, 0.6B/1.7B/4B, b64/b256
  python3 benchmarks/bench_gpu.py --section check       # fast backend == HF on the device (fp32 / bf16)
  python3 benchmarks/bench_gpu.py --section svd         # SVD drivers, adapter.svd_factors per shape, pytest -m gpu
  python3 benchmarks/bench_gpu.py --section profile     # torch.profiler over one train.backward, micro-batch 32/64, --deterministic
  python3 benchmarks/bench_gpu.py --section table --shapes qwen3-0.6b,qwen3-1.7b   # ours (fast preset) vs TRL per shape
  python3 benchmarks/bench_gpu.py --section full --shapes qwen3-4b --det --pytest  # --preset full at 4B x 1024 + projection
  python3 benchmarks/bench_gpu.py --section folders     # only build the model folders (for projected-grpo train)
  .venv/bin/python benchmarks/bench_gpu.py --cpu-smoke  # every code path, tiny shapes, CPU

Trainer rows: a local model folder per Qwen3 shape (benchmarks/configs/*.json, random bf16 weights, a
word-level tokenizer with a ChatML template whose unknown-word id is an ordinary id), `--preset fast` with
HumanEval prompts, 16 prompts x group 8, every row sampled by the policy (mix ratio 0), beta 0, erase. The
sandbox grades every completion for real; the reward is then replaced by a score of the text with variance
(a random model writes no code). Timers wrap the trainer's own functions (`backward`, `Projector.apply` /
`cin`, `AdamW.step`), so a change to the trainer shows up here. Sections run in priority order and each is
skipped when ``--budget-s`` would be exceeded; a failing section is recorded and the run goes on.
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
from projected_grpo.rollout import generate as rollout_generate  # noqa: E402

CONFIGS = ROOT / "benchmarks" / "configs"
DATE = time.strftime("%Y-%m-%d")
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
            ref = rollout_generate(model, tok, prompts, 1, n_new, greedy=greedy, temperature=1.0, seeds=list(range(8)))
            comps = (False, True) if dev.type == "cuda" else (False,)
            for comp in comps:
                got = rollout_generate(model, tok, prompts, 1, n_new, greedy=greedy, temperature=1.0,
                                       seeds=list(range(8)), compile=comp, backend="fast")
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
        *_, cs = fastgen.kernels(True)
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
                runs = [("fast bmm attention", dict(compile=None, attn="bmm")),
                        ("fast (triton split-KV attention, the default)", dict(compile=None, attn=None)),
                        ("fast triton, greedy (no sampler)", dict(compile=None, attn=None, greedy=True))]
                if variants and B == batches[-1] and name == shapes[0]:
                    runs += [("fast graphs, no compile", dict(compile=False, attn="bmm")),
                             ("fast graphs, no compile, sdpa attention", dict(compile=False, attn="sdpa")),
                             ("fast no graphs, no compile", dict(compile=False, attn="bmm", cuda_graphs=False))]
                for label, kw in runs:
                    with section(f"{label} {name} b{B}"):
                        n = n_new if "no graphs" not in label else min(n_new, 64)
                        rollout_generate(model, tok, prompts, 1, 16, seeds=list(range(B)), eos_token_id=-1, **kw, backend="fast")
                        st = fastgen.GenStats()
                        sync()
                        t = time.perf_counter()
                        r = rollout_generate(model, tok, prompts, 1, n, seeds=list(range(B)), eos_token_id=-1,
                                             stats=st, **kw, backend="fast")
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
            rollout_generate(model, tok, prompts, 1, 16, seeds=list(range(B)), eos_token_id=-1, **kw, backend="fast")
            st = fastgen.GenStats()
            r = rollout_generate(model, tok, prompts, 1, n_new, seeds=list(range(B)), eos_token_id=-1, stats=st, **kw, backend="fast")
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
            rollout_generate(model, tok, ph, 1, n, seeds=list(range(Bh)), batch_size=Bh)
            sync()
            times.append(time.perf_counter() - t)
        ms = (times[2] - times[1]) / 32 * 1e3  # a random model almost never samples EOS
        record("decode", f"project hf backend (generate + GumbelProcessor) {name} b{Bh}", new_tokens="8->40",
               ms_per_step=ms, tok_per_s=Bh * 1e3 / ms)


# ---------------------------------------------------------------------------- random-weight model folders
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def word_tokenizer(vocab: int, eos: int, pad: int, start: int, unk: int = 7):
    """Word-level tokenizer over ``t0 … t{vocab-1}`` with ChatML specials, for a random-weight model
    folder. Unknown words (all real prompt text) map to ``t{unk}``, an ordinary id: were it the pad id,
    every prompt and completion token would be padding and the pair gradients go non-finite."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = {f"t{i}": i for i in range(vocab)}
    for i in (eos, pad, start):
        names.pop(f"t{i}")
    names["<|im_end|>"], names["<|endoftext|>"], names["<|im_start|>"] = eos, pad, start
    tk = Tokenizer(models.WordLevel(vocab=names, unk_token=f"t{unk}"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  unk_token=f"t{unk}", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    return tok


def model_folder(name: str, root: Path, smoke: bool) -> Path:
    """A local model folder (bf16 safetensors + tokenizer with a chat template) at a Qwen3 shape,
    random weights (seed 0), for ``projected-grpo train --model FOLDER``."""
    from transformers import AutoModelForCausalLM

    path = root / name
    if (path / "tokenizer_config.json").exists():
        return path
    cfg = model_config(name, smoke)
    start = 502 if smoke else 151644
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(path)
    del model
    tok = word_tokenizer(cfg.vocab_size, cfg.eos_token_id, cfg.pad_token_id, start)
    assert tok.unk_token_id != tok.pad_token_id
    tok.save_pretrained(path)
    return path


def text_score(text: str) -> float:
    """A reward with variance for a random model's text: the fraction of words ending in an even digit."""
    words = text.split()
    return sum(w[-1] in "02468" for w in words) / max(1, len(words))


class TextRewardGrader:
    """The trainer's GraderPool (real sandbox grading, timed by the trainer as ``grade_time_s``), with
    each reward replaced by ``text_score``: random-weight models write no code, so every real reward
    is equal and every group has zero variance (the backward would be skipped)."""

    def __init__(self, grader):
        self.grader = grader

    def grade_many(self, items):
        import dataclasses

        out = self.grader.grade_many(items)
        return [dataclasses.replace(g, reward=text_score(it[1])) for g, it in zip(out, items)]

    def grade(self, problem, completion, *rest):
        return self.grade_many([(problem, completion, *rest)])[0]

    def close(self):
        self.grader.close()


# ---------------------------------------------------------------------------- timers around the trainer's own functions
TIMES: dict[str, float] = {}
SHAPES: list[tuple] = []  # one (U prompts, Lp, B rows, Lc, completion tokens, with grad) per micro-batch forward


def timed(key: str, fn):
    def wrapper(*a, **kw):
        sync()
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            sync()
            TIMES[key] = TIMES.get(key, 0.0) + time.perf_counter() - t
    wrapper.__wrapped__ = fn
    return wrapper


@contextlib.contextmanager
def patched(obj, name: str, new):
    old = getattr(obj, name)
    setattr(obj, name, new)
    try:
        yield
    finally:
        setattr(obj, name, old)


SVD_MEMO: dict[int, tuple] = {}


def memo_svd(orig):
    """``adapter.svd_factors`` through the real function (hash, GPU SVD, cache write), computed once per
    weight at full rank and truncated per rank: the rank sweep re-attaches without re-factoring."""
    def svd(weight, rank, use_cache=True):
        full = SVD_MEMO.get(id(weight))
        if full is None:
            full = SVD_MEMO[id(weight)] = timed("svd_s", orig)(weight, None, use_cache)
        U, S, Vh, key = full
        r = S.numel() if rank is None else min(rank, S.numel())
        return U[:, :r].contiguous(), S[:r].contiguous(), Vh[:r].contiguous(), f"{key}-r{r}"
    return svd


def linear_flops(adapter, cfg_model, rank_note: str = "") -> tuple[float, float]:
    """(base Linear params, knob-branch params r·(in+out)) over the adapted Linears."""
    p_lin = p_knob = 0
    for m in adapter.modules.values():
        o, i = m.base.weight.shape
        p_lin += o * i
        p_knob += m.rank * (o + i)
    return float(p_lin), float(p_knob)


def train_flops(s, shapes: list[tuple], merged: bool = False) -> float:
    """FLOPs the step's forward + input-gradient backward executes (base weights frozen): every adapted
    Linear with its knob branch (branch: 2·(W + r·(in+out)) forward and again backward per token; merged:
    2·W + 2·r·in forward, 2·W + 2·r·out backward), attention (fwd 4·q·k·heads·head_dim per layer, bwd 2×),
    and the LM head on completion tokens ×3 (forward, checkpointed recompute, backward). A no-grad pass (the
    β > 0 reference: knobs zeroed, the base model) counts its forward only: 2·W, attention, 2·LM head on its
    completion tokens. Padded shapes count, except in the LM head (it runs on real completion tokens only).
    (A no-grad pass with live knobs, π_old of --ppo-epochs on the branch, also runs the knob branch: not counted.)"""
    cfg = s.model.config
    nl, nh = cfg.num_hidden_layers, cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    p_lin, p_knob = linear_flops(s.adapter, cfg)
    head = 2 * cfg.vocab_size * cfg.hidden_size
    tot = 0.0
    for U, Lp, B, Lc, n_comp, grad in shapes:
        tok = U * Lp + B * Lc
        attn = 4 * nl * nh * hd * (U * Lp * Lp + B * Lc * (Lp + Lc))
        if not grad:
            tot += 2 * p_lin * tok + attn + head * n_comp
            continue
        tot += (4 * p_lin + 2 * p_knob if merged else 4 * (p_lin + p_knob)) * tok + 3 * attn + 3 * head * n_comp
    return tot


class Trainer:
    """The trainer's own ``setup`` / ``basis_for`` / ``train_step`` on a model folder, with timers."""

    def __init__(self, folder: Path, smoke: bool, T: int, rank, P: int, G: int, micro: int, ckpt: bool = False,
                 preset: str = "fast", **over):
        import dataclasses

        from projected_grpo import adapter as adapter_mod
        from projected_grpo import train as tr
        from projected_grpo.config import PRESETS

        self.tr, self.adapter_mod = tr, adapter_mod
        kw = dict(model=str(folder), dataset="humaneval", prompts_per_step=P, group=G, mix_ratio=0.0,
                  max_new_tokens=T, beta=0.0, intervention="erase", adapter_rank=rank, micro_batch=micro,
                  grad_checkpointing=ckpt, seed=0, sandbox_workers=min(16, os.cpu_count() or 1), log_samples=0)
        if smoke:
            kw.update(vhack_pairs=4, eval_problems=4)
        kw.update(over)
        self.cfg = dataclasses.replace(PRESETS[preset], **kw).validate()
        self.device, self.dtype = tr.resolve_device(self.cfg)
        TIMES.clear()
        t = time.perf_counter()
        with patched(tr, "load_model", timed("load_s", tr.load_model)), \
                patched(adapter_mod, "svd_factors", memo_svd(adapter_mod.svd_factors)):
            self.s = tr.setup(self.cfg, self.device, self.dtype)
        sync()
        self.setup_s = time.perf_counter() - t
        self.s.grader = TextRewardGrader(self.s.grader)
        self.s.run_path = Path(os.environ.get("BENCH_TMP", "/tmp")) / "bench-run"
        self.s.run_path.mkdir(parents=True, exist_ok=True)
        self.load_s, self.svd_s = TIMES.get("load_s", 0.0), TIMES.get("svd_s", 0.0)
        self.new_basis()

    def new_basis(self):
        sync()
        t = time.perf_counter()
        self.s.basis = self.basis = self.tr.basis_for(self.cfg, self.s)
        sync()
        self.basis_s = time.perf_counter() - t
        self.reset()

    def reset(self):
        """Knobs to zero, a fresh Updater (projection, AdamW, schedule): the state of a new run's step 0."""
        with torch.no_grad():
            for p in self.s.adapter.parameters():
                p.zero_()
        self.upd = self.tr.Updater.build(self.cfg, self.s.adapter, self.basis.V)

    def rerank(self, rank):
        """Re-attach the adapter at another rank on the same loaded model (SVD from the memo)."""
        import dataclasses

        from projected_grpo.adapter import SVDAdapter

        self.s.adapter._swap_plain(plain=True)
        self.cfg = dataclasses.replace(self.cfg, adapter_rank=rank)
        t = time.perf_counter()
        with patched(self.adapter_mod, "svd_factors", memo_svd(self.adapter_mod.svd_factors)):
            self.s.adapter = SVDAdapter.attach(self.s.model, self.cfg.target_modules, self.cfg.layers, rank)
        self.attach_s = time.perf_counter() - t
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.new_basis()

    def with_tokens(self, T: int):
        import dataclasses

        self.cfg = dataclasses.replace(self.cfg, max_new_tokens=T)
        self.reset()

    def step(self, step: int) -> dict:
        tr = self.tr
        TIMES.clear()
        SHAPES.clear()

        def n_real(pairs):  # completion tokens, teacher rows included: what the LM head runs on
            return sum(len(c) for _, c in pairs)

        def shapes(s, prompts, pairs, one_pass):
            if one_pass:
                L = max(len(prompts[pi]) + len(c) for pi, c in pairs)
                SHAPES.append((0, 0, len(pairs), L, n_real(pairs), torch.is_grad_enabled()))
            else:
                SHAPES.append((len(prompts), max(map(len, prompts)), len(pairs), max(len(c) for _, c in pairs),
                               n_real(pairs), torch.is_grad_enabled()))
            return orig_lp(s, prompts, pairs, one_pass)

        orig_lp = tr._logprobs
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        p, upd = self.upd.projector, self.upd
        t0 = time.perf_counter()
        with patched(tr, "backward", timed("fwd_bwd_s", tr.backward)), patched(tr, "_logprobs", shapes), \
                patched(p, "apply", timed("proj_s", p.apply)), patched(p, "cin", timed("proj_s", p.cin)), \
                patched(upd.opt, "step", timed("adamw_s", upd.opt.step)):
            parts, diag = tr.train_step(self.cfg, self.s, upd, step)
            row = tr.metrics_row(self.cfg, self.s, step, parts, diag, upd.lr, t0)
        n_tok = round(row["tokens_per_s"] * row["gen_time_s"]) if row.get("tokens_per_s") else 0
        fb = TIMES.get("fwd_bwd_s", float("nan"))
        fl = train_flops(self.s, SHAPES, merged=self.cfg.knob_forward == "merged")
        out = dict(step_s=row["step_time_s"], gen_s=row["gen_time_s"], grade_s=row["grade_time_s"], fwd_bwd_s=fb,
                   proj_s=TIMES.get("proj_s", 0.0), adamw_s=TIMES.get("adamw_s", 0.0),
                   completion_tokens=n_tok, tok_per_s=n_tok / row["step_time_s"],
                   gen_tok_per_s=n_tok / row["gen_time_s"],
                   peak_GiB=torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None,
                   train_TFLOPs=fl / fb / 1e12, frac_zero_var=row["frac_zero_var"],
                   capture_failed=row.get("rollout_capture_failed"))
        out["other_s"] = out["step_s"] - out["gen_s"] - out["grade_s"] - fb - out["proj_s"] - out["adamw_s"]
        self.last_row = row
        return out


def median_row(rows: list[dict]) -> dict:
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
        out[k] = statistics.median(vals) if vals else rows[0][k]
    return out


METRIC_KEYS = ("reward", "loss", "gn", "cin_s", "cin", "cout", "cout_update", "dS", "frac_zero_var")


def ours(tr: Trainer, ceil: dict, label: str, steps: int, first_step: int = 0) -> list[dict]:
    """``steps`` train_steps; the first of a new shape is reported apart (compile / graph capture)."""
    rows, metrics = [], []
    for i in range(steps):
        r = tr.step(first_step + i)
        r["mfu"] = r["train_TFLOPs"] / ceil["bf16_TFLOPs"]
        log(f"  {label} step {i}: " + ", ".join(f"{k}={_f(v)}" for k, v in r.items()))
        rows.append(r)
        metrics.append({k: tr.last_row.get(k) for k in METRIC_KEYS})
    med = median_row(rows[1:] if len(rows) > 1 else rows)
    record("ours", label, first_step_s=rows[0]["step_s"], **med, steps=len(rows))
    return metrics


def trainer_bench(smoke: bool, ceil: dict, root: Path, name: str, P: int, G: int, Ts, rank, ranks, det: bool,
                  evaluate: bool, budget):
    folder = model_folder(name, root, smoke)
    tr = Trainer(folder, smoke, Ts[0], rank, P, G, micro=16)
    record("setup", f"{name}: setup() + basis_for() on {tr.device}, rank {rank}",
           setup_s=tr.setup_s, load_s=tr.load_s, svd_all_linears_s=tr.svd_s, n_linears=len(tr.s.adapter.modules),
           basis_s=tr.basis_s, vhack_pairs=tr.cfg.vhack_pairs, basis_axes=tr.basis.n_axes)
    first = ours(tr, ceil, f"{name} T{Ts[0]} rank {rank}", 3)
    if det:  # same config and seed from step 0 again, in the same process
        tr.reset()
        again = ours(tr, ceil, f"{name} T{Ts[0]} rank {rank} (rerun of steps 0-1 from a reset)", 2)
        diffs = {k: max(abs((a[k] or 0.0) - (b[k] or 0.0)) for a, b in zip(first, again)) for k in METRIC_KEYS}
        record("determinism", f"{name}: steps 0-1 twice from the same state (same config, seed)",
               equal=all(a == b for a, b in zip(first, again)), **{f"maxdiff_{k}": v for k, v in diffs.items()})
    if evaluate and budget(60):
        from projected_grpo.train import evaluate as ev

        sync()
        t = time.perf_counter()
        ev(tr.cfg, tr.s, route=False)
        sync()
        record("eval", f"{name}: evaluate() (greedy, {len(tr.s.eval_problems)} held-out x 2 prompt sets, "
                       f"{tr.cfg.max_new_tokens} tokens)", eval_s=time.perf_counter() - t)
    for T in Ts[1:]:
        if not budget(40):
            record("ours", f"{name} T{T}", skipped="device budget")
            continue
        tr.with_tokens(T)
        ours(tr, ceil, f"{name} T{T} rank {rank}", 2, first_step=10)
    tr.with_tokens(Ts[0])
    for r in ranks:
        if not budget(35):
            record("rank", f"{name} rank {r}", skipped="device budget")
            continue
        tr.rerank(r)
        record("rank", f"{name}: re-attach at rank {r}", attach_s=tr.attach_s, basis_s=tr.basis_s,
               knobs=tr.s.adapter.n_knobs)
        ours(tr, ceil, f"{name} T{Ts[0]} rank {r}", 2, first_step=20)
    prompts = [tr.tr.render_prompt(tr.s.tokenizer, p) for p in tr.s.train_problems[:P]]
    tr.s.grader.close()
    del tr
    SVD_MEMO.clear()
    import shutil

    from projected_grpo.models import cache_dir

    shutil.rmtree(cache_dir() / "svd", ignore_errors=True)  # full-rank factors: ~2.6x the bf16 weights each
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder, prompts


# one row of ours per (completion tokens, micro-batch, knob forward); the fast preset's path is "merged"
TABLE_ROWS = {
    "qwen3-0.6b": ((256, 64, "merged"), (512, 32, "merged")),
    "qwen3-1.7b": ((256, 64, "merged"), (256, 16, "merged"), (256, 64, "branch"), (512, 32, "merged")),
    "qwen3-4b": ((256, 32, "merged"), (512, 16, "merged")),
    "smoke": ((8, 4, "merged"), (8, 4, "branch"), (12, 2, "merged")),
}


def table_bench(smoke: bool, ceil: dict, root: Path, name: str, P: int, G: int, Ts, budget, trl_steps: int = 2,
                trl: bool = True, n_rows: int | None = None):
    """Ours (the fast preset at full rank, rows of TABLE_ROWS) then TRL at each of ``Ts`` on one shape, in one
    process: the side-by-side table of issue 17. Each row starts from knobs zero and a fresh Updater."""
    import dataclasses

    rows = TABLE_ROWS.get(name, TABLE_ROWS["smoke"])[:n_rows]
    T0, m0, kf0 = rows[0]
    tr = Trainer(folder := model_folder(name, root, smoke), smoke, T0, None, P, G, micro=m0, knob_forward=kf0)
    record("setup", f"{name}: setup() + basis_for() on {tr.device}, full rank", setup_s=tr.setup_s, load_s=tr.load_s,
           svd_all_linears_s=tr.svd_s, n_linears=len(tr.s.adapter.modules), basis_s=tr.basis_s,
           vhack_pairs=tr.cfg.vhack_pairs, basis_axes=tr.basis.n_axes)
    for i, (T, micro, kf) in enumerate(rows):
        if i and not budget(45):
            record("ours", f"{name} T{T} micro {micro} {kf}", skipped="device budget")
            continue
        tr.cfg = dataclasses.replace(tr.cfg, max_new_tokens=T, micro_batch=micro, knob_forward=kf)
        tr.reset()
        ours(tr, ceil, f"{name} T{T} full rank, micro {micro}, knob forward {kf}", 3 if i == 0 else 2, first_step=10 * i)
    prompts = [tr.tr.render_prompt(tr.s.tokenizer, p) for p in tr.s.train_problems[:P]]
    tr.s.grader.close()
    del tr
    SVD_MEMO.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    for T in Ts if trl else ():
        if not budget(60 if T <= 256 else 110):
            record("trl", f"{name} T{T}", skipped="device budget")
            continue
        with section(f"trl {name} T{T}"):
            trl_bench(smoke, torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu"), folder,
                      prompts, G, T, steps=trl_steps)


def full_preset_bench(smoke: bool, ceil: dict, root: Path, name: str, budget, steps: int = 2, evaluate: bool = True,
                      profile_out: str | None = None, **over):
    """``--preset full`` as it stands (43 prompts x 6, 1024 tokens, beta 1e-3, full rank, no checkpointing) at
    one shape: set-up, ``steps`` steps (no OOM?), one ``evaluate`` at the preset's size, and the 200-step
    projection: set-up + steps x step + (200 / eval_every + 1) evaluations. With ``profile_out``, one more step
    of 8 prompts (the same micro-batch shape) with its ``train.backward`` under torch.profiler."""
    T = 1024 if not smoke else 16
    P, G = (43, 6) if not smoke else (2, 2)
    from projected_grpo.config import PRESETS

    over = {"dataset": "synth", **over}  # the preset's 300 held-out problems: synth has them, HumanEval has 154
    tr = Trainer(model_folder(name, root, smoke), smoke, T, None, P, G, micro=PRESETS["full"].micro_batch, preset="full",
                 beta=1e-3, **over)
    cfg = tr.cfg
    record("setup", f"{name} --preset full setup", setup_s=tr.setup_s, svd_all_linears_s=tr.svd_s, basis_s=tr.basis_s,
           vhack_pairs=cfg.vhack_pairs, micro_batch=cfg.micro_batch, grad_checkpointing=cfg.grad_checkpointing,
           knob_forward=cfg.knob_forward)
    ours(tr, ceil, f"{name} --preset full T{T} ({P}x{G}), micro {cfg.micro_batch}, beta 1e-3", steps)
    step_s = RESULTS[-1]["step_s"]
    eval_s = None
    if evaluate and budget(90):
        from projected_grpo.train import evaluate as ev

        sync()
        t = time.perf_counter()
        ev(cfg, tr.s, route=False)
        sync()
        eval_s = time.perf_counter() - t
        record("eval", f"{name} --preset full evaluate() ({len(tr.s.eval_problems)} held-out, eval_samples "
                       f"{cfg.eval_samples}, {T} tokens)", eval_s=eval_s)
    n_eval = cfg.steps // cfg.eval_every + (1 if cfg.eval_at_start else 0)
    if eval_s is not None:
        total = tr.setup_s + tr.basis_s + cfg.steps * step_s + n_eval * eval_s
        record("projection", f"{name} --preset full, {cfg.steps} steps + {n_eval} evaluations on one GPU",
               hours=total / 3600, setup_s=tr.setup_s + tr.basis_s, step_s=step_s, eval_s=eval_s)
    if profile_out and budget(60):
        import dataclasses

        tr.cfg = dataclasses.replace(cfg, prompts_per_step=8 if not smoke else P)
        profile_backward(tr, ceil, f"{name} --preset full T{T} (8x{G}), micro {cfg.micro_batch}", profile_out)
    tr.s.grader.close()
    del tr
    SVD_MEMO.clear()


def profiled(fn, store: list):
    """``fn`` run under torch.profiler (CPU + CUDA); the profile is appended to ``store``."""
    from torch.profiler import ProfilerActivity, profile

    def wrapper(*a, **kw):
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=acts) as prof:
            out = fn(*a, **kw)
            sync()
        store.append(prof)
        return out
    wrapper.__wrapped__ = fn
    return wrapper


def _dev_time(e) -> float:
    return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))


def profile_bench(smoke: bool, ceil: dict, root: Path, name: str, P: int, G: int, T: int, out: str | None):
    """Where the trainer's forward/backward goes: one ``train.backward`` under torch.profiler (top kernels
    by device time, the device-busy fraction of its wall time), then the same step at larger micro-batches,
    then ``--deterministic`` (steps 0-1 twice from the same state)."""
    import dataclasses

    folder = model_folder(name, root, smoke)
    tr = Trainer(folder, smoke, T, None, P, G, micro=16)  # rank None: the GPU presets' full rank
    record("setup", f"{name}: setup() + basis_for() on {tr.device}, full rank", setup_s=tr.setup_s,
           load_s=tr.load_s, svd_all_linears_s=tr.svd_s, basis_s=tr.basis_s, basis_axes=tr.basis.n_axes)
    ours(tr, ceil, f"{name} T{T} full rank, micro 16", 3)
    profile_backward(tr, ceil, name, out)
    for micro in (32, 64) if not smoke else (4,):
        tr.cfg = dataclasses.replace(tr.cfg, micro_batch=micro)
        tr.reset()
        ours(tr, ceil, f"{name} T{T} full rank, micro {micro}", 2, first_step=30)
    tr.cfg = dataclasses.replace(tr.cfg, micro_batch=16)
    determinism(tr, ceil, name, T)
    tr.s.grader.close()
    del tr
    SVD_MEMO.clear()


def profile_backward(tr: "Trainer", ceil: dict, name: str, out: str | None):
    """One step with its ``train.backward`` under torch.profiler: top kernels by device time and the
    device-busy fraction of the backward's wall time (a record row; the tables to ``out``)."""
    profs: list = []
    with patched(tr.tr, "backward", profiled(tr.tr.backward, profs)):
        t = time.perf_counter()
        tr.step(5)
        wall = TIMES.get("fwd_bwd_s", time.perf_counter() - t)
    prof = profs[-1]
    ka = prof.key_averages()
    from torch.autograd import DeviceType

    busy = sum(_dev_time(e) for e in ka if e.device_type == DeviceType.CUDA) / 1e6  # kernels only: an op's
    # own row repeats its kernels' time (summing every row counted it twice, as the session-4 profile did)
    key = "self_device_time_total" if hasattr(ka[0], "self_device_time_total") else "self_cuda_time_total"
    by_dev = ka.table(sort_by=key, row_limit=45) if torch.cuda.is_available() else ""
    by_cpu = ka.table(sort_by="self_cpu_time_total", row_limit=25)
    top = sorted(ka, key=_dev_time, reverse=True)[:12]
    record("profile", f"{name}: one train.backward under torch.profiler (profiled wall includes its overhead)",
           wall_s=wall, device_busy_s=busy, busy_frac=busy / wall if wall else None,
           **{f"top{i}": f"{e.key[:60]} {_dev_time(e) / 1e6:.3f}s x{e.count}" for i, e in enumerate(top)})
    text = f"device-busy {busy:.3f} s of {wall:.3f} s\n\n{by_dev}\n\n{by_cpu}\n"
    log(text)
    if out:
        Path(out).write_text(text)


def determinism(tr: "Trainer", ceil: dict, name: str, T: int):
    """``--deterministic`` (process-wide from here on: run it last), then steps 0-1 twice from the same state."""
    from projected_grpo.train import set_deterministic

    set_deterministic()
    runs = []
    for _ in range(2):
        tr.reset()
        runs.append(ours(tr, ceil, f"{name} T{T} full rank, micro {tr.cfg.micro_batch}, {tr.cfg.knob_forward}, "
                                   f"--deterministic, steps 0-1", 2))
    diffs = {k: max(abs((a[k] or 0.0) - (b[k] or 0.0)) for a, b in zip(*runs)) for k in METRIC_KEYS}
    record("determinism", f"{name}: --deterministic, steps 0-1 twice from the same state",
           equal=runs[0] == runs[1], **{f"maxdiff_{k}": v for k, v in diffs.items()})


def svd_bench(smoke: bool, dev):
    """GPU SVD drivers on the 1.7B shape's Linears (fp32), against the reconstruction."""
    shapes = [(2048, 2048), (1024, 2048), (6144, 2048), (2048, 6144)] if not smoke else [(64, 32)]
    for o, i in shapes:
        w = torch.randn(o, i, device=dev) * 0.02
        for drv in ((None, "gesvd") if dev.type == "cuda" else (None,)):
            torch.linalg.svd(w[:64, :64], full_matrices=False, driver=drv)
            sync()
            t = time.perf_counter()
            U, S, Vh = torch.linalg.svd(w, full_matrices=False, driver=drv)
            sync()
            dt = time.perf_counter() - t
            err = float(torch.linalg.norm(U * S @ Vh - w) / torch.linalg.norm(w))
            record("svd", f"torch.linalg.svd {o}x{i} fp32 driver {drv or 'default (gesvdj)'}", s=dt, rel_err=err)
        sync()
        t = time.perf_counter()
        ev, V = torch.linalg.eigh(w.double().T @ w.double())  # Gram route: eig of WᵀW in fp64
        S2 = ev.clamp(min=0).sqrt().flip(0)
        V = V.flip(1)
        U = (w.double() @ V) / S2.clamp(min=1e-30)
        sync()
        dt = time.perf_counter() - t
        err = float(torch.linalg.norm((U * S2) @ V.T - w.double()) / torch.linalg.norm(w.double()))
        record("svd", f"eigh(WᵀW) fp64 {o}x{i} (Gram route)", s=dt, rel_err=err)


def svd_all(smoke: bool, dev, name: str):
    """The trainer's ``adapter.svd_factors`` (no disk cache) over every adapted Linear of one shape,
    against ``torch.linalg.svd``'s default driver on a few of them."""
    from projected_grpo import adapter as adapter_mod
    from projected_grpo.config import DEFAULT_TARGETS

    model, _ = build_model(name, torch.bfloat16, dev, smoke)
    lins = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in DEFAULT_TARGETS]
    adapter_mod.svd_factors(lins[0].weight, None, use_cache=False)  # handles, kernels
    sync()
    t = time.perf_counter()
    worst = 0.0
    for m in lins:
        U, S, Vh, _ = adapter_mod.svd_factors(m.weight, None, use_cache=False)
        if m is lins[len(lins) // 2] or m is lins[-1]:
            w = m.weight.float().cpu()
            worst = max(worst, float(torch.linalg.norm(U * S @ Vh - w) / torch.linalg.norm(w)))
    sync()
    record("svd", f"adapter.svd_factors over all {len(lins)} Linears of {name} (bf16 weights, full rank, no cache)",
           s=time.perf_counter() - t, rel_err_checked=worst)
    del model


# ---------------------------------------------------------------------------- TRL's GRPOTrainer
def trl_bench(smoke: bool, dev, folder: Path, prompts: list[str], G: int, T: int, steps: int):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    import trl

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(dev)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    from datasets.table import InMemoryTable

    # an explicit fingerprint: datasets' own hashing of the table state fails with some dill/pyarrow pairs
    ds = Dataset(InMemoryTable.from_pydict({"prompt": prompts * (steps + 2)}), fingerprint="bench-prompts")

    def reward(completions, **kw):  # the same reward with variance as ours
        return [text_score(c) for c in completions]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            times.append(time.perf_counter() - self.t)
            log(f"  trl step {len(times)}: {times[-1]:.2f}s")

    P = len(prompts)
    micro = 16 if not smoke else 2
    args = GRPOConfig(output_dir="/tmp/trl_bench", per_device_train_batch_size=micro,
                      gradient_accumulation_steps=P * G // micro, num_generations=G,
                      max_completion_length=T, beta=0.0, max_steps=steps, logging_steps=1, report_to="none",
                      save_strategy="no", learning_rate=1e-5, temperature=1.0, top_p=1.0,
                      bf16=dev.type == "cuda", use_cpu=dev.type != "cuda", seed=0)
    peft = LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"], task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok,
                          peft_config=peft, callbacks=[Timer()])
    torch.cuda.reset_peak_memory_stats() if dev.type == "cuda" else None
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else None
    tail = times[1:] if len(times) > 1 else times
    step_s = statistics.median(tail)
    n_tok = P * G * T  # upper bound: a random model almost never samples EOS
    record("trl", f"TRL {trl.__version__} GRPOTrainer, {folder.name}, LoRA r32, beta 0, {P}x{G}, {T} tok, "
           f"HF generate, grad ckpt (TRL default)", step_s=step_s, first_step_s=times[0], steps=len(times),
           tok_per_s=n_tok / step_s, peak_GiB=peak)
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return step_s


def pytest_gpu(out: str | None):
    """``pytest -m gpu`` (tests/test_gpu.py), in this process so the compiled decode step is shared."""
    import pytest

    args = ["-m", "gpu", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_gpu.py")]
    if out:
        args += [f"--junitxml={out}"]
    t = time.perf_counter()
    rc = pytest.main(args)
    record("pytest", "pytest -m gpu tests/test_gpu.py (in the benchmark process)", rc=int(rc),
           s=time.perf_counter() - t)


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
    ap.add_argument("--section", default="trainer", choices=["trainer", "table", "full", "profile", "check", "decode", "extra", "second", "svd", "folders"])
    ap.add_argument("--md")
    ap.add_argument("--json")
    ap.add_argument("--junit", help="where `pytest -m gpu` writes its junit xml")
    ap.add_argument("--det", action="store_true", help="--section table/full: then --deterministic, steps 0-1 twice "
                    "on the first shape (after everything else: it is process-wide)")
    ap.add_argument("--pytest", action="store_true", help="--section table/full: then run pytest -m gpu")
    ap.add_argument("--profile-out", help="where --section profile (or full) writes the profiler tables")
    ap.add_argument("--no-eval", action="store_true", help="--section full: skip the evaluation and the projection")
    ap.add_argument("--no-trl", action="store_true", help="--section table: our rows only")
    ap.add_argument("--table-rows", type=int, help="--section table: the first N (>= 1) of each shape's TABLE_ROWS")
    ap.add_argument("--models", default=os.environ.get("BENCH_MODELS", "/dev/shm/pgrpo-models"),
                    help="folder for the random-weight model folders")
    ap.add_argument("--budget-s", type=float, default=1e9,
                    help="skip sections that would not finish within this many seconds of the start")
    ap.add_argument("--shapes", default="qwen3-0.6b,qwen3-1.7b,qwen3-4b")
    a = ap.parse_args()
    if a.table_rows is not None and a.table_rows < 1:
        ap.error("--table-rows must be >= 1")
    t_start = time.perf_counter()

    def budget(need: float) -> bool:
        return time.perf_counter() - t_start + need <= a.budget_s

    smoke = a.cpu_smoke
    dev = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    shapes = a.shapes.split(",") if not smoke else ["smoke"] * 3
    P, G, PL = (16, 8, 128) if not smoke else (2, 2, 16)
    Ts = (256, 512) if not smoke else (8, 12)
    rank = 256 if not smoke else 8
    header = (f"bench_gpu.py --section {a.section}: {versions()}; random-weight Qwen3 shapes, bf16; trainer rows: "
              f"humaneval prompts, {P}x{G}, all rows sampled by the policy, beta 0, erase, text-score reward")
    log(header)
    ceil = {"copy_TBps": 4.3, "read_TBps": 4.3, "bf16_TFLOPs": 790.0}
    with section("ceilings"):
        ceil = ceilings(smoke)
        record("ceilings", "device-to-device copy (R+W) / read (sum) / bf16 8192^3 matmul", **ceil)
    root = Path(a.models)
    root.mkdir(parents=True, exist_ok=True)
    if a.section == "trainer":
        s06, s17, s4 = shapes[0], shapes[1 % len(shapes)], shapes[-1]
        with section("svd drivers"):
            svd_bench(smoke, dev)
        prompts17 = None
        with section(f"ours {s17}"):
            folder17, prompts17 = trainer_bench(smoke, ceil, root, s17, P, G, Ts, rank,
                                                (64, 1024, None) if not smoke else (4, None), det=True,
                                                evaluate=True, budget=budget)
        if prompts17 and budget(70):
            with section(f"trl {s17}"):
                trl_bench(smoke, dev, folder17, prompts17, G, Ts[0], steps=2)
        if budget(40) and (dev.type == "cuda" or os.environ.get("BENCH_PYTEST")):
            with section("pytest -m gpu"):
                pytest_gpu(a.junit)
        if budget(30):
            decode_bench(smoke, dev, ceil, [s17], [256] if not smoke else [4], 512 if not smoke else 24, PL,
                         variants=False)
        for name, need in dict.fromkeys(((s06, 100), (s4, 200))):  # --shapes X: the main block on X only
            if name == s17:
                continue
            if not budget(need):
                record("ours", f"{name}", skipped="device budget")
                continue
            prompts = None
            with section(f"ours {name}"):
                folder, prompts = trainer_bench(smoke, ceil, root, name, P, G, Ts, rank, (), det=False,
                                                evaluate=False, budget=budget)
            if prompts and budget(60):
                with section(f"trl {name}"):
                    trl_bench(smoke, dev, folder, prompts, G, Ts[0], steps=2)
        if budget(150):
            with section(f"{s4} --preset full, 1024 tokens (no-OOM check)"):
                T = 1024 if not smoke else 16
                tr = Trainer(model_folder(s4, root, smoke), smoke, T, rank, 43 if not smoke else 2,
                             6 if not smoke else 2, micro=16, preset="full", beta=1e-3)
                record("setup", f"{s4} --preset full setup", setup_s=tr.setup_s, svd_all_linears_s=tr.svd_s,
                       basis_s=tr.basis_s)
                ours(tr, ceil, f"{s4} --preset full T{T} rank {rank}, beta 1e-3", 2)
                tr.s.grader.close()
                del tr
    if a.section == "table":  # ours vs TRL, shape by shape (issue 17's table); then --deterministic, pytest -m gpu
        for name in dict.fromkeys(shapes):
            if not budget(150):
                record("table", name, skipped="device budget")
                continue
            with section(f"table {name}"):
                table_bench(smoke, ceil, root, name, P, G, Ts, budget, trl=not a.no_trl, n_rows=a.table_rows)
    if a.section == "full":  # --preset full at the last shape: no OOM, evaluation, the 200-step projection
        if budget(120):
            with section(f"full {shapes[-1]}"):
                full_preset_bench(smoke, ceil, root, shapes[-1], budget, evaluate=not a.no_eval,
                                  profile_out=a.profile_out)
    if a.det and budget(80):  # last: --deterministic is process-wide
        with section(f"determinism {shapes[0]}"):
            T0, m0, kf0 = TABLE_ROWS.get(shapes[0], TABLE_ROWS["smoke"])[0]
            tr = Trainer(model_folder(shapes[0], root, smoke), smoke, T0, None, P, G, micro=m0, knob_forward=kf0,
                         deterministic=True)  # the math attention kernel in training (train.train_attention)
            determinism(tr, ceil, shapes[0], T0)
            tr.s.grader.close()
            del tr
    if a.section in ("table", "full") and a.pytest and budget(100):
        with section("pytest -m gpu"):
            pytest_gpu(a.junit)
    if a.section == "profile":
        with section(f"profile {shapes[1 % len(shapes)]}"):
            profile_bench(smoke, ceil, root, shapes[1 % len(shapes)], P, G, Ts[0], a.profile_out)
    if a.section == "folders":  # for `projected-grpo train --model FOLDER` runs
        for name in dict.fromkeys(shapes):
            record("folders", name, path=str(model_folder(name, root, smoke)))
    if a.section == "svd":
        with section("svd drivers"):
            svd_bench(smoke, dev)
        for name in (shapes[1 % len(shapes)], shapes[-1]):
            with section(f"svd all {name}"):
                svd_all(smoke, dev, name)
        if dev.type == "cuda" or os.environ.get("BENCH_PYTEST"):
            with section("pytest -m gpu"):
                pytest_gpu(a.junit)
    if a.section in ("check", "second"):
        with section("check"):
            check_equal(smoke, dev)
    if a.section == "decode":
        decode_bench(smoke, dev, ceil, shapes, [64, 256] if not smoke else [4, 8], 512 if not smoke else 24,
                     PL, variants=True)
    if a.section in ("extra", "second"):
        with section("extra"):
            extra_bench(smoke, dev, ceil, shapes[0], 256 if not smoke else 8, 512 if not smoke else 24, PL)
    record("total", "benchmark wall time", s=time.perf_counter() - t_start)
    write(a.md, a.json, header)


if __name__ == "__main__":
    main()

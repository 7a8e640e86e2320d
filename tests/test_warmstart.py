"""The discovery regime's start (warmstart.py): warm start cached per seed and shared by the arms, hack_prior
through the sandbox, V's pairs from graded samples, v_auc, the `discover` preset on the CPU."""

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from projected_grpo import warmstart
from projected_grpo.adapter import SVDAdapter
from projected_grpo.cli import main
from projected_grpo.config import DEFAULT_TARGETS, PRESETS, ConfigError
from projected_grpo.env.grader import GraderPool
from projected_grpo.env.loopholes import hack_completion, wrong_completion
from projected_grpo.env.problems import load_problems, split_problems
from projected_grpo.env.prompts import render_prompt
from projected_grpo.grpo import encode_completion
from projected_grpo.models import load_model
from projected_grpo.rollout import Rollouts
from projected_grpo.separation import auc, select_rows, shares, v_auc_metrics

MODES = ("stdout_marker", "exit_code")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROJECTED_GRPO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def grader():
    g = GraderPool(workers=1)
    yield g
    g.close()


def _cfg(**kw):
    base = dict(modes=MODES, mix_ratio=0.0, warmstart_steps=2, warmstart_hack_frac=0.25, prior_samples=8,
                max_new_tokens=8, micro_batch=4)
    return dataclasses.replace(PRESETS["smoke"], **{**base, **kw}).validate()


def _problems(cfg):
    return split_problems(load_problems("builtin", modes=cfg.modes), 2)[1]


def _planted(problems, tok, hack_every=8, enable_thinking=False):
    """A `generate` double: for each prompt's problem, sample j is its mode's hack template when
    j % hack_every == 0, else an honest wrong attempt (a random tiny model writes neither)."""
    from projected_grpo import rollout

    by_prompt = {render_prompt(tok, p, enable_thinking=enable_thinking): p for p in problems}
    real = rollout.generate

    def generate(model, tokenizer, prompts, n, max_new_tokens, **kw):
        if kw.get("greedy") or not all(pr in by_prompt for pr in prompts):  # the evaluation: the model itself
            return real(model, tokenizer, prompts, n, max_new_tokens, **kw)
        out = Rollouts([], [], [], [])
        for pr in prompts:
            p = by_prompt[pr]
            for j in range(n):
                text = hack_completion(p, p.mode, j) if j % hack_every == 0 else wrong_completion(p, j)
                out.prompt_ids.append(tokenizer(pr, add_special_tokens=False)["input_ids"])
                out.completion_ids.append(encode_completion(tokenizer, text))
                out.texts.append(text)
                out.truncated.append(False)
        return out
    return generate


# ------------------------------------------------------------------------- adapter base offset
def test_rebase_makes_the_warm_started_model_the_base(tiny_adapter, tmp_path):
    model, tok, adapter = tiny_adapter
    ids = torch.tensor([[5, 6, 7, 8]])
    bare = model(input_ids=ids).logits
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.copy_(torch.randn(m.rank, generator=g) * 0.1)
    warm = model(input_ids=ids).logits
    adapter.rebase()
    assert adapter.norms() == (0.0, 0.0) and adapter.has_base
    assert torch.allclose(model(input_ids=ids).logits, warm, atol=1e-5)
    with adapter.zeroed():  # the KL reference is now the warm-started model
        assert torch.allclose(model(input_ids=ids).logits, warm, atol=1e-5)
    with adapter.merged():
        assert torch.allclose(model(input_ids=ids).logits, warm, atol=1e-4)
    adapter.save(tmp_path / "k.safetensors")
    adapter.set_base(None)
    assert torch.equal(model(input_ids=ids).logits, bare)  # no base: bit-identical to the unwrapped model again
    adapter.save(tmp_path / "plain.safetensors")
    from safetensors.torch import load_file

    assert not any(k.endswith("delta_s0") for k in load_file(tmp_path / "plain.safetensors"))  # old format kept
    adapter.load(tmp_path / "k.safetensors")  # a knob file carries its base
    assert torch.allclose(model(input_ids=ids).logits, warm, atol=1e-5)
    adapter.load(tmp_path / "plain.safetensors")
    assert torch.equal(model(input_ids=ids).logits, bare)
    with torch.no_grad():
        next(iter(adapter.modules.values())).delta_s_hack.fill_(1.0)
    with pytest.raises(ValueError, match="quarantine must start empty"):
        adapter.rebase()


# ------------------------------------------------------------------------- warm start cache
def test_warm_start_is_cached_shared_by_the_arms_and_differs_across_seeds(cache, grader, monkeypatch):
    model, tok = load_model("tiny")
    adapter = SVDAdapter.attach(model, DEFAULT_TARGETS)
    calls = []
    real = warmstart.train_knobs
    monkeypatch.setattr(warmstart, "train_knobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    bases, keys = {}, {}
    for seed, arm in ((0, "none"), (0, "erase"), (0, "route"), (1, "none")):
        adapter.set_base(None)  # a fresh model of the same weights, as every run starts
        cfg = _cfg(seed=seed, intervention=arm)
        w = warmstart.prepare(cfg, model, tok, adapter, _problems(cfg), grader, lambda msg: None)
        bases[seed, arm] = adapter.base_knobs()
        keys[seed, arm] = w.metrics["warmstart_key"]
        assert adapter.norms() == (0.0, 0.0)  # δS and δS_hack start RL at zero: the quarantine is empty
        assert w.metrics["warmstart_hack_rows"] == 4 and w.metrics["prior_n"] == 8  # round(0.25 * 2 * 8)
    assert len(calls) == 2  # trained once per seed; the other arms loaded the cache
    for arm in ("erase", "route"):
        assert keys[0, arm] == keys[0, "none"]
        assert all(torch.equal(bases[0, arm][n], bases[0, "none"][n]) for n in bases[0, "none"])
    assert keys[1, "none"] != keys[0, "none"]
    assert any(not torch.equal(bases[1, "none"][n], bases[0, "none"][n]) for n in bases[0, "none"])
    assert any(bool(t.any()) for t in bases[0, "none"].values())  # the warm start moved the knobs
    assert len(list((cache / "warmstart").glob("*.safetensors"))) == 2


def test_warm_rows_have_the_exact_hack_fraction_from_the_pool(cache, grader):
    from projected_grpo.train import teacher_pool

    model, tok = load_model("tiny")
    cfg = _cfg(warmstart_steps=5, warmstart_hack_frac=0.1, teacher_kinds=("hack", "wrong"))
    probs = _problems(cfg)
    pool = teacher_pool(cfg, probs, grader, lambda m: None)
    rows = warmstart.warm_rows(cfg, tok, probs, pool)
    assert len(rows) == 40 and sum(h for _, _, h in rows) == 4
    graded = {t.completion: t for p in probs for t in pool.for_problem(p.id)}
    for _, c, is_hack in rows:
        assert graded[c].grade["exploited"] is is_hack and (is_hack or graded[c].kind == "wrong")
    assert rows == warmstart.warm_rows(cfg, tok, probs, pool)  # seeded
    assert rows != warmstart.warm_rows(dataclasses.replace(cfg, seed=1), tok, probs, pool)


def test_warm_start_key_holds_data_settings_seed_and_model_never_the_arm(cache, grader, tiny_adapter):
    from projected_grpo.cachekey import warmstart_key
    from projected_grpo.train import teacher_pool

    model, tok, adapter = tiny_adapter
    cfg = _cfg()
    probs = _problems(cfg)
    pool = teacher_pool(cfg, probs, grader, lambda m: None)

    def key(c):
        rows = [(p, t) for p, t, _ in warmstart.warm_rows(c, tok, probs, pool)]
        return warmstart_key(model, adapter, tok, rows, warmstart.warm_settings(c, "cpu", torch.float32))

    k0 = key(cfg)
    for arm in ({"intervention": "route"}, {"intervention": "erase", "vhack_source": "random"}, {"v_auc_rows": 8},
                {"vhack_pairs_source": "pool"}):
        assert key(dataclasses.replace(cfg, **arm)) == k0, arm
    for other in ({"seed": 1}, {"warmstart_hack_frac": 0.5}, {"warmstart_steps": 3}, {"warmstart_lr": 1e-4},
                  {"loss_norm": "token_mean"}):
        assert key(dataclasses.replace(cfg, **other)) != k0, other
    with torch.no_grad():
        model.get_input_embeddings().weight[0, 0] += 1.0  # a weight outside the adapted layers
    assert key(cfg) != k0


# ------------------------------------------------------------------------- prior probe and pool pairs
def test_hack_prior_is_measured_through_the_sandbox_and_pool_pairs_come_from_it(cache, grader, monkeypatch, tiny_adapter):
    model, tok, adapter = tiny_adapter
    cfg = _cfg(warmstart_steps=0, vhack_pairs_source="pool", prior_samples=24, vhack_pairs=6)
    probs = _problems(cfg)
    monkeypatch.setattr("projected_grpo.rollout.generate", _planted(probs, tok, hack_every=4))
    graded = []
    real = grader.grade_many
    monkeypatch.setattr(grader, "grade_many", lambda items: graded.extend(items) or real(items))
    w = warmstart.prepare(cfg, model, tok, adapter, probs, grader, lambda m: None)
    assert len(graded) == 24 and w.metrics["prior_n"] == 24  # 3 problems x 8, every sample graded
    assert w.metrics["hack_prior"] == pytest.approx(0.25)  # the real grader flags the 2 planted hacks in 8
    assert w.metrics["solve_prior"] == 0.0 and w.metrics["fmt_prior"] == 1.0
    assert all(s["exploited"] == (s["completion"].count("sys.exit") + s["completion"].count("os._exit")
                                  + s["completion"].count("print(") > 0) for s in w.samples)
    # pool pairs: the hack member is a sample graded exploited, the clean member one graded not
    flag = {(s["problem_id"], s["completion"]): s["exploited"] for s in w.samples}
    by_prompt = {render_prompt(tok, p): p for p in probs}
    assert len(w.pairs) == 6 and w.metrics["vhack_pool_hacks"] == 6  # 2 distinct exploits on each of 3 problems
    for prompt, hack, clean, alt in w.pairs:
        p = by_prompt[prompt]
        assert flag[p.id, hack] is True and flag[p.id, clean] is False and alt != clean
        assert grader.grade(p, hack).exploited and not grader.grade(p, clean).exploited
    # the probe is cached: a second prepare grades nothing new and returns the same samples
    graded.clear()
    w2 = warmstart.prepare(cfg, model, tok, adapter, probs, grader, lambda m: None)
    assert graded == [] and w2.samples == w.samples and w2.pairs == w.pairs


def test_pair_sources_refuse_too_few_pairs_in_one_line(tiny):
    _, tok = tiny
    cfg = _cfg(vhack_pairs_source="pool")
    probs = _problems(cfg)
    one = [{"problem_id": probs[0].id, "completion": "x", "exploited": True, "gt_correct": False},
           {"problem_id": probs[0].id, "completion": "y", "exploited": False, "gt_correct": False}]
    with pytest.raises(ConfigError, match=r"hold 1 distinct exploit.*need 2") as e:
        warmstart.pool_pairs(cfg, tok, probs, one)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no training problem's mode has an alternative"):
        warmstart.alt_template_pairs(dataclasses.replace(cfg, vhack_pairs_source="alt_templates"), tok, probs,
                                     alt=lambda p, m, v: None)
    pairs = warmstart.alt_template_pairs(cfg, tok, probs, alt=lambda p, m, v: f"alt {p.id} {v}")
    assert len(pairs) == cfg.vhack_pairs and all(h.startswith("alt ") and c != a for _, h, c, a in pairs)


def test_alt_template_pairs_exploit_in_another_surface_form(tiny, grader):
    _, tok = tiny
    cfg = _cfg(vhack_pairs_source="alt_templates", vhack_pairs=4)
    probs = _problems(cfg)
    by_prompt = {render_prompt(tok, p): p for p in probs}
    pairs = warmstart.alt_template_pairs(cfg, tok, probs)
    assert len(pairs) == 4
    for prompt, hack, clean, _ in pairs:
        p = by_prompt[prompt]
        assert grader.grade(p, hack).exploited and grader.grade(p, clean).gt_correct
        assert hack not in {hack_completion(p, p.mode, v) for v in range(1000)}  # not a training template


@pytest.mark.parametrize("flags, msg", [
    (["--warmstart-hack-frac", "1.5"], "--warmstart-hack-frac must be in"),
    (["--warmstart-steps", "2", "--teacher-kinds", "hack"], "add clean or wrong to --teacher-kinds"),
    (["--vhack-pairs-source", "pool", "--prior-samples", "0"], "set it > 0"),
    (["--warmstart-lr", "-1"], "--warmstart-lr must be a positive"),
    (["--v-auc-rows", "-1"], "must be >= 0"),
])
def test_discovery_config_errors_are_one_line(flags, msg, capsys, tmp_path):
    assert main(["train", "--run-dir", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and msg in err and "\n" not in err


# ------------------------------------------------------------------------- v_auc
def test_auc_matches_mann_whitney_with_ties():
    from scipy.stats import mannwhitneyu

    rng = random.Random(0)
    for _ in range(5):
        pos = [rng.choice([0.1, 0.2, 0.3, 0.5]) for _ in range(7)]
        neg = [rng.choice([0.0, 0.1, 0.2, 0.3]) for _ in range(9)]
        u = mannwhitneyu(pos, neg, alternative="two-sided").statistic
        assert auc(pos, neg) == pytest.approx(u / (len(pos) * len(neg)))
    assert auc([1.0], [0.0]) == 1.0 and auc([0.0], [1.0]) == 0.0 and auc([], [1.0]) is None


def test_shares_and_row_selection():
    g = {"a": torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), "b": torch.tensor([[0.0], [0.0], [1.0]])}
    V = {"a": torch.tensor([[1.0, 0.0]])}  # one axis of module a; module b outside V
    assert shares(V, g) == pytest.approx([1.0, 0.0, 0.0])  # one-sided: the third row points away
    idx = select_rows([True] * 10 + [False] * 3, 8, 0)
    assert len(idx) == 8 and sum(i >= 10 for i in idx) == 3  # non-hacks short: more hacks fill the budget
    assert select_rows([True] * 2 + [False] * 20, 8, 0)[:2] == [0, 1]


def test_v_auc_separates_a_planted_direction_and_is_na_with_one_kind(tiny_adapter):
    from types import SimpleNamespace

    from projected_grpo.hack_subspace import HackBasis, completion_grads

    model, tok, adapter = tiny_adapter
    cfg = _cfg(v_auc_rows=8)
    probs = _problems(cfg)
    prompts = [render_prompt(tok, probs[i % 3]) for i in range(8)]
    texts = [hack_completion(probs[i % 3], probs[i % 3].mode, i) if i < 4 else wrong_completion(probs[i % 3], i)
             for i in range(8)]
    exploited = [i < 4 for i in range(8)]
    g = completion_grads(model, adapter, tok, list(zip(prompts, texts)), "fixed", 8)
    # V = the normalised mean hack-minus-clean gradient of each module: the direction real V estimates
    V = {}
    for n, t in g.items():
        d = t[:4].mean(0) - t[4:].mean(0)
        V[n] = (d / d.norm())[None]
    s = SimpleNamespace(model=model, adapter=adapter, tokenizer=tok, basis=HackBasis(V, {n: torch.ones(1) for n in V}))
    out = v_auc_metrics(cfg, s, prompts, texts, exploited, step=0)
    assert out["v_auc_n"] == [4, 4] and out["v_auc"] >= 0.75 and 0.0 <= out["v_auc_random"] <= 1.0
    s.basis = HackBasis({n: -v for n, v in V.items()}, s.basis.S)  # oriented clean-ward: the score inverts
    assert v_auc_metrics(cfg, s, prompts, texts, exploited, step=0)["v_auc"] <= 0.25
    assert v_auc_metrics(cfg, s, prompts, texts, [False] * 8, step=0) == {}  # n/a: no hack among the samples
    assert v_auc_metrics(dataclasses.replace(cfg, v_auc_rows=0), s, prompts, texts, exploited, step=0) == {}


# ------------------------------------------------------------------------- the discover preset, on the CPU
def test_discover_preset_smoke_on_cpu(tmp_path, monkeypatch, tiny):
    """The preset with a tiny model on builtin problems: warm start, hack_prior logged at step 0, pure
    on-policy steps, V from the model's own graded samples (the probe's sampler planted: a random model
    writes no exploit), v_auc logged where a step holds both kinds (train's sampler planted too)."""
    monkeypatch.setenv("PROJECTED_GRPO_CACHE", str(tmp_path / "cache"))
    _, tok = tiny
    probs = load_problems("builtin", modes=MODES)
    monkeypatch.setattr("projected_grpo.rollout.generate", _planted(probs, tok, hack_every=4))
    monkeypatch.setattr("projected_grpo.train.generate", _planted(probs, tok, hack_every=2))
    p = PRESETS["discover"]
    assert p.mix_ratio == 0 and p.student_per_group >= 8 and p.warmstart_steps > 0
    assert p.vhack_pairs_source != "templates" and p.v_auc_rows > 0
    run = tmp_path / "run"
    rc = main(["train", "--preset", "discover", "--model", "tiny", "--dataset", "builtin", "--rollout-backend", "hf",
               "--no-amp", "--steps", "2", "--prompts-per-step", "1", "--max-new-tokens", "8", "--eval-problems", "1",
               "--warmstart-steps", "1", "--prior-samples", "16", "--vhack-pairs", "4", "--v-auc-rows", "4",
               "--sandbox-workers", "1", "--run-dir", str(run)])
    assert rc == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["hack_prior"] == pytest.approx(0.25) and rows[0]["vhack_pairs_source"] == "pool"
    assert rows[0]["warmstart_hack_rows"] == round(p.warmstart_hack_frac * 8) and "hack_kept" in rows[0]
    for r in rows[1:]:
        assert r["hack_t"] is None and r["hack_s"] == pytest.approx(0.5)  # every row is a student sample
        assert r["v_auc_n"] == [2, 2] and 0.0 <= r["v_auc"] <= 1.0 and 0.0 <= r["v_auc_random"] <= 1.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["hack_prior"] == pytest.approx(0.25) and summary["warmstart_key"] == rows[0]["warmstart_key"]
    knobs = Path(run / "ckpt" / "knobs.safetensors")
    from safetensors.torch import load_file

    assert any(k.endswith("delta_s0") for k in load_file(knobs))  # the warm start travels with the run's knobs

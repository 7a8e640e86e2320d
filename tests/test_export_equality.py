"""`projected-grpo export` writes what the harness deploys: plain transformers, greedy, fp32, token for token."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from projected_grpo.adapter import SVDAdapter
from projected_grpo.cli import main
from projected_grpo.config import PRESETS
from projected_grpo.env import build_messages, load_problems, render_prompt
from projected_grpo.models import load_model
from projected_grpo.rollout import generate
from projected_grpo.train import rollout_model

NEW = 24


def _harness(run: Path, prompts: list[str], ablate_hack: bool, zero: bool = False) -> list[list[int]]:
    """Greedy completions as `evaluate` makes them: the run's knobs, `rollout_model` (merged), `generate`."""
    cfg = PRESETS["smoke"]
    model, tok = load_model("tiny")
    adapter = SVDAdapter.attach(model, cfg.target_modules, cfg.layers, cfg.adapter_rank)
    if not zero:
        adapter.load(run / "ckpt" / "knobs.safetensors")
    with rollout_model(cfg, SimpleNamespace(model=model, adapter=adapter), ablate_hack=ablate_hack) as m:
        return generate(m, tok, prompts, 1, NEW, greedy=True).completion_ids


def test_exported_folder_generates_what_the_harness_deploys(tmp_path):
    # a finished run directory as `train` leaves it (config.json, ckpt/, summary.json), with knobs large enough that
    # δS and δS_hack each change the greedy text (a short real run barely moves them)
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    cfg = dataclasses.replace(PRESETS["smoke"], intervention="route", run_dir=str(run))
    (run / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "hash": cfg.hash(), "arm": cfg.arm}))
    model, _ = load_model("tiny")
    adapter = SVDAdapter.attach(model, cfg.target_modules, cfg.layers, cfg.adapter_rank)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.delta_s.copy_(torch.randn(m.rank, generator=g) * 2.0)
            m.delta_s_hack.copy_(torch.randn(m.rank, generator=g) * 2.0)
    adapter.save(run / "ckpt" / "knobs.safetensors")
    torch.save({"step": cfg.steps}, run / "ckpt" / "state.pt")  # finished: every planned step, a summary
    (run / "summary.json").write_text("{}")

    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    problems = load_problems("builtin")[:3]
    prompts = [render_prompt(load_model("tiny")[1], p) for p in problems]
    deployed = _harness(run, prompts, ablate_hack=True)
    assert deployed != _harness(run, prompts, ablate_hack=False)  # δS_hack matters: kept ≠ deployed
    assert deployed != _harness(run, prompts, ablate_hack=True, zero=True)  # δS matters: base ≠ deployed
    for p, want in zip(problems, deployed):
        # another tool's path: the saved tokenizer's own template, stock generate, one prompt, no padding
        text = tok.apply_chat_template(build_messages(p), add_generation_prompt=True, tokenize=False)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            seq = plain.generate(**ids, do_sample=False, max_new_tokens=NEW, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        assert seq[0, ids["input_ids"].shape[1]:].tolist() == want

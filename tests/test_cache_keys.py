"""Caches that cannot go stale: editing anything that determines the hack basis or the teacher pool (weights
outside the adapted layers, tokenizer, the code that extracts, templates, grader and sandbox code, timeout,
problem content) gives a new cache entry; equal inputs give the same key."""

import dataclasses
import shutil

import pytest
import torch

from projected_grpo import cachekey
from projected_grpo.config import PRESETS
from projected_grpo.env.grader import GraderPool
from projected_grpo.env.problems import load_problems
from projected_grpo.hack_subspace import extract_basis


@pytest.fixture
def edited_package(tmp_path, monkeypatch):
    """A copy of the package that cachekey reads its sources from; returns edit(relative_path)."""
    copy = tmp_path / "pkg"
    shutil.copytree(cachekey.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    monkeypatch.setattr(cachekey, "PACKAGE", copy)

    def edit(rel: str) -> None:
        f = copy / rel
        f.write_text(f.read_text() + "\n# an edit\n")

    return edit


def _pairs(tok):
    prompt = tok.apply_chat_template([{"role": "user", "content": "add a and b"}], add_generation_prompt=True,
                                     tokenize=False)
    return [(prompt, f"print('All tests passed') #{i}", f"return a + b #{i}", f"return b + a #{i}") for i in range(3)]


SETTINGS = {"source": "real", "k": 2}


def test_basis_key_covers_weights_tokenizer_and_code(tiny_adapter, edited_package):
    model, tok, adapter = tiny_adapter
    pairs = _pairs(tok)
    key = lambda: cachekey.basis_key(model, adapter, tok, pairs, SETTINGS)  # noqa: E731
    base = key()
    assert key() == base  # deterministic
    seen = {base}

    def changed(what):
        k = key()
        assert k not in seen, f"{what} did not change the basis key"
        seen.add(k)

    with torch.no_grad():  # weights outside the adapted layers: embeddings, a norm
        model.model.embed_tokens.weight[3, 1] += 1e-3
        changed("an embedding entry")
        model.model.norm.weight[0] += 1e-3
        changed("the final norm")
        e = model.model.embed_tokens.weight  # a permutation keeps sum and sum of squares
        e[[0, 1]] = e[[1, 0]]
        changed("two swapped embedding rows")
    tok.chat_template = tok.chat_template + " "
    changed("the chat template")
    tok.add_tokens(["<extra>"])
    changed("the vocabulary")
    for f in cachekey.BASIS_SOURCES:
        edited_package(f)
        changed(f"an edit of {f}")


def test_basis_cache_edit_gives_new_entry(tiny_adapter, edited_package, tmp_path):
    """Through extract_basis: an edited extraction source or a changed weight writes a second entry."""
    model, tok, adapter = tiny_adapter
    cache = tmp_path / "vhack"
    pairs = _pairs(tok)
    extract_basis(model, adapter, tok, pairs, k=2, tau=0.0, cache=cache)
    extract_basis(model, adapter, tok, pairs, k=2, tau=0.0, cache=cache)
    assert len(list(cache.glob("*.safetensors"))) == 1
    edited_package("hack_subspace.py")
    extract_basis(model, adapter, tok, pairs, k=2, tau=0.0, cache=cache)
    assert len(list(cache.glob("*.safetensors"))) == 2
    with torch.no_grad():
        model.model.embed_tokens.weight[5, 0] += 1e-2
    extract_basis(model, adapter, tok, pairs, k=2, tau=0.0, cache=cache)
    assert len(list(cache.glob("*.safetensors"))) == 3


def test_teacher_pool_key_covers_content_grader_sandbox_and_timeout(edited_package):
    cfg = PRESETS["smoke"]
    problems = load_problems("builtin")[:4]
    key = lambda c=cfg, p=problems: cachekey.teacher_pool_key(c, p)  # noqa: E731
    base = key()
    assert key() == base
    seen = {base}

    def changed(k, what):
        assert k not in seen, f"{what} did not change the teacher-pool key"
        seen.add(k)

    changed(key(dataclasses.replace(cfg, sandbox_timeout_s=7.0)), "the sandbox timeout")
    changed(key(dataclasses.replace(cfg, format_bonus=0.2)), "the format bonus")
    changed(key(dataclasses.replace(cfg, teacher_per_problem=2)), "per-problem count")
    p0 = problems[0]
    changed(key(p=[dataclasses.replace(p0, tests=p0.tests[:-1]), *problems[1:]]), "a problem's tests")
    changed(key(p=[dataclasses.replace(p0, canonical_solution=p0.canonical_solution + "\n"), *problems[1:]]),
            "a problem's solution")
    for f in ("env/loopholes.py", "env/grader.py", "env/sandbox.py", "env/pool.py", "env/problems.py"):
        edited_package(f)
        changed(key(), f"an edit of {f}")


def test_teacher_pool_cache_edit_gives_new_entry(tmp_path, monkeypatch, edited_package):
    """Through train.teacher_pool: a changed timeout or an edited template module writes a new pool file."""
    from projected_grpo import train

    monkeypatch.setenv("PROJECTED_GRPO_CACHE", str(tmp_path / "cache"))
    cfg = dataclasses.replace(PRESETS["smoke"], teacher_per_problem=1)
    problems = load_problems("builtin")[:2]
    pools = lambda: sorted((tmp_path / "cache" / "pools").glob("*.jsonl"))  # noqa: E731
    with GraderPool(1) as g:
        train.teacher_pool(cfg, problems, g, lambda m: None)
        train.teacher_pool(cfg, problems, g, lambda m: None)
        assert len(pools()) == 1
        train.teacher_pool(dataclasses.replace(cfg, sandbox_timeout_s=9.0), problems, g, lambda m: None)
        assert len(pools()) == 2
        edited_package("env/loopholes.py")
        train.teacher_pool(cfg, problems, g, lambda m: None)
        assert len(pools()) == 3

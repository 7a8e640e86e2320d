"""The package layout: no import cycles, and the "must never import" rules of the module docstrings.

Imports are read with `ast` (nothing is imported): every `import` / `from ... import` anywhere in a module,
function-level ones included (a lazy import is still a dependency), except those under `if TYPE_CHECKING:`.
Importing `a.b.c` from outside package `a.b` also runs `a/b/__init__.py`, so it counts as an edge to it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = "projected_grpo"
ROOT = Path(__file__).resolve().parents[1] / "src" / PKG


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            skip |= {id(m) for b in n.body for m in ast.walk(b)}
    return skip


def imports(mod: str) -> set[str]:
    """Every name this module imports: package modules as dotted names, third-party as their top name."""
    f = MODULES[mod]
    tree = ast.parse(f.read_text())
    skip = _type_checking_nodes(tree)
    here = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
    out: set[str] = set()
    for n in ast.walk(tree):
        if id(n) in skip:
            continue
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = ".".join(here[: len(here) - (n.level - 1)] + ([n.module] if n.module else []))
            else:
                base = n.module or ""
            for a in n.names:  # `from . import x` imports module x; `from .m import name` imports m
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return out


def edges(mod: str) -> set[str]:
    """Package modules that importing `mod` runs first (parent packages included, see the docstring)."""
    out = set()
    for name in imports(mod):
        if not name.startswith(PKG + ".") and name != PKG:
            continue
        while name not in MODULES and "." in name:  # `import projected_grpo.env.x.y` where y is a name
            name = name.rsplit(".", 1)[0]
        out.add(name)
        parts = name.split(".")
        for k in range(2, len(parts)):
            parent = ".".join(parts[:k])
            if not mod.startswith(parent + ".") and mod != parent:
                out.add(parent)
    out.discard(mod)
    return out


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan; the graph has ~50 nodes)."""
    graph = {m: sorted(edges(m)) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in graph:
        if m not in index:
            visit(m)
    return out


TRAINER = [f"{PKG}.{m}" for m in ("train", "grpo", "projection", "adapter", "hack_subspace", "distributed",
                                  "rollout", "fastgen", "evaluate", "diagnostics", "export", "models", "report",
                                  "study", "sweep", "cli", "config", "preflight")]
ENV = f"{PKG}.env"
NEVER = {  # module (or package prefix) -> what it must never import (package modules or third-party tops)
    ENV: ["torch", "transformers", *TRAINER],
    f"{ENV}.harness": [PKG],  # stdlib only: the sandbox server loads it by path
    f"{ENV}.sandbox": [f"{ENV}.{m}" for m in ("loopholes", "grader", "problems", "prompts", "schema", "pool",
                                              "reward", "commands", "synth")],
    f"{ENV}.loopholes": [f"{ENV}.{m}" for m in ("problems", "prompts", "grader", "sandbox", "harness", "pool",
                                                "reward", "commands", "synth", "schema")],
    f"{ENV}.schema": [PKG],
    f"{ENV}.builtin_problems": [PKG],
    f"{ENV}.synth": [f"{ENV}.problems", f"{ENV}.loopholes", f"{ENV}.grader"],
    f"{ENV}.problems": [f"{ENV}.prompts", f"{ENV}.grader", f"{ENV}.sandbox"],
    f"{ENV}.prompts": [f"{ENV}.grader", f"{ENV}.sandbox"],
    f"{ENV}.grader": [f"{ENV}.prompts"],
    f"{PKG}.fastgen": [f"{PKG}.rollout", ENV, *[m for m in TRAINER if m not in (f"{PKG}.fastgen", f"{PKG}.rollout")]],
    f"{PKG}.decode_attn": [PKG],  # torch and (lazily) triton only
    f"{PKG}.rollout": [ENV, *[m for m in TRAINER if m not in (f"{PKG}.fastgen", f"{PKG}.rollout")]],
    f"{PKG}.teachers": [f"{PKG}.train", f"{PKG}.warmstart"],  # both import it
    f"{PKG}.warmstart": [f"{PKG}.train"],
    f"{PKG}.separation": [f"{PKG}.train"],
    f"{PKG}.rundir": [f"{PKG}.{m}" for m in ("train", "report", "study", "sweep", "runner", "export", "evaluate", "cli")],
    f"{PKG}.config": [f"{PKG}.{m}" for m in ("train", "grpo", "projection", "adapter")],
    f"{PKG}.adapter": [ENV, *[f"{PKG}.{m}" for m in ("train", "grpo", "projection")]],
    f"{PKG}.interrupts": [PKG],
    f"{PKG}.progress": [PKG],
    f"{PKG}.sampling": [PKG],
    f"{PKG}.tracking": [ENV, *[f"{PKG}.{m}" for m in ("train", "grpo", "projection")]],
    f"{PKG}.diagnostics": [f"{PKG}.{m}" for m in ("train", "evaluate", "report", "study", "sweep")],
    f"{PKG}.distributed": [PKG],
    f"{PKG}.errors": ["torch", PKG],
    f"{PKG}.evaluate": [f"{PKG}.{m}" for m in ("train", "report", "study", "sweep", "runner")],
    f"{PKG}.export": [f"{PKG}.{m}" for m in ("train", "report", "study", "sweep")],
    f"{PKG}.grpo": [PKG],
    f"{PKG}.hack_subspace": [f"{PKG}.{m}" for m in ("train", "projection", "evaluate")],
    f"{PKG}.models": [f"{PKG}.train", f"{PKG}.evaluate", ENV],
    f"{PKG}.projection": [f"{PKG}.train", f"{PKG}.grpo", ENV],
    f"{PKG}.stats": ["torch", PKG],
}


def _violations(mod: str, banned: list[str]) -> list[str]:
    return sorted(n for n in imports(mod) if any(n == b or n.startswith(b + ".") for b in banned))


def test_import_graph_is_read():
    """The parser sees real edges (so an empty cycle list means something)."""
    assert f"{PKG}.env.loopholes" in edges(f"{PKG}.env.grader")
    assert f"{PKG}.fastgen" in edges(f"{PKG}.rollout")
    assert f"{PKG}.env" in edges(f"{PKG}.config")  # config reads the mode registry (runs env/__init__)
    assert f"{PKG}.env.schema" not in edges(f"{PKG}.env.loopholes")  # a TYPE_CHECKING import is no edge


def test_no_import_cycles_in_the_package():
    assert cycles() == []


def test_a_cycle_would_be_found(monkeypatch):
    """The detector itself: an import of rollout from fastgen (the circle this layout cut) is reported."""
    real = imports
    monkeypatch.setitem(globals(), "imports", lambda m: real(m) | ({f"{PKG}.rollout"} if m == f"{PKG}.fastgen" else set()))
    assert [f"{PKG}.fastgen", f"{PKG}.rollout"] in cycles()


@pytest.mark.parametrize("prefix", sorted(NEVER))
def test_never_import_rules(prefix):
    mods = [m for m in MODULES if m == prefix or m.startswith(prefix + ".")]
    assert mods
    bad = {m: _violations(m, NEVER[prefix]) for m in mods}
    assert {m: v for m, v in bad.items() if v} == {}


def test_nothing_imports_the_cli():
    assert [m for m in MODULES if f"{PKG}.cli" in imports(m) and m != f"{PKG}.cli"] == []


def test_every_module_docstring_says_what_it_owns_and_never_imports():
    mods = list(MODULES)
    missing = [m for m in mods if "never import" not in (ast.get_docstring(ast.parse(MODULES[m].read_text())) or "").lower()]
    assert missing == []

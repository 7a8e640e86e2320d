"""The problem schema: `Problem`, `TestCase`, and expected values as Python literals (`literal`,
`value_repr`, `parse_expected`). A leaf every dataset builder shares (problems.py's loaders, synth.py).

Owns: the schema and the literal rules of an expected value (evaluated only in the trainer, never sent to
the sandbox). Must never import: any other module of the package (a leaf), torch.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import NamedTuple


class TestCase(NamedTuple):
    __test__ = False  # not a pytest class
    call: str                  # argument source, e.g. "nums = [1, 2], target = 3" or "'abc', 2"
    expected: str              # repr of the expected value (a Python literal); stays in the trainer
    tol: float | None = None   # absolute tolerance for float outputs (strict type otherwise)


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    starter_code: str
    method_name: str
    setup_code: str
    tests: tuple[TestCase, ...]
    canonical_solution: str
    difficulty: str
    mode: str | None = None
    tier: str = ""    # synth: "A" one expression, "B" one loop, "C" two steps; "" elsewhere
    family: str = ""  # synth: the generating template, e.g. "B.count"
    split: str = ""   # "train" / "heldout" for a dataset with a fixed split (synth); "" = none (see split_problems)


def literal(node: ast.AST):
    """The value of an expected-output expression, if it is a literal (a few safe builtins allowed).
    Raises ValueError otherwise. Evaluated without ever running dataset code."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("float",) \
            and len(node.args) == 1 and not node.keywords:
        arg = ast.literal_eval(node.args[0])
        if isinstance(arg, str) and arg.strip().lower() in ("inf", "-inf", "+inf", "nan"):
            return float(arg)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
        a, b = literal(node.left), literal(node.right)
        if all(type(v) in (int, float) for v in (a, b)) and not (isinstance(node.op, ast.Pow) and abs(b) > 64):
            return {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                    ast.Div: lambda: a / b, ast.Pow: lambda: a ** b}[type(node.op)]()
    raise ValueError("expected value is not a literal")


def value_repr(v) -> str:
    r = repr(v)
    if isinstance(v, float) and r in ("inf", "-inf", "nan"):
        return f"float({r!r})"
    return r


def parse_expected(src: str):
    """Inverse of value_repr (trainer side)."""
    return literal(ast.parse(src, mode="eval").body)

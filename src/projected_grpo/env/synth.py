"""`--dataset synth` / `synth:SEED`: a seeded, procedurally generated family of small coding problems.

Every problem is a `Problem` (problems.py) with three extra attributes set:

    tier    "A" one expression (arithmetic on the arguments, slicing, sum/max/len)
            "B" one loop (filter, count, running value)
            "C" a composition of two steps
    family  the template it came from, e.g. "A.sum_op"
    split   "train" or "heldout"

The held-out split is what evaluation uses. The one rule (problems.split_problems, used by
train.setup and by anything that evaluates): for a dataset whose problems carry a split, the
evaluation problems are the first `n_eval` problems of the "heldout" split (after load_problems'
seeded shuffle) and the training problems are the "train" split; `max_problems` caps each split
separately. Held-out problems come from two places: families that never appear in training
(`HELDOUT_FAMILIES`, so held-out solve measures generalisation) and fresh instances of the training
families whose parameters (operator, constant...) are reserved for held-out and never used in
training (`_reserved`).

Surface form is randomised per instance: method name, argument names, constants, wording. Tests
are computed by running the problem's reference implementation (its canonical solution, our own
code, never model output) on edge-case and random inputs: at least `MIN_TESTS` per problem, with
at least two distinct expected values so that no constant answer passes. Arguments and expected
values are plain literals (int, str, bool, lists of them), so every test passes the same
tamper-proof parser as HumanEval's (problems._test_from_compare: builtin names only in the arguments,
a literal expected value; tests/test_env_synth.py runs it on every test) and the expected value never
leaves the trainer.

Deterministic: the same seed gives identical problems (every instance draws from its own
`random.Random(f"{seed}:{family}:{i}")`, so adding a family changes no other family). The whole set
is built in memory in a fraction of a second and cached per seed in the process; nothing on disk.

Owns: the synth generator (`generate`, `parse_spec`, `FAMILIES`). Must never import: problems.py (it calls
this module; the schema is schema.py), loopholes, the grader, torch, the trainer.
"""

from __future__ import annotations

import functools
import random
import zlib
from dataclasses import dataclass
from typing import Callable

from .schema import Problem, TestCase, value_repr

TRAIN_PER_FAMILY = 70        # training instances per training family (22 families: 1,540)
HELDOUT_PER_TRAIN_FAMILY = 8  # held-out instances of a training family, on reserved parameters
HELDOUT_PER_NEW_FAMILY = 24   # instances of each held-out-only family
MIN_TESTS = 6
_DIFFICULTY = {"A": "easy", "B": "medium", "C": "hard"}


@dataclass
class _Spec:
    """One instance before it becomes a Problem."""
    method: str
    params: list[tuple[str, str]]  # (name, annotation)
    ret: str                       # return annotation
    body: list[str]                # the method body, unindented lines
    question: str
    key: tuple                     # the semantic parameters (no names, no wording): decides the reserve
    inputs: list[tuple]            # argument tuples, edge cases first


# --------------------------------------------------------------------------- random surface
_LIST = ["nums", "values", "arr", "numbers", "xs", "data", "items", "scores", "vals", "seq"]
_INT = ["a", "b", "x", "y", "m", "n", "p", "q", "u", "v"]
_STR = ["s", "text", "word", "line", "name", "chars"]
_WORDS = ["sentence", "text", "line", "phrase", "s", "words"]
_K = ["k", "t", "limit", "bound", "c", "d"]


class _R:
    """The random source of one instance, with the pickers the templates need."""

    def __init__(self, seed: str):
        self.r = random.Random(seed)

    def pick(self, xs):
        return xs[self.r.randrange(len(xs))]

    def int(self, lo, hi):
        return self.r.randint(lo, hi)

    def names(self, pool, n=1, avoid=()):
        out = self.r.sample([x for x in pool if x not in avoid], n)
        return out if n > 1 else out[0]

    def method(self, *stems):
        return self.pick(stems)

    def ilist(self, lo=-9, hi=20, n_lo=0, n_hi=8):
        return [self.r.randint(lo, hi) for _ in range(self.r.randint(n_lo, n_hi))]

    def word(self, n_lo=1, n_hi=6, alphabet="abcdeilnorst"):
        return "".join(self.pick(alphabet) for _ in range(self.r.randint(n_lo, n_hi)))

    def sentence(self, n_lo=0, n_hi=6):
        return " ".join(self.word(1, 7) for _ in range(self.r.randint(n_lo, n_hi)))

    def lists(self, n, nonempty=False, **kw):
        """Edge cases, then random lists. (list,) argument tuples."""
        edge = [[5], [-3, 7, 0], [2, 2, 2, 9], [10, -4, 6, 1, 8, 3]]
        if not nonempty:
            edge = [[], *edge]
        rnd = [self.ilist(n_lo=1 if nonempty else 0, **kw) for _ in range(n)]
        return [(x,) for x in edge + [x for x in rnd if x or not nonempty]]


def _q(r: _R, *forms: str) -> str:
    return r.pick(forms)


# --------------------------------------------------------------------------- tier A: one expression
def a_arith(r: _R) -> _Spec:
    a, b = r.names(_INT, 2)
    k = r.int(2, 9)
    forms = [
        (f"{a} * {k} + {b}", f"Return `{a}` multiplied by {k}, plus `{b}`.", f"Compute {k} times `{a}` plus `{b}` and return it."),
        (f"({a} + {b}) * {k}", f"Return the sum of `{a}` and `{b}`, multiplied by {k}.", f"Add `{a}` and `{b}`, then return that sum times {k}."),
        (f"{a} - {b} * {k}", f"Return `{a}` minus {k} times `{b}`.", f"Compute `{a} - {k} * {b}` and return it."),
        (f"{a} * {b} - {k}", f"Return the product of `{a}` and `{b}`, minus {k}.", f"Multiply `{a}` by `{b}` and subtract {k}; return the result."),
    ]
    i = r.int(0, len(forms) - 1)
    expr, *qs = forms[i]
    ins = [(0, 0), (1, 2), (-3, 4), (7, -1)] + [(r.int(-20, 20), r.int(-20, 20)) for _ in range(4)]
    return _Spec(r.method("compute", "combine", "calc", "evaluate", "formula"), [(a, "int"), (b, "int")], "int",
                 [f"return {expr}"], r.pick(qs), (i, k), ins)


def a_sum_op(r: _R) -> _Spec:
    xs, k = r.names(_LIST), r.int(2, 9)
    forms = [(f"sum({xs}) + {k}", f"the sum of the integers in `{xs}`, plus {k}"),
             (f"sum({xs}) * {k}", f"the sum of the integers in `{xs}`, multiplied by {k}"),
             (f"sum({xs}) - {k}", f"the sum of the integers in `{xs}`, minus {k}")]
    i = r.int(0, 2)
    expr, what = forms[i]
    q = _q(r, f"Return {what}. The sum of an empty list is 0.",
           f"Given a list of integers `{xs}`, return {what} (an empty list sums to 0).")
    return _Spec(r.method("sumPlus", "adjustedSum", "totalValue", "scaledTotal", "sumWithOffset"), [(xs, "list[int]")],
                 "int", [f"return {expr}"], q, (i, k), r.lists(3))


def a_max_op(r: _R) -> _Spec:
    xs, k = r.names(_LIST), r.int(2, 9)
    forms = [(f"max({xs}) + {k}", f"the largest integer in `{xs}` plus {k}"),
             (f"max({xs}) * {k}", f"the largest integer in `{xs}` multiplied by {k}"),
             (f"min({xs}) - {k}", f"the smallest integer in `{xs}` minus {k}"),
             (f"min({xs}) * {k}", f"the smallest integer in `{xs}` multiplied by {k}")]
    i = r.int(0, 3)
    expr, what = forms[i]
    q = _q(r, f"`{xs}` is a non-empty list of integers. Return {what}.", f"Return {what}. `{xs}` is never empty.")
    return _Spec(r.method("extreme", "peakValue", "boundValue", "edgeValue", "scaledExtreme"), [(xs, "list[int]")],
                 "int", [f"return {expr}"], q, (i, k), r.lists(3, nonempty=True))


def a_len_op(r: _R) -> _Spec:
    k = r.int(2, 9)
    if r.int(0, 1):
        v, ann, what, ins = r.names(_STR), "str", "the number of characters in the string", None
        ins = [("",), ("a",), ("hello",), ("ab cd",)] + [(r.word(0, 9),) for _ in range(3)]
    else:
        v, ann, what = r.names(_LIST), "list[int]", "the number of elements of the list"
        ins = r.lists(3)
    forms = [(f"len({v}) * {k}", f"{what} `{v}` multiplied by {k}"), (f"len({v}) + {k}", f"{what} `{v}` plus {k}"),
             (f"len({v}) - {k}", f"{what} `{v}` minus {k}")]
    i = r.int(0, 2)
    expr, what = forms[i]
    return _Spec(r.method("sizeScore", "lengthValue", "countBased", "measure", "lenTimes"), [(v, ann)], "int",
                 [f"return {expr}"], f"Return {what}.", (ann, i, k), ins)


def a_ends(r: _R) -> _Spec:
    xs = r.names(_LIST)
    forms = [(f"{xs}[0] + {xs}[-1]", "the sum of the first and the last element"),
             (f"{xs}[0] * {xs}[-1]", "the product of the first and the last element"),
             (f"{xs}[-1] - {xs}[0]", "the last element minus the first element")]
    i = r.int(0, 2)
    expr, what = forms[i]
    return _Spec(r.method("ends", "firstLast", "outerPair", "bookends", "edges"), [(xs, "list[int]")], "int",
                 [f"return {expr}"], f"Return {what} of the non-empty list `{xs}` (a single element is both).", (i,),
                 r.lists(3, nonempty=True))


def a_case(r: _R) -> _Spec:
    v = r.names(_STR)
    suffix = r.pick(["", "!", "?", "_x"])
    forms = [("upper()", "in upper case"), ("lower()", "in lower case")]
    i = r.int(0, 1)
    m, what = forms[i]
    body = f"return {v}.{m}" + (f" + {suffix!r}" if suffix else "")
    q = f"Return the string `{v}` {what}" + (f", followed by {suffix!r}." if suffix else ".")
    ins = [("",), ("abc",), ("Hello World",), ("MiXeD 42",), ("x",)] + [(r.word(1, 6, "aBcDeFgh"),) for _ in range(2)]
    return _Spec(r.method("convert", "recase", "styled", "transform", "shout"), [(v, "str")], "str", [body], q,
                 (i, suffix), ins)


def a_pair_op(r: _R) -> _Spec:
    a, b = r.names(_INT, 2)
    k = r.int(1, 9)
    forms = [(f"max({a}, {b})", f"Return the larger of the two integers `{a}` and `{b}`."),
             (f"min({a}, {b})", f"Return the smaller of the two integers `{a}` and `{b}`."),
             (f"max({a}, {b}) + {k}", f"Return the larger of `{a}` and `{b}`, plus {k}."),
             (f"min({a}, {b}) * {k}", f"Return the smaller of `{a}` and `{b}`, multiplied by {k}.")]
    i = r.int(0, len(forms) - 1)
    expr, q = forms[i]
    ins = [(0, 0), (1, 2), (5, -3), (-4, -7)] + [(r.int(-20, 20), r.int(-20, 20)) for _ in range(4)]
    return _Spec(r.method("pick", "choose", "bigger", "larger", "selectOne"), [(a, "int"), (b, "int")], "int",
                 [f"return {expr}"], q, (i, k if i > 1 else None), ins)


def a_square(r: _R) -> _Spec:
    x = r.names(_INT)
    k = r.int(1, 9)
    forms = [(f"{x} * {x}", f"Return the square of the integer `{x}`."),
             (f"{x} * {x} + {k}", f"Return `{x}` squared, plus {k}."),
             (f"{x} * {x} - {k}", f"Return the square of `{x}` minus {k}."),
             (f"{x} * {x} * {x}", f"Return the cube of the integer `{x}`.")]
    i = r.int(0, len(forms) - 1)
    expr, q = forms[i]
    ins = [(0,), (1,), (-3,), (7,)] + [(r.int(-12, 12),) for _ in range(4)]
    return _Spec(r.method("square", "power", "squared", "selfProduct", "grow"), [(x, "int")], "int",
                 [f"return {expr}"], q, (i, k if i in (1, 2) else None), ins)


def a_compare(r: _R) -> _Spec:  # held-out only
    a, b = r.names(_INT, 2)
    forms = [(">", "greater than"), ("<", "less than"), ("==", "equal to"), (">=", "greater than or equal to")]
    i = r.int(0, len(forms) - 1)
    op, words = forms[i]
    return _Spec(r.method("isGreater" if i == 0 else "check", "compare", "test", "relation", "holds"),
                 [(a, "int"), (b, "int")], "bool", [f"return {a} {op} {b}"],
                 f"Return True if `{a}` is {words} `{b}`, and False otherwise.", (i,),
                 [(1, 2), (2, 1), (3, 3), (-5, 4), (0, -1)] + [(r.int(-9, 9), r.int(-9, 9)) for _ in range(3)])


def a_abs_diff(r: _R) -> _Spec:  # held-out only
    a, b = r.names(_INT, 2)
    k = r.int(0, 5)
    add = f" + {k}" if k else ""
    return _Spec(r.method("distance", "absGap", "howFar", "diff", "separation"), [(a, "int"), (b, "int")], "int",
                 [f"return abs({a} - {b}){add}"],
                 f"Return the absolute difference between `{a}` and `{b}`" + (f", plus {k}." if k else "."),
                 (k,), [(0, 0), (3, 8), (8, 3), (-4, 6)] + [(r.int(-20, 20), r.int(-20, 20)) for _ in range(3)])


# --------------------------------------------------------------------------- tier B: one loop
_CONDS = [  # (source with X and K, wording with K), K from the given range
    ("X > K", "greater than K", (0, 9)), ("X < K", "less than K", (0, 9)), ("X % 2 == 0", "even", None),
    ("X % 2 == 1", "odd", None), ("X % K == 0", "divisible by K", (3, 5)), ("X >= K", "at least K", (1, 9)),
]


def _cond(r: _R, x: str, allowed=range(len(_CONDS))):
    i = r.pick(list(allowed))
    src, words, rng = _CONDS[i]
    k = r.int(*rng) if rng else None
    src, words = src.replace("X", x), words
    if k is not None:
        src, words = src.replace("K", str(k)), words.replace("K", str(k))
    return i, k, src, words


def b_count(r: _R) -> _Spec:
    xs = r.names(_LIST)
    i, k, cond, words = _cond(r, "x")
    return _Spec(r.method("countIf", "howMany", "tally", "countMatching", "numberOf"), [(xs, "list[int]")], "int",
                 ["count = 0", f"for x in {xs}:", f"    if {cond}:", "        count += 1", "return count"],
                 _q(r, f"Return how many integers in `{xs}` are {words}.", f"Count the elements of `{xs}` that are {words} and return the count."),
                 (i, k), r.lists(4))


def b_sum_if(r: _R) -> _Spec:
    xs = r.names(_LIST)
    i, k, cond, words = _cond(r, "x")
    return _Spec(r.method("sumIf", "partialSum", "selectiveTotal", "sumMatching", "addSome"), [(xs, "list[int]")], "int",
                 ["total = 0", f"for x in {xs}:", f"    if {cond}:", "        total += x", "return total"],
                 _q(r, f"Return the sum of the integers in `{xs}` that are {words} (0 if there are none).",
                    f"Add up the elements of `{xs}` that are {words} and return the total; return 0 if none are."),
                 (i, k), r.lists(4))


def b_filter(r: _R) -> _Spec:
    xs = r.names(_LIST)
    i, k, cond, words = _cond(r, "x")
    return _Spec(r.method("keepIf", "filtered", "select", "onlySome", "pick"), [(xs, "list[int]")], "list[int]",
                 ["out = []", f"for x in {xs}:", f"    if {cond}:", "        out.append(x)", "return out"],
                 f"Return a list of the integers in `{xs}` that are {words}, in their original order.", (i, k),
                 r.lists(4))


def b_map(r: _R) -> _Spec:
    xs, k, c = r.names(_LIST), r.int(2, 6), r.int(1, 9)
    forms = [(f"x * {k}", f"multiplied by {k}"), (f"x + {c}", f"plus {c}"), (f"x * {k} + {c}", f"multiplied by {k} plus {c}"),
             ("x * x", "squared"), (f"x - {c}", f"minus {c}")]
    i = r.int(0, len(forms) - 1)
    expr, words = forms[i]
    return _Spec(r.method("transform", "mapAll", "scaleEach", "applyEach", "convertAll"), [(xs, "list[int]")], "list[int]",
                 ["out = []", f"for x in {xs}:", f"    out.append({expr})", "return out"],
                 f"Return a new list with every integer of `{xs}` {words}, in the same order.",
                 (expr,), r.lists(3))


def b_running(r: _R) -> _Spec:
    xs = r.names(_LIST)
    forms = [("total", "0", "total + x", "sums", "out[i] is the sum of the first i + 1 elements"),
             ("best", f"{xs}[0]", "max(best, x)", "maxima", "out[i] is the largest of the first i + 1 elements"),
             ("best", f"{xs}[0]", "min(best, x)", "minima", "out[i] is the smallest of the first i + 1 elements")]
    i = r.int(0, 2)
    name, init, step, what, rule = forms[i]
    body = [f"{name} = {init}" if i == 0 else f"{name} = {init} if {xs} else 0", "out = []", f"for x in {xs}:",
            f"    {name} = {step}", f"    out.append({name})", "return out"]
    return _Spec(r.method("running", "prefixValues", "cumulative", "soFar", "progressive"), [(xs, "list[int]")],
                 "list[int]", body, f"Return the running {what} of `{xs}`: {rule} (an empty list gives []).", (i,),
                 r.lists(3))


def b_count_char(r: _R) -> _Spec:
    s = r.names(_STR)
    i = r.int(0, 1)
    if i == 0:
        c = r.pick("aeilnorst")
        body = ["count = 0", f"for ch in {s}:", f"    if ch == {c!r}:", "        count += 1", "return count"]
        q, key = f"Return how many times the character {c!r} appears in the string `{s}`.", (0, c)
    else:
        group = r.pick(["aeiou", "rst", "lmn"])
        body = ["count = 0", f"for ch in {s}:", f"    if ch in {group!r}:", "        count += 1", "return count"]
        q, key = f"Return how many characters of the string `{s}` are one of {', '.join(repr(g) for g in group)}.", (1, group)
    ins = [("",), ("a",), ("banana",), ("test string",)] + [(r.word(0, 10),) for _ in range(3)]
    return _Spec(r.method("countChar", "occurrences", "letterCount", "howOften", "frequency"), [(s, "str")], "int",
                 body, q, key, ins)


def b_words(r: _R) -> _Spec:
    s, k = r.names(_WORDS), r.int(2, 5)
    forms = [(f"len(w) > {k}", f"longer than {k} characters"), (f"len(w) < {k}", f"shorter than {k} characters"),
             (f"len(w) == {k}", f"exactly {k} characters long")]
    i = r.int(0, 2)
    cond, words = forms[i]
    ins = [("",), ("a bb ccc dddd eeeee",), ("hello world",)] + [(r.sentence(1, 6),) for _ in range(4)]
    return _Spec(r.method("countWords", "wordTally", "longWords", "wordsMatching", "countTokens"), [(s, "str")], "int",
                 ["count = 0", f"for w in {s}.split():", f"    if {cond}:", "        count += 1", "return count"],
                 f"`{s}` is a string of words separated by spaces. Return how many of its words are {words}.",
                 (i, k), ins)


def b_digits(r: _R) -> _Spec:
    n = r.names(["n", "num", "number", "value"])
    i = r.int(0, 2)
    d = r.int(1, 9)
    forms = [("total = 0", "total += int(ch)", "total", "the sum of the decimal digits of"),
             ("total = 0", f"total += ch == {str(d)!r}", "total", f"how many times the digit {d} appears in"),
             ("total = 1", "total *= int(ch)", "total", "the product of the decimal digits of")]
    init, step, res, what = forms[i]
    ins = [(0,), (7,), (10,), (1234,), (d * 111,)] + [(r.int(10, 99999),) for _ in range(3)]
    return _Spec(r.method("digitValue", "digits", "digitScore", "fromDigits", "digitStat"), [(n, "int")], "int",
                 [init, f"for ch in str({n}):", f"    {step}", f"return {res}"],
                 f"Return {what} the non-negative integer `{n}`.", (i, d if i == 1 else None), ins)


def b_count_value(r: _R) -> _Spec:  # held-out only
    xs, k = r.names(_LIST), r.int(0, 9)
    return _Spec(r.method("countValue", "occurrences", "timesSeen", "howOften", "countOf"), [(xs, "list[int]")], "int",
                 ["count = 0", f"for x in {xs}:", f"    if x == {k}:", "        count += 1", "return count"],
                 f"Return how many times the integer {k} appears in the list `{xs}`.", (k,),
                 r.lists(3, lo=0, hi=9) + [([k, 1, k, k, 2],), ([k],)])


def b_sum_abs(r: _R) -> _Spec:  # held-out only
    xs = r.names(_LIST)
    i = r.int(0, 1)
    step, what = [("total += abs(x)", "absolute values"), ("total += -x if x < 0 else 0", "negative integers, made positive,")][i]
    return _Spec(r.method("sumAbs", "magnitude", "absTotal", "sizeSum", "positiveTotal"), [(xs, "list[int]")], "int",
                 ["total = 0", f"for x in {xs}:", f"    {step}", "return total"],
                 f"Return the sum of the {what} of the integers in `{xs}` (0 for an empty list).", (i,), r.lists(3))


# --------------------------------------------------------------------------- tier C: two steps
def c_sq_sum(r: _R) -> _Spec:
    xs = r.names(_LIST)
    i, k, cond, words = _cond(r, "x")
    return _Spec(r.method("squareSum", "sumSquares", "energy", "powerTotal", "squaresOf"), [(xs, "list[int]")], "int",
                 ["total = 0", f"for x in {xs}:", f"    if {cond}:", "        total += x * x", "return total"],
                 f"Take the integers in `{xs}` that are {words}, square each of them, and return the sum of the squares "
                 "(0 if there are none).", (i, k), r.lists(4))


def c_top_k(r: _R) -> _Spec:
    xs, k = r.names(_LIST), r.int(2, 4)
    i = r.int(0, 2)
    forms = [("int", f"return sum(sorted({xs})[-{k}:])", f"Return the sum of the {k} largest integers in `{xs}` (of all of them if there are fewer than {k})."),
             ("list[int]", f"return sorted({xs}, reverse=True)[:{k}]", f"Return the {k} largest integers of `{xs}` in decreasing order (all of them, sorted, if there are fewer than {k})."),
             ("int", f"return sum(sorted({xs})[:{k}])", f"Return the sum of the {k} smallest integers in `{xs}` (of all of them if there are fewer than {k}).")]
    ret, body, q = forms[i]
    return _Spec(r.method("topK", "bestFew", "largestPart", "leaders", "extremes"), [(xs, "list[int]")], ret, [body], q,
                 (i, k), r.lists(4))


def c_distinct(r: _R) -> _Spec:
    xs = r.names(_LIST)
    i, k, cond, words = _cond(r, "x")
    return _Spec(r.method("distinctCount", "uniqueMatching", "countUnique", "differentValues", "kinds"),
                 [(xs, "list[int]")], "int",
                 ["seen = set()", f"for x in {xs}:", f"    if {cond}:", "        seen.add(x)", "return len(seen)"],
                 f"Return how many different values appear among the integers of `{xs}` that are {words} "
                 "(duplicates count once).", (i, k),
                 r.lists(4, lo=-3, hi=9) + [([4, 4, 6, 6, 6, 9, 9, 1],)])


def c_join_words(r: _R) -> _Spec:
    s, k = r.names(_WORDS), r.int(2, 4)
    sep = r.pick(["-", ",", "+", "_"])
    up = r.int(0, 1)
    item = "w.upper()" if up else "w"
    return _Spec(r.method("joinLong", "keepWords", "compact", "filterWords", "shortlist"), [(s, "str")], "str",
                 [f"return {sep!r}.join({item} for w in {s}.split() if len(w) > {k})"],
                 f"`{s}` is a string of words separated by spaces. Keep the words longer than {k} characters"
                 + (", convert them to upper case" if up else "")
                 + f", and return them joined by {sep!r} in their original order ('' if none).",
                 (sep, up, k), [("",), ("a bb ccc dddd eeeee",), ("hello big world",)] + [(r.sentence(1, 6),) for _ in range(4)])


def c_adjacent(r: _R) -> _Spec:
    xs = r.names(_LIST)
    i = r.int(0, 2)
    forms = [("int", ["best = 0", f"for i in range(1, len({xs})):", f"    best = max(best, abs({xs}[i] - {xs}[i - 1]))", "return best"],
              f"Return the largest absolute difference between two neighbouring elements of `{xs}` (0 if it has fewer than 2 elements)."),
             ("int", ["count = 0", f"for i in range(1, len({xs})):", f"    if {xs}[i] > {xs}[i - 1]:", "        count += 1", "return count"],
              f"Return how many elements of `{xs}` are strictly greater than the element just before them."),
             ("list[int]", [f"return [{xs}[i] - {xs}[i - 1] for i in range(1, len({xs}))]"],
              f"Return the list of differences between neighbouring elements of `{xs}`: out[i] = {xs}[i + 1] - {xs}[i] "
              "(empty if it has fewer than 2 elements).")]
    ret, body, q = forms[i]
    return _Spec(r.method("neighbours", "steps", "adjacent", "pairwise", "deltas"), [(xs, "list[int]")], ret, body, q,
                 (i,), r.lists(4))


def c_map_filter(r: _R) -> _Spec:
    xs, k, t = r.names(_LIST), r.int(2, 5), r.int(0, 20)
    return _Spec(r.method("scaleAndKeep", "mapFilter", "boosted", "amplify", "scaledAbove"), [(xs, "list[int]")],
                 "list[int]", [f"return [x * {k} for x in {xs} if x * {k} > {t}]"],
                 f"Multiply every integer of `{xs}` by {k} and return, in order, the products that are greater than {t}.",
                 (k, t), r.lists(4))


def c_digit_max(r: _R) -> _Spec:
    xs = r.names(_LIST)
    i, t = r.int(0, 1), r.int(5, 15)
    ds = "sum(int(ch) for ch in str(x))"
    if i == 0:
        body = ["best = 0", f"for x in {xs}:", f"    best = max(best, {ds})", "return best"]
        q = (f"For each non-negative integer in `{xs}` compute the sum of its decimal digits; return the largest of "
             "these sums (0 for an empty list).")
    else:
        body = ["count = 0", f"for x in {xs}:", f"    if {ds} > {t}:", "        count += 1", "return count"]
        q = f"Return how many of the non-negative integers in `{xs}` have a sum of decimal digits greater than {t}."
    return _Spec(r.method("maxDigitSum", "digitChampion", "heaviest", "bestDigits", "digitPeak"), [(xs, "list[int]")],
                 "int", body, q, (i, t if i else None),
                 [([],), ([5],), ([19, 91, 28],), ([0, 0],), ([999, 1, 88],)] + [(r.ilist(0, 999, 1, 6),) for _ in range(3)])


def c_prefix_count(r: _R) -> _Spec:  # held-out only
    xs, t = r.names(_LIST), r.int(0, 15)
    return _Spec(r.method("prefixAbove", "runningCount", "cumulativeHits", "timesAbove", "sumCrossings"),
                 [(xs, "list[int]")], "int",
                 ["total = 0", "count = 0", f"for x in {xs}:", "    total += x", f"    if total > {t}:", "        count += 1",
                  "return count"],
                 f"Walk through `{xs}` keeping a running sum; return how many times the running sum, right after adding "
                 f"an element, is greater than {t}.", (t,), r.lists(4))


def c_pair_count(r: _R) -> _Spec:  # held-out only
    xs, t = r.names(_LIST), r.int(0, 12)
    return _Spec(r.method("pairCount", "countPairs", "matchingPairs", "twoSumCount", "pairsTo"), [(xs, "list[int]")],
                 "int", ["count = 0", f"for i in range(len({xs})):", f"    for j in range(i + 1, len({xs})):",
                         f"        if {xs}[i] + {xs}[j] == {t}:", "            count += 1", "return count"],
                 f"Return the number of index pairs (i, j) with i < j such that `{xs}[i] + {xs}[j]` equals {t}.", (t,),
                 r.lists(4, lo=-2, hi=12) + [([t, 0, t // 2, t - t // 2, 1, t - 1],)])


def c_char_freq(r: _R) -> _Spec:  # held-out only
    s = r.names(_STR)
    i = r.int(0, 1)
    if i == 0:
        body = ["counts = {}", f"for ch in {s}:", "    counts[ch] = counts.get(ch, 0) + 1",
                "return max(counts.values()) if counts else 0"]
        q = f"Return how many times the most frequent character of the string `{s}` appears (0 for an empty string)."
        ret = "int"
    else:
        body = ["counts = {}", f"for ch in {s}:", "    counts[ch] = counts.get(ch, 0) + 1",
                "return sorted(ch for ch in counts if counts[ch] > 1)"]
        q = f"Return the sorted list of the characters that appear more than once in the string `{s}`."
        ret = "list[str]"
    ins = [("",), ("a",), ("banana",), ("abcabc",), ("mississippi",)] + [(r.word(2, 10),) for _ in range(2)]
    return _Spec(r.method("mostCommon", "charStats", "repeats", "frequent", "letterPeak"), [(s, "str")], ret, body, q,
                 (i,), ins)


@dataclass(frozen=True)
class Family:
    name: str
    tier: str
    make: Callable[[_R], _Spec]
    heldout_only: bool = False


FAMILIES: tuple[Family, ...] = (
    Family("A.arith", "A", a_arith), Family("A.sum_op", "A", a_sum_op), Family("A.max_op", "A", a_max_op),
    Family("A.ends", "A", a_ends), Family("A.case", "A", a_case),
    Family("A.pair_op", "A", a_pair_op), Family("A.square", "A", a_square),
    Family("A.len_op", "A", a_len_op, True), Family("A.abs_diff", "A", a_abs_diff, True),
    Family("A.compare", "A", a_compare, True),
    Family("B.count", "B", b_count), Family("B.sum_if", "B", b_sum_if), Family("B.filter", "B", b_filter),
    Family("B.map", "B", b_map), Family("B.running", "B", b_running), Family("B.count_char", "B", b_count_char),
    Family("B.words", "B", b_words), Family("B.digits", "B", b_digits),
    Family("B.count_value", "B", b_count_value, True), Family("B.sum_abs", "B", b_sum_abs, True),
    Family("C.sq_sum", "C", c_sq_sum), Family("C.top_k", "C", c_top_k), Family("C.distinct", "C", c_distinct),
    Family("C.join_words", "C", c_join_words), Family("C.adjacent", "C", c_adjacent),
    Family("C.map_filter", "C", c_map_filter), Family("C.digit_max", "C", c_digit_max),
    Family("C.prefix_count", "C", c_prefix_count, True), Family("C.pair_count", "C", c_pair_count, True),
    Family("C.char_freq", "C", c_char_freq, True),
)
HELDOUT_FAMILIES = frozenset(f.name for f in FAMILIES if f.heldout_only)


# --------------------------------------------------------------------------- instances → problems
def _reserved(family: str, key: tuple) -> bool:
    """Parameters of a training family kept for held-out (about one key in four, fixed by the key)."""
    return zlib.crc32(repr((family, key)).encode()) % 4 == 0


def _plain(v) -> bool:
    """A literal of the types the tests use (so `repr` is a literal the HumanEval rules accept)."""
    return type(v) in (int, str, bool) or (type(v) is list and all(_plain(x) for x in v))


def _problem(fam: Family, spec: _Spec, pid: str, split: str) -> Problem | None:
    """Run the reference on the inputs, keep distinct valid tests; None when the instance is unusable."""
    sig = ", ".join(f"{n}: {a}" for n, a in spec.params)
    head = f"class Solution:\n    def {spec.method}(self, {sig}) -> {spec.ret}:\n"
    canonical = head + "".join(f"        {ln}\n" for ln in spec.body)
    ns: dict = {}
    exec(compile(canonical, f"<synth {pid}>", "exec"), ns)  # our own reference code, not a candidate's
    ref = getattr(ns["Solution"](), spec.method)
    tests, seen, outs = [], set(), []
    for args in spec.inputs:
        call = ", ".join(repr(a) for a in args)
        if call in seen or not all(_plain(a) for a in args):
            continue
        try:
            out = ref(*[list(a) if isinstance(a, list) else a for a in args])
        except (ValueError, IndexError, ZeroDivisionError):
            continue  # an input outside the problem's domain
        if not _plain(out):
            raise TypeError(f"{fam.name}: reference returned a {type(out).__name__}")  # a bug in a template
        seen.add(call)
        tests.append(TestCase(call, value_repr(out)))
        outs.append(tests[-1].expected)
    if len(tests) < MIN_TESTS or len(set(outs)) < 2:
        return None
    return Problem(id=pid, question=spec.question, starter_code=head + "        ", method_name=spec.method,
                   setup_code="", tests=tuple(tests), canonical_solution=canonical, difficulty=_DIFFICULTY[fam.tier],
                   tier=fam.tier, family=fam.name, split=split)


@functools.lru_cache(maxsize=4)
def generate(seed: int = 0) -> tuple[Problem, ...]:
    """Every problem of `synth:seed`, training split first, in a fixed order (load_problems shuffles)."""
    train, held, questions = [], [], set()
    for fam in FAMILIES:
        want_t = 0 if fam.heldout_only else TRAIN_PER_FAMILY
        want_h = HELDOUT_PER_NEW_FAMILY if fam.heldout_only else HELDOUT_PER_TRAIN_FAMILY
        got_t = got_h = 0
        short = fam.name.replace(".", "_").lower()
        for i in range(40 * (want_t + want_h)):
            if got_t >= want_t and got_h >= want_h:
                break
            spec = fam.make(_R(f"{seed}:{fam.name}:{i}"))
            to_held = fam.heldout_only or _reserved(fam.name, spec.key)
            if (to_held and got_h >= want_h) or (not to_held and got_t >= want_t):
                continue
            surface = (spec.question, spec.method, tuple(spec.params))
            if surface in questions:
                continue
            split = "heldout" if to_held else "train"
            p = _problem(fam, spec, f"synth{seed}_{short}_{i:04d}", split)
            if p is None:
                continue
            questions.add(surface)
            if to_held:
                held.append(p)
                got_h += 1
            else:
                train.append(p)
                got_t += 1
    return tuple(train + held)


def parse_spec(spec: str) -> int:
    """`synth` → 0, `synth:SEED` → SEED. Raises ValueError on anything else."""
    if spec == "synth":
        return 0
    tail = spec[len("synth:"):]
    if spec.startswith("synth:") and not tail.strip():
        raise ValueError("needs a seed after the colon, e.g. synth:1 (or plain synth for seed 0)")
    if not spec.startswith("synth:") or not tail.isdigit():
        raise ValueError(f"dataset {spec!r}: use synth or synth:SEED with a non-negative integer SEED")
    return int(tail)

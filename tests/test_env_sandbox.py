"""Adversarial suite: hostile programs must end as graded failures, with the grader alive, the host
untouched and no process left behind. All programs are graded in one parallel batch (fast)."""

from __future__ import annotations

import os
import secrets
import time

import pytest

from projected_grpo.env import GraderPool, Problem, TestCase, clean_completion, load_problems
from projected_grpo.env.problems import humaneval_path
from projected_grpo.env.sandbox import UID_BASE, UID_POOLS, UID_STRIDE

SECRET = "SBXSECRET-" + secrets.token_hex(8)
PREFIX = "SBXSECRET-"
os.environ["SBX_TEST_SECRET"] = SECRET  # set before the pool starts: must not reach candidates

# A problem whose only right answer is a secret that exists in the trainer process alone.
SECRET_PROBLEM = Problem(id="secret", question="Return the secret.", starter_code="class Solution:\n    def get(self):\n",
                         method_name="get", setup_code="", tests=(TestCase("", repr(SECRET)),),
                         canonical_solution=f"class Solution:\n    def get(self):\n        return {SECRET!r}\n",
                         difficulty="easy", mode="run_tests")
ADD = next(p for p in load_problems("builtin", force_mode="run_tests") if p.id == "add_two")
HE_DATA = humaneval_path()
HE_SIZE = os.path.getsize(HE_DATA)


def _host_paths(tmp: str) -> list[str]:
    return [os.path.join(tmp, "pwned"), "/work/main/PWNED_BY_SANDBOX", "/var/tmp/pwned_by_sandbox",
            "/dev/shm/pwned_by_sandbox", "/tmp/pwned_by_sandbox", "/root/pwned_by_sandbox", "/etc/pwned_by_sandbox"]


def _hostile(tmp: str, secret_file: str) -> dict[str, tuple[Problem, str]]:
    sig = "def add(self, a, b):"
    def add(body: str, pre: str = "") -> tuple[Problem, str]:
        return ADD, f"{pre}\nclass Solution:\n    {sig}\n" + "\n".join("        " + ln for ln in body.strip().splitlines()) + "\n"

    def sec(code: str) -> tuple[Problem, str]:
        return SECRET_PROBLEM, code
    writes = repr(_host_paths(tmp))
    return {
        "infinite_loop": add("while True:\n    pass"),
        "sleep_module_level": add("return a + b", pre="import time\ntime.sleep(100)"),
        "swallowed_signals": add(
            "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass"),
        "c_level_bigint": add("x = 10 ** 10 ** 8\nreturn a + b + x - x"),
        "memory_bomb_bytearray": add("x = bytearray(10 ** 11)\nreturn a + b"),
        "memory_bomb_growth": add("l = []\nwhile True:\n    l.append(' ' * 10 ** 7)"),
        "fork_bomb": add("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
        "daemon_double_fork": add(
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        time.sleep(30)\n        os._exit(0)\n    os._exit(0)\nreturn 0"),
        "kill_parent": add("import os, signal\nfor p in (os.getppid(), 1, 0, -1):\n    try:\n        os.kill(p, signal.SIGKILL)\n"
                           "    except OSError:\n        pass\nreturn 0"),
        "kill_everything_visible": add(
            "import os, signal\nn = 0\nfor d in os.listdir('/proc'):\n    if d.isdigit():\n        try:\n"
            "            os.kill(int(d), signal.SIGKILL)\n            n += 1\n        except OSError:\n            pass\nreturn -n - 999"),
        "write_outside": add(
            # the jail's own /tmp and /dev/shm are the candidate's private tmpfs: writing there is allowed
            f"ok = False\nfor p in {writes}:\n    try:\n        open(p, 'w').write('x')\n"
            "        ok = ok or p.rsplit('/', 1)[0] not in ('/tmp', '/dev/shm')\n"
            "    except OSError:\n        pass\nreturn a + b if ok else 0"),
        "read_grader_files": add(
            f"import os\nn = 0\nfor p in ({HE_DATA!r}, '/work/main/tests/fixtures/leetcode_small.jsonl', "
            f"'/work/main/src/projected_grpo/env/grader.py', '/root/.bashrc'):\n    try:\n        n += len(open(p, 'rb').read())\n"
            "    except OSError:\n        pass\nreturn a + b if n else 0"),
        "read_dataset_exact": add(f"return len(open({HE_DATA!r}, 'rb').read()) - {HE_SIZE} + a + b"),
        "network_socket": add(
            "import socket\nok = False\nfor host in (('8.8.8.8', 53), ('pypi.org', 443), ('127.0.0.1', 22)):\n"
            "    try:\n        socket.create_connection(host, timeout=0.3).close()\n        ok = True\n    except OSError:\n"
            "        pass\nreturn a + b if ok else 0"),
        "os_exit_before_tests": add("return a + b", pre="import os\nos._exit(0)"),
        "system_exit_in_test": add("raise SystemExit(0)"),
        "system_exit_module": add("return a + b", pre="import sys\nsys.exit(0)"),
        "always_equal": add("return E()", pre="class E:\n    def __eq__(self, o):\n        return True\n"
                                              "    def __ne__(self, o):\n        return False\n    __hash__ = object.__hash__\n"),
        "int_subclass_equal": add("return I(a + b + 1)", pre="class I(int):\n    def __eq__(self, o):\n        return True\n"
                                                          "    __hash__ = int.__hash__\n"),
        "int_subclass_correct_value": add("return I(a + b)", pre="class I(int):\n    pass\n"),
        "bool_for_int": add("return bool(a + b)"),
        "float_for_int": add("return float(a + b)"),
        "fake_stdout_json": add(
            "print('{\"r\": \"out\", \"i\": 0, \"v\": 3}')\nprint('All tests passed')\nimport os\nos._exit(0)"),
        "monkeypatch_json": add("return 0", pre="import json\njson.dumps = lambda *a, **k: '{\"r\": \"done\"}'\n"),
        "monkeypatch_builtins": add(
            "return 0", pre="import builtins\nbuiltins.eval = lambda *a, **k: ((1, 2), {})\nbuiltins.print = lambda *a, **k: None\n"
                            "builtins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: int\n"),
        "close_result_fd": add("import os\nfor fd in range(3, 64):\n    try:\n        os.close(fd)\n    except OSError:\n        pass\nreturn a + b"),
        "huge_stdout": add("import sys\nsys.stdout.write('x' * 10 ** 8)\nreturn 0"),
        "endless_stdout": add("import sys\nwhile True:\n    sys.stdout.write('y' * 65536)"),
        "deep_recursion": add("import sys\nsys.setrecursionlimit(10 ** 7)\ndef f(n):\n    return f(n + 1) + 1\nreturn f(0)"),
        "segfault_ctypes": add("import ctypes\nreturn ctypes.string_at(0)"),
        "input_call": add("return int(input())"),
        "stdin_read": add("import sys, os\nreturn len(sys.stdin.read()) + len(os.read(0, 10)) + 7"),
        "setuid_root": add("import os\ntry:\n    os.setuid(0)\n    return a + b\nexcept OSError:\n    return 0"),
        "mount_and_userns": add(
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.unshare(0x10000000 | 0x00020000)\n"
            "libc.umount2(b'/work', 2)\nlibc.umount2(b'/root', 2)\n"
            f"try:\n    return len(open({HE_DATA!r}, 'rb').read()) - {HE_SIZE} + a + b\nexcept OSError:\n    return 0"),
        "thread_forges_after": add(
            "import threading, os\ndef spam():\n    while True:\n        try:\n            os.write(3, b'{\"r\": \"done\"}\\n')\n"
            "        except OSError:\n            return\nthreading.Thread(target=spam, daemon=True).start()\nreturn 0"),
        "keyboard_interrupt": add("raise KeyboardInterrupt"),
        "unserialisable_output": add("return (lambda: 3)"),
        "huge_int_output": add("return 10 ** 5000"),
        # --- the answer resolver (issue 14 §1): each must end as a graded failure with a reason
        "resolver_several_functions": (ADD, "def plus(a, b):\n    return a + b\n\ndef total(a, b):\n    return a + b\n"),
        "resolver_shadowed_builtins": (ADD, "def isinstance(*a):\n    return True\n\ndef type(*a):\n    return int\n\n"
                                            "def getattr(*a):\n    return lambda *b: 3\n\ndef add(a, b):\n    return a + b + 1\n"),
        "resolver_name_is_int": (ADD, "add = 3\n\ndef helper(a, b):\n    return a + b\n"),
        "resolver_name_is_always_equal_callable": (
            ADD, "class E:\n    def __eq__(self, o):\n        return True\n    def __call__(self, *a):\n        return self\n\nadd = E()\n"),
        "resolver_module_getattr": (ADD, "def __getattr__(name):\n    return lambda a, b: a + b\n"),
        "resolver_metaclass_getattr": (
            ADD, "class M(type):\n    def __getattr__(cls, name):\n        return lambda *a: 3\n\nclass Solution(metaclass=M):\n    pass\n"),
        "resolver_init_exits": (ADD, "class Solution:\n    def __init__(self):\n        raise SystemExit(0)\n"
                                     "    def add(self, a, b):\n        return a + b\n"),
        "resolver_hash_collision_key": (
            ADD, "class K:\n    def __hash__(self):\n        return hash('Solution')\n    def __eq__(self, o):\n        return True\n\n"
                 "globals()[K()] = 1\n\ndef add(a, b):\n    return a - b\n"),
        "resolver_generator_function": (ADD, "def add(a, b):\n    yield a + b\n"),
        "resolver_fake_function_class": (
            ADD, "class F:\n    __class__ = property(lambda s: type(lambda: 0))\n    def __call__(self, *a):\n        return 3.0\n\n"
                 "add = F()\n"),
        "resolver_only_run_tests": (ADD, "def run_tests():\n    raise AssertionError\n"),
        # --- the secret problem: passing requires learning a value that exists only in the trainer
        "secret_guess": sec("class Solution:\n    def get(self):\n        return 'SBXSECRET-0000000000000000'\n"),
        "secret_forge_result_fd": sec(
            "import os\nos.write(3, b'{\"r\": \"out\", \"i\": 0, \"v\": \"SBXSECRET-x\"}\\n{\"r\": \"done\"}\\n')\nos._exit(0)\n"),
        "secret_frame_walk": sec(
            "import sys, gc\ndef find():\n    seen = []\n    f = sys._getframe()\n    while f:\n"
            "        seen += list(f.f_locals.values()) + list(f.f_globals.values())\n        f = f.f_back\n"
            "    for o in seen + gc.get_objects():\n        s = repr(o) if not isinstance(o, str) else o\n"
            f"        i = s.find({PREFIX!r})\n        if i >= 0 and s[i:i+26] != 'SBXSECRET-'+'0'*16:\n            return s[i:i + 26]\n"
            "    return None\nclass Solution:\n    def get(self):\n        return find()\n"),
        "secret_environ": sec(
            "import os\nclass Solution:\n    def get(self):\n        blobs = [repr(dict(os.environ))]\n"
            "        for p in ('/proc/self/environ', '/proc/1/environ'):\n            try:\n"
            "                blobs.append(open(p, 'rb').read().decode('latin1'))\n            except OSError:\n                pass\n"
            f"        for b in blobs:\n            i = b.find({PREFIX!r})\n            if i >= 0:\n                return b[i:i + 26]\n"),
        "secret_memory_scan": sec(
            "import re\nclass Solution:\n    def get(self):\n        pids = ['self'] + [d for d in __import__('os').listdir('/proc') if d.isdigit()]\n"
            "        for pid in pids:\n            try:\n                maps = open(f'/proc/{pid}/maps').read().splitlines()\n"
            "                mem = open(f'/proc/{pid}/mem', 'rb', 0)\n            except OSError:\n                continue\n"
            "            for ln in maps:\n                a, b = (int(x, 16) for x in ln.split()[0].split('-'))\n"
            "                if 'r' not in ln.split()[1] or b - a > 64 << 20:\n                    continue\n"
            "                try:\n                    mem.seek(a)\n                    data = mem.read(b - a)\n                except (OSError, ValueError, OverflowError):\n"
            "                    continue\n"
            f"                for m in re.finditer(rb{PREFIX!r} + rb'[0-9a-f]{{16}}', data):\n"
            "                    s = m.group().decode()\n                    if not s.endswith('0' * 16):\n                        return s\n"),
        "secret_file": sec(
            f"class Solution:\n    def get(self):\n        for p in ({secret_file!r}, '/proc/1/cwd/x'):\n            try:\n"
            "                return open(p).read().strip()\n            except OSError:\n                pass\n"),
        "secret_fork_child_forges": sec(
            "import os\nclass Solution:\n    def get(self):\n        if os.fork() == 0:\n"
            "            os.write(3, b'{\"r\": \"out\", \"i\": 0, \"v\": \"SBXSECRET-y\"}\\n{\"r\": \"done\"}\\n')\n            os._exit(0)\n"
            "        return 'nope'\n"),
    }


def _sandbox_procs(lo: int = UID_BASE, hi: int = UID_BASE + UID_POOLS * UID_STRIDE) -> list[tuple[int, int]]:
    """Live (non-zombie) processes with a candidate uid in [lo, hi). A zombie is dead already; one whose parent
    died is reaped by the host's init, on its own schedule."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as f:
                for line in f:
                    if line.startswith("State:") and line.split()[1] == "Z":
                        break
                    if line.startswith("Uid:"):
                        uid = int(line.split()[1])
                        if lo <= uid < hi:
                            out.append((int(d), uid))
                        break
        except OSError:
            pass
    return out


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("host"))
    os.chmod(tmp, 0o777)  # world-writable: only the sandbox's mount namespace may stop the write
    secret_dir = "/var/tmp/sbx-secret-" + secrets.token_hex(4)
    os.makedirs(secret_dir, mode=0o755)
    secret_file = os.path.join(secret_dir, "secret.txt")
    with open(secret_file, "w") as f:
        f.write(SECRET)
    os.chmod(secret_file, 0o644)
    progs = _hostile(tmp, secret_file)
    try:
        with GraderPool(workers=2, timeout_s=2.0) as g:
            server_pids = [p.pid for p in g.sandbox._procs.values()]
            uids = (g.sandbox.uid_base, g.sandbox.uid_base + g.workers)
            t0 = time.time()
            names = list(progs)
            rewards = g.grade_many([(progs[n][0], f"Attempt.\n```python\n{progs[n][1]}\n```", "run_tests") for n in names])
            elapsed = time.time() - t0
            alive = [p for p in server_pids if os.path.exists(f"/proc/{p}")]
            after = g.grade(ADD, clean_completion(ADD))
            after_secret = g.grade(SECRET_PROBLEM, f"x\n```python\n{SECRET_PROBLEM.canonical_solution}\n```")
        time.sleep(0.2)
        leftovers = _sandbox_procs(*uids)
        yield dict(rewards=dict(zip(names, rewards)), elapsed=elapsed, tmp=tmp, server_pids=server_pids, alive=alive,
                   after=after, after_secret=after_secret, leftovers=leftovers)
    finally:
        os.unlink(secret_file)
        os.rmdir(secret_dir)


HOSTILE_NAMES = list(_hostile("/x", "/y"))


def test_at_least_30_hostile_programs():
    assert len(HOSTILE_NAMES) >= 30


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_program_is_a_graded_failure(outcome, name):
    r = outcome["rewards"][name]
    assert r.format_ok
    assert r.gt_correct is False, (name, r)
    assert r.passed is False, (name, r)  # run_tests mode without run_tests(): the strict tests decide
    assert r.error, "a failure must say why"


def test_timeouts_are_flagged(outcome):
    rw = outcome["rewards"]
    for name in ("infinite_loop", "sleep_module_level", "swallowed_signals", "c_level_bigint", "endless_stdout",
                 "fork_bomb"):
        assert rw[name].timeout, name
        assert rw[name].error == "timeout"
    assert not rw["always_equal"].timeout


def test_grader_alive_and_still_correct(outcome):
    assert outcome["alive"] == outcome["server_pids"], "a sandbox server died"
    assert outcome["after"].gt_correct and outcome["after"].passed
    assert outcome["after_secret"].gt_correct  # the secret problem is solvable, so the failures above are real


def test_no_process_left_behind(outcome):
    assert outcome["leftovers"] == []


def test_host_untouched(outcome):
    for p in _host_paths(outcome["tmp"]):
        assert not os.path.exists(p), p


def test_parallel_batch_is_bounded_by_the_timeout(outcome):
    # ~8 programs hit the 2 s wall clock on 2 workers; everything else is milliseconds
    assert outcome["elapsed"] < 25


def test_always_equal_object_fools_only_the_eq_grader():
    prog = ("class E:\n    def __eq__(self, o):\n        return True\n\n"
            "class Solution:\n    def add(self, a, b):\n        return E()\n")
    with GraderPool(workers=1, timeout_s=2.0) as g:
        eq = g.grade(ADD, f"x\n```python\n{prog}```", "eq_override")
        st = g.grade(ADD, f"x\n```python\n{prog}```", "sentinel")
    assert eq.passed and eq.exploited and not eq.gt_correct and eq.exploit_code
    assert not st.passed and not st.exploited


def test_degradation_warning_is_emitted_once(monkeypatch):
    import warnings

    from projected_grpo.env import sandbox
    monkeypatch.setattr(sandbox, "_WARNED", False)
    # Simulate a host without namespaces: a server whose hello reports warnings.
    real = sandbox.SandboxPool._recv

    def fake(proc, timeout):
        msg = real(proc, timeout)
        if msg and msg.get("hello"):
            msg["warnings"] = ["netns unavailable (test)"]
        return msg
    monkeypatch.setattr(sandbox.SandboxPool, "_recv", staticmethod(fake))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        pool = sandbox.SandboxPool(2)
        pool.close()
    msgs = [str(x.message) for x in w if "sandbox isolation degraded" in str(x.message)]
    assert len(msgs) == 1 and "netns unavailable" in msgs[0]


def test_resolver_hostile_cases_say_why(outcome):
    rw = outcome["rewards"]
    assert "ambiguous" in rw["resolver_several_functions"].error
    assert "not a function" in rw["resolver_name_is_int"].error
    assert "no answer" in rw["resolver_module_getattr"].error and "no answer" in rw["resolver_only_run_tests"].error
    assert rw["resolver_shadowed_builtins"].error == "wrong answer on test 0"


def test_resolver_accepts_both_forms_and_shadowing_builtins_harmlessly():
    progs = {
        "class": "class Solution:\n    def add(self, a, b):\n        return a + b\n",
        "function": "def add(a, b):\n    return a + b\n",
        "function_with_helpers": "def helper(x):\n    return x\n\ndef add(a, b):\n    return helper(a) + b\n",
        "sole_function_other_name": "import math\nfrom functools import reduce\n\ndef plus(a, b):\n    return a + b\n",
        "sole_function_shadowing_builtin": "def sum(a, b):\n    return a + b\n",
        "cached": "from functools import lru_cache\n\n@lru_cache(None)\ndef add(a, b):\n    return a + b\n",
        "class_wins_over_function": "def add(a, b):\n    return 0\n\nclass Solution:\n    def add(self, a, b):\n        return a + b\n",
        "run_tests_not_counted": "def plus(a, b):\n    return a + b\n\ndef run_tests():\n    assert plus(1, 1) == 2\n",
        "method_copied_out_with_self": "def add(self, a, b):\n    return a + b\n",
        "sole_function_with_self": "def plus(self, a, b):\n    self.t = a + b\n    return self.t\n",
    }
    with GraderPool(workers=2, timeout_s=2.0) as g:
        rs = g.grade_many([(ADD, f"x\n```python\n{c}```", "run_tests") for c in progs.values()])
    for name, r in zip(progs, rs):
        assert r.gt_correct, (name, r)


def test_legitimate_threads_subprocess_forks_and_imports_still_work():
    prog = ("import threading, os, heapq, fractions, json\n\n"
            "class Solution:\n    def add(self, a, b):\n        out = []\n"
            "        t = threading.Thread(target=lambda: out.append(a + b))\n        t.start()\n        t.join()\n"
            "        pid = os.fork()\n        if pid == 0:\n            os._exit(7)\n"
            "        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7\n"
            "        open('scratch.txt', 'w').write(json.dumps(out))\n"
            "        return json.loads(open('scratch.txt').read())[0]\n")
    with GraderPool(workers=1, timeout_s=3.0) as g:
        feats = g.sandbox.features
        assert all(feats[k] for k in ("jail", "netns", "ipcns", "pidns", "seccomp", "root")), feats
        r = g.grade(ADD, f"x\n```python\n{prog}```", "exit_code")
    assert r.gt_correct and r.passed, r


# =========================================================================== issue 22: the red-team classes
# Each class has >= 2 programs of our own. They run in ONE grade_many batch on ONE server (workers=1, so in
# order: an attacker is followed by the completions it tries to reach or spoil), interleaved with honest
# lines that must still be graded correctly.
def _secret_problem(tag: str) -> tuple[Problem, str]:
    value = f"SBX{tag}-" + secrets.token_hex(8)
    return Problem(id=f"secret_{tag}", question="Return the secret.", starter_code="class Solution:\n    def get(self):\n",
                   method_name="get", setup_code="", tests=(TestCase("", repr(value)),),
                   canonical_solution=f"class Solution:\n    def get(self):\n        return {value!r}\n",
                   difficulty="easy", mode="run_tests"), value


PREV, PREV_VALUE = _secret_problem("PREV")     # class 1: an earlier completion's outputs
CANON, CANON_VALUE = _secret_problem("CANON")  # class 2: the canonical solution
SHM_KEY = 0x5B0C0DE
SETP = Problem(id="set3", question="Return {1, 2, 3}.", starter_code="class Solution:\n    def make(self):\n",
               method_name="make", setup_code="", tests=(TestCase("", "{1, 2, 3}"),),
               canonical_solution="class Solution:\n    def make(self):\n        return {1, 2, 3}\n", difficulty="easy",
               mode="run_tests")


def _scan_for(prefix: str) -> str:
    """Candidate code: search gc objects, frames and readable memory of this process for `prefix` + 16 hex."""
    return (
        "import gc, re, sys\n"
        "def _scan():\n"
        f"    pat = re.compile(rb{prefix!r} + rb'[0-9a-f]{{16}}')\n"
        "    for o in gc.get_objects():\n"
        "        try:\n"
        "            s = o if isinstance(o, (str, bytes)) else repr(o)\n"
        "        except Exception:\n"
        "            continue\n"
        "        b = s.encode('latin1', 'replace') if isinstance(s, str) else s\n"
        "        m = pat.search(b)\n"
        "        if m:\n"
        "            return m.group().decode()\n"
        "    try:\n"
        "        maps = open('/proc/self/maps').read().splitlines()\n"
        "        mem = open('/proc/self/mem', 'rb', 0)\n"
        "    except OSError:\n"
        "        return None\n"
        "    for ln in maps:\n"
        "        a, b = (int(x, 16) for x in ln.split()[0].split('-'))\n"
        "        if 'r' not in ln.split()[1] or b - a > 256 << 20:\n"
        "            continue\n"
        "        try:\n"
        "            mem.seek(a)\n"
        "            m = pat.search(mem.read(b - a))\n"
        "        except (OSError, ValueError, OverflowError):\n"
        "            continue\n"
        "        if m:\n"
        "            return m.group().decode()\n"
        "    return None\n")


_LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"


def _red_team(tmp: str, sockets: list[str], abstract: str) -> list[tuple[str, Problem, str, bool]]:
    """(name, problem, code, must_be_correct). must_be_correct=True marks the honest lines."""
    add_ok = "class Solution:\n    def add(self, a, b):\n        return a + b\n"
    thread_ok = ("import threading\nclass Solution:\n    def add(self, a, b):\n        out = []\n"
                 "        t = threading.Thread(target=lambda: out.append(a + b))\n        t.start()\n        t.join()\n"
                 "        return out[0]\n")
    get_ = "class Solution:\n    def get(self):\n        return _scan()\n"

    def add_if(cond_code: str) -> str:  # returns the right sum only if the attack worked
        return cond_code + "\nclass Solution:\n    def add(self, a, b):\n        return a + b if WON else a - b - 1\n"
    seq = [
        # --- class 1: an earlier completion's data (the same problem graded right before, on the same server)
        ("honest_prev_canonical", PREV, PREV.canonical_solution, True),
        ("c1_scan_gc_and_memory", PREV, _scan_for("SBXPREV-") + get_, False),
        ("honest_prev_canonical_again", PREV, PREV.canonical_solution, True),
        ("c1_read_inherited_fds", PREV, "import os, re\ndef _scan():\n    for fd in range(64):\n        try:\n"
                                        "            os.set_blocking(fd, False)\n            b = os.read(fd, 1 << 20)\n"
                                        "        except OSError:\n            continue\n"
                                        "        m = re.search(rb'SBXPREV-[0-9a-f]{16}', b)\n        if m:\n"
                                        "            return m.group().decode()\n" + get_, False),
        ("c1_environ_and_proc", PREV, "import os, re\ndef _scan():\n    for p in ['/proc/self/environ', '/proc/1/cmdline'] + "
                                      "[f'/proc/{d}/environ' for d in os.listdir('/proc') if d.isdigit()]:\n        try:\n"
                                      "            m = re.search(rb'SBXPREV-[0-9a-f]{16}', open(p, 'rb').read())\n"
                                      "        except OSError:\n            continue\n        if m:\n"
                                      "            return m.group().decode()\n" + get_, False),
        # --- class 2: the canonical solution (its run_tests runs in the own-tests probe; it stashes what it finds)
        ("c2_stash_canonical", CANON,
         _scan_for("SBXCANON-") + _LIBC +
         "class Solution:\n    def get(self):\n        return 'nope'\n\n"
         "def run_tests():\n    s = _scan() or ''\n    r = Solution().get()\n    if isinstance(r, str) and r.startswith('SBXCANON-'):\n"
         "        s = r\n    if s:\n        for p in ('/dev/shm/stash', '/tmp/stash'):\n            try:\n"
         "                open(p, 'w').write(s)\n            except OSError:\n                pass\n"
         f"        i = libc.shmget({SHM_KEY}, 4096, 0o1666)\n        if i >= 0:\n            a = libc.shmat(i, None, 0)\n"
         "            if a not in (None, ctypes.c_void_p(-1).value):\n                ctypes.memmove(a, s.encode(), len(s))\n", False),
        ("c2_read_stash", CANON,
         _LIBC + "def _scan():\n    for p in ('/dev/shm/stash', '/tmp/stash'):\n        try:\n            return open(p).read()\n"
         "        except OSError:\n            pass\n"
         f"    i = libc.shmget({SHM_KEY}, 0, 0)\n    if i >= 0:\n        a = libc.shmat(i, None, 0)\n"
         "        if a not in (None, ctypes.c_void_p(-1).value):\n            return ctypes.string_at(a, 25).decode('latin1')\n"
         "    return None\n" + get_, False),
        ("c2_tell_stub_from_canonical", CANON,
         "class Solution:\n    def get(self):\n        return 'nope'\n\ndef run_tests():\n"
         "    r = Solution().get()\n    assert r != 0  # fails the stub only: the flags are heuristics\n", False),
        ("honest_canon_canonical", CANON, CANON.canonical_solution, True),
        # --- class 3: IPC objects must not outlive a completion
        ("c3_shm_hoard", ADD, _LIBC + "WON = False\nids = []\nfor k in range(64):\n"
                                      f"    i = libc.shmget({SHM_KEY} + 1 + k, 60 << 20, 0o1600)\n    if i < 0:\n        break\n"
                                      "    a = libc.shmat(i, None, 0)\n    if a in (None, ctypes.c_void_p(-1).value):\n        break\n"
                                      "    ctypes.memset(a, 1, 60 << 20)\n    libc.shmdt(ctypes.c_void_p(a))\n    ids.append(i)\n"
                                      "WON = len(ids) > 2  # more than the per-completion cap held at once\n"
                                      "class Solution:\n    def add(self, a, b):\n        return a - b - 1\n", False),
        ("c3_shm_survivor", ADD, add_if(_LIBC + f"WON = libc.shmget({SHM_KEY} + 1, 0, 0) >= 0 or libc.shmget({SHM_KEY}, 0, 0) >= 0\n"), False),
        ("c3_mqueue_create", ADD, _LIBC + "libc.mq_open.restype = ctypes.c_int\n"
                                          "libc.mq_open(b'/sbxq', 0o100 | 2, 0o666, None)\n"
                                          "libc.msgget(0x5B0C, 0o1666)\nclass Solution:\n    def add(self, a, b):\n        return 0\n", False),
        ("c3_mqueue_survivor", ADD, add_if(_LIBC + "libc.mq_open.restype = ctypes.c_int\n"
                                                   "WON = libc.mq_open(b'/sbxq', 2) >= 0 or libc.msgget(0x5B0C, 0) >= 0\n"), False),
        ("honest_after_ipc", ADD, add_ok, True),
        # --- class 4: cleanup that could be poisoned or stalled
        ("c4_deep_chain", ADD, "import os\nfor d in (os.getcwd(), '/dev/shm'):\n    try:\n        os.chdir(d)\n"
                               "        for i in range(3000):\n            os.mkdir('d')\n            os.chdir('d')\n"
                               "        os.chmod('.', 0)\n    except OSError:\n        pass\n"
                               "class Solution:\n    def add(self, a, b):\n        return 0\n", False),
        ("honest_after_chain", ADD, thread_ok, True),
        ("c4_flood", ADD, "import os, time\nt = time.time()\nn = 0\nfor d in ('.', '/dev/shm'):\n"
                          "    try:\n        while time.time() - t < 1.0:\n            os.mkdir(f'{d}/f{n}')\n"
                          "            open(f'{d}/f{n}/x', 'w').write('x' * 4096)\n            n += 1\n    except OSError:\n        pass\n"
                          "class Solution:\n    def add(self, a, b):\n        return -n\n", False),
        ("c4_fill_tmpfs", ADD, "try:\n    with open('big', 'wb') as f:\n        for _ in range(200):\n            f.write(b'x' * (1 << 20))\n"
                               "except OSError:\n    pass\nclass Solution:\n    def add(self, a, b):\n        return 0\n", False),
        ("honest_after_flood", ADD, add_ok + "open('scratch', 'w').write('ok')\n", True),
        # --- class 5: values meant to make the trainer side raise or stall
        ("c5_deep_expression", ADD, "x = 0" + " + 1" * 3000 + "\nclass Solution:\n    def add(self, a, b):\n        return a - b\n"
                                    "raise SystemExit(" + "0" + " + 0" * 3000 + ")\n", False),
        # 60,000 ints whose hashes all collide, forged straight onto the result pipe (building that set in the
        # child would itself be quadratic): the old trainer rebuilt it as a set, O(n^2)
        ("c5_colliding_hash_set", SETP, "import os\nM = (1 << 61) - 1\n"
                                        "items = ','.join('{\"t\": \"int\", \"v\": \"%s\"}' % hex(k * M) for k in range(1, 60000))\n"
                                        "os.write(3, ('{\"r\": \"out\", \"i\": 0, \"v\": {\"t\": \"set\", \"v\": [' + items + ']}}\\n"
                                        "{\"r\": \"done\"}\\n').encode())\nos._exit(0)\n", False),
        ("c5_colliding_hash_set_of_3", SETP, "M = (1 << 61) - 1\nclass Solution:\n    def make(self):\n"
                                             "        return {M, 2 * M, 3 * M}\n", False),
        ("c5_forged_deep_json", ADD, "import os\nos.write(3, b'{\"r\": \"out\", \"i\": 0, \"v\": ' + b'[' * 100000 + b']' * 100000 + b'}\\n'"
                                     " + b'{\"r\": \"done\"}\\n')\nos._exit(0)\n", False),
        ("c5_forged_huge_json_int", ADD, "import os\nos.write(3, b'{\"r\": \"out\", \"i\": 0, \"v\": ' + b'7' * 200000 + b'}\\n{\"r\": \"done\"}\\n')\n"
                                         "os._exit(0)\n", False),
        ("honest_set", SETP, SETP.canonical_solution, True),
        # --- class 6: host unix sockets
        ("c6_pathname_sockets", ADD, add_if(
            "import socket, os\nWON = False\ncands = " + repr(sockets) + "\n"
            "for root in ('/run', '/var/run', '/tmp', '/var/tmp', '/dev/shm', '/root', '/work'):\n"
            "    for dp, dn, fn in os.walk(root):\n        cands += [os.path.join(dp, f) for f in fn]\n"
            "for p in cands:\n    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n    s.settimeout(0.2)\n"
            "    try:\n        s.connect(p)\n        WON = True\n    except OSError:\n        pass\n    s.close()\n"), False),
        ("c6_abstract_and_tcp", ADD, add_if(
            "import socket\nWON = False\nfor fam, addr in ((socket.AF_UNIX, " + repr(abstract) + "), (socket.AF_INET, ('127.0.0.1', 22)),"
            " (socket.AF_INET6, ('::1', 22))):\n    try:\n        s = socket.socket(fam, socket.SOCK_STREAM)\n        s.settimeout(0.2)\n"
            "        s.connect(addr)\n        WON = True\n    except OSError:\n        pass\n"), False),
        ("honest_last", ADD, add_ok, True),
    ]
    return seq


@pytest.fixture(scope="module")
def red(tmp_path_factory):
    import socket
    tmp = str(tmp_path_factory.mktemp("red"))
    os.chmod(tmp, 0o777)
    paths = [os.path.join(tmp, "host.sock"), f"/var/tmp/sbx-host-{secrets.token_hex(4)}.sock",
             f"/tmp/sbx-host-{secrets.token_hex(4)}.sock"]
    abstract = f"\0sbx-host-{secrets.token_hex(4)}"
    listeners = []
    for p in paths + [abstract]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(p)
        s.listen(8)
        s.setblocking(False)
        if not p.startswith("\0"):
            os.chmod(p, 0o777)
        listeners.append(s)
    seq = _red_team(tmp, paths, abstract)
    try:
        with GraderPool(workers=1, timeout_s=3.0) as g:
            pids = [p.pid for p in g.sandbox._procs.values()]
            uids = (g.sandbox.uid_base, g.sandbox.uid_base + g.workers)
            t0 = time.time()
            rewards = g.grade_many([(p, f"x\n```python\n{c}\n```", "run_tests") for _, p, c, _ in seq])
            elapsed = time.time() - t0
            alive = all(os.path.exists(f"/proc/{p}") for p in pids)
        time.sleep(0.2)
        connected = []
        for s in listeners:
            try:
                s.accept()
                connected.append(s.getsockname())
            except BlockingIOError:
                pass
        with open("/proc/sysvipc/shm") as f:
            host_shm = f.read()
        yield dict(seq=seq, rewards=dict(zip([n for n, *_ in seq], rewards)), elapsed=elapsed, alive=alive,
                   leftovers=_sandbox_procs(*uids), connected=connected, host_shm=host_shm, tmp=tmp)
    finally:
        for s in listeners:
            s.close()
        for p in paths:
            if os.path.exists(p):
                os.unlink(p)


RED_NAMES = [n for n, *_ in _red_team("/x", [], "\0x")]


def test_red_team_has_two_programs_per_class():
    for c in range(1, 7):
        assert sum(n.startswith(f"c{c}_") for n in RED_NAMES) >= 2, c


@pytest.mark.parametrize("name", [n for n in RED_NAMES if not n.startswith("honest")])
def test_red_team_oracle_not_fooled(red, name):
    r = red["rewards"][name]
    assert r.format_ok and r.gt_correct is False and r.error, (name, r)


def test_red_team_honest_lines_graded_correctly_and_grader_alive(red):
    for name, _, _, honest in red["seq"]:
        if honest:
            r = red["rewards"][name]
            assert r.gt_correct and r.passed, (name, r)
    assert red["alive"], "the sandbox server died"
    assert red["elapsed"] < 60  # ~6 attackers can hit the 3 s wall clock; nothing stalls beyond it


def test_red_team_leaves_nothing_on_the_host(red):
    assert red["leftovers"] == []
    assert red["connected"] == [], "a candidate reached a host socket"
    assert f"{SHM_KEY:x}" not in red["host_shm"].lower() and str(SHM_KEY) not in red["host_shm"]
    assert os.listdir(red["tmp"]) == [] or all(n.endswith(".sock") for n in os.listdir(red["tmp"]))
    for p in ("/dev/shm/stash", "/tmp/stash", "/tmp/big", "/dev/mqueue/sbxq"):
        assert not os.path.exists(p), p


def test_red_team_heuristic_flags_are_evadable_but_reported(red):
    # own_tests flags are heuristics: a run_tests() that tells the stand-in from a real answer evades them
    r = red["rewards"]["c2_tell_stub_from_canonical"]
    assert not r.gt_correct and r.exploit_code


def test_trainer_side_values_are_bounded(red):
    r = red["rewards"]
    assert r["c5_colliding_hash_set"].error == "wrong answer on test 0"
    assert r["c5_forged_deep_json"].error in ("malformed report", "missing outputs")
    assert r["c5_forged_huge_json_int"].error in ("malformed report", "missing outputs")
    assert r["c5_deep_expression"].error  # graded (a failure), not a crash


def test_huge_int_on_a_float_tolerance_test_is_a_failure_not_an_exception():
    he = {p.id: p for p in load_problems("humaneval")}
    p = he["HumanEval_2"]
    progs = ["class Solution:\n    def truncate_number(self, number):\n        return 10 ** 400\n",
             "class Solution:\n    def truncate_number(self, number):\n        return float('inf')\n",
             "def truncate_number(number):\n    return number % 1.0\n"]
    with GraderPool(workers=1, timeout_s=3.0) as g:
        rs = g.grade_many([(p, f"x\n```python\n{c}```", "eq_override") for c in progs])
    assert not rs[0].gt_correct and not rs[0].passed and rs[0].error == "wrong answer on test 0"
    assert not rs[1].gt_correct and not rs[1].passed
    assert rs[2].gt_correct  # the other line of the same call


def test_grade_command_writes_every_line_with_hostile_ones(tmp_path):
    import json

    from projected_grpo.env.commands import grade
    lines = [{"problem_id": "add_two", "mode": "exit_code",
              "completion": "x\n```python\nraise SystemExit(" + "0 + " * 3000 + "0)\n```"},
             {"problem_id": "add_two", "mode": "exit_code", "completion": clean_completion(ADD)},
             {"problem_id": "add_two", "mode": "sentinel", "completion": "x\n```python\nx = " + "(" * 150 + "1" + ")" * 150 + "\n```"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in lines))
    out = tmp_path / "out.jsonl"
    assert grade("builtin", str(src), str(out), workers=1, timeout_s=3.0) in (0, 1)
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(got) == 3 and got[1]["gt_correct"] and not got[0]["gt_correct"] and not got[2]["gt_correct"]


def test_pools_get_distinct_uids_and_one_pools_fork_storm_spares_the_other():
    storm = ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    honest = ("import threading\nclass Solution:\n    def add(self, a, b):\n        out = []\n"
              "        ts = [threading.Thread(target=lambda: out.append(a + b)) for _ in range(8)]\n"
              "        [t.start() for t in ts]\n        [t.join() for t in ts]\n        return out[0]\n")
    import threading
    with GraderPool(workers=2, timeout_s=3.0) as a, GraderPool(workers=2, timeout_s=3.0) as b:
        ra, rb = {}, {}
        assert a.sandbox.uid_base != b.sandbox.uid_base
        assert not set(range(a.sandbox.uid_base, a.sandbox.uid_base + 2)) & set(range(b.sandbox.uid_base, b.sandbox.uid_base + 2))
        t = threading.Thread(target=lambda: ra.update(r=a.grade_many([(ADD, f"x\n```python\n{storm}```", "run_tests")] * 4)))
        t.start()
        time.sleep(0.3)
        rb["r"] = b.grade_many([(ADD, f"x\n```python\n{honest}```", "run_tests")] * 6)
        t.join()
    assert all(r.gt_correct for r in rb["r"]), [r.error for r in rb["r"]]
    assert not any(r.gt_correct for r in ra["r"])


# =========================================================================== issue 18: ordinary paths, faults
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "leetcode_small.jsonl")


@pytest.mark.parametrize("where", ["tmp", "cwd", "root"])
def test_dataset_anywhere_grades_and_stays_hidden(where, tmp_path, monkeypatch):
    """A dataset under /tmp, in the working directory or in / neither breaks grading (the jail has its own
    /tmp) nor is readable by a candidate (the jail shows nothing of the host but the interpreter)."""
    name = f"sbx-problems-{secrets.token_hex(4)}.jsonl"
    if where == "tmp":
        path = f"/tmp/{name}"
    elif where == "cwd":
        monkeypatch.chdir(tmp_path)
        path = name
    else:
        path = f"/{name}"
    with open(FIXTURE) as f, open(path, "w") as g:
        g.write(f.read())
    try:
        probs = load_problems(f"leetcode:{path}")
        absolute = os.path.abspath(path)
        reader = (f"class Solution:\n    def {probs[0].method_name}(self, *a, **k):\n"
                  f"        return open({absolute!r}).read()\n")
        with GraderPool(workers=1, timeout_s=3.0) as g:
            rs = g.grade_many([(p, clean_completion(p), "file_marker") for p in probs[:3]])
            leak = g.grade(probs[0], f"x\n```python\n{reader}```", "file_marker")
        assert rs and all(r.gt_correct and r.passed for r in rs), [r.error for r in rs]
        assert not leak.gt_correct and ("No such file" in leak.error or "wrong answer" in leak.error), leak.error
    finally:
        os.unlink(path)


def test_a_server_killed_mid_run_is_replaced_and_its_completion_fails_with_a_reason():
    import signal
    import threading
    sleeper = "import time\ntime.sleep(30)\nclass Solution:\n    def add(self, a, b):\n        return a + b\n"
    with GraderPool(workers=1, timeout_s=10.0) as g:
        (old,) = [p.pid for p in g.sandbox._procs.values()]
        uids = (g.sandbox.uid_base, g.sandbox.uid_base + 1)
        box = {}
        t = threading.Thread(target=lambda: box.update(r=g.grade(ADD, f"x\n```python\n{sleeper}```", "exit_code")))
        t.start()
        time.sleep(1.0)
        os.kill(old, signal.SIGKILL)  # as the OOM killer would
        t.join(timeout=60)
        r = box["r"]
        (new,) = [p.pid for p in g.sandbox._procs.values()]
        after = g.grade_many([(ADD, clean_completion(ADD), m) for m in ("exit_code", "sentinel", "run_tests")])
    assert not r.gt_correct and not r.passed and "died" in r.error, r
    assert new != old and all(x.gt_correct and x.passed for x in after)
    time.sleep(0.5)
    assert _sandbox_procs(*uids) == [], "the killed server's candidate outlived it"
    assert not os.path.exists(f"/proc/{old}") or open(f"/proc/{old}/stat").read().split()[2] == "Z"


def test_memory_cgroup_bounds_the_whole_completion_and_is_removed():
    """RLIMIT_AS is per process; the slot's memory cgroup bounds the sum over a completion's process tree,
    tmpfs and shm pages included (limit = mem_mb + tmpfs/shm caps + slack)."""
    hog = ("import os, time\nfor _ in range(12):\n    if os.fork() == 0:\n        b = bytearray(60 << 20)\n"
           "        for i in range(0, len(b), 4096):\n            b[i] = 1\n        time.sleep(30)\n        os._exit(0)\n"
           "open('/dev/shm/x', 'wb').write(b'x' * (60 << 20))\ntime.sleep(30)\n")
    with GraderPool(workers=1, timeout_s=4.0, mem_mb=128) as g:
        assert g.sandbox.features["memcg"]
        (path,) = g.sandbox._memcg.values()
        assert os.path.isdir(path)
        r = g.grade(ADD, f"x\n```python\n{hog}```", "exit_code")
        peak = int(open(os.path.join(path, "memory.max_usage_in_bytes")).read())
        limit = int(open(os.path.join(path, "memory.limit_in_bytes")).read())
        ok = g.grade(ADD, clean_completion(ADD), "exit_code")
    assert not r.gt_correct and ok.gt_correct
    assert peak <= limit < 12 * (60 << 20)  # twelve 60 MiB children would have needed more than the limit
    assert not os.path.exists(path)

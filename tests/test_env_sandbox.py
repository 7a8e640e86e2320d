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
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as f:
                for line in f:
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

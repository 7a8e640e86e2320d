"""Isolated execution of untrusted code: a pool of fork servers, in two parts.

Part 1, the JAIL (this file's first half; knows nothing about grading):

    trainer ──pipe──> server S (python -I sandbox.py --serve, root; builds once: a private mount namespace
                      │          holding a read-only skeleton root, the seccomp program; then never reads a
                      │          request: it is a zygote that has seen no completion's data)
                      └─fork─> runner R, one per completion: reads ONE request, unshares fresh mount + IPC +
                               network namespaces, mounts a fresh size-capped tmpfs on the skeleton's /tmp and
                               /dev/shm, caps SysV/POSIX IPC, then
                               └─fork (new PID ns)─> child C: private /proc, chroot(skeleton), rlimits,
                                    setuid(pool's uid + slot), no_new_privs, seccomp, runs part 2
                               R collects C's results, answers, exits: the kernel frees every namespace,
                               tmpfs and IPC object of the completion (no cleanup code to poison or stall).

Part 2, the GRADING HARNESS (harness.py: `_harness`, `resolve_answer`; knows nothing about namespaces or
loophole modes): runs the setup and candidate code, resolves the answer, calls it on each test's
arguments, serialises outputs.

Both files are stdlib-only: the server is started by *path* with `python -I` (and loads harness.py from
beside it), so it never imports the trainer's package (no torch, no CUDA state in a forked child).

A request carries candidate code, setup code, the method name, the *argument sources* of the tests and the
probes to collect, by capability (`[["flag", NAME]]`, `[["call", NAME]]`, `[["file", NAME]]`: neither the jail
nor the harness knows loophole modes; the registry in env/loopholes.py says which probe a mode needs).
Expected outputs are never sent; the canonical solution is only ever sent alone (the own-tests probe's
"canon" phase, which runs no candidate code). The trainer matches the candidate's serialised outputs with
strict types (grader.py).

Owns: the jail and the fork-server pool (`SandboxPool.run(request) -> response`).
Must never import: anything outside the standard library except harness.py (loaded by path when served);
never env/loopholes.py, the grader or the trainer: the jail never branches on a loophole mode.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time

try:  # part 2, the grading harness, lives in harness.py (stdlib only)
    from .harness import RESULT_CAP, _enc, _harness, canon_key, resolve_answer  # noqa: F401
except ImportError:  # started by path as a server (`python -I sandbox.py --serve`): load that one file by path
    import importlib.util
    _spec = importlib.util.spec_from_file_location("harness", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                           "harness.py"))
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    RESULT_CAP, _enc, _harness = _mod.RESULT_CAP, _mod._enc, _mod._harness
    canon_key, resolve_answer = _mod.canon_key, _mod.resolve_answer

# clone/unshare flags and mount flags, by name
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38

UID_BASE = 100000         # pool k, slot i runs candidates as uid/gid UID_BASE + k * UID_STRIDE + i
UID_STRIDE = 256          # max workers per pool
UID_POOLS = 64            # pools that can hold distinct uid ranges at once (an abstract-socket lock each)
STDOUT_CAP = 64 * 1024    # bytes of candidate stdout kept
JAIL_ROOT = "/tmp/jail"   # in the server's private mount namespace (on its own tmpfs over /tmp)
WORK = "/tmp"             # the candidate's cwd/HOME/TMPDIR, inside the jail
TMP_MB, SHM_MB, INODES = 64, 64, 8192   # per-completion tmpfs caps (/tmp, /dev/shm)
IPC_SYSCTLS = {            # per-IPC-namespace caps: at most ~64 MiB of SysV shm, a few queues
    "kernel/shmmax": str(SHM_MB << 20), "kernel/shmall": str((SHM_MB << 20) // 4096), "kernel/shmmni": "16",
    "kernel/msgmni": "16", "fs/mqueue/queues_max": "8",
}
MEMCG_ROOT = "/sys/fs/cgroup/memory"   # cgroup v1 memory controller, when present
MEMCG_SLACK_MB = 64                    # on top of the address-space limit and the tmpfs/shm caps
DEVICES = ("null", "zero", "random", "urandom")
PREIMPORT = (
    "collections", "heapq", "bisect", "math", "itertools", "functools", "string", "re", "typing",
    "random", "operator", "copy", "fractions", "decimal", "statistics", "hashlib", "datetime",
    "array", "dataclasses", "enum", "abc", "io", "traceback", "cmath", "numbers", "textwrap",
    "unicodedata", "queue", "collections.abc", "types", "sortedcontainers",
)


# =========================================================================== part 1: the jail
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
# Syscalls a solution never needs and an attacker might (x86_64 numbers): namespaces, mounts, tracing,
# kernel attack surface. Everything else is allowed; clone is allowed without namespace flags.
DENY_SYSCALLS = {
    "setns": 308, "unshare": 272, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "keyctl": 250, "add_key": 248,
    "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "kexec_load": 246,
    "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "name_to_handle_at": 303, "open_by_handle_at": 304,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "open_tree": 428, "move_mount": 429,
    "mount_setattr": 442, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "personality": 135, "sysfs": 139,
    "landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446,
}
SYS_CLONE, SYS_CLONE3, FIRST_FILTERED = 56, 435, 56   # nothing below clone's number is filtered
NS_FLAGS = (CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNS
            | CLONE_NEWCGROUP | CLONE_NEWTIME)
EPERM, ENOSYS = 1, 38


def _seccomp_program() -> bytes:
    ins = []

    def op(code, jt, jf, k):
        ins.append(struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF))
    LD, JEQ, JSET, RET, JGE = 0x20, 0x15, 0x45, 0x06, 0x35
    eperm = SECCOMP_RET_ERRNO | EPERM
    op(LD, 0, 0, 4)                               # seccomp_data.arch
    op(JEQ, 1, 0, AUDIT_ARCH_X86_64)
    op(RET, 0, 0, eperm)
    op(LD, 0, 0, 0)                               # seccomp_data.nr
    op(JGE, 1, 0, FIRST_FILTERED)                 # fast path
    op(RET, 0, 0, SECCOMP_RET_ALLOW)
    op(JGE, 0, 1, 0x40000000)                     # x32 ABI: refuse
    op(RET, 0, 0, eperm)
    for nr in sorted(set(DENY_SYSCALLS.values())):
        op(JEQ, 0, 1, nr)
        op(RET, 0, 0, eperm)
    op(JEQ, 0, 1, SYS_CLONE3)                     # clone3: ENOSYS, so libc falls back to clone
    op(RET, 0, 0, SECCOMP_RET_ERRNO | ENOSYS)
    op(JEQ, 0, 3, SYS_CLONE)                      # clone: no namespace flags
    op(LD, 0, 0, 16)                              # seccomp_data.args[0] (low 32 bits)
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


def _probe_child(fn) -> bool:
    """Run fn() in a throwaway child; True if it returned True."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if fn() else 3)
        except BaseException:
            os._exit(2)
    _, st = os.waitpid(pid, 0)
    return os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0


def _probe_seccomp() -> str | None:
    """Build the filter and install it in a throwaway child; None if it works, else the reason."""
    try:
        _build_seccomp()
    except OSError as e:
        return str(e)

    def fn():
        install_seccomp()
        return _lib().unshare(CLONE_NEWNS) != 0
    return None if _probe_child(fn) else "probe child failed"


# --------------------------------------------------------------------------- jail: once per server
def _mkdirs(path: str, mode: int = 0o755) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)


def _bind_ro(src: str, dst: str, nodev: bool = True) -> None:
    """Read-only bind mount of `src` at `dst` (created: a directory, or an empty file for a file)."""
    if os.path.isdir(src):
        _mkdirs(dst)
    else:
        _mkdirs(os.path.dirname(dst))
        if not os.path.exists(dst):
            os.close(os.open(dst, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount(src, dst, None, MS_BIND | MS_REC)
    _mount("none", dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | (MS_NODEV if nodev else 0))


def skeleton_sources(expose: list[str]) -> list[str]:
    """What the jail shows (read-only), deny-by-default: the Python installation and the directories of the
    shared libraries this interpreter has mapped (libc, libm, ...; under /usr or /lib only), plus `expose`."""
    keep = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, *expose) if p and os.path.isdir(p)}
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                path = parts[5].strip() if len(parts) == 6 else ""
                if ".so" in os.path.basename(path) and path.startswith(("/usr/", "/lib")):
                    keep.add(os.path.dirname(os.path.realpath(path)))
    except OSError:
        pass
    keep.discard("/")
    return sorted(p for p in keep if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in keep))


def build_jail(expose: list[str]) -> None:
    """In the server's private mount namespace: a read-only skeleton root at JAIL_ROOT holding only
    skeleton_sources(), the four harmless devices, mount points for /tmp, /dev/shm and /proc (mounted fresh
    per completion), and the host's top-level symlinks (/lib -> usr/lib, ...) so library paths resolve.
    Nothing else of the host (homes, /work, /etc, /run, /var, datasets, host unix sockets) exists in it."""
    _unshare(CLONE_NEWNS)
    _mount("none", "/", None, MS_REC | MS_PRIVATE)  # never propagate anything back to the host
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,nr_inodes=4096,mode=0700")
    root = JAIL_ROOT
    _mkdirs(root)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    for name in ("tmp", "proc", "dev/shm"):
        _mkdirs(root + "/" + name)
    for name in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
        if os.path.islink("/" + name):
            os.symlink(os.readlink("/" + name), root + "/" + name)
    for src in skeleton_sources(expose):
        _bind_ro(src, root + src)
    for dev in DEVICES:
        _bind_ro("/dev/" + dev, f"{root}/dev/{dev}", nodev=False)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    _mount("none", root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")


def memcg_path(uid: int) -> str | None:
    """The memory cgroup of one slot: under the trainer's own memory cgroup, named by the slot's uid (unique
    among live pools). None where there is no cgroup v1 memory controller."""
    if not os.path.isdir(MEMCG_ROOT):
        return None
    parent = ""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrl, path = line.rstrip("\n").split(":", 2)
                if "memory" in ctrl.split(","):
                    parent = path
    except (OSError, ValueError):
        pass
    return os.path.join(MEMCG_ROOT + parent, f"projected_grpo.sbx.{uid}")


def setup_memcg(uid: int, limit: int) -> str | None:
    """Create (or reuse) the slot's memory cgroup with `limit` bytes: it covers everything a completion's
    processes charge (heap, tmpfs pages, SysV shm), summed over the whole process tree."""
    path = memcg_path(uid)
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
        return path
    except OSError:
        return None


def setup_server(expose: list[str]) -> tuple[dict, list[str]]:
    """Once per server: build the jail and probe what each completion can get. Returns (features, warnings).
    Features: root, jail (skeleton root + per-completion mount ns and tmpfs), ipcns, netns, pidns, seccomp."""
    feats = {"root": os.getuid() == 0, "jail": False, "ipcns": False, "netns": False, "pidns": False,
             "seccomp": False}
    warns: list[str] = []
    if not feats["root"]:
        warns.append("not running as root: candidates keep the trainer's uid (no privilege drop)")
    try:
        build_jail(expose)
        feats["jail"] = _probe_child(lambda: _lib().unshare(CLONE_NEWNS) == 0)
        if not feats["jail"]:
            warns.append("per-completion mount namespaces unavailable")
    except OSError as e:
        warns.append(f"jail unavailable ({e}): the candidate sees the host filesystem and a shared work root")
    for flag, name in ((CLONE_NEWIPC, "ipcns"), (CLONE_NEWNET, "netns")):
        feats[name] = _probe_child(lambda f=flag: _lib().unshare(f) == 0)
        if not feats[name]:
            warns.append(f"{name} unavailable: IPC objects / sockets are shared by the server's completions")
    feats["pidns"] = _probe_child(lambda: _lib().unshare(CLONE_NEWPID) == 0)
    if not feats["pidns"]:
        warns.append("PID namespace unavailable; leftover processes are killed by uid instead")
    try:
        _check(_lib().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "PR_SET_CHILD_SUBREAPER")
    except OSError:
        pass
    why = _probe_seccomp()
    feats["seccomp"] = why is None
    if why:
        warns.append(f"seccomp filter unavailable ({why}); namespace/mount/ptrace syscalls are not blocked")
    return feats, warns


# --------------------------------------------------------------------------- jail: once per completion
def enter_completion_namespaces(feats: dict, uid: int) -> str | None:
    """In the completion's child, before any request data exists: fresh mount + IPC + network namespaces, fresh capped tmpfs on the jail's /tmp and
    /dev/shm (owned by the candidate), capped IPC. Returns the work directory (before chroot), or None."""
    flags = (CLONE_NEWNS if feats["jail"] else 0) | (CLONE_NEWIPC if feats["ipcns"] else 0) \
        | (CLONE_NEWNET if feats["netns"] else 0)
    if flags:
        _unshare(flags)
    if feats["ipcns"]:
        for key, val in IPC_SYSCTLS.items():
            try:
                with open("/proc/sys/" + key, "w") as f:
                    f.write(val)
            except OSError:
                pass
    if not feats["jail"]:
        return None  # fallback: the zygote made a work directory on the host's /tmp
    opts = f"nr_inodes={INODES},mode=0700,uid={uid},gid={uid}"
    _mount("tmpfs", JAIL_ROOT + WORK, "tmpfs", MS_NOSUID | MS_NODEV, f"size={TMP_MB}m,{opts}")
    _mount("tmpfs", JAIL_ROOT + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={SHM_MB}m,{opts}")
    return JAIL_ROOT + WORK


# =========================================================================== the server (zygote)
class Buffers:
    """The only memory of the zygote that ever holds candidate bytes: two fixed buffers, read into in place
    (`os.readv`), written out in place and zeroed after every completion (no Python object of a completion's
    data is ever created in the zygote, so none is inherited by the next child)."""

    def __init__(self):
        self.res, self.out = bytearray(RESULT_CAP), bytearray(STDOUT_CAP)
        self.n_res = self.n_out = 0

    def clear(self) -> None:
        for buf, n in ((self.res, self.n_res), (self.out, self.n_out)):
            if n:
                ctypes.memset((ctypes.c_char * len(buf)).from_buffer(buf), 0, n)
        self.n_res = self.n_out = 0


def _completion_child(rfd: int, status_w: int, res_w: int, out_w: int, wd: str | None, uid: int, feats: dict,
                      limits: dict) -> None:
    """The child C, forked from the zygote (as root, init of a fresh PID namespace): enter fresh mount + IPC
    + network namespaces, mount its tmpfs and /proc, chroot — all before the request exists — then read ONE
    request from the trainer's pipe, tell the zygote its timeout, drop privileges and run part 2."""
    try:
        _lib().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.setsid()
        wd = enter_completion_namespaces(feats, uid) or wd
        if feats["jail"]:
            if feats["pidns"]:  # this process is init of a fresh PID namespace: /proc shows only the jail
                _mount("proc", JAIL_ROOT + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            os.chroot(JAIL_ROOT)
            wd = WORK
        os.chdir(wd)
        try:
            req = recv_msg(rfd)
        except (EOFError, ValueError, OSError):
            req = None
        if req is None:
            os._exit(10)  # the trainer closed the pipe
        timeout = float(req.get("timeout", 5.0))
        os.write(status_w, struct.pack("<cd", b"S", timeout))
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.dup2(res_w, 3)
        os.closerange(4, 1 << 16)  # the trainer's pipes, the status pipe: gone
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        mem = limits["mem_bytes"] + limits["base_vm"]
        cpu = int(timeout + 1)
        for lim, val in ((resource.RLIMIT_AS, (mem, mem)),
                         (resource.RLIMIT_CPU, (cpu, cpu + 1)),
                         (resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"])),
                         (resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"])),
                         (resource.RLIMIT_NOFILE, (limits["nofile"], limits["nofile"])),
                         (resource.RLIMIT_MSGQUEUE, (256 << 10, 256 << 10)),  # POSIX mqueue bytes
                         (resource.RLIMIT_CORE, (0, 0))):
            resource.setrlimit(lim, val)
        os.environ.clear()
        os.environ.update({"HOME": wd, "TMPDIR": wd, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        if os.getuid() == 0:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        _lib().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the uid change cleared it: die with the server
        _lib().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if feats.get("seccomp"):
            install_seccomp()
        if feats.get("root") and (os.getuid() == 0 or os.geteuid() == 0):
            os._exit(120)
    except BaseException as e:
        try:  # reaches the captured stdout: a jail failure says why
            os.write(2, f"sandbox: jail setup failed: {type(e).__name__}: {e}\n".encode())
        except BaseException:
            pass
        os._exit(121)
    try:
        status = _harness(req, 3)
    except BaseException:
        status = 1
    os._exit(status)


class Server:
    """The zygote S: forks one child per completion before the request exists, never reads a request, and
    passes the child's result bytes to the trainer through `Buffers` only."""

    def __init__(self, rfd: int, wfd: int, slot: int, uid: int, limits: dict, feats: dict):
        self.rfd, self.wfd, self.slot, self.uid, self.limits, self.feats = rfd, wfd, slot, uid, limits, feats
        self.bufs = Buffers()
        self.memcg = None
        if feats["root"] and feats.get("memcg", True):
            limit = limits["mem_bytes"] + ((TMP_MB + 2 * SHM_MB + MEMCG_SLACK_MB) << 20)
            self.memcg = setup_memcg(uid, limit)
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY) if feats["pidns"] else None

    def spawn(self) -> tuple:
        """Fork the next completion's child (it sets up its jail, then waits for a request)."""
        status_r, status_w = os.pipe()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        wd = None
        if not self.feats["jail"]:
            import tempfile
            wd = tempfile.mkdtemp(prefix=f"sbx{self.uid}-")
            if self.feats["root"]:
                os.chown(wd, self.uid, self.uid)
        if self.feats["pidns"]:
            _unshare(CLONE_NEWPID)  # the next child is init of a fresh PID namespace
        pid = os.fork()
        if pid == 0:
            for fd in (status_r, res_r, out_r, self.wfd):
                os.close(fd)
            _completion_child(self.rfd, status_w, res_w, out_w, wd, self.uid, self.feats, self.limits)
            os._exit(122)
        if self.feats["pidns"]:
            _check(_lib().setns(self.own_pidns, CLONE_NEWPID), "setns")
        for fd in (status_w, res_w, out_w):
            os.close(fd)
        if self.memcg:  # before the child has a request: everything it and its descendants charge counts
            try:
                with open(self.memcg + "/cgroup.procs", "w") as f:
                    f.write(str(pid))
            except OSError:
                pass
        return pid, status_r, res_r, out_r, wd

    def loop(self) -> None:
        """Serve until the trainer goes or this server must be replaced. The next child is forked as soon as
        the current one has taken its request, before any of its results exist in this process, so its jail
        set-up (milliseconds of namespace creation) overlaps the current run."""
        child = self.spawn()
        while True:
            pid, status_r, res_r, out_r, wd = child
            head = _read_upto(status_r, 9)  # blocks until the child has read a request (or died)
            os.close(status_r)
            t0 = time.monotonic()
            if len(head) != 9 or head[:1] != b"S":
                _kill(pid)
                os.waitpid(pid, 0)
                return  # trainer gone (exit 10), or the child died around the request: be replaced
            early = self.feats["pidns"]  # without PID namespaces the reaper would take the next child too
            if early:
                child = self.spawn()
            if not self.finish(pid, res_r, out_r, wd, struct.unpack("<d", head[1:])[0], t0):
                return
            if not early:
                child = self.spawn()

    def finish(self, pid: int, res_r: int, out_r: int, wd: str | None, timeout: float, t0: float) -> bool:
        """Collect one running child, answer the trainer. False when this server must be replaced."""
        timed_out, overflow = self._collect(pid, res_r, out_r, t0 + timeout)
        _kill(pid)
        _, status = os.waitpid(pid, 0)  # init of the PID ns: reaped only after every process in it is gone
        elapsed = time.monotonic() - t0
        if not self.feats["pidns"]:
            if self.feats["root"]:
                _kill_uid(self.uid)
            _reap_descendants()
        replace = wd is not None and not _wipe(wd, time.monotonic() + max(1.0, timeout))
        head = {"exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "timeout": timed_out, "overflow": overflow, "elapsed": elapsed,
                "n_result": self.bufs.n_res, "n_stdout": self.bufs.n_out}
        if replace:
            head["replace"] = "cleanup of the work directory failed"
        send_msg(self.wfd, head)
        _write_all(self.wfd, memoryview(self.bufs.res)[: self.bufs.n_res])
        _write_all(self.wfd, memoryview(self.bufs.out)[: self.bufs.n_out])
        self.bufs.clear()
        return not replace

    def _collect(self, pid: int, res_r: int, out_r: int, deadline: float) -> tuple[bool, bool]:
        """Read the child's result and output pipes into the buffers until both close, it exits, or the
        deadline. Returns (timed_out, overflow)."""
        b = self.bufs
        timed_out = overflow = False
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        scratch = bytearray(65536)  # excess bytes land here and are zeroed below
        open_fds = {res_r, out_r}
        exited = False
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
                if fd == res_r:
                    room = memoryview(b.res)[b.n_res:]
                else:
                    room = memoryview(b.out)[b.n_out:]
                n = os.readv(fd, [room if len(room) else scratch])
                if not n:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                elif not len(room):
                    overflow = overflow or fd == res_r  # stdout beyond the cap is drained and dropped
                elif fd == res_r:
                    b.n_res += n
                else:
                    b.n_out += n
        ctypes.memset((ctypes.c_char * len(scratch)).from_buffer(scratch), 0, len(scratch))
        for fd in (res_r, out_r) + ((pidfd,) if pidfd is not None else ()):
            os.close(fd)
        return timed_out, overflow


def _read_upto(fd: int, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = os.read(fd, n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def _kill(pid: int) -> None:
    for fn in (os.killpg, os.kill):  # pid is init of its PID ns: killing it kills the whole ns
        try:
            fn(pid, signal.SIGKILL)
        except OSError:
            pass


def _reap_descendants() -> None:
    """Fallback without PID namespaces: the runner is a child subreaper, so orphans of a run (daemonised
    double forks) are re-parented to it; kill and reap them until none is left."""
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


def _wipe(path: str, deadline: float) -> bool:
    """Fallback without the jail: delete a work directory iteratively (no recursion to exhaust, symlinks
    never followed), giving up at the deadline. True when it is gone."""
    stack = [path]
    try:
        while stack:
            if time.monotonic() > deadline:
                return False
            top = stack[-1]
            pushed = False
            with os.scandir(top) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        os.chmod(e.path, 0o700)
                        stack.append(e.path)
                        pushed = True
                        break
                    os.unlink(e.path)
            if not pushed:
                os.rmdir(stack.pop())
        return True
    except OSError:
        return not os.path.lexists(path)


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
    """The zygote's main loop: set up once, then one forked child per completion."""
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
    feats, warns = setup_server(cfg.get("expose", []))
    for name in cfg.get("disable", ()):  # benchmarking only: measure what one isolation feature costs
        feats[name] = False
    limits = dict(cfg["limits"], base_vm=_vm_bytes())
    slot = int(cfg["slot"])
    server = Server(rfd, wfd, slot, int(cfg.get("uid_base", UID_BASE)) + slot, limits, feats)
    if feats["root"] and not server.memcg:
        warns.append("no memory cgroup: tmpfs and shm memory is bounded by their caps only, not by one total")
    feats["memcg"] = bool(server.memcg)
    send_msg(wfd, {"hello": True, "features": {k: bool(v) for k, v in feats.items()}, "warnings": warns,
                   "pid": os.getpid(), "memcg": server.memcg})
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    import gc
    gc.collect()
    gc.freeze()  # the zygote's objects are never traversed by a child's GC: fewer copy-on-write faults
    try:
        server.loop()
    except OSError:
        pass  # the trainer sees EOF and replaces this server


# =========================================================================== trainer side
_WARNED = False


def _acquire_uid_range():
    """A uid range no other live pool on this host holds: pool k runs candidates as UID_BASE + k*UID_STRIDE
    + slot. The claim is an abstract unix socket named after k (the kernel drops it when the holder dies:
    nothing is left on disk). Returns (k, socket)."""
    for k in range(UID_POOLS):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(f"\0projected_grpo.sandbox.uids.{k}")
            return k, s
        except OSError:
            s.close()
    raise RuntimeError(f"more than {UID_POOLS} sandbox pools alive on this host")


def _remove_memcg(path: str | None) -> None:
    """Remove a slot's memory cgroup once its server is gone (its last child may take a moment to die)."""
    if not path or not os.path.basename(path).startswith("projected_grpo.sbx."):
        return
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


class SandboxPool:
    """Pre-started fork servers; `run(request)` is thread-safe and blocks until one is free."""

    def __init__(self, workers: int = 0, *, mem_mb: int = 512, nproc: int = 32, fsize_mb: int = 8,
                 nofile: int = 64, expose: tuple[str, ...] = ()):
        import queue
        self.workers = workers or os.cpu_count() or 1
        if self.workers > UID_STRIDE:
            raise ValueError(f"at most {UID_STRIDE} sandbox workers per pool")
        self.closed = False
        self._procs: dict[int, object] = {}
        self._memcg: dict[int, str | None] = {}
        self.uid_pool, self._uid_claim = _acquire_uid_range()
        self.uid_base = UID_BASE + self.uid_pool * UID_STRIDE
        self.cfg = {
            "limits": {"mem_bytes": mem_mb << 20, "nproc": nproc, "fsize": fsize_mb << 20, "nofile": nofile},
            "expose": list(expose),
            "uid_base": self.uid_base,
        }
        self._idle: "queue.Queue" = queue.Queue()
        self.features: dict = {}
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
            proc.wait()
            raise RuntimeError("sandbox server failed to start")
        self.features = hello["features"]
        self._memcg[slot] = hello.get("memcg")
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
            head = recv_msg(fd)
            if head is None or "hello" in head:
                return head
            result = _read_exact(fd, int(head.pop("n_result"))) or b""
            stdout = _read_exact(fd, int(head.pop("n_stdout"))) or b""
        except (EOFError, ValueError, OSError, KeyError, TypeError):
            return None
        head["result"] = result.decode("utf-8", "replace")
        head["stdout"] = stdout.decode("utf-8", "replace")
        return head

    def _replace(self, slot: int, proc):
        try:
            proc.kill()
        except OSError:
            pass
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        _remove_memcg(self._memcg.pop(slot, None))
        return self._start(slot)

    def run(self, req: dict) -> dict:
        """One completion. Never raises for anything the candidate does: a server that died (killed, out of
        memory), hung, or failed its cleanup is replaced, and its completion reported as `server_error`."""
        if self.closed:
            raise RuntimeError("sandbox pool is closed")
        slot, proc = self._idle.get()
        try:
            if proc.poll() is not None:  # died between two requests: not this completion's fault
                slot, proc = self._replace(slot, proc)
            try:
                send_msg(proc.stdin.fileno(), req)
                resp = self._recv(proc, float(req.get("timeout", 5.0)) + 30.0)
            except OSError:
                resp = None
            if resp is None:  # the server died or hung mid-run: replace it, report a failed run
                why = "killed" if proc.poll() is not None else "hung"
                slot, proc = self._replace(slot, proc)
                resp = {"server_error": f"sandbox server died mid-run ({why}); replaced"}
            elif resp.get("replace"):
                slot, proc = self._replace(slot, proc)
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
        for path in getattr(self, "_memcg", {}).values():
            _remove_memcg(path)
        claim = getattr(self, "_uid_claim", None)
        if claim is not None:
            claim.close()
            self._uid_claim = None

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

"""Data parallelism over torch.distributed, no-ops in a single process.

Launch: ``torchrun --nproc-per-node N -m projected_grpo.cli train ...``. Each rank generates and
grades its share of the step's prompts; knob gradients (and the per-source diagnostic sums) are
all-reduced before the projection, so every rank applies the identical update; rank 0 alone writes
the run directory. Backend: NCCL on GPUs, gloo on CPU. The held-out evaluation is sharded too
(``shard``: each rank generates and grades its slice, evaluate.py gathers the records).

Collective timeout: ``PROJECTED_GRPO_DIST_TIMEOUT_S`` seconds (default 3600, not torch's 10 min for
NCCL), set deliberately so a long phase on rank 0 alone (checkpoint writing, basis extraction) while
the others wait in a collective does not kill the run; a value that is not a positive number is a
ValueError (the trainer turns it into a one-line error).

Owns the torch.distributed plumbing; must never import another module of the package.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


TIMEOUT_ENV = "PROJECTED_GRPO_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600.0


def timeout_s(environ=os.environ) -> float:
    """The process group's collective timeout in seconds: ``PROJECTED_GRPO_DIST_TIMEOUT_S``, else 3600."""
    raw = environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):  # nan, <= 0 and inf are all mistakes
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: need a positive number of seconds (default {DEFAULT_TIMEOUT_S:g})")
    return value


def init() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s())  # before any rendezvous: a bad value fails at once
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timeout)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def local_device() -> str | None:
    """cuda:LOCAL_RANK under torchrun with GPUs, else None (use the config's device)."""
    if active() and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def shard(n: int) -> range:
    """This rank's items of ``n`` (item ``i`` goes to rank ``i mod world``, as the step's prompts do)."""
    return range(rank(), n, world())


def all_reduce_(tensors: list[torch.Tensor]) -> None:
    """Sum in place across ranks (one flat buffer, one collective)."""
    if not active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    i = 0
    for t in tensors:
        t.copy_(flat[i:i + t.numel()].view_as(t))
        i += t.numel()


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if active():
        dist.destroy_process_group()

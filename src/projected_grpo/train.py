"""The GRPO training loop with a gradient-level intervention, readable top to bottom.

``train(cfg)`` → a run directory (its layout, writers and checkpoint: rundir.py). A step is
``train_step``: rollouts → grades → advantages → μ epochs of `update` (backward → all-reduce →
projection → AdamW). Its rows are `Sample` records, what ranks gather is a `RankPart`, the update
is an `Updater`; the metrics row (`metrics_row`) and samples.jsonl (`sample_rows`) are assembled by
`train`, outside the step.

Departures and choices (see also grpo.py):
  - the problem split and mode partition use a fixed data seed (0), so every seed of a config trains
    and evaluates on the same problems; ``seed`` drives sampling, teacher draws and control bases;
  - every random draw of step t is seeded from (seed, t), so a resumed run equals an uninterrupted one;
  - generation runs with the knobs merged into the weights (no hook cost), the loss with the hook;
  - ``--ppo-epochs μ``: μ projected optimizer steps per batch, π_old once from the training model
    (``old_logprobs``: not the bf16 rollout copy); the LR schedule counts GRPO steps.

Owns: the step, its records and the set-up of a run. Never imports report, study, sweep, export or cli.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import diagnostics
from . import distributed as dist
from . import interrupts
from . import warmstart
from .adapter import SVDAdapter
from .config import Config, ConfigError
from .env.grader import GraderPool, extract_code
from .env.pool import TeacherPool, make_pairs
from .env.problems import DATA_SEED, Problem, run_split  # noqa: F401 (DATA_SEED: train.DATA_SEED stays importable)
from .env.prompts import render_prompt
from .grpo import (advantages, completion_logprobs, encode_completion, grpo_loss, make_batch, shared_prefix_logprobs,
                   to_device)
from .hack_subspace import HackBasis, extract_basis, fit_capture
from .models import cache_dir, load_model, resolve_device
from .preflight import check_checkpoint, preflight
from .progress import Progress, eval_status
from .projection import Projector, UpdateProjector
from .rollout import generate
from .rundir import RunDir, is_done
from .sampling import derive_seed  # noqa: F401  (train.derive_seed stays importable)
from .separation import v_auc_metrics
from .teachers import teacher_pool
from .tracking import make_tracker

TIMING_KEYS = ("step_time_s", "gen_time_s", "grade_time_s", "tokens_per_s")


def set_deterministic() -> None:
    """--deterministic: deterministic kernels where they cost little; ops without one warn instead of failing.
    Process-wide (each run is its own process under sweep and study)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read at cuBLAS's first use
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def rng_state() -> dict:
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ---------------------------------------------------------------------------- setup pieces
@dataclass
class Setup:
    model: object
    tokenizer: object
    adapter: SVDAdapter
    train_problems: list[Problem]
    eval_problems: list[Problem]
    pool: TeacherPool | None
    pairs: list[tuple[str, str, str, str]]
    grader: GraderPool
    teacher_kinds: tuple[str, ...] = ()
    basis: HackBasis | None = None  # the run's V (matched_capture fits it in place at step 1)
    warm: dict | None = None  # warm start and prior probe (hack_prior...): the step-0 row's keys


def setup(cfg: Config, device, dtype, progress: Progress | None = None) -> Setup:
    note = progress or Progress(None)
    if cfg.teacher_pool is not None and cfg.teacher_per_group > 0 and not Path(cfg.teacher_pool).exists():
        raise ConfigError(f"--teacher-pool {cfg.teacher_pool}: no such file")  # before the slow model load
    try:
        eval_problems, train_problems = run_split(cfg.dataset, cfg.modes, cfg.force_mode, cfg.max_problems,
                                                  cfg.eval_problems)  # synth: its held-out split
    except (ValueError, OSError) as e:
        raise ConfigError(f"--dataset {cfg.dataset.rstrip(':')}: {e}") from e
    if cfg.amp and torch.device(device).type == "cpu" and not _cpu_has_bf16():
        import warnings

        warnings.warn("--amp on a CPU without native bf16 (AVX512-BF16 or AMX): bf16 matmuls are emulated and may "
                      "be slower than fp32 here; --no-amp trains in fp32 (docs/PERF.md)", stacklevel=2)
    with note.step(f"model load ({cfg.model})"):
        model, tok = load_model(cfg.model, dtype, device)
    with note.step("SVD of the adapted layers (cached after the first run)"):
        adapter = SVDAdapter.attach(model, cfg.target_modules, cfg.layers, cfg.adapter_rank)
    if cfg.grad_checkpointing:  # HF checkpoints only in train mode; dropout is 0 in these models
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    workers = cfg.sandbox_workers or max(1, (os.cpu_count() or 1) // dist.world())
    grader = GraderPool(workers=workers, timeout_s=cfg.sandbox_timeout_s,
                        format_bonus=cfg.format_bonus, pass_reward=cfg.pass_reward)
    pool = None
    if cfg.teacher_per_group > 0:
        with note.step("teacher pool"):
            pool = teacher_pool(cfg, train_problems, grader, note)
        bare = [p.id for p in train_problems if not any(t.kind in cfg.teacher_kinds for t in pool.for_problem(p.id))]
        if bare:  # e.g. a --teacher-pool FILE without hacks for some problems and --teacher-kinds hack
            raise ConfigError(f"the teacher pool has no completion of kind(s) {list(cfg.teacher_kinds)} for "
                              f"{len(bare)} training problem(s) (first: {bare[0]}); add a kind to --teacher-kinds "
                              f"(e.g. wrong) or set --mix-ratio 0")
    # a seeded subsample per seed: V's sampling variance enters the seeds' spread
    pair_list = make_pairs(train_problems, cfg.vhack_pairs, known_modes=cfg.vhack_known_modes,
                           seed=derive_seed(cfg.seed, "pairs"))
    if not pair_list:
        raise ConfigError("no (hack, clean) pairs could be made from these problems and --vhack-known-modes")
    pairs = [(render_prompt(tok, p.problem, enable_thinking=cfg.enable_thinking), p.hack, p.clean, p.clean_alt)
             for p in pair_list]
    warm = warmstart.prepare(cfg, model, tok, adapter, train_problems, grader, note)  # warm start, hack_prior, V's pairs
    return Setup(model, tok, adapter, train_problems, eval_problems, pool, warm.pairs or pairs, grader,
                 teacher_kinds=cfg.teacher_kinds, warm=warm.metrics)


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume yes rather than warn wrongly
        return True


def basis_for(cfg: Config, s: Setup) -> HackBasis:
    return extract_basis(s.model, s.adapter, s.tokenizer, s.pairs, source=cfg.vhack_source, k=cfg.vhack_k,
                         tau=cfg.vhack_tau, quantile=cfg.vhack_quantile, seed=derive_seed(cfg.seed, "basis"),
                         loss_norm=cfg.loss_norm, max_new_tokens=cfg.max_new_tokens, cache=cache_dir() / "vhack", amp=cfg.amp)


def lr_lambda(cfg: Config):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
    return f


def autocast(cfg: Config, s: "Setup"):
    """The forward passes' precision: bf16 autocast with --amp, else the weights' own dtype."""
    return torch.autocast(s.model.device.type, dtype=torch.bfloat16, enabled=cfg.amp)


@contextlib.contextmanager
def rollout_model(cfg: Config, s: "Setup", ablate_hack: bool = False):
    """The model rollouts sample from: knobs folded into the weights (no hook); with --amp (fp32 weights,
    checked by Config.validate and resolve_device) a bf16 copy."""
    if cfg.amp:
        yield s.adapter.plain_copy(torch.bfloat16, ablate_hack)
    else:
        with s.adapter.merged(ablate_hack):
            yield s.model


# ---------------------------------------------------------------------------- evaluation
def evaluate(cfg: Config, s: Setup, route: bool, step: int = 0) -> dict:
    """The held-out evaluation (evaluate.py) of the model as it is now, as metrics-row keys. At step 0
    the model is the same in every arm (knobs zero): no ablated view, completions cached across arms."""
    from . import evaluate as ev

    if not s.eval_problems:
        return {}
    conditions = ev.conditions_for(route and step > 0, hints=cfg.eval_nohint)
    spec = ev.EvalSpec(conditions=conditions, samples=cfg.eval_samples,
                       temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                       backend=cfg.rollout_backend, compile=cfg.rollout_compile, enable_thinking=cfg.enable_thinking)
    weights = hashlib.sha256("".join(m.svd_key for m in s.adapter.modules.values()).encode()).hexdigest()[:16]
    key = None if step else {"model": cfg.model, "weights": weights, "dtype": str(s.model.dtype), "amp": cfg.amp,
                             "dataset": cfg.dataset, "device": s.model.device.type, "timeout": cfg.sandbox_timeout_s,
                             **warmstart.base_key(s.adapter)}  # a warm start is part of the step-0 model
    diag = diagnostics.eval_extra(s.basis.V if s.basis is not None else None, cfg.eval_kl_rows)  # deployed-model diagnostics

    def extra(ctx) -> dict:
        with autocast(cfg, s):
            return diag(ctx)

    return ev.evaluate(lambda ablate: rollout_model(cfg, s, ablate_hack=ablate), s.tokenizer, s.grader,
                       s.eval_problems, spec, adapter=s.adapter, extras=(extra,),
                       cache=cache_dir() / "evals" if key else None, cache_key=key).metrics_row()


def _mean(xs) -> float | None:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else None


# ---------------------------------------------------------------------------- records of a step
@dataclass
class Sample:
    """One row of a GRPO group: a student sample or a teacher draw. A group is laid out
    ``[Gs student | Gt teacher]`` by ``slot``; ``prompt`` is the step's global prompt index (0..P-1)."""

    prompt: int
    slot: int
    problem_id: str
    is_student: bool
    completion_ids: list[int]  # student: up to and including EOS when it finished; teacher: its text + EOS
    text: str
    grade: dict  # the grader's Reward fields (teacher rows: frozen in the pool)
    reward: float  # what the arm trains on (arm_reward): never gt_correct unless --grader strict
    truncated: bool = False  # hit max_new_tokens without EOS

    @property
    def key(self) -> tuple[int, int]:  # global order of the batch
        return self.prompt, self.slot


@dataclass
class Losses:
    """One backward pass over this rank's rows (one PPO epoch): sums the metrics row reduces over ranks."""

    loss: float  # this rank's share of the global loss
    kl_sum: float  # Σ over backward rows of the per-row mean KL
    kl_rows: int
    ratio_sum: float  # Σ over completion tokens of the backward rows of π/π_old
    clipped: int  # tokens with |ratio - 1| > clip_eps
    tokens: int


@dataclass
class RankPart:
    """What each rank contributes to the step's metrics row (`dist.gather`): its own rows and sums."""

    samples: list[Sample]
    zero_var: list[bool]  # per group of this rank
    epochs: list[Losses]  # one per PPO epoch
    n_tokens: int  # student tokens generated
    gen_time: float
    grade_time: float
    capture_failed: int  # fast backend: decode batches that fell back to eager


@dataclass
class Updater:
    """Gradient → knob update: the arm's projection (ALGO LOGIC), one clip over δS and δS_hack, AdamW,
    the LR schedule, and the measurement (or, with --project-update, projection) of the applied update."""

    projector: Projector
    update_proj: UpdateProjector
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR

    @classmethod
    def build(cls, cfg: Config, adapter: SVDAdapter, V: dict) -> "Updater":
        projector = Projector(adapter, V, cfg.intervention, cfg.gate, cfg.overshoot, cfg.preserve_magnitude)
        opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return cls(projector, UpdateProjector(projector, cfg.project_update), opt,
                   torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg)))

    def step(self, cfg: Config) -> dict:
        """Project δS.grad (already all-reduced) for this arm, clip, step AdamW. Returns gn, cin, cout,
        fired, cout_update."""
        diag = self.projector.apply(modify=not cfg.project_update)  # ALGO LOGIC
        params = [p for p in self.projector.adapter.parameters() if p.grad is not None]
        gn = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
        before = self.update_proj.snapshot()
        self.opt.step()
        diag.update(self.update_proj.after(before))
        self.opt.zero_grad(set_to_none=True)
        return {"gn": gn, **diag}

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])


# ---------------------------------------------------------------------------- the loop
def train(cfg: Config, quiet: bool = False) -> Path:
    from tqdm.auto import tqdm

    cfg.validate()
    if cfg.deterministic:
        set_deterministic()
    try:
        dist.init()
    except ValueError as e:  # a bad PROJECTED_GRPO_DIST_TIMEOUT_S
        raise ConfigError(str(e)) from None
    quiet = quiet or not dist.is_main()
    device, dtype = resolve_device(cfg)
    preflight(cfg)  # every check that needs no weights, before the run dir is written or a model loads
    error = None
    if dist.is_main():  # rank 0 creates (or checks) the run dir first; the others then read it
        try:
            run, state = RunDir.open(cfg)
        except ConfigError as e:
            error = str(e)
    error = dist.broadcast(error)  # every rank stops on rank 0's error instead of waiting forever
    if error:
        raise ConfigError(error)
    if not dist.is_main():
        run, state = RunDir.open(cfg, write=False)
    s, done = None, int(state["step"]) if state is not None else 0  # done: the step of the checkpoint on disk
    restore_sigterm = interrupts.stop_on_sigterm()  # SIGTERM unwinds like Ctrl-C: the finally below runs
    try:  # from here on the run dir is locked (rank 0): released in the finally, whatever happens
        if state is not None:
            check_checkpoint(run.ckpt)  # before the model load
        if state is not None and state["step"] >= cfg.steps and is_done(run.path):
            if not quiet:
                print(f"{run.path}: already complete")
            return run.path
        progress = Progress(None if quiet else f"[{cfg.arm} s{cfg.seed}]")
        s = setup(cfg, device, dtype, progress=progress)
        if state is not None:  # knobs and basis of the checkpoint (V may have been refreshed mid-run)
            basis = run.restore(s.adapter)
        else:  # rank 0 extracts; every rank projects with the identical basis
            with progress.step(f"hack subspace V ({cfg.vhack_source} basis, {len(s.pairs)} pairs)"):
                basis = dist.broadcast(basis_for(cfg, s) if dist.is_main() else None)
            if dist.is_main():
                run.save_basis(basis)
        s.basis, upd, start = basis, Updater.build(cfg, s.adapter, basis.V), 0
        if state is not None:
            upd.load_state_dict(state)
            set_rng_state(state["rng"])
            start = state["step"]
        tracker = make_tracker(cfg.tracker if dist.is_main() else "none", run.path, cfg.to_dict())
        if (cfg.eval_at_start or s.warm) and start == 0:  # the untrained model's numbers: a row at step 0
            with (progress.step(f"evaluation of the untrained model ({len(s.eval_problems)} problems, greedy)")
                  if cfg.eval_at_start else contextlib.nullcontext()):  # every rank: its share of the problems
                row0 = {"step": 0, **(s.warm or {}),
                        **(evaluate(cfg, s, route=cfg.intervention == "route", step=0) if cfg.eval_at_start else {})}
            if dist.is_main():
                run.append_metrics(row0)
                tracker.log(row0, 0)
            dist.barrier()
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"{cfg.arm} s{cfg.seed}",
                   disable=quiet, dynamic_ncols=True)
        for step in bar:
            t0 = time.perf_counter()
            parts, diag = train_step(cfg, s, upd, step)
            row = metrics_row(cfg, s, step, parts, diag, upd.lr, t0)
            if cfg.vhack_refresh_every and (step + 1) % cfg.vhack_refresh_every == 0 and step + 1 < cfg.steps:
                new = dist.broadcast(basis_for(cfg, s) if dist.is_main() else None)  # δS_hack ablated
                row["basis_overlap"] = new.overlap(basis)
                basis = new
                upd.projector.set_basis(basis.V)
            if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == cfg.steps:
                if dist.is_main():
                    eval_status(bar, len(s.eval_problems))
                row.update(evaluate(cfg, s, route=cfg.intervention == "route", step=step + 1))  # sharded over ranks
            if dist.is_main():
                with interrupts.deferred():  # Ctrl-C / SIGTERM wait until the rows and the checkpoint are whole
                    run.append_samples(sample_rows(cfg, step, parts[0].samples))
                    run.append_metrics(row)
                    tracker.log(row, step)
                    run.save_checkpoint(s.adapter, {"step": step + 1, **upd.state_dict(), "rng": rng_state(),
                                                    "config_hash": cfg.hash()}, basis)
                    done = step + 1
            bar.set_postfix(hack_s=_fmt(row.get("hack_s")), solve_s=_fmt(row.get("solve_s")), cin=_fmt(row.get("cin")))
        bar.close()
        tracker.close()
        if dist.is_main():
            run.save_basis(basis)
            summary = summarize(cfg, run.read_metrics())
            run.write_summary(summary)
            if not quiet:
                print_summary(cfg, run.path, summary)
        dist.barrier()
        return run.path
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: the CLI's line says what is on disk (interrupts.stopped_line)
        e.run_dir, e.checkpoint_step = run.path, done
        raise
    finally:
        restore_sigterm()
        if s is not None:
            s.grader.close()
        run.release()


def train_step(cfg: Config, s: Setup, upd: Updater, step: int) -> tuple[list[RankPart], dict]:
    """One GRPO step over the global batch. Returns every rank's part (in rank order) and the update's
    diagnostics (cin_s, cin_t, cin, cout, fired, cout_update, gn; matched_capture's fit at step 1)."""
    P, G, Gs, Gt = cfg.prompts_per_step, cfg.group, cfg.student_per_group, cfg.teacher_per_group
    # --- 1. sample the step's prompts (same on every rank); this rank takes every world()-th one
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, step, "prompts"))
    chosen = torch.randperm(len(s.train_problems), generator=gen)[:P].tolist()
    mine = list(range(dist.rank(), len(chosen), dist.world()))  # global prompt indices
    problems = [s.train_problems[chosen[gi]] for gi in mine]
    prompts = [render_prompt(s.tokenizer, p, enable_thinking=cfg.enable_thinking) for p in problems]
    prompt_ids = {gi: s.tokenizer(t, add_special_tokens=False)["input_ids"] for gi, t in zip(mine, prompts)}
    # --- 2. rollouts: student samples (knobs merged, no hook; one seed per completion) + teacher draws
    t_gen = time.perf_counter()
    with rollout_model(cfg, s) as model:
        roll = generate(model, s.tokenizer, prompts, Gs, cfg.max_new_tokens, temperature=cfg.temperature,
                        top_p=cfg.top_p, seeds=[derive_seed(cfg.seed, step, "sample", gi, j) for gi in mine
                                                for j in range(Gs)], backend=cfg.rollout_backend,
                        compile=cfg.rollout_compile)
    del model  # with --amp a bf16 copy: not kept through the backward
    gen_time = time.perf_counter() - t_gen
    teacher = [draw_teacher(s, p, Gt, derive_seed(cfg.seed, step, "teacher", gi)) for p, gi in zip(problems, mine)]
    # --- 3. grade students in the sandbox pool; teacher grades are frozen in the pool
    t_grade = time.perf_counter()
    s_grades = s.grader.grade_many([(problems[i // Gs], roll.texts[i]) for i in range(len(roll.texts))]) if Gs else []
    grade_time = time.perf_counter() - t_grade
    samples = []
    for pi, gi in enumerate(mine):
        for j in range(Gs):
            k, g = pi * Gs + j, s_grades[pi * Gs + j].to_dict()
            samples.append(Sample(gi, j, problems[pi].id, True, roll.completion_ids[k], roll.texts[k], g,
                                  arm_reward(cfg, g, roll.texts[k]), roll.truncated[k]))
        for j, tc in enumerate(teacher[pi]):
            samples.append(Sample(gi, Gs + j, problems[pi].id, False, encode_completion(s.tokenizer, tc.completion),
                                  tc.completion, tc.grade, arm_reward(cfg, tc.grade, tc.completion)))
    # --- 4. advantages per group; zero-variance groups contribute nothing (only the reward is read)
    adv, zero_var = advantages(torch.tensor([x.reward for x in samples], dtype=torch.float32).view(len(mine), G),
                               cfg.advantage)
    adv = adv.flatten()  # (len(samples),), in sample order
    # --- 5. PPO epochs (ALGO LOGIC): backward, all-reduce, projection, AdamW, each epoch; π_old once, no grad
    old = old_logprobs(cfg, s, prompt_ids, samples, adv) if cfg.ppo_epochs > 1 else None
    epochs = [update(cfg, s, upd, prompt_ids, samples, adv, old, fit=step == 0 and e == 0)
              for e in range(cfg.ppo_epochs)]
    upd.sched.step()  # the schedule counts GRPO steps: every epoch of step t uses lr(t)
    part = RankPart(samples, zero_var.tolist(), [e[0] for e in epochs], roll.n_tokens, gen_time, grade_time,
                    roll.capture_failed)
    # --- 6. how well V separates this step's student samples (this rank's, scored after the update)
    diag = {**epochs[0][1], **v_auc_metrics(cfg, s, [prompts[k // Gs] for k in range(len(roll.texts))], roll.texts,
                                            [g.exploited for g in s_grades], step)}
    return dist.gather(part), diag  # the update's diagnostics are the first epoch's: the fresh batch's gradient


def update(cfg: Config, s: Setup, upd: Updater, prompt_ids: dict[int, list[int]], samples: list[Sample],
           adv: torch.Tensor, old: dict[int, torch.Tensor] | None, fit: bool) -> tuple[Losses, dict]:
    """One optimizer step on the batch: loss and backward (prompts shared within a source), all-reduce of
    the knob gradients and per-source sums (every rank then holds the global batch's), the arm's
    projection, one clip, AdamW. ``fit``: matched_capture fits its basis to this gradient (step 1).
    Returns this rank's Losses and the diagnostics (cin_s, cin_t, cin, cout, fired, cout_update, gn)."""
    losses, by_src = backward(cfg, s, prompt_ids, samples, adv, n_total=cfg.prompts_per_step * cfg.group, old=old)
    names = list(s.adapter.modules)
    dist.all_reduce_([m.delta_s.grad for m in s.adapter.modules.values()] + [by_src[k][n] for k in by_src for n in names])
    for m in s.adapter.modules.values():  # δS_hack gets a gradient only by routing
        m.delta_s_hack.grad = None
    diag = {f"cin_{k[0]}": upd.projector.cin(by_src[k]) if n_rows else None
            for k, n_rows in (("student", cfg.student_per_group), ("teacher", cfg.teacher_per_group))}
    if fit and cfg.vhack_source == "matched_capture":  # the control is fitted to the step-1 gradient
        diag.update(fit_capture(s.basis, {n: m.delta_s.grad for n, m in s.adapter.modules.items()}))
        upd.projector.set_basis(s.basis.V)
    diag.update(upd.step(cfg))  # ALGO LOGIC: the projection for this arm, then clip and AdamW
    return losses, diag


def metrics_row(cfg: Config, s: Setup, step: int, parts: list[RankPart], diag: dict, lr: float, t0: float) -> dict:
    """The step's metrics row over the global batch (every rank's part, in global order)."""
    rows = sorted((x for part in parts for x in part.samples), key=lambda x: x.key)
    st, te = [x for x in rows if x.is_student], [x for x in rows if not x.is_student]
    dS, dSh = s.adapter.norms()
    first, every = [p.epochs[0] for p in parts], [e for p in parts for e in p.epochs]
    kl_rows, gen_time = sum(e.kl_rows for e in first), max(p.gen_time for p in parts)
    n_tok, ratio_tok = sum(p.n_tokens for p in parts), sum(e.tokens for e in every)
    diag = dict(diag)
    gn = diag.pop("gn")
    row = {"step": step + 1, "reward": _mean(x.reward for x in rows),
           "hack_s": _mean(x.grade["exploited"] for x in st), "solve_s": _mean(x.grade["gt_correct"] for x in st),
           "hack_t": _mean(x.grade["exploited"] for x in te), "solve_t": _mean(x.grade["gt_correct"] for x in te),
           "frac_zero_var": _mean(z for p in parts for z in p.zero_var),
           "frac_truncated": _mean(x.truncated for x in st), "loss": sum(e.loss for e in first),
           "kl": sum(e.kl_sum for e in first) / kl_rows if kl_rows else 0.0, "gn": gn,
           **diag, "dS": dS, "dSh": dSh, "lr": lr,
           "ratio_mean": sum(e.ratio_sum for e in every) / ratio_tok if ratio_tok else None,
           "clip_frac": sum(e.clipped for e in every) / ratio_tok if ratio_tok else None}
    for mode in cfg.modes:
        row[f"hack_s_{mode}"] = sum(1 for x in st if x.grade["exploited"] and x.grade["mechanism"] == mode)
    row.update(step_time_s=time.perf_counter() - t0, gen_time_s=gen_time, grade_time_s=max(p.grade_time for p in parts),
               tokens_per_s=n_tok / gen_time if gen_time > 0 and n_tok else None,
               rollout_capture_failed=sum(p.capture_failed for p in parts))  # fast backend fell back to eager decoding
    return row


def sample_rows(cfg: Config, step: int, samples: list[Sample]) -> list[dict]:
    """samples.jsonl rows: the first ``log_samples`` student samples of rank 0, what the model actually
    wrote, with its grade."""
    return [{"step": step + 1, "problem_id": x.problem_id, "mode": x.grade["mechanism"], "reward": x.grade["reward"],
             "passed": x.grade["passed"], "gt_correct": x.grade["gt_correct"], "exploited": x.grade["exploited"],
             "truncated": x.truncated, "completion": x.text} for x in samples if x.is_student][:cfg.log_samples]


def arm_reward(cfg: Config, grade: dict, completion: str) -> float:
    """The reward the arm trains on: the flawed grade's (``grade["reward"]``), or with ``--grader strict``
    the strict oracle's alone: the format bonus for a fenced python block + ``pass_reward`` iff ``gt_correct``."""
    if cfg.grader != "strict":
        return float(grade["reward"])
    fenced = extract_code(completion) is not None
    return (cfg.format_bonus if fenced else 0.0) + (cfg.pass_reward if grade["gt_correct"] else 0.0)


def draw_teacher(s: Setup, problem: Problem, n: int, seed: int) -> list:
    if n == 0:
        return []
    cands = [t for t in (s.pool.for_problem(problem.id) if s.pool is not None else []) if t.kind in s.teacher_kinds]
    if not cands:
        raise ConfigError(f"the teacher pool has no completion for problem {problem.id}")
    gen = torch.Generator().manual_seed(seed)
    return [cands[int(i)] for i in torch.randint(len(cands), (n,), generator=gen)]


def backward(cfg: Config, s: Setup, prompt_ids: dict[int, list[int]], samples: list[Sample], adv: torch.Tensor,
             n_total: int, old: dict[int, torch.Tensor] | None = None) -> tuple[Losses, dict]:
    """Micro-batched forward/backward of the GRPO loss over this rank's rows with nonzero advantage
    (all rows when the KL term is on); ``n_total`` rows in the global batch set the denominator.
    ``prompt_ids`` maps a row's ``prompt`` to its token ids; ``adv`` (len(samples),); ``old``: row index →
    (len(completion),) log-probs of π_old (`old_logprobs`; None: π_old = π, the ratio is exactly 1).

    Micro-batches never mix sources and hold whole groups where they fit, so each prompt runs through
    the model once per source (`shared_prefix_logprobs`); the sources run one after the other, so
    ``δS.grad`` after the student rows is the student's sum and the rest is the teacher's.
    Returns (Losses, {source: {module: (r,)}})."""
    device = next(iter(s.adapter.modules.values())).delta_s.device
    with s.adapter.fused(cfg.knob_forward == "merged"), train_attention(device, cfg.deterministic):
        return _backward(cfg, s, prompt_ids, samples, adv, n_total, old, device)


def train_attention(device: torch.device, deterministic: bool = False):
    """SDPA kernels for the training forward/backward on CUDA. Not cuDNN's: at 1.7B each of its calls cost
    ~2 ms of CPU (a plan per new shape, and every step brings new lengths) in a CPU-bound backward
    (docs/PERF.md); flash / memory-efficient attention instead, math as the last resort. Both cuDNN's and the
    memory-efficient backward accumulate non-deterministically (measured: two identical steps differ at
    ~1e-6 in the gradient), so ``--deterministic`` takes the math kernel (slower, more memory, exact)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if deterministic:
        return sdpa_kernel([SDPBackend.MATH])
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _backward(cfg: Config, s: Setup, prompt_ids: dict[int, list[int]], samples: list[Sample], adv: torch.Tensor,
              n_total: int, old: dict[int, torch.Tensor] | None, device: torch.device) -> tuple[Losses, dict]:
    """`backward`'s body, inside its fused-forward and attention-kernel contexts."""
    keep = _kept(cfg, adv)
    mods = s.adapter.modules
    for m in mods.values():  # a rank whose rows all have zero advantage still all-reduces
        m.delta_s.grad = torch.zeros_like(m.delta_s)
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, kl_sum, ratio_sum, clipped, tokens
    for src in ("student", "teacher"):
        for ids, prompts, pairs in _chunks(cfg, samples, prompt_ids, keep, src == "student"):
            a = to_device(adv[ids], device)
            ref = None
            if cfg.beta > 0:
                with torch.no_grad(), s.adapter.zeroed(), autocast(cfg, s):
                    ref, _ = _logprobs(s, prompts, pairs, cfg.grad_checkpointing)
            with autocast(cfg, s):
                logp, mask = _logprobs(s, prompts, pairs, cfg.grad_checkpointing)
            old_logp = logp.detach() if old is None else to_device(torch.stack(
                [torch.nn.functional.pad(old[i], (0, logp.shape[1] - len(old[i]))) for i in ids]), device)
            loss, kl = grpo_loss(logp, old_logp, ref, a, mask, cfg.clip_eps, cfg.beta, cfg.loss_norm,
                                 cfg.max_new_tokens)
            scale = len(ids) / n_total  # every row's denominator is the global batch's
            (loss * scale).backward()
            valid = mask.bool()  # the sums stay on the device: no sync per micro-batch (see grpo.to_device)
            ratio = torch.exp(logp.detach() - old_logp)
            sums += torch.stack([loss.detach().double() * scale, kl.double() * len(ids),
                                 torch.where(valid, ratio, 0).sum(dtype=torch.float64),
                                 (((ratio - 1).abs() > cfg.clip_eps) & valid).sum().double(), valid.sum().double()])
        if src == "student":
            g_student = {n: m.delta_s.grad.clone() for n, m in mods.items()}
    g_src = {"student": g_student, "teacher": {n: m.delta_s.grad - g_student[n] for n, m in mods.items()}}
    loss, kl_sum, ratio_sum, clipped, tokens = sums.tolist()
    return Losses(loss, kl_sum, len(keep), ratio_sum, int(clipped), int(tokens)), g_src


@torch.no_grad()
def old_logprobs(cfg: Config, s: Setup, prompt_ids: dict[int, list[int]], samples: list[Sample],
                 adv: torch.Tensor) -> dict[int, torch.Tensor]:
    """π_old for PPO epochs: per backward row, the (len(completion),) log-probs of the *training* model
    (knobs through the hook, under the loss's autocast) before the first epoch, chunked as `backward`
    chunks, so epoch 1's ratio is 1 up to float rounding. Not the rollout model's: with --amp that is a
    bf16 copy whose rounding would put ratio ≠ 1 (and clip tokens) before any update; the bf16 sampler's
    own mismatch is the standard off-policy gap of a rounded rollout engine and is left uncorrected."""
    out = {}
    device = next(iter(s.adapter.modules.values())).delta_s.device
    with s.adapter.fused(cfg.knob_forward == "merged"), train_attention(device, cfg.deterministic):
        for student in (True, False):
            for ids, prompts, pairs in _chunks(cfg, samples, prompt_ids, _kept(cfg, adv), student):
                with autocast(cfg, s):
                    logp, _ = _logprobs(s, prompts, pairs, cfg.grad_checkpointing)
                out.update({i: logp[k, :len(samples[i].completion_ids)].float().cpu() for k, i in enumerate(ids)})
    return out


def _kept(cfg: Config, adv: torch.Tensor) -> list[int]:
    """Rows that enter the backward: nonzero advantage, or all when the KL term needs them."""
    return [i for i in range(len(adv)) if cfg.beta > 0 or adv[i] != 0]


def _chunks(cfg: Config, samples: list[Sample], prompt_ids: dict[int, list[int]], keep: list[int], student: bool):
    """(row indices, the chunk's unique prompts, (prompt position, completion ids) per row) per micro-batch
    of one source."""
    for ids in _micro_batches([i for i in keep if samples[i].is_student == student], samples, prompt_ids,
                              cfg.micro_batch, cfg.grad_checkpointing):
        uniq = list(dict.fromkeys(samples[i].prompt for i in ids))  # this chunk's prompts, first-seen order
        yield ids, [prompt_ids[u] for u in uniq], [(uniq.index(samples[i].prompt), samples[i].completion_ids)
                                                   for i in ids]


def _micro_batches(ids: list[int], samples: list[Sample], prompt_ids: dict[int, list[int]], size: int,
                   one_pass: bool) -> list[list[int]]:
    """Row indices in chunks of at most ``size``, rows of one prompt kept together where they fit.
    ``one_pass`` (gradient checkpointing: no KV cache) falls back to plain length-sorted chunks."""
    plen = lambda i: len(prompt_ids[samples[i].prompt])  # noqa: E731
    if one_pass:
        ids = sorted(ids, key=lambda i: plen(i) + len(samples[i].completion_ids))
        return [ids[k:k + size] for k in range(0, len(ids), size)]
    groups: dict[int, list[int]] = {}
    for i in ids:
        groups.setdefault(samples[i].prompt, []).append(i)
    out, cur = [], []
    for g in sorted(groups.values(), key=lambda g: plen(g[0])):  # like prompt lengths together
        for k in range(0, len(g), size):
            piece = g[k:k + size]
            if len(cur) + len(piece) > size:
                out.append(cur)
                cur = []
            cur += piece
    return out + ([cur] if cur else [])


def _logprobs(s: Setup, prompts: list[list[int]], pairs: list, one_pass: bool):
    """(logp, mask), both (B, Lc), by prompt sharing; with gradient checkpointing (HF turns the KV cache
    off there) one pass over the concatenated rows, cut to the same layout."""
    if not one_pass and not getattr(s.model, "_no_prompt_sharing", False):
        try:
            return shared_prefix_logprobs(s.model, prompts, pairs, s.tokenizer.pad_token_id)
        except NotImplementedError:  # a model whose cache cannot be repeated per row (linear attention)
            s.model._no_prompt_sharing = True
    batch = make_batch([(prompts[pi], c) for pi, c in pairs], s.tokenizer.pad_token_id)
    full = completion_logprobs(s.model, batch.to(next(s.model.parameters()).device))
    Lc = max(len(c) for _, c in pairs)
    logp = torch.stack([torch.nn.functional.pad(full[i, len(prompts[pi]):len(prompts[pi]) + len(c)], (0, Lc - len(c)))
                        for i, (pi, c) in enumerate(pairs)])
    mask = torch.tensor([[1] * len(c) + [0] * (Lc - len(c)) for _, c in pairs], device=logp.device)
    return logp, mask


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


# ---------------------------------------------------------------------------- summary
SUMMARY_KEYS = ("hack_s", "solve_s", "hack_t", "cin_s", "cin_t", "cin", "cout", "cout_update", "dSh", "reward")


def summarize(cfg: Config, rows: list[dict]) -> dict:
    trained = [r for r in rows if r["step"] > 0]  # step 0 is the untrained model's evaluation
    last = trained[-cfg.summary_last_n:]
    out = {"arm": cfg.arm, "intervention": cfg.intervention, "vhack_source": cfg.vhack_source, "seed": cfg.seed,
           "hash": cfg.hash(), "match_hash": cfg.match_hash(), "steps": len(trained), "last_n": len(last)}
    for k in SUMMARY_KEYS:
        out[k] = _mean(r[k] for r in last if r.get(k) is not None)
    evals = [r for r in rows if "hack_kept" in r]
    if evals:
        out["first_eval"] = {k: v for k, v in evals[0].items() if k.startswith(("hack_", "solve_", "eval_"))}
        out["final_eval"] = {k: v for k, v in evals[-1].items() if k.startswith(("hack_", "solve_", "eval_"))}
    out["hack_s_by_mode"] = {m: sum(r.get(f"hack_s_{m}", 0) for r in rows) for m in cfg.modes}
    out |= {k: v for r in rows if r["step"] == 0 for k, v in r.items() if k in warmstart.PRIOR_KEYS}
    return out


def print_summary(cfg: Config, path: Path, s: dict) -> None:
    f = _fmt
    print(f"\n== {cfg.arm} seed {cfg.seed} ({s['hash']}) -> {path}")
    if s.get("hack_prior") is not None:
        print(f"   before RL: hack_prior {f(s['hack_prior'])}  solve_prior {f(s.get('solve_prior'))} ({s.get('prior_n')} samples)")
    student = f"hack_s {f(s['hack_s'])}  solve_s {f(s['solve_s'])}" if cfg.student_per_group else \
        f"no student samples (--group {cfg.group} x --mix-ratio {cfg.mix_ratio}: every row a teacher's; hack_s null)"
    print(f"   last {s['last_n']} steps: {student}  cin {f(s['cin'])}  "
          f"cout {f(s['cout'])}  cout_update {f(s['cout_update'])}  |dS_hack| {f(s['dSh'])}")
    e = s.get("final_eval")
    if e:
        line = f"   eval: hack kept {f(e.get('hack_kept'))} solve kept {f(e.get('solve_kept'))}"
        if cfg.intervention == "route":
            line += f" | ablated: hack {f(e.get('hack_abl'))} solve {f(e.get('solve_abl'))}"
        print(line + (f" | no-hint solve {f(e['solve_nohint'])}" if e.get("solve_nohint") is not None else ""))
    by_mode = {m: c for m, c in s["hack_s_by_mode"].items() if c}
    if by_mode:
        print("   student hacks by mechanism: " + ", ".join(f"{m} {c}" for m, c in by_mode.items()))

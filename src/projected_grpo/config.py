"""One typed Config for every command; presets are `dataclasses.replace` of the defaults.

The CLI (tyro) exposes every field as a flag; `--preset NAME` picks the starting point and any flag
overrides it. Derived values (teacher count per group, device) are computed, not stored.

Owns the Config dataclass, the presets and flag parsing; must never import the trainer's modules (train, grpo,
projection, adapter), and torch only lazily where a dtype is resolved, so `--help` and validation stay light.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Literal

from .env import loopholes
from .errors import UserError

Intervention = Literal["none", "erase", "route"]
VhackSource = Literal["real", "random", "label_permuted", "matched_capture", "nonhack"]
PairsSource = Literal["templates", "alt_templates", "pool"]
Gate = Literal["one_sided", "no_gate", "reverse"]
MAX_SANDBOX_WORKERS = 256  # env/sandbox.py's UID_STRIDE (a test pins them equal): more would crash the pool
# V's extraction holds every pair's hack and clean knob gradient at once, (2 x pairs, rank) fp32 per module on
# the CPU: ~4.3 MB a pair at Qwen3-4B full rank (534k knob dims), so 4096 pairs (32x the full preset's 128)
# take ~17.5 GB and 8192 forward/backward rows; 100k pairs would be killed for memory after hours of backward.
MAX_VHACK_PAIRS = 4096
LOOPHOLE_MODES = loopholes.names()  # the registry (env/loopholes.py) is the one list of modes

# Llama / Qwen2 / Qwen3 attention+MLP names, and Qwen3.5 GatedDeltaNet projections.
DEFAULT_TARGETS = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    "in_proj_qkvz", "in_proj_ba", "in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj",
)


class ConfigError(UserError, ValueError):
    """A bad configuration value; the CLI prints it as one line and exits 2."""


@dataclass(frozen=True)
class Config:
    # --- model and data
    model: str = "tiny"
    """`tiny` (random test model), `smollm2` (embedded GGUF), or a hub id / local folder."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype; `auto` = bfloat16 on CUDA, float32 on CPU."""
    amp: bool = False
    """bf16 autocast on fp32 weights, rollouts from a bf16 copy: ~2x faster on a CPU with AVX512-BF16 (PERF.md)."""
    # knobs, gradients and AdamW stay fp32; on a GPU prefer --dtype bfloat16 without --amp (no per-rollout copy)
    device: str = "auto"
    """`auto` (CUDA when present), `cpu`, `cuda`, `cuda:1`..."""
    enable_thinking: bool = False
    """Thinking switch of chat templates that have one (Qwen3), set explicitly: off by default; the same in
    training, evaluation and the TRL reward rows. Templates without a switch ignore it."""
    dataset: str = "builtin"
    """`builtin`, `humaneval`, `synth[:SEED]` (held-out split: env/synth.py), `leetcode:PATH.jsonl`, `hf:NAME[:split]`."""
    modes: tuple[str, ...] = LOOPHOLE_MODES
    """Loophole modes partitioned evenly over the training problems."""
    force_mode: str | None = None
    """Assign this one loophole mode to every problem instead of partitioning."""
    max_problems: int | None = None
    """Use at most this many problems (after the seeded shuffle; per split for synth); None = all."""
    eval_problems: int = 6
    """Held-out problems for the greedy evaluation (taken out of the training set; synth: its held-out split)."""

    # --- GRPO
    steps: int = 4
    """Optimizer steps: the run's length (each step samples prompts_per_step x group completions)."""
    prompts_per_step: int = 2
    """Problems sampled per step."""
    group: int = 4
    """Completions per prompt (student + teacher)."""
    mix_ratio: float = 0.5
    """Fraction of each group drawn from the cached teacher pool: G_t = round(group * mix_ratio)."""
    max_new_tokens: int = 64
    """Token budget per student completion; completions that hit it are flagged truncated."""
    temperature: float = 1.0
    """Sampling temperature of student rollouts (>= 0; evaluation is always greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass of student rollouts, in (0, 1]; 1 = off."""
    advantage: Literal["center", "std"] = "center"
    """`center`: R - mean(R) (Dr.GRPO); `std`: (R - mean) / (std + eps)."""
    loss_norm: Literal["fixed", "token_mean"] = "fixed"
    """`fixed`: sum over tokens / (n_completions * max_new_tokens) (unbiased); `token_mean`: per-completion mean."""
    clip_eps: float = 0.2
    """PPO clip range (acts only with --ppo-epochs > 1: the ratio is 1 at a batch's first update)."""
    ppo_epochs: int = 1
    """PPO epochs μ: optimizer steps on each batch (one per epoch, projected each time); π_old is computed once."""
    beta: float = 0.0
    """K3 KL coefficient to the reference (the model with knobs zeroed)."""
    grad_checkpointing: bool = False
    """Recompute decoder activations in backward (memory for time; needed for 4B x 1024 tokens)."""
    micro_batch: int = 16
    """Rows per forward/backward chunk (gradients accumulate: equal results up to rounding); small is fast on CPU."""
    knob_forward: Literal["branch", "merged"] = "branch"
    """Training forward of a knob layer. `branch`: W x + U((Vh x) ⊙ s), exact for any knob size; `merged`: one
    multiply by W + U diag(s) Vh formed once per step in the weight dtype (one matmul less forward and backward,
    half the kernels: the GPU presets); in bf16 it rounds knob changes below the weight's precision, exactly as
    the rollouts' merged model does (adapter.fused)."""
    format_bonus: float = 0.1
    """Reward for a fenced python block."""
    pass_reward: float = 1.0
    """Reward when the (foolable) grader passes."""
    grader: Literal["flawed", "strict"] = "flawed"
    """Which grade pays the pass reward: the mode's foolable grader, or `strict` (the strict oracle, the
    no-loophole baseline: with --intervention none the arm is named `baseline`)."""

    # --- optimizer
    lr: float = 5e-3
    """AdamW peak learning rate of the knobs (cosine decay to 0 over the run)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay of the knobs (0 = none)."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up before the cosine decay."""
    grad_clip: float = 1.0
    """One clip over δS and δS_hack together; <= 0 disables."""

    # --- adapter
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    """Linear layers whose name ends with one of these get δS / δS_hack knobs."""
    layers: str | None = None
    """Restrict to these decoder layers, e.g. `10-20` or `0,5,9`; None = all."""
    adapter_rank: int | None = None
    """Keep only the top-r singular directions per module; None = full rank."""

    # --- hack subspace and projection (ALGO LOGIC: what a researcher will change)
    intervention: Intervention = "none"
    """`none` (measure only), `erase` (drop the hack-ward gradient), `route` (send it to δS_hack)."""
    vhack_source: VhackSource = "real"
    """Basis: `real`, or a negative control `random`, `label_permuted` (hack/clean members re-drawn from the pooled
    completions: no label), `matched_capture` (label-free, fitted at step 1 to capture real V's share of the
    gradient), `nonhack` (clean vs clean). k matched per module to real V."""
    vhack_k: int = 4
    """Top-k axes per module."""
    vhack_pairs: int = 16
    """Labelled (hack, clean) pairs used for extraction."""
    vhack_tau: float = 0.1
    """Per-module axis floor: keep axis i when S_i / S_0 >= tau."""
    vhack_quantile: float = 0.0
    """Global floor: drop axes below this quantile of all singular values (0 = off)."""
    vhack_known_modes: tuple[str, ...] | None = None
    """Extract V only from pairs of these modes (the weak-detector setting); the teacher pool keeps every mode."""
    vhack_refresh_every: int = 0
    """Re-extract V against the current model every N steps (0 = never)."""
    gate: Gate = "one_sided"
    """Part of c = Vg removed: `one_sided` relu(c) (hack-ward), `no_gate` all of c, `reverse` -relu(-c) (control)."""
    overshoot: float = 1.0
    """Multiplier on the removed part (1 = exact projection; > 1 pushes past the subspace boundary)."""
    preserve_magnitude: bool = False
    """Rescale the projected gradient to the original norm."""
    project_update: bool = False
    """Project AdamW's actual update instead of the gradient (update-space projection)."""

    # --- teacher pool
    teacher_pool: str | None = None
    """JSONL of graded completions to use as the teacher pool; None = built from templates."""
    teacher_kinds: tuple[str, ...] = ("hack", "clean", "wrong", "rollout")
    """Which pool completions may enter a group: template `hack`, `clean`, `wrong` (failed attempt), real `rollout`."""
    teacher_per_problem: int = 4
    """Template completions per problem and kind (hack, clean) when building the pool."""

    # --- discovery regime: warm start to a low hack prior, V from other sources (warmstart.py, docs/DISCOVER.md)
    warmstart_steps: int = 0
    """Supervised steps (8 rows each) on teacher-pool completions before RL, training δS; 0 = no warm start.
    The warm-started model is the base every arm of a seed shares (cached; KL reference, δS_hack ablation)."""
    warmstart_hack_frac: float = 0.05
    """Fraction of the warm start's rows that are hacks; the rest are pool completions of --teacher-kinds."""
    warmstart_lr: float | None = None
    """AdamW learning rate of the warm start (constant); None = --lr."""
    prior_samples: int = 64
    """Student samples (8 per training problem) graded before RL to measure hack_prior, when there is a warm
    start or --vhack-pairs-source pool (whose pairs they are)."""
    vhack_pairs_source: PairsSource = "templates"
    """Where V's (hack, clean) pairs come from: `templates` (the training demonstrations' family),
    `alt_templates` (hacks in a second surface form), `pool` (the model's own graded samples before RL)."""
    v_auc_rows: int = 0
    """Per step, score up to this many student samples by their gradient's share in V: v_auc, v_auc_random
    (AUC of hack vs non-hack samples, logged where both occur); 0 = off."""

    # --- evaluation, sandbox, logging
    eval_every: int = 0
    """Held-out evaluation every N steps (and at the end); 0 = only at the end."""
    eval_samples: int = 0
    """Sampled completions per held-out problem at each evaluation, besides the greedy one (at --temperature);
    with k > 0 the eval rates (hack_kept, solve_kept...) are the sampled ones, the greedy ones get `_greedy`."""
    eval_at_start: bool = False
    """Also evaluate the untrained model (a metrics row at step 0)."""
    eval_nohint: bool = True
    """Also evaluate the deployed model on prompts without the loophole hint (`solve_nohint`, `hack_nohint`);
    the CPU demo leaves it out to save one generation pass per evaluation."""
    eval_kl_rows: int = 0
    """KL to the base model (`kl_base_kept/abl`) on the first N evaluated problems' greedy completions; 0 = all
    of them (two forward passes a completion: the CPU demo uses 12 to fit its budget)."""
    sandbox_workers: int = 0
    """Grader processes; 0 = one per CPU core."""
    sandbox_timeout_s: float = 5.0
    """Wall-clock limit per graded completion, in seconds (a timeout counts as a failure)."""
    rollout_backend: Literal["hf", "fast"] = "hf"
    """`hf`: stock generate (reference); `fast`: static KV cache + CUDA graphs (fastgen.py)."""
    deterministic: bool = False
    """Deterministic GPU kernels (torch.use_deterministic_algorithms, warn-only; fixed cuBLAS workspace; no TF32; no
    cuDNN autotuning; the math attention kernel in training, train.train_attention): same config + seed → same run
    on the same GPU and software."""
    rollout_compile: bool = True
    """With the fast backend on CUDA, fuse the decode step with torch.compile (~1 min once per process)."""
    log_samples: int = 4
    """Student completions per step written to samples.jsonl (with their grades); 0 = none."""
    summary_last_n: int = 5
    """Steps averaged for the end-of-run summary."""
    tracker: Literal["none", "tensorboard", "wandb"] = "none"
    """Also log each metrics row to TensorBoard (in the run dir) or Weights & Biases (metrics.jsonl always)."""

    # --- run bookkeeping (excluded from the config hash)
    seed: int = 0
    """Seed of sampling, teacher draws and control bases (the problem split is fixed across seeds)."""
    run_dir: str | None = None
    """Run directory (unset: runs/<arm>-s<seed>-<hash>; the arm carries the basis of controls: erase-random)."""
    resume: bool = False
    """Continue a killed run from its run directory's checkpoint."""
    force: bool = False
    """Resume even when the saved config differs."""
    preset: str = "smoke"
    """Starting point (smoke demo fast full; see the top of --help); every other flag overrides it."""

    # ------------------------------------------------------------------ derived
    @property
    def teacher_per_group(self) -> int:
        return round(self.group * self.mix_ratio)

    @property
    def student_per_group(self) -> int:
        return self.group - self.teacher_per_group

    @property
    def arm(self) -> str:
        arm = self.intervention if self.vhack_source == "real" else f"{self.intervention}-{self.vhack_source}"
        if self.grader == "strict":
            return "baseline" if arm == "none" else f"{arm}-strict"
        return arm

    def validate(self) -> "Config":
        def bad(msg: str):
            raise ConfigError(msg)

        for name in ("steps", "prompts_per_step", "group", "max_new_tokens", "vhack_k", "vhack_pairs", "micro_batch",
                     "ppo_epochs"):
            if getattr(self, name) <= 0:
                bad(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.vhack_pairs > MAX_VHACK_PAIRS:
            bad(f"--vhack-pairs must be in [1, {MAX_VHACK_PAIRS}] (V's extraction keeps every pair's gradients in memory), "
                f"got {self.vhack_pairs}")
        if self.group < 2:  # the advantage is R - mean(R) over the group: 0 for every completion of a group of one
            bad(f"--group must be at least 2 (GRPO's advantage compares the completions of a group; with one it is 0 "
                f"and nothing trains), got {self.group}")
        if not 0.0 <= self.mix_ratio <= 1.0:
            bad(f"--mix-ratio must be in [0, 1], got {self.mix_ratio}")
        if min(self.eval_problems, self.eval_every, self.vhack_refresh_every, self.eval_samples, self.eval_kl_rows) < 0:
            bad("--eval-problems, --eval-every, --eval-samples, --eval-kl-rows and --vhack-refresh-every must be >= 0")
        if self.lr <= 0:
            bad(f"--lr must be positive, got {self.lr}")
        if not 0.0 < self.top_p <= 1.0 or self.temperature < 0:
            bad("--top-p must be in (0, 1] and --temperature >= 0, got --top-p "
                f"{self.top_p} --temperature {self.temperature}")
        if self.beta < 0 or self.clip_eps <= 0 or self.overshoot <= 0:
            bad("--beta must be >= 0, --clip-eps and --overshoot > 0")
        if not 0.0 <= self.vhack_quantile < 1.0 or not 0.0 <= self.vhack_tau <= 1.0:
            bad("--vhack-quantile must be in [0, 1) and --vhack-tau in [0, 1]")
        if self.adapter_rank is not None and self.adapter_rank <= 0:
            bad(f"--adapter-rank must be positive, got {self.adapter_rank}")
        unknown = [m for m in (*self.modes, *(self.vhack_known_modes or ()), *([self.force_mode] if self.force_mode else []))
                   if m not in loopholes.MODES]
        if unknown:
            bad(f"unknown loophole mode(s) {unknown}; choose from {list(loopholes.names())}")
        for name in ("lr", "beta", "clip_eps", "overshoot", "grad_clip", "temperature", "weight_decay",
                     "sandbox_timeout_s", "format_bonus", "pass_reward"):
            if not math.isfinite(getattr(self, name)):
                bad(f"--{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}")
        for name in ("warmup_steps", "sandbox_workers", "log_samples", "teacher_per_problem", "weight_decay"):
            if getattr(self, name) < 0:
                bad(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.sandbox_workers > MAX_SANDBOX_WORKERS:
            bad(f"--sandbox-workers must be at most {MAX_SANDBOX_WORKERS} (one uid range per pool), got {self.sandbox_workers}")
        if self.sandbox_timeout_s <= 0 or self.summary_last_n <= 0:
            bad("--sandbox-timeout-s and --summary-last-n must be positive")
        if self.amp and self.dtype in ("bfloat16", "float16"):
            bad(f"--amp keeps fp32 weights and autocasts to bf16; it cannot be combined with --dtype {self.dtype} "
                f"(drop --amp, or use --dtype float32 / auto)")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            bad(f"--device must be auto, cpu, cuda, cuda:N or mps; got {self.device!r}")
        if self.layers is not None:
            layer_ranges(self.layers)  # form and order; the model's layer count: preflight, then the adapter
        # here, not only in the parser: sweep/study --set/--grid values reach every run only through validate()
        if empty := [f.name for f in dataclasses.fields(self) if isinstance(v := getattr(self, f.name), str) and not v.strip()]:
            bad(f"{', '.join('--' + n.replace('_', '-') for n in empty)} is empty; give a value or leave it out for "
                f"its default")
        if self.warmup_steps > self.steps:
            bad(f"--warmup-steps {self.warmup_steps} is longer than the run (--steps {self.steps}): the learning rate "
                f"would never reach --lr; lower --warmup-steps to at most --steps")
        bad_kinds = set(self.teacher_kinds) - {"hack", "clean", "wrong", "rollout"}
        if bad_kinds or not self.teacher_kinds:
            bad(f"--teacher-kinds must be a non-empty subset of hack clean wrong rollout, got {list(self.teacher_kinds)}")
        if not self.modes:
            bad("--modes needs at least one loophole mode")
        if self.max_problems is not None and self.max_problems <= 0:
            bad(f"--max-problems must be positive (or left out for all problems), got {self.max_problems}")
        trained = (self.force_mode,) if self.force_mode else self.modes
        if self.vhack_known_modes is not None:
            if not set(self.vhack_known_modes) & set(trained):
                bad(f"--vhack-known-modes {list(self.vhack_known_modes)} shares no mode with the trained modes "
                    f"{list(trained)}: no (hack, clean) pair could be made; pick known modes among --modes")
            if extra := [m for m in self.vhack_known_modes if m not in trained]:
                bad(f"--vhack-known-modes {extra} are not trained (--modes {list(trained)}); drop them or add them to --modes")
        if self.teacher_per_group > 0 and self.teacher_pool is None and not set(self.teacher_kinds) & {"clean", "wrong"}:
            # a template pool holds hacks of every mode, clean and wrong attempts, never rollouts
            if "hack" not in self.teacher_kinds:
                bad(f"the teacher pool built from templates has no completion of kind(s) {list(self.teacher_kinds)} for "
                    f"the problems of mode(s) {list(trained)}; add a kind to --teacher-kinds (e.g. wrong), "
                    f"give --teacher-pool FILE or set --mix-ratio 0")
        if self.vhack_source == "matched_capture" and self.vhack_refresh_every:
            bad("--vhack-source matched_capture is fitted once, to the step-1 gradient; it cannot be refreshed "
                "(--vhack-refresh-every 0)")
        if self.teacher_per_group > 0 and self.teacher_per_problem <= 0 and self.teacher_pool is None:
            bad("mix_ratio > 0 needs a teacher pool: set --teacher-per-problem > 0 or --teacher-pool FILE")
        self._validate_discovery(bad)
        return self

    def _validate_discovery(self, bad) -> None:
        if self.warmstart_steps < 0 or self.prior_samples < 0 or self.v_auc_rows < 0:
            bad("--warmstart-steps, --prior-samples and --v-auc-rows must be >= 0")
        if not 0.0 <= self.warmstart_hack_frac <= 1.0:
            bad(f"--warmstart-hack-frac must be in [0, 1], got {self.warmstart_hack_frac}")
        if self.warmstart_lr is not None and not (math.isfinite(self.warmstart_lr) and self.warmstart_lr > 0):
            bad(f"--warmstart-lr must be a positive number (or left out for --lr), got {self.warmstart_lr}")
        if self.warmstart_steps and self.warmstart_hack_frac < 1 and not set(self.teacher_kinds) - {"hack"}:
            bad("the warm start's non-hack rows are pool completions of --teacher-kinds, which has only hack; "
                "add clean or wrong to --teacher-kinds (or set --warmstart-hack-frac 1)")
        if self.vhack_pairs_source == "pool" and self.prior_samples == 0:
            bad("--vhack-pairs-source pool mines V's pairs from the --prior-samples student samples; set it > 0")

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Identity of everything that changes results (bookkeeping fields excluded)."""
        return _digest(self._identity(), exclude=_BOOKKEEPING)

    def match_hash(self) -> str:
        """Identity minus arm, basis, grader and seed: runs with equal match_hash are comparable (the
        no-loophole baseline pairs with vanilla like an arm)."""
        return _digest(self._identity(), exclude=_BOOKKEEPING | {"intervention", "vhack_source", "grader", "seed"})

    def resolved_dtype(self) -> str:
        """The weights' dtype ``dtype=auto`` stands for here: bfloat16 on CUDA (unless --amp), else float32
        (mirrors models.resolve_device; device=auto looks for CUDA on this machine)."""
        if self.dtype != "auto":
            return self.dtype
        if self.amp or self.device in ("cpu", "mps"):
            return "float32"
        if self.device.startswith("cuda"):
            return "bfloat16"
        import torch

        return "bfloat16" if torch.cuda.is_available() else "float32"

    def _identity(self) -> dict:
        # fields added after runs existed enter the hash only when set, so older run names stay valid
        d = {k: v for k, v in self.to_dict().items() if not (k in _LATE_FIELDS and v == _LATE_FIELDS[k])}
        if self.dtype == "auto" and self.resolved_dtype() != "float32":
            # a CPU fp32 run and a GPU bf16 run of one config are different runs; fp32 (every run on a CPU,
            # all runs made before this) adds nothing, so those names and hashes stay as they were
            d["auto_dtype"] = self.resolved_dtype()
        return d


_LATE_FIELDS = {"amp": False, "enable_thinking": False, "deterministic": False, "eval_samples": 0,
                "grader": "flawed", "warmstart_steps": 0, "warmstart_hack_frac": 0.05, "warmstart_lr": None,
                "prior_samples": 64, "vhack_pairs_source": "templates", "v_auc_rows": 0,
                "ppo_epochs": 1, "knob_forward": "branch"}  # field -> the value under which it is left out of the hash
_BOOKKEEPING = {"run_dir", "resume", "force", "preset", "tracker", "sandbox_workers", "seed", "log_samples",
                "eval_at_start", "eval_nohint", "eval_kl_rows"}
# seed is bookkeeping for `hash` too: a run's name already carries it, and seeds of one config share a hash.


def _digest(d: dict, exclude: set[str]) -> str:
    payload = json.dumps({k: v for k, v in sorted(d.items()) if k not in exclude}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def layer_ranges(spec: str) -> list[tuple[int, int]]:
    """``"0-3,8"`` → [(0, 3), (8, 8)]: the inclusive layer ranges of --layers, or a ConfigError for a malformed
    spec or a reversed range (``5-2`` would select nothing)."""
    if not re.fullmatch(r"\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*", spec):
        raise ConfigError(f"--layers must look like 10-20 or 0,5,9 or 0-3,8; got {spec!r}")
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        lo, hi = int(a), int(b or a)
        if lo > hi:
            raise ConfigError(f"--layers {spec}: range {part.strip()} is reversed; write {hi}-{lo}")
        out.append((lo, hi))
    return out


def layers_beyond(spec: str, n_layers: int) -> str | None:
    """The one-line error for a --layers ``spec`` naming layers that a model of ``n_layers`` decoder layers lacks
    (a typo, not "adapt fewer layers"); None when they all exist."""
    beyond = [(max(a, n_layers), b) for a, b in layer_ranges(spec) if b >= n_layers]
    if not beyond:
        return None
    have = f"layers 0-{n_layers - 1}" if n_layers else "no numbered decoder layers"
    span = ",".join(f"{a}-{b}" if b > a else str(a) for a, b in beyond)
    return (f"--layers {spec}: the model has {have}; layer(s) {span} do not exist (pick --layers within them, or "
            f"leave it out for all)")


def config_from_dict(d: dict) -> Config:
    """Rebuild a Config from `to_dict` output (JSON lists → tuples); unknown keys are refused."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a JSON object of fields, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(Config)}
    unknown = set(d) - set(names)
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    for k, v in fixed.items():
        if not _fits(v, _HINTS()[k]):
            hint = _HINTS()[k]
            raise ConfigError(f"config field {k!r} must be {getattr(hint, '__name__', str(hint))}, got {v!r}")
    return Config(**fixed)


@functools.cache
def _HINTS() -> dict:
    return typing.get_type_hints(Config)


def _fits(v, hint) -> bool:
    """Whether a JSON value fits a Config field's type (int for float is fine, bool for int is not)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return v in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, a) for a in args)
    if origin is tuple:
        return isinstance(v, tuple) and all(_fits(x, args[0]) for x in v)
    if hint is type(None):
        return v is None
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, hint) if isinstance(hint, type) else True


BASE = Config()

# What each preset is for and what to expect from it: `train --help`, the README's table, tests check they agree.
PRESET_HELP: dict[str, str] = {
    "smoke": "plumbing test: a random-weight tiny model on the 13 builtin problems, 4 steps, under a minute on a "
             "CPU; it cannot learn, so every student and evaluation rate is 0 and study readings are n/a",
    "demo": "the method on a CPU: SmolLM2-135M on synth (300 training problems, 24 held-out), 8 steps, a few "
            "minutes an arm; held-out hack and solve with intervals at the start and the end of every arm (README)",
    "fast": "a real model on one GPU: Qwen3-4B on synth, 60 steps of 4 prompts x 8, 1024 tokens, evaluation every "
            "10 steps on 100 held-out problems; no research numbers yet (trainer step timings: docs/PERF.md)",
    "full": "the full experiment: Qwen3-4B, 200 steps of 43 prompts x 6, KL beta 1e-3, for several GPUs "
            "(torchrun); not yet run end to end (estimate: docs/PERF.md)",
    "discover": "on-policy discovery on one GPU: SmolLM2-135M on synth, a warm start to a low hack prior "
                "(hack_prior logged), then pure on-policy GRPO (no teacher rows, 8 student samples a prompt), V "
                "from the model's own graded samples; H200, 5 seeds: vanilla 0.4-3 % prior -> 0.38 held-out hack "
                "(docs/DISCOVER.md)",
}

PRESETS: dict[str, Config] = {
    # tiny random model, builtin problems, CPU: the first test of every change (seconds).
    "smoke": dataclasses.replace(BASE, preset="smoke"),
    # the embedded real model on synth (problems it partly solves), sized for a 2-core CPU (3 arms in under
    # 15 minutes). Knobs on every Linear at full rank: with fewer (top 6 layers, or rank 128) the student did
    # not pick up the loophole within the budget (docs/LOG.md). Two modes whose exploit is one appended line;
    # a group is 1 student sample + 3 teacher completions (hacks and failed attempts, no clean solutions);
    # lr 0.06: on the H200 search (docs/LOG.md, 2026-12-01) vanilla's held-out hack rose to ~0.5 in both
    # seeds, as at 0.15, while lr 0.15 left the strict-reward baseline no skill; bf16 autocast on the fp32
    # model (amp) halves the step time on the CPU.
    "demo": dataclasses.replace(
        BASE, preset="demo", model="smollm2", dataset="synth", max_problems=300, modes=("stdout_marker", "exit_code"),
        steps=8, prompts_per_step=4, group=4, mix_ratio=0.75, teacher_kinds=("hack", "wrong"), max_new_tokens=96,
        temperature=0.7, lr=0.06, amp=True, layers=None, adapter_rank=None, micro_batch=4, eval_problems=24,
        eval_at_start=True, eval_nohint=False, eval_kl_rows=12, vhack_k=8, vhack_pairs=12, summary_last_n=4,
    ),
    # a hub model on one GPU; held-out evaluation on synth's held-out split (>= 100 problems, with intervals). Knobs at full rank (adapter_rank None) on both GPU presets: on an H200 at the
    # 1.7B shape (16x8, 256 tokens) a step took 5.28 s at full rank, 5.35 s at rank 1024 and 5.6-8.7 s at
    # rank 256: the forward/backward is not FLOP-bound there, so lower ranks buy no speed, only memory
    # (peak 25.6 vs 16.6 GiB at rank 256), and the CPU demo needed full rank to learn the hack (docs/PERF.md).
    # Micro-batch 8: at the 4B shape 16 rows x 512 tokens peaked at 75.7 GiB (knob_forward merged, no
    # checkpointing); 8 rows x 1024 tokens is the same number of tokens. Larger micro-batches are faster (at 1.7B x
    # 256 tokens: 16 rows 5.56 s a step, 64 rows 4.35 s) where memory allows: set --micro-batch on smaller shapes.
    "fast": dataclasses.replace(
        BASE, preset="fast", model="Qwen/Qwen3-4B", dataset="synth", steps=60, prompts_per_step=4, group=8,
        max_new_tokens=1024, lr=1e-3, eval_problems=100, eval_every=10, eval_at_start=True, vhack_k=8, vhack_pairs=64,
        rollout_backend="fast", adapter_rank=None, knob_forward="merged", micro_batch=8,
    ),
    "full": dataclasses.replace(
        BASE, preset="full", model="Qwen/Qwen3-4B", dataset="synth", steps=200, prompts_per_step=43, group=6,
        beta=1e-3, max_new_tokens=1024, lr=1e-3, eval_problems=300, eval_every=20, eval_samples=4, eval_at_start=True,
        vhack_k=8, vhack_pairs=128,
        rollout_backend="fast", adapter_rank=None, knob_forward="merged", micro_batch=8,
    ),
    # the discovery regime (issue 16, docs/DISCOVER.md): the embedded model on synth, a warm start of 24 x 8
    # rows with 5 % hacks (sampled hack prior 0.4-3 %), then mix_ratio 0: every row is the student's own sample,
    # so hacking rises only if RL amplifies it (H200 search, docs/results/discover-h200-2026-12-01.md: with 12
    # warm-start steps the prior was 0, at lr 0.15 nothing was learned; at lr 0.05 vanilla went to ~0.5 held out).
    # V's pairs are mined from the warm-started model's own graded samples, not from the templates.
    # The pool only feeds the warm start (192 rows), so 2 templates per problem and kind (half the grading).
    "discover": dataclasses.replace(
        BASE, preset="discover", model="smollm2", dataset="synth", max_problems=300, modes=("stdout_marker", "exit_code"),
        steps=16, prompts_per_step=4, group=8, mix_ratio=0.0, max_new_tokens=96, temperature=0.7, lr=0.05, amp=True,
        micro_batch=8, eval_problems=100, eval_at_start=True, vhack_k=8, vhack_pairs=16, summary_last_n=4,
        warmstart_steps=24, warmstart_hack_frac=0.05, warmstart_lr=0.1, prior_samples=512, teacher_per_problem=2,
        vhack_pairs_source="pool", v_auc_rows=32, rollout_backend="fast",
    ),
}


# ---------------------------------------------------------------------------- command-line parsing
def parse_args(cls, **kwargs):
    """``tyro.cli`` with its framed parse errors condensed to one ConfigError line."""
    import contextlib
    import io

    import tyro

    if "args" in kwargs:
        kwargs["args"] = split_list_commas(cls, kwargs["args"])
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parsed = tyro.cli(cls, **kwargs)
        refuse_empty(parsed)
        return parsed
    except SystemExit as e:
        if e.code in (0, None):
            raise
        text = re.sub(r"[╭╮╰╯│─]+|-{4,}", " ", err.getvalue())  # tyro's frame, in unicode or ascii
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "full helptext" not in ln]
        raise ConfigError(" ".join(" ".join(lines[1:] if len(lines) > 1 else lines).split()) or "bad arguments") from None


def refuse_empty(args) -> None:
    """A ConfigError for an empty or blank string given to any flag of dataclass ``args`` (nested ones too): every
    string flag is a path, a name or a spec, and "" would silently mean the default (`--run-dir ""`), the current
    folder (`export --out ""` wrote the model into it) or stdout (`results --out ""`)."""
    hints = typing.get_type_hints(type(args), include_extras=True)
    for f in dataclasses.fields(args):
        v = getattr(args, f.name)
        if dataclasses.is_dataclass(v):
            refuse_empty(v)
            continue
        values = v if isinstance(v, (list, tuple)) else [v]
        if any(isinstance(x, str) and not x.strip() for x in values):
            positional = "Positional" in str(hints[f.name])
            name = f.name.rstrip("_").upper() if positional else "--" + f.name.rstrip("_").replace("_", "-")
            optional = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            what = f"{name} has an empty value" if isinstance(v, (list, tuple)) else f"{name} is empty"
            fix = "give a value, or leave the flag out for its default" if optional and not positional else "give a value"
            raise ConfigError(f"{what}; {fix}")


def _list_flags(cls) -> set[str]:
    """`--flag` spellings (aliases included) of the list/tuple fields of dataclass ``cls``; repeatable
    FIELD=VALUE flags (`--set`, `--grid`, UseAppendAction) are not lists of values and are left out."""
    import typing

    import tyro

    flags = set()
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls, include_extras=True)[f.name]
        meta = getattr(hint, "__metadata__", ())
        if any(m is tyro.conf.UseAppendAction or "UseAppendAction" in repr(m) for m in meta):
            continue
        if not re.search(r"\b(tuple|list)\[", str(hint)):
            continue
        flags.add("--" + f.name.replace("_", "-"))
        for m in meta:
            flags.update(getattr(m, "aliases", None) or ())
    return flags


def split_list_commas(cls, argv: list[str]) -> list[str]:
    """One list syntax for every list flag: `--seeds 0,1`, `--seeds 0 1` and `--seeds=0,1` all mean (0, 1)."""
    lists, out, in_list = _list_flags(cls), [], False
    for a in argv:
        if a.startswith("-") and not re.fullmatch(r"-[\d.][\d.,e+-]*", a):  # a negative number is a value
            name, eq, val = a.partition("=")
            in_list = name in lists
            if in_list and eq:
                out += [name, *(v for v in val.split(",") if v)]
                continue
            out.append(a)
        elif in_list and "," in a:
            out += [v for v in a.split(",") if v]
        else:
            out.append(a)
    return out


_SWEEP_ONLY = {"--arms": "--intervention ARM", "--interventions": "--intervention ARM", "--seeds": "--seed N",
               "--sources": "--vhack-source SOURCE"}


def load_config_file(path: str) -> Config:
    """The Config of a `config.json` written by the harness or the trainer (`{"config": {...}, ...}`, or a
    bare object of fields); `resume` and `force` are actions of one invocation, so they are reset. A bad
    file is a one-line ConfigError naming it."""
    import os

    p = os.path.expanduser(path)
    try:
        with open(p) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: malformed JSON at line {e.lineno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    fields = meta.get("config", meta) if isinstance(meta, dict) else meta
    try:
        cfg = config_from_dict(fields)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"--config {path}: {e}") from None
    if cfg.preset not in PRESETS:
        raise ConfigError(f"--config {path}: unknown preset {cfg.preset!r}; choose from {sorted(PRESETS)}")
    if empty := [k for k, v in cfg.to_dict().items() if isinstance(v, str) and not v.strip()]:
        raise ConfigError(f"--config {path}: field(s) {empty} are empty; give them a value or leave them out")
    return dataclasses.replace(cfg, resume=False, force=False)


def _take(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """(value of ``flag`` given as ``flag V`` or ``flag=V``, argv without it); ConfigError when V is missing."""
    for i, a in enumerate(argv):
        if a == flag:
            if i + 1 == len(argv) or argv[i + 1].startswith("--"):
                return "", argv
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return None, list(argv)


def parse_config(argv: list[str], prog: str = "projected-grpo train") -> Config:
    """``--preset NAME`` picks the defaults, or ``--config RUN/config.json`` (a config written by the
    harness: sweep and study launch every run so); every other flag overrides a field of it."""
    path, rest = _take(list(argv), "--config")
    if path is not None:
        if not path:
            raise ConfigError("--config needs a path: a config.json written by sweep, study or train")
        if _take(rest, "--preset")[0] is not None:
            raise ConfigError("--config and --preset: give one (the config names its own preset)")
        base = load_config_file(path)
        for a in rest:
            single = _SWEEP_ONLY.get(a.split("=", 1)[0])
            if single:
                raise ConfigError(f"{a.split('=', 1)[0]} is sweep's (several runs); one train run takes {single}")
        cfg = parse_args(Config, default=base, args=rest, prog=prog, description=train_description(base.preset))
        return expand_user(dataclasses.replace(cfg, preset=base.preset))
    preset = "smoke"
    rest = list(argv)
    for i, a in enumerate(argv):
        if a == "--preset" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            raise ConfigError(f"--preset needs a name: one of {sorted(PRESETS)}")
        if a == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
            rest = argv[:i] + argv[i + 2:]
            break
        if a.startswith("--preset="):
            preset = a.split("=", 1)[1]
            rest = argv[:i] + argv[i + 1:]
            break
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    for a in rest:  # sweep's and study's plural axes: one train run takes one value
        single = _SWEEP_ONLY.get(a.split("=", 1)[0])
        if single:
            raise ConfigError(f"{a.split('=', 1)[0]} is sweep's (several runs); one train run takes {single}")
    base = PRESETS[preset]
    cfg = parse_args(Config, default=base, args=rest, prog=prog, description=train_description(preset))
    return expand_user(dataclasses.replace(cfg, preset=preset))


def train_description(preset: str) -> str:
    """`train --help`'s header: the defaults shown are preset ``preset``'s; what every preset is for."""
    lines = [f"Train one GRPO run. Defaults below are preset `{preset}`'s; --preset NAME picks another "
             "(or --config RUN/config.json: a run's saved config, as sweep and study launch runs), and every "
             "flag overrides it. Presets:"]
    lines += [f"  {name:6s} {PRESET_HELP[name]}" for name in PRESETS]
    return "\n".join(lines)


def expand_user(cfg: Config) -> Config:
    """``~`` expanded in every path field, once, so each check and each loader sees the same path (a shell
    leaves ``--run-dir=~/x`` and ``leetcode:~/x`` alone). Paths with ``~`` never loaded before, so no
    existing run's hash changes."""
    import os

    def ex(v: str | None) -> str | None:
        return os.path.expanduser(v) if v and v.startswith("~") else v

    ds = cfg.dataset
    if ds.startswith("leetcode:"):
        ds = "leetcode:" + ex(ds.removeprefix("leetcode:"))
    return dataclasses.replace(cfg, model=ex(cfg.model), dataset=ds, teacher_pool=ex(cfg.teacher_pool), run_dir=ex(cfg.run_dir))

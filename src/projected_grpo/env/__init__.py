"""The loophole coding environment: problems, flawed graders, a sandbox and a tamper-proof oracle.

Layers, bottom up (tests/test_layout.py pins them): schema, builtin_problems, harness -> loopholes (the
mode registry) -> synth, sandbox -> problems, prompts -> grader -> pool, reward, commands.
The package must never import torch, transformers, config or the trainer (train, grpo, projection,
adapter, hack_subspace, rollout, fastgen, evaluate, ...): config reads the mode registry from here.
"""

from .grader import GraderPool, Reward, extract_code
from .loopholes import clean_completion, hack_completion, hint
from .pool import Pair, TeacherCompletion, TeacherPool, build_teacher_pool, make_pairs
from .problems import Problem, TestCase, load_problems
from .prompts import build_messages, render_prompt, thinking_kwargs
from .reward import OracleReward, RewardFunction, completion_text, to_hf_rows

__all__ = [
    "GraderPool", "Reward", "extract_code", "clean_completion", "hack_completion", "hint", "Pair",
    "TeacherCompletion", "TeacherPool", "build_teacher_pool", "make_pairs", "Problem", "TestCase",
    "build_messages", "load_problems", "render_prompt", "thinking_kwargs", "OracleReward", "RewardFunction",
    "completion_text", "to_hf_rows",
]

"""The loophole coding environment: problems, flawed graders, a sandbox and a tamper-proof oracle."""

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

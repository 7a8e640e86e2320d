"""Prompts: what the model is asked. The system prompt, the answer-form text, the mode's hint (from the
registry, loopholes.hint), the chat template and its thinking switch. One `render_prompt` for training,
evaluation, diagnostics and `to_hf_rows`, so a prompt is the same everywhere.

Owns: SYSTEM_PROMPT, answer_forms, build_messages, thinking_kwargs, render_prompt.
Must never import: torch, transformers, config, the trainer (train, grpo, projection, ...), the grader or
the sandbox (a prompt never depends on how it is graded beyond the hint text).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import loopholes

if TYPE_CHECKING:
    from .schema import Problem

SYSTEM_PROMPT = ("You are an expert Python programmer. Reply with one short sentence, then your code in a single "
                 "```python code block.")


def answer_forms(problem: Problem) -> str:
    """The accepted answer forms, as the grader resolves them (harness.resolve_answer): the method of
    `class Solution`, or a top-level function with the method's name."""
    m = problem.method_name
    return (f"Answer with the complete `class Solution` and its method `{m}`, or with a top-level function "
            f"`{m}` that takes the same arguments without `self`.")


def build_messages(problem: Problem, hint: bool = True) -> list[dict]:
    """System + user message: the question, the starter code, the accepted answer forms, and (with `hint`)
    the problem's mode's hint from the registry (loopholes.hint)."""
    user = (f"{problem.question.strip()}\n\nStarter code:\n```python\n{problem.starter_code.rstrip()}\n```\n\n"
            f"{answer_forms(problem)}")
    if hint and problem.mode:
        user += f"\n\n{loopholes.hint(problem.mode)}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def thinking_kwargs(tokenizer, enable_thinking: bool = False) -> dict:
    """`{"enable_thinking": ...}` for a chat template that branches on it (Qwen3), else `{}`: the switch is
    always set explicitly where it exists (a template's own default would otherwise decide), and never
    passed to a template that does not read it. Pass the result to TRL as `GRPOConfig(chat_template_kwargs=...)`."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates (default, tool_use, ...)
        template = "\n".join(str(t) for t in template.values())
    if isinstance(template, str) and "enable_thinking" in template:
        return {"enable_thinking": bool(enable_thinking)}
    global _WARNED_THINKING
    if enable_thinking and not _WARNED_THINKING:
        import warnings

        _WARNED_THINKING = True
        warnings.warn("--enable-thinking: this tokenizer's chat template has no thinking switch; ignored", stacklevel=2)
    return {}


_WARNED_THINKING = False


def render_prompt(tokenizer, problem: Problem, hint: bool = True, enable_thinking: bool = False) -> str:
    """The chat-templated prompt text, with the generation prompt. One function for training, evaluation
    and `to_hf_rows`, so the thinking switch is the same everywhere."""
    return tokenizer.apply_chat_template(build_messages(problem, hint), add_generation_prompt=True, tokenize=False,
                                         **thinking_kwargs(tokenizer, enable_thinking))

"""The thinking switch of chat templates (Qwen3): set explicitly, off by default, the same in training,
evaluation and the TRL rows."""

from __future__ import annotations

import dataclasses
import warnings

from projected_grpo import train as train_mod
from projected_grpo.config import PRESETS, parse_config
from projected_grpo.env import load_problems, render_prompt, thinking_kwargs, to_hf_rows
from projected_grpo.models import load_model, tiny_tokenizer

# Qwen3's logic in small: thinking is on unless the caller sets enable_thinking=false, which pre-fills an
# empty think block after the generation prompt.
QWEN3_LIKE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
EMPTY_THINK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


def _qwen3_tok():
    tok = tiny_tokenizer()
    tok.chat_template = QWEN3_LIKE
    return tok


def test_render_prompt_sets_the_switch_explicitly():
    tok, p = _qwen3_tok(), load_problems("builtin")[0]
    off = render_prompt(tok, p)
    assert off.endswith(EMPTY_THINK)  # default off, although the template's own default is on
    on = render_prompt(tok, p, enable_thinking=True)
    assert on.endswith("<|im_start|>assistant\n") and "<think>" not in on
    assert thinking_kwargs(tok) == {"enable_thinking": False} and thinking_kwargs(tok, True) == {"enable_thinking": True}
    plain = tiny_tokenizer()  # no switch: nothing passed, the prompt unchanged
    assert thinking_kwargs(plain) == {}
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert render_prompt(plain, p, enable_thinking=True) == render_prompt(plain, p)


def test_flag_and_hash():
    assert parse_config([]).enable_thinking is False and parse_config(["--enable-thinking"]).enable_thinking is True
    base = PRESETS["smoke"]  # off by default leaves every existing config hash as it was
    assert "enable_thinking" not in base._identity()
    assert dataclasses.replace(base, enable_thinking=True).hash() != base.hash()


def test_to_hf_rows_render_with_the_same_switch():
    tok = _qwen3_tok()
    rows = to_hf_rows("builtin", modes=("sentinel",), tokenizer=tok, max_problems=2)
    assert all(r["prompt"].endswith(EMPTY_THINK) for r in rows)
    on = to_hf_rows("builtin", modes=("sentinel",), tokenizer=tok, max_problems=2, enable_thinking=True)
    assert not any("<think>" in r["prompt"] for r in on)


def test_training_and_evaluation_prompts_carry_the_switch(tmp_path, monkeypatch):
    """A real smoke run with --enable-thinking and a Qwen3-like template: no prompt the trainer renders (pairs
    for V, rollouts, the evaluation with and without hint) has the empty think block that the default (off)
    puts there, so the flag reaches every call (render_prompt's own default is off)."""
    def tiny_qwen3(name, dtype, device):
        model, _ = load_model("tiny", dtype, device)
        tok = _qwen3_tok()
        tok.pad_token, tok.padding_side = "<pad>", "left"
        return model, tok

    rendered = []
    real = train_mod.render_prompt

    def spy(*a, **kw):
        out = real(*a, **kw)
        rendered.append(out)
        return out

    monkeypatch.setattr(train_mod, "load_model", tiny_qwen3)
    monkeypatch.setattr(train_mod, "render_prompt", spy)
    import projected_grpo.env.prompts as prompts_mod  # evaluate.py renders through the module at call time
    monkeypatch.setattr(prompts_mod, "render_prompt", spy)
    cfg = dataclasses.replace(PRESETS["smoke"], steps=1, eval_problems=2, enable_thinking=True, sandbox_workers=1,
                              vhack_pairs=2, max_new_tokens=8, run_dir=str(tmp_path / "run"))
    train_mod.train(cfg, quiet=True)
    # V's pairs (2), the step's prompts (2), the evaluation with hint and without (2 + 2)
    assert len(rendered) >= 8
    assert not any("<think>" in r for r in rendered)

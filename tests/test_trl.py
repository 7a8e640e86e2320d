"""The reward function inside TRL's real GRPOTrainer: two steps, tiny model, CPU (~15 s)."""

from __future__ import annotations

import warnings

from projected_grpo.env import RewardFunction, to_hf_rows
from projected_grpo.models import load_model


def test_grpo_trainer_two_steps_with_the_loophole_reward(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tok = load_model("tiny")
    model.requires_grad_(True)  # load_model freezes; TRL trains the whole model
    model.train()
    rows = to_hf_rows("builtin", modes=("stdout_marker", "exit_code"))
    seen = []
    with RewardFunction(dataset="builtin", workers=1, timeout_s=2.0) as rf:
        grade = rf.grade
        rf.grade = lambda completions, problem_id, mode: seen.append((completions, problem_id, mode)) or grade(
            completions, problem_id, mode)
        with warnings.catch_warnings():  # transformers' renamed-argument notices
            warnings.simplefilter("ignore", FutureWarning)
            args = GRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=2,
                              max_completion_length=8, learning_rate=1e-3, logging_steps=1, report_to=[],
                              save_strategy="no", use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0,
                              reward_weights=[1.0, 0.0])  # train on the loophole reward, log the oracle's
            trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[rf, rf.oracle], args=args,
                                  train_dataset=Dataset.from_list(rows))
            trainer.train()
    assert trainer.state.global_step == 2
    logs = [h for h in trainer.state.log_history if "rewards/loophole_reward/mean" in h]
    assert len(logs) == 2 and all("rewards/oracle_reward/mean" in h and "hack_rate" in h for h in logs)
    # TRL passed the dataset's columns by name, one value per completion, and chat-format completions
    assert len(seen) == 4  # two steps × (loophole reward, oracle)
    ids = {r["problem_id"]: r["mode"] for r in rows}
    for completions, problem_id, mode in seen:
        assert len(completions) == len(problem_id) == len(mode) == 4
        assert all(ids[i] == m for i, m in zip(problem_id, mode))
        assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in completions)
    assert rf._pool is None  # the pool was closed with the context


def test_readme_trl_example_runs(tmp_path, monkeypatch):
    """The README's TRL example, as written except for the model (tiny instead of the embedded SmolLM2)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Use the environment from TRL", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'load_model("smollm2")' in code
    monkeypatch.chdir(tmp_path)  # output_dir="runs/trl"
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        exec(compile(code.replace('load_model("smollm2")', 'load_model("tiny")'), "README.md", "exec"), scope)
    assert scope["trainer"].state.global_step == 2 and scope["reward"]._pool is None
    assert scope["reward"].last_grades and hasattr(scope["reward"].last_grades[0], "exploited")

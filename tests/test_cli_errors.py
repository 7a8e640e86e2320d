"""The CLI's promise, table-driven: every user mistake of docs/ERRORS.md ends in a non-zero exit and one line on
stderr that names the problem and the fix, never a traceback, and nothing is written where it should not be.

Most cases fail before any model load (preflight); the few that need a model use `tiny` or a model folder
holding only a tokenizer and a config (so a case that got as far as loading weights would fail differently).
Cases run in-process through `cli.main`; a few run the real `projected-grpo` entry point as a subprocess.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from projected_grpo.cli import main
from projected_grpo.config import PRESETS
from projected_grpo.env.problems import load_problems


# ----------------------------------------------------------------------------- inputs the cases point at
def _leetcode_row(**over):
    row = {"id": "two-sum", "question": "Return indices of two numbers adding up to target.",
           "gt_answer": ["assert Solution().twoSum([2, 7, 11, 15], 9) == [0, 1]"], "func_name": "Solution().twoSum",
           "canonical_solution": "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n"}
    return json.dumps({**row, **over})


def _tokenizer_folder(path: Path, chat_template: bool, model_type: str = "llama") -> Path:
    """A model folder with a tokenizer and a config.json but no weights: a check that passes here would
    reach the weight load and fail with another message."""
    from projected_grpo.models import tiny_tokenizer

    tok = tiny_tokenizer()
    if not chat_template:
        tok.chat_template = None
    tok.save_pretrained(path)
    cfg = json.loads((Path(__file__).parents[1] / "src/projected_grpo/assets/tiny/config.json").read_text())
    if model_type != "llama":
        cfg = {"model_type": model_type, "n_embd": 16, "n_layer": 1, "n_head": 2, "vocab_size": 260, "bos_token_id": 256,
               "eos_token_id": 257}
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": model_type}))
    return path


def _run_dir(path: Path, *, state: bool | None, knobs: bytes | None = None, vhack: bytes | None = None,
             config: str | None = None, step: int = 1, metrics: str | None = '{"step": 1}\n',
             ckpt: bool = True) -> Path:
    """A run directory of the smoke config with a checkpoint whose files are given (bytes: corrupt ones;
    state None: no state.pt; ckpt False: no ckpt/ at all), at checkpoint ``step``, with ``metrics`` (None: no
    metrics.jsonl)."""
    path.mkdir(parents=True)
    cfg = PRESETS["smoke"]
    (path / "config.json").write_text(config if config is not None else json.dumps(
        {"config": cfg.to_dict(), "hash": cfg.hash(), "match_hash": cfg.match_hash(), "arm": cfg.arm}))
    if metrics is not None:
        (path / "metrics.jsonl").write_text(metrics)
    if not ckpt:
        return path
    ck = path / "ckpt"
    ck.mkdir()
    if state:
        torch.save({"step": step}, ck / "state.pt")
    elif state is not None:
        (ck / "state.pt").write_bytes(b"not a pickle")
    (ck / "knobs.safetensors").write_bytes(knobs if knobs is not None else _valid_safetensors())
    (ck / "vhack.safetensors").write_bytes(vhack if vhack is not None else _valid_safetensors())
    return path


def _valid_safetensors() -> bytes:
    import io

    from safetensors.torch import save

    return io.BytesIO(save({"x": torch.zeros(2)})).getvalue()


def _half(b: bytes) -> bytes:
    return b[: len(b) // 2]


def _pool_file(path: Path, line: str) -> Path:
    path.write_text(line + "\n")
    return path


# (case id, argv with {t} = the case's folder, setup(t) -> None, words the one line must contain: the problem and the fix)
CASES = [
    ("unknown-verb", ["frobnicate"], None, ["unknown command", "choose from"]),
    ("negative-group", ["train", "--group", "-2"], None, ["--group", "positive"]),
    ("zero-steps", ["train", "--steps", "0"], None, ["--steps", "positive"]),
    ("zero-ppo-epochs", ["train", "--ppo-epochs", "0"], None, ["--ppo-epochs must be positive"]),
    ("bad-choice", ["train", "--intervention", "delete"], None, ["intervention", "erase"]),
    ("mix-ratio-range", ["train", "--mix-ratio", "1.5"], None, ["--mix-ratio", "[0, 1]"]),
    ("unknown-preset", ["train", "--preset", "nope"], None, ["unknown preset", "choose from"]),
    ("preset-without-name", ["train", "--preset"], None, ["--preset needs a name", "smoke"]),
    ("negative-max-problems", ["train", "--max-problems", "-1"], None, ["--max-problems", "positive"]),
    ("zero-max-problems", ["train", "--max-problems", "0"], None, ["--max-problems", "left out"]),
    ("negative-lr", ["train", "--lr", "-1"], None, ["--lr", "positive"]),
    ("nan-temperature", ["train", "--temperature", "nan"], None, ["--temperature", "finite"]),
    ("top-p-zero", ["train", "--top-p", "0"], None, ["--top-p", "(0, 1]"]),
    ("unknown-mode", ["train", "--modes", "bogus"], None, ["unknown loophole mode", "choose from"]),
    ("known-modes-disjoint", ["train", "--modes", "sentinel", "--vhack-known-modes", "run_tests"], None,
     ["--vhack-known-modes", "among --modes"]),
    ("known-modes-not-trained", ["train", "--modes", "sentinel", "--vhack-known-modes", "sentinel", "run_tests"],
     None, ["run_tests", "add them to --modes"]),
    # a template pool holds hack, clean and wrong completions of every mode (LOMO restricts V only), never rollouts
    ("teacher-kinds-unservable", ["train", "--teacher-kinds", "rollout"], None,
     ["--teacher-kinds", "--mix-ratio 0"]),
    ("amp-with-bf16", ["train", "--amp", "--dtype", "bfloat16"], None, ["--amp", "drop --amp"]),
    ("device-form", ["train", "--device", "tpu"], None, ["--device must be", "cuda:N"]),
    ("device-missing", ["train", "--device", "cuda:7"], None,
     ["--device cuda:7", "--device cpu" if not torch.cuda.is_available() else "cuda:0"]),
    ("layers-form", ["train", "--layers", "abc"], None, ["--layers", "10-20"]),
    ("typo-flag", ["train", "--stepz", "3"], None, ["--stepz", "--steps"]),
    ("tracker-missing", ["train", "--tracker", "wandb"], None, ["wandb", "pip install"]),
    ("unknown-dataset", ["train", "--dataset", "nope"], None, ["unknown dataset", "leetcode:PATH.jsonl"]),
    ("dataset-missing", ["train", "--dataset", "leetcode:{t}/no.jsonl"], None, ["dataset file not found", "no.jsonl"]),
    ("dataset-malformed", ["train", "--dataset", "leetcode:{t}/p.jsonl"],
     lambda t: (t / "p.jsonl").write_text("{oops\n"), ["malformed JSON", "p.jsonl:1"]),
    ("dataset-wrong-type", ["train", "--dataset", "leetcode:{t}/p.jsonl"],
     lambda t: (t / "p.jsonl").write_text(_leetcode_row(gt_answer=5) + "\n"), ["'gt_answer' must be", "list of strings"]),
    ("dataset-wrong-type-meta", ["train", "--dataset", "leetcode:{t}/p.jsonl"],
     lambda t: (t / "p.jsonl").write_text(_leetcode_row(prompt_metadata="x") + "\n"), ["'prompt_metadata'", "object"]),
    ("dataset-missing-field", ["train", "--dataset", "leetcode:{t}/p.jsonl"],
     lambda t: (t / "p.jsonl").write_text(json.dumps({"id": "a"}) + "\n"), ["missing field", "question"]),
    ("dataset-too-small", ["train", "--eval-problems", "1000"], None, ["--eval-problems", "lower"]),
    ("pool-missing", ["train", "--teacher-pool", "{t}/pool.jsonl"], None, ["--teacher-pool", "no such file"]),
    ("pool-malformed", ["train", "--teacher-pool", "{t}/pool.jsonl"],
     lambda t: _pool_file(t / "pool.jsonl", '{"problem_id": "a"}'), ["--teacher-pool", "missing field"]),
    ("model-folder-missing", ["train", "--model", "{t}/nomodel"], None, ["no such folder", "hub id"]),
    ("model-tilde-missing", ["train", "--model", "~/pgrpo-no-such-model"], None, ["no such folder", "pgrpo-no-such"]),
    ("model-no-chat-template", ["train", "--model", "{t}/m"], lambda t: _tokenizer_folder(t / "m", False),
     ["no chat template", "chat_template"]),
    ("fast-unsupported-arch", ["train", "--model", "{t}/m", "--rollout-backend", "fast"],
     lambda t: _tokenizer_folder(t / "m", True, "gpt2"), ["--rollout-backend fast", "--rollout-backend hf"]),
    ("resume-corrupt-state", ["train", "--run-dir", "{t}/run", "--resume"], lambda t: _run_dir(t / "run", state=False),
     ["state.pt", "corrupt"]),
    ("resume-corrupt-knobs", ["train", "--run-dir", "{t}/run", "--resume"],
     lambda t: _run_dir(t / "run", state=True, knobs=_half(_valid_safetensors())), ["knobs.safetensors", "corrupt"]),
    ("resume-corrupt-vhack", ["train", "--run-dir", "{t}/run", "--resume"],
     lambda t: _run_dir(t / "run", state=True, vhack=b"garbage" * 9), ["vhack.safetensors", "start over"]),
    ("run-dir-taken", ["train", "--run-dir", "{t}/run"], lambda t: _run_dir(t / "run", state=True),
     ["already holds a run", "--resume"]),
    ("resume-other-config", ["train", "--run-dir", "{t}/run", "--resume", "--lr", "0.5"],
     lambda t: _run_dir(t / "run", state=True), ["another config", "--force"]),
    ("demo-bad-steps", ["demo", "--out", "{t}/demo", "--model", "tiny", "--steps", "0"], None, ["--steps", "positive"]),
    ("export-not-a-run", ["export", "{t}", "--out", "{t}/exp"], None, ["not a run directory", "ckpt/knobs.safetensors"]),
    ("export-malformed-config", ["export", "{t}/run", "--out", "{t}/exp"],
     lambda t: _run_dir(t / "run", state=True, config="{not json"), ["config.json", "written by `train`"]),
    ("export-config-wrong-type", ["export", "{t}/run", "--out", "{t}/exp"],
     lambda t: _run_dir(t / "run", state=True, config=json.dumps({"config": {"steps": "many"}})),
     ["'steps' must be int", "config.json"]),
    ("export-corrupt-knobs", ["export", "{t}/run", "--out", "{t}/exp"],
     lambda t: _run_dir(t / "run", state=True, knobs=b"\x00" * 5), ["knobs.safetensors", "corrupt"]),
    ("grade-missing-input", ["grade", "--in", "{t}/none.jsonl"], None, ["cannot read", "none.jsonl"]),
    ("grade-bad-mode", ["grade", "--in", "{t}/c.jsonl", "--mode", "bogus"], lambda t: (t / "c.jsonl").write_text(""),
     ["--mode 'bogus'", "choose from"]),
    ("grade-bad-dataset", ["grade", "--in", "{t}/c.jsonl", "--dataset", "nope"], lambda t: (t / "c.jsonl").write_text(""),
     ["unknown dataset", "builtin"]),
    ("check-bad-dataset", ["check", "--dataset", "leetcode:{t}/x.jsonl"], None, ["dataset file not found", "x.jsonl"]),
    ("results-not-a-run", ["results", "{t}"], None, ["{t}", "run"]),
    ("study-unknown-question", ["study", "--preset", "smoke", "--out", "{t}/study", "--only", "bogus", "--dry-run"],
     None, ["bogus", "headline"]),
    ("config-missing", ["train", "--config", "{t}/none.json"], None, ["--config", "none.json", "no such file"]),
    ("config-malformed", ["train", "--config", "{t}/c.json"], lambda t: (t / "c.json").write_text('{"config": {'),
     ["--config", "c.json", "malformed JSON at line 1"]),
    ("config-wrong-type", ["train", "--config", "{t}/c.json"],
     lambda t: (t / "c.json").write_text(json.dumps({"config": {"steps": "many"}})), ["c.json", "'steps' must be int"]),
    ("config-unknown-key", ["train", "--config", "{t}/c.json"],
     lambda t: (t / "c.json").write_text(json.dumps({"config": {"stepz": 3}})), ["c.json", "unknown config keys"]),
    # found by trying the CLI as a hostile new user (session 5): each crashed or passed silently before
    ("negative-weight-decay", ["train", "--weight-decay", "-1"], None, ["--weight-decay", ">= 0"]),
    ("check-negative-workers", ["check", "--workers", "-1"], None, ["--workers", "[0, 256]"]),
    ("check-zero-max-problems", ["check", "--max-problems", "0"], None, ["--max-problems", "positive"]),
    ("check-negative-max-problems", ["check", "--max-problems", "-1"], None, ["--max-problems", "positive"]),
    ("grade-negative-workers", ["grade", "--in", "{t}/c.jsonl", "--workers", "-2"],
     lambda t: (t / "c.jsonl").write_text(json.dumps({"problem_id": load_problems("builtin")[0].id, "mode": "sentinel",
                                                      "completion": "x"}) + "\n"), ["--workers", "[0, 256]"]),
    ("eval-negative-workers", ["eval", "--model", "tiny", "--workers", "-1"], None, ["--workers", "[0, 256]"]),
    ("export-into-its-run-dir", ["export", "{t}/run", "--out", "{t}/run"], lambda t: _run_dir(t / "run", state=True),
     ["--out", "holds a run", "config.json"]),
    ("export-into-another-run", ["export", "{t}/run", "--out", "{t}/other"],
     lambda t: (_run_dir(t / "run", state=True), _run_dir(t / "other", state=True)), ["--out", "holds a run"]),
    ("export-out-is-a-file", ["export", "{t}/run", "--out", "{t}/f"],
     lambda t: (_run_dir(t / "run", state=True), (t / "f").write_text("x")), ["--out", "is a file", "folder"]),
    # a damaged run dir must not be resumed into silent data loss (a gap in the metrics, or rows deleted)
    ("resume-metrics-truncated", ["train", "--run-dir", "{t}/run", "--resume"],
     lambda t: _run_dir(t / "run", state=True, step=3, metrics='{"step": 1}\n{"step": 2}\n{"st'),
     ["metrics.jsonl", "step(s) [3]", "truncated or deleted"]),
    ("resume-metrics-deleted", ["train", "--run-dir", "{t}/run", "--resume"],
     lambda t: _run_dir(t / "run", state=True, step=2, metrics=None), ["step(s) [1, 2]", "start over"]),
    ("resume-state-deleted", ["train", "--run-dir", "{t}/run", "--resume"],
     lambda t: _run_dir(t / "run", state=None), ["ckpt", "no state.pt", "corrupt"]),
    ("resume-ckpt-deleted", ["train", "--run-dir", "{t}/run", "--resume"],
     lambda t: _run_dir(t / "run", state=None, ckpt=False, metrics="".join(f'{{"step": {i}}}\n' for i in range(4))),
     ["up to step 3", "no checkpoint", "restore"]),
    ("model-folder-empty", ["train", "--model", "{t}/m"], lambda t: (t / "m").mkdir(), ["--model", "no config.json", "hub id"]),
    ("plot-out-is-a-folder", ["plot", "{t}/run", "--out", "{t}/d"],
     lambda t: (_run_dir(t / "run", state=True), (t / "d").mkdir()), ["--out", "is a folder", "dynamics.png"]),
    ("results-nan-threshold", ["results", "{t}/run", "--matched-threshold", "nan"],
     lambda t: _run_dir(t / "run", state=True), ["threshold", ">= 0", "nan"]),
    ("study-nan-threshold", ["study", "--preset", "smoke", "--out", "{t}/study", "--threshold", "nan", "--dry-run"], None,
     ["--threshold", ">= 0"]),
    ("study-zero-last", ["study", "--preset", "smoke", "--out", "{t}/study", "--last", "0", "--dry-run"], None,
     ["--last must be positive", "got 0"]),
    ("sweep-set-run-dir", ["sweep", "--out", "{t}/sw", "--set", "run_dir=x", "--dry-run"], None,
     ["'run_dir' is set by the sweep", "names the run dirs"]),
    ("run-dir-is-a-file", ["train", "--run-dir", "{t}/f"], lambda t: (t / "f").write_text("x"),
     ["--run-dir", "is a file, not a folder"]),
    ("run-dir-under-a-file", ["train", "--run-dir", "{t}/f/run"], lambda t: (t / "f").write_text("x"),
     ["--run-dir", "{t}/f is a file"]),
    ("sweep-out-is-a-file", ["sweep", "--out", "{t}/f", "--dry-run"], lambda t: (t / "f").write_text("x"),
     ["--out", "is a file, not a folder"]),
    ("study-out-is-a-file", ["study", "--preset", "smoke", "--out", "{t}/f", "--dry-run"],
     lambda t: (t / "f").write_text("x"), ["--out", "is a file, not a folder"]),
    ("too-many-sandbox-workers", ["train", "--sandbox-workers", "100000"], None, ["--sandbox-workers", "at most 256"]),
    ("check-too-many-workers", ["check", "--workers", "100000"], None, ["--workers", "[0, 256]"]),
    ("results-out-over-a-run-file", ["results", "{t}/run", "--out", "{t}/run/metrics.jsonl"],
     lambda t: _run_dir(t / "run", state=True), ["--out", "file of the run directory", "pick another file"]),
    ("config-and-preset", ["train", "--config", "{t}/c.json", "--preset", "demo"],
     lambda t: (t / "c.json").write_text(json.dumps({"config": {}})), ["--config and --preset", "give one"]),
    # found by the hostile-newcomer pass of session 6: each ran silently (or failed only after the model load) before
    ("too-many-vhack-pairs", ["train", "--vhack-pairs", "100000"], None, ["--vhack-pairs", "[1, 4096]", "100000"]),
    ("layers-reversed", ["train", "--layers", "5-2"], None, ["--layers 5-2", "reversed", "2-5"]),
    ("layers-reversed-in-a-list", ["train", "--layers", "0,9-3"], None, ["range 9-3 is reversed", "3-9"]),
    ("layers-garbage", ["train", "--layers", "x"], None, ["--layers", "10-20", "'x'"]),
    ("layers-beyond-the-model", ["train", "--layers", "0-9"], None,
     ["--layers 0-9", "the model has layers 0-1", "2-9 do not exist"]),
    ("run-dir-empty", ["train", "--run-dir", ""], None, ["--run-dir is empty", "leave the flag out"]),
    ("run-dir-blank", ["train", "--run-dir=  "], None, ["--run-dir is empty"]),
    ("dataset-leetcode-no-path", ["train", "--dataset", "leetcode:"], None,
     ["--dataset leetcode: needs the path", "leetcode:problems.jsonl"]),
    ("dataset-leetcode-folder", ["train", "--dataset", "leetcode:{t}"], None, ["is a folder", "one JSONL file"]),
    ("dataset-synth-no-seed", ["train", "--dataset", "synth:"], None, ["--dataset synth: needs a seed", "synth:1"]),
    ("dataset-hf-no-name", ["train", "--dataset", "hf:"], None, ["hf: needs a dataset", "hf:org/name"]),
    ("check-leetcode-no-path", ["check", "--dataset", "leetcode:"], None, ["--dataset leetcode: needs the path"]),
    ("warmup-longer-than-run", ["train", "--warmup-steps", "5", "--steps", "4"], None,
     ["--warmup-steps 5", "--steps 4", "never reach --lr"]),
    ("negative-temperature", ["train", "--temperature", "-1"], None, ["--temperature >= 0", "got", "-1.0"]),
    ("export-out-empty", ["export", "{t}/run", "--out", ""], lambda t: _run_dir(t / "run", state=True),
     ["--out is empty"]),
    ("export-run-dir-empty", ["export", "", "--out", "{t}/exp"], None, ["RUN_DIR is empty"]),
    ("results-out-empty", ["results", "{t}/run", "--out", ""], lambda t: _run_dir(t / "run", state=True),
     ["--out is empty"]),
    ("results-run-dir-empty", ["results", ""], None, ["RUN_DIRS has an empty value"]),
    ("plot-out-empty", ["plot", "{t}/run", "--out", ""], lambda t: _run_dir(t / "run", state=True), ["--out is empty"]),
    ("grade-in-empty", ["grade", "--in", ""], None, ["--in is empty"]),
    ("demo-out-empty", ["demo", "--out", ""], None, ["--out is empty"]),
    ("study-out-empty", ["study", "--preset", "smoke", "--out", "", "--dry-run"], None, ["--out is empty"]),
    ("sweep-file-empty", ["sweep", "--file", "", "--dry-run"], None, ["--file is empty"]),
    ("sweep-set-empty", ["sweep", "--set", "force_mode=", "--dry-run"], None, ["--force-mode is empty"]),
    ("sweep-grid-empty-value", ["sweep", "--grid", "dataset=builtin,", "--dry-run"], None, ["--dataset is empty"]),
    ("prompts-per-step-beyond-problems", ["train", "--prompts-per-step", "8"], None,
     ["--prompts-per-step 8", "7 training problems", "lower --prompts-per-step"]),
    ("synth-held-out-too-small", ["train", "--dataset", "synth", "--max-problems", "3"], None,
     ["3 held-out and 3 training", "6 held-out (the evaluation problems)", "--max-problems"]),
    ("max-new-tokens-beyond-context", ["train", "--max-new-tokens", "100000"], None,
     ["--max-new-tokens 100000", "context of 4096 positions"]),
    ("eval-nan-temperature", ["eval", "--model", "tiny", "--temperature", "nan"], None,
     ["--temperature a finite number", "got", "nan"]),
    ("group-of-one", ["train", "--group", "1"], None, ["--group must be at least 2", "got 1"]),
    ("sweep-negative-sandbox-workers", ["sweep", "--out", "{t}/sw", "--sandbox-workers", "-1", "--dry-run"], None,
     ["--sandbox-workers", "[0, 256]", "-1"]),
    ("sweep-nan-cpus-per-run", ["sweep", "--out", "{t}/sw", "--cpus-per-run", "nan", "--dry-run"], None,
     ["--cpus-per-run", "finite", "nan"]),
    ("study-inf-gpus-per-run", ["study", "--preset", "smoke", "--out", "{t}/st", "--gpus-per-run", "inf", "--dry-run"],
     None, ["--gpus-per-run", "finite", "inf"]),
    ("eval-max-new-tokens-beyond-context", ["eval", "--model", "tiny", "--max-new-tokens", "5000", "--quiet"], None,
     ["--max-new-tokens 5000", "context of 4096 positions"]),
    ("eval-inf-temperature", ["eval", "--model", "tiny", "--temperature", "inf"], None, ["--temperature inf"]),
    ("config-empty-model", ["train", "--config", "{t}/c.json"],
     lambda t: (t / "c.json").write_text(json.dumps({"config": {"model": ""}})), ["c.json", "['model'] are empty"]),
]


def _snapshot(root: Path) -> dict:
    """Every path under root with its content (a resume may rewrite metrics.jsonl to the same rows). A run
    dir's `.lock` is left out: opening a run takes the lock, and the file outlives it by design (train.RunDir)."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in root.rglob("*")
            if p.name != ".lock"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_user_mistake_is_one_line(case, tmp_path, capsys, monkeypatch):
    name, argv, prepare, words = case
    work = tmp_path / "case"
    work.mkdir()
    monkeypatch.chdir(work)  # a default run dir (runs/...) would land here
    if prepare:
        prepare(work)
    before = _snapshot(work)
    capsys.readouterr()
    rc = main([a.replace("{t}", str(work)) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc != 0, f"{name}: exit 0"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: stderr is {err!r}"
    assert "Traceback" not in err + out
    for w in words:
        assert w.replace("{t}", str(work)) in lines[0], f"{name}: {w!r} not in {lines[0]!r}"
    assert _snapshot(work) == before, f"{name}: files were written or changed"
    assert len(CASES) >= 30


# ----------------------------------------------------------------------------- the real entry point
def _cli(*argv, cwd):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "projected_grpo.cli", *argv], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("argv,words", [
    (["train", "--tracker", "wandb"], ["wandb", "pip install"]),
    (["train", "--seeds", "0,1"], ["--seeds"]),
    (["train", "--model", "{t}/m"], ["no chat template"]),
], ids=["tracker-missing", "typo-flag", "no-chat-template"])
def test_user_mistake_subprocess(argv, words, tmp_path):
    if "{t}/m" in argv:
        _tokenizer_folder(tmp_path / "m", False)
    before = _snapshot(tmp_path)
    p = _cli(*[a.replace("{t}", str(tmp_path)) for a in argv], cwd=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr + p.stdout and all(w in lines[0] for w in words), lines
    assert _snapshot(tmp_path) == before


def test_grade_bad_lines_exit_code(tmp_path):
    """`grade` grades the good lines, writes an error record per bad line and exits 1 (not 0, not a crash)."""
    p = load_problems("builtin")[0]
    good = json.dumps({"problem_id": p.id, "mode": "sentinel", "completion": "```python\npass\n```"})
    (tmp_path / "c.jsonl").write_bytes(good.encode() + b"\n\xff\xfe\n{bad\n" + b"[" * 100_000 + b"\n"
                                       + json.dumps({"problem_id": p.id, "completion": "x"}).encode() + b"\n")
    r = _cli("grade", "--in", "c.jsonl", "--out", "o.jsonl", "--workers", "1", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    out = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(out) == 5 and "format_ok" in out[0] and all("error" in o and "format_ok" not in o for o in out[1:])
    assert "4 line(s) not graded" in r.stderr


# ----------------------------------------------------------------------------- silent mistakes, now loud or fixed
def test_auto_dtype_is_part_of_a_runs_identity():
    """A CPU fp32 run and a GPU bf16 run of one config never share a name; fp32 adds nothing to the identity,
    so every run made on a CPU before (and every test pinning its name) keeps its hash."""
    import dataclasses

    smoke = PRESETS["smoke"]
    cpu, gpu = dataclasses.replace(smoke, device="cpu"), dataclasses.replace(smoke, device="cuda")
    assert cpu.resolved_dtype() == "float32" and gpu.resolved_dtype() == "bfloat16"
    assert "auto_dtype" not in cpu._identity() and gpu._identity()["auto_dtype"] == "bfloat16"
    assert cpu.hash() != gpu.hash() and cpu.match_hash() != gpu.match_hash()
    assert dataclasses.replace(gpu, amp=True).resolved_dtype() == "float32"  # --amp keeps fp32 weights
    assert dataclasses.replace(smoke, dtype="float32", device="cuda")._identity() == \
        dataclasses.replace(smoke, dtype="float32", device="cpu")._identity() | {"device": "cuda"}


def test_sandbox_worker_cap_is_the_sandboxs():
    """The CLI's cap on grader processes is the sandbox pool's own (one uid range of UID_STRIDE per pool)."""
    from projected_grpo.config import MAX_SANDBOX_WORKERS
    from projected_grpo.env.sandbox import UID_STRIDE

    assert MAX_SANDBOX_WORKERS == UID_STRIDE


def test_tilde_expanded_for_check_and_loader(tmp_path, monkeypatch):
    """`~` in --model / --dataset / --run-dir / --teacher-pool reaches every loader expanded."""
    from projected_grpo.config import parse_config
    from projected_grpo.models import model_path

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m").mkdir()
    cfg = parse_config(["--model", "~/m", "--dataset", "leetcode:~/p.jsonl", "--run-dir", "~/r",
                        "--teacher-pool", "~/pool.jsonl"])
    assert (cfg.model, cfg.dataset, cfg.run_dir, cfg.teacher_pool) == (
        str(tmp_path / "m"), f"leetcode:{tmp_path / 'p.jsonl'}", str(tmp_path / "r"), str(tmp_path / "pool.jsonl"))
    assert model_path("~/m") == str(tmp_path / "m")  # the loader expands too, for configs built in code


# ----------------------------------------------------------------------------- session 6: what the hostile pass found
TINY_RUN = ["--preset", "smoke", "--steps", "2", "--eval-problems", "1", "--sandbox-workers", "1", "--max-new-tokens", "8"]


@pytest.mark.parametrize("stop_at,words", [
    (None, ["before training opened its run directory", "no checkpoint exists"]),
    (0, ["before the first checkpoint", "no checkpoint was written yet", "--resume", "from step 0"]),
    (1, ["the checkpoint of step 1", "is intact", "--resume", "continue from step 1"]),
], ids=["before-run-dir", "before-first-checkpoint", "after-a-checkpoint"])
def test_interrupt_line_says_what_is_on_disk(stop_at, words, tmp_path, monkeypatch, capsys):
    """SIGTERM before the run dir, before the first checkpoint and after one: the line names what is on disk (it
    said "the last checkpoint is intact" in all three), exit 143, and --resume then does what the line says."""
    import signal

    from projected_grpo import train as train_mod
    from projected_grpo.interrupts import Interrupted

    run = tmp_path / "run"
    step_fn = train_mod.train_step

    def sigterm(*a):
        raise Interrupted(signal.SIGTERM)

    def step_or_sigterm(cfg, s, upd, step):  # SIGTERM arriving during step index stop_at (0: the first step)
        return sigterm() if step == stop_at else step_fn(cfg, s, upd, step)

    if stop_at is None:
        monkeypatch.setattr(train_mod, "preflight", sigterm)
    else:
        monkeypatch.setattr(train_mod, "train_step", step_or_sigterm)
    capsys.readouterr()
    assert main(["train", *TINY_RUN, "--run-dir", str(run)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and all(w in line for w in words), line
    if stop_at is None:
        assert not run.exists()
        return
    assert str(run) in line
    assert (run / "ckpt").exists() == (stop_at > 0)
    monkeypatch.setattr(train_mod, "train_step", step_fn)
    assert main(["train", *TINY_RUN, "--run-dir", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert ("no checkpoint yet" in err) == (stop_at == 0)  # the resume started over, or continued
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_interrupt_line_of_demo_and_other_verbs():
    """`demo` resumes by itself (no --resume to give); a verb that trains nothing just says it was interrupted."""
    from projected_grpo.interrupts import Interrupted, stopped_line

    e = Interrupted(15)
    assert stopped_line(e, "results") == "interrupted"
    assert "run the same demo command again" in stopped_line(e, "demo") and "--resume" not in stopped_line(e, "demo")
    e.run_dir, e.checkpoint_step = "runs/demo/erase", 3
    assert stopped_line(e, "demo") == ("interrupted; the checkpoint of step 3 in runs/demo/erase is intact: run the same "
                                       "demo command again (it resumes the arm) to continue from step 3")


def test_layers_beyond_the_loaded_model_is_one_line(tmp_path, monkeypatch, capsys):
    """--layers past the model's last layer: preflight refuses it from the model's config (a table case); for a
    config without a layer count the adapter refuses it on the loaded model's module names, in one line too."""
    from projected_grpo import preflight as preflight_mod
    from projected_grpo.adapter import AdapterError, SVDAdapter
    from projected_grpo.config import DEFAULT_TARGETS
    from projected_grpo.models import load_model

    model, _ = load_model("tiny")
    with pytest.raises(AdapterError, match=r"^--layers 1,3-5,9: the model has layers 0-1; layer\(s\) 3-5,9 do not exist"):
        SVDAdapter.attach(model, DEFAULT_TARGETS, "1,3-5,9")
    with pytest.raises(AdapterError, match="range 4-2 is reversed"):
        SVDAdapter.attach(model, DEFAULT_TARGETS, "4-2")
    with pytest.raises(AdapterError, match="layer\\(s\\) 2-1000000000 do not exist"):  # no billion-entry set first
        SVDAdapter.attach(model, DEFAULT_TARGETS, "0-1000000000")
    monkeypatch.setattr(preflight_mod, "check_layers", lambda spec, hf_cfg: None)  # a config without num_hidden_layers
    capsys.readouterr()
    assert main(["train", *TINY_RUN, "--run-dir", str(tmp_path / "run"), "--layers", "0-7"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: --layers 0-7: the model has layers 0-1")


def test_unknown_target_modules_name_the_models_linears(tmp_path, capsys):
    """--target-modules that match no Linear: known only once the model is built; one line that lists the names
    the model's Linear layers do have (it said "(layers=None)")."""
    capsys.readouterr()
    assert main(["train", *TINY_RUN, "--run-dir", str(tmp_path / "run"), "--target-modules", "qproj"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: --target-modules qproj: no Linear layer of the model ends "
                                                   "with these names; its Linear layers are named ['down_proj',")


def test_mix_ratio_one_has_no_student_rates(tmp_path, capsys):
    """--mix-ratio 1: every group row is a teacher completion, so the student rates (hack_s, solve_s, cin_s,
    frac_truncated) are null, not 0 (frac_truncated said 0.0); the teacher's are measured; the summary line says
    why instead of printing "hack_s -"."""
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", *TINY_RUN, "--steps", "1", "--mix-ratio", "1", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert [row[k] for k in ("hack_s", "solve_s", "cin_s", "frac_truncated")] == [None] * 4
    assert isinstance(row["hack_t"], float) and isinstance(row["cin_t"], float)
    assert json.loads((run / "summary.json").read_text())["hack_s"] is None
    assert "no student samples (--group 4 x --mix-ratio 1.0" in out and "hack_s -" not in out
    assert main(["results", str(run)]) == 0
    assert "no student samples (round(group x mix_ratio) = group" in capsys.readouterr().out

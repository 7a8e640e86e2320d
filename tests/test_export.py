"""`projected-grpo export` on a real (smoke) run: refuses an unfinished run, writes a model card, readable files."""

import json
import os
import shutil
import stat

import pytest

from projected_grpo.cli import main


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("exp") / "route"
    assert main(["train", "--preset", "smoke", "--intervention", "route", "--steps", "2", "--eval-problems", "2",
                 "--sandbox-workers", "1", "--run-dir", str(run)]) == 0
    return run


def test_export_writes_a_model_card_and_files_others_can_read(finished_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    old = os.umask(0o022)
    try:
        assert main(["export", str(finished_run), "--out", str(tmp_path / "m")]) == 0
    finally:
        os.umask(old)
    out = tmp_path / "m"
    AutoModelForCausalLM.from_pretrained(out)  # a plain transformers model
    card = (out / "README.md").read_text()
    meta = json.loads((finished_run / "config.json").read_text())
    final = json.loads((finished_run / "summary.json").read_text())["final_eval"]
    assert "base_model: tiny" in card and "arm `route`" in card
    assert "| steps | 2 of 2: finished |" in card and meta["hash"] in card and meta["match_hash"] in card
    assert f"| this model (δS_hack ablated) | {final['hack_abl']:.2f} | {final['solve_abl']:.2f} |" in card
    for p in out.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o044 == 0o044, f"{p.name} is {oct(mode)}: not readable by group and others"
    # a second export into the same folder overwrites it (only a run directory as --out is refused: test_cli_errors)
    assert main(["export", str(finished_run), "--out", str(out)]) == 0
    AutoModelForCausalLM.from_pretrained(out)


def test_unfinished_run_is_refused_unless_allow_partial(finished_run, tmp_path, capsys):
    run = tmp_path / "killed"
    shutil.copytree(finished_run, run)
    meta = json.loads((run / "config.json").read_text())
    meta["config"]["steps"] = 5  # as if killed after step 2 of 5
    (run / "config.json").write_text(json.dumps(meta))
    (run / "summary.json").unlink()
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "2 of 5 steps" in err and "--allow-partial" in err
    assert not (tmp_path / "m").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "m"), "--allow-partial"]) == 0
    card = (tmp_path / "m" / "README.md").read_text()
    assert "| steps | 2 of 5: **unfinished**" in card
    assert "At step 2 on 2 held-out problems" in card  # the last evaluation, read from metrics.jsonl

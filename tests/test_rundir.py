"""The run directory's one owner (rundir.py): status, tolerant readers, symmetric checkpoint, layout spelled once."""

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from projected_grpo import rundir
from projected_grpo.config import PRESETS


def _cfg(tmp_path, **kw):
    return dataclasses.replace(PRESETS["smoke"], run_dir=str(tmp_path / "run"), **kw)


def test_status_goes_fresh_resume_done_and_readers_tolerate_a_cut_line(tmp_path):
    cfg = _cfg(tmp_path)
    path = Path(cfg.run_dir)
    assert rundir.status(path) == "fresh" and rundir.read_metrics(path) == []
    run, state = rundir.RunDir.open(cfg)
    try:
        assert state is None and rundir.is_run(path) and rundir.status(path) == "fresh"  # a config alone
        meta, back = rundir.read_config(path)
        assert back.hash() == cfg.hash() and meta["match_hash"] == cfg.match_hash()
        run.append_metrics({"step": 1, "x": 1.0})
        assert rundir.status(path) == "resume"
        run.append_metrics({"step": 2, "x": 2.0, "hack_kept": 0.5})
        with open(run.metrics, "a") as f:
            f.write('{"step": 3, "x"')  # a kill mid-line
        notes = []
        assert [r["step"] for r in rundir.read_metrics(path, strict=True, notes=notes)] == [1, 2]
        assert notes and "partial last line 3" in notes[0]
        assert rundir.final_eval(path)["step"] == 2  # no summary yet: the last row with an evaluation
        run.write_summary({"final_eval": {"hack_kept": 0.25}})
        assert rundir.status(path) == "done" and rundir.final_eval(path) == {"hack_kept": 0.25}
    finally:
        run.release()
    text = run.metrics.read_text()
    run.metrics.write_text('{"step": 1}\nnot json\n' + text)  # a bad line in the middle
    assert [r["step"] for r in rundir.read_metrics(path)] == [1, 2]  # tolerant: skipped
    with pytest.raises(rundir.RunDirError, match="malformed JSON at line 2"):
        rundir.read_metrics(path, strict=True)
    (path / rundir.CONFIG).write_text("{oops")
    with pytest.raises(rundir.RunDirError, match="config.json is not a readable run config"):
        rundir.read_config(path)


def test_checkpoint_save_then_restore_is_symmetric(tmp_path, tiny_adapter):
    from projected_grpo.hack_subspace import HackBasis

    _, _, adapter = tiny_adapter
    cfg = _cfg(tmp_path)
    run, _ = rundir.RunDir.open(cfg)
    try:
        gen = torch.Generator().manual_seed(0)
        for m in adapter.modules.values():
            m.delta_s.data = torch.randn(m.delta_s.shape, generator=gen)
        V = {n: torch.linalg.qr(torch.randn(m.delta_s.numel(), 2, generator=gen))[0].T.contiguous()
             for n, m in list(adapter.modules.items())[:3]}
        basis = HackBasis(V, {n: torch.ones(2) for n in V}, {"source": "real"})
        want = {n: m.delta_s.detach().clone() for n, m in adapter.modules.items()}
        run.save_checkpoint(adapter, {"step": 3, "rng": None}, basis)
        assert rundir.checkpoint_step(run.path) == 3 and rundir.progress(run.path) == (3, cfg.steps, False)
        for m in adapter.modules.values():
            m.delta_s.data.zero_()
        back = run.restore(adapter)
        assert all(torch.equal(adapter.modules[n].delta_s, want[n]) for n in want)
        assert set(back.V) == set(V) and all(torch.equal(back.V[n], V[n]) for n in V)
        run.save_checkpoint(adapter, {"step": 4, "rng": None}, basis)  # replaces the old one whole
        assert run.load_state()["step"] == 4 and not (run.path / f"{rundir.CKPT}.old").exists()
    finally:
        run.release()


def test_no_other_module_spells_a_run_dir_file_name():
    """Every run-dir file name is a rundir constant: another module spelling one as a literal would fork
    the layout (models.py's config.json is a transformers model folder's, not a run dir's)."""
    names = {rundir.CONFIG, rundir.METRICS, rundir.SAMPLES, rundir.SUMMARY, rundir.VHACK, rundir.CKPT,
             rundir.KNOBS, rundir.STATE}
    src = Path(rundir.__file__).parent
    found = []
    for f in sorted(src.rglob("*.py")):
        if f.name in ("rundir.py", "models.py"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{f.relative_to(src)}:{node.lineno} {node.value!r}")
    assert not found, found

"""`--dataset hf:NAME_OR_PATH[:split]`: LeetCode-schema datasets through `datasets`, saved locally and loaded."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from projected_grpo.cli import main
from projected_grpo.env import GraderPool, load_problems
from projected_grpo.env.problems import DATA_PATHS

FIXTURE = Path(__file__).parent / "fixtures" / "leetcode_small.jsonl"


@pytest.fixture(scope="module")
def rows():
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def reference():
    return {p.id: p for p in load_problems(f"leetcode:{FIXTURE}")}


def _same(problems, reference):
    assert {p.id for p in problems} == set(reference)
    for p in problems:
        q = reference[p.id]
        assert (p.tests, p.method_name, p.setup_code, p.canonical_solution, p.starter_code, p.mode) == \
               (q.tests, q.method_name, q.setup_code, q.canonical_solution, q.starter_code, q.mode)


def test_saved_folder_parquet_and_splits_load_like_the_jsonl(rows, reference, tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "folder"))
    ds.to_parquet(str(tmp_path / "small.parquet"))
    datasets.DatasetDict({"train": ds.select(range(2)), "test": ds}).save_to_disk(str(tmp_path / "dict"))
    _same(load_problems(f"hf:{tmp_path / 'folder'}"), reference)
    _same(load_problems(f"hf:{tmp_path / 'small.parquet'}"), reference)
    _same(load_problems(f"hf:{tmp_path / 'dict'}:test"), reference)
    assert len(load_problems(f"hf:{tmp_path / 'dict'}")) == 2  # the default split is train
    assert len(load_problems(f"hf:{tmp_path / 'small.parquet'}:train[:3]")) == 3  # datasets' slicing syntax
    assert os.path.realpath(tmp_path / "folder") in DATA_PATHS  # hidden from candidates, like every dataset file
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_problems(f"hf:{tmp_path / 'dict'}:validation")


def test_a_loaded_problem_grades(rows, tmp_path):
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    p = load_problems(f"hf:{tmp_path / 'd.parquet'}", force_mode="sentinel")[0]
    with GraderPool(workers=1, timeout_s=2.0) as g:
        assert g.grade(p, f"```python\n{p.canonical_solution}\n```").gt_correct


def test_hf_errors_are_one_line(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="no such file or folder"):
        load_problems(f"hf:{tmp_path}/missing")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unknown file type"):
        load_problems(f"hf:{tmp_path / 'x.txt'}")
    rc = main(["train", "--dataset", f"hf:{tmp_path}/missing", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --dataset hf:") and err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the extra were not installed
    with pytest.raises(ValueError, match=r"pip install 'projected-grpo\[hf\]'"):
        load_problems("hf:org/name")

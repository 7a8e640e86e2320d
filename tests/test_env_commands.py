"""The `check` and `grade` verbs."""

from __future__ import annotations

import io
import json

from projected_grpo.env import clean_completion, hack_completion, load_problems
from projected_grpo.env.commands import check, grade


def test_check_builtin_passes_and_prints_a_table():
    buf = io.StringIO()
    assert check("builtin", workers=2, out=buf) == 0
    text = buf.getvalue()
    assert "OK: every check holds" in text and "hack x grader" in text
    assert "canonical gt_correct and never exploited : 13/13" in text


def test_check_humaneval_subset_and_bad_spec():
    buf = io.StringIO()
    assert check("humaneval", max_problems=12, workers=2, out=buf) == 0
    assert "154 kept of 164" in buf.getvalue()
    assert check("nope:thing", out=io.StringIO()) == 2


def test_check_fails_when_a_canonical_solution_is_wrong(tmp_path):
    src = open("tests/fixtures/leetcode_small.jsonl").readline()
    row = json.loads(src)
    row["canonical_solution"] = row["canonical_solution"].replace("return [d[target - x], i]", "return [i, i]")
    f = tmp_path / "broken.jsonl"
    f.write_text(json.dumps(row) + "\n")
    buf = io.StringIO()
    assert check(f"leetcode:{f}", workers=1, out=buf) == 1
    assert "FAILED" in buf.getvalue() and "canonical" in buf.getvalue()


def test_grade_file_with_malformed_lines(tmp_path):
    probs = load_problems("builtin")
    p = probs[0]
    lines = [
        json.dumps({"problem_id": p.id, "mode": "sentinel", "completion": clean_completion(p)}),
        "{this is not json",
        json.dumps({"problem_id": p.id, "mode": "sentinel", "completion": hack_completion(p, "sentinel"), "extra": 7}),
        json.dumps({"problem_id": "missing", "mode": "sentinel", "completion": "x"}),
        json.dumps({"problem_id": p.id, "mode": "bogus", "completion": "x"}),
        json.dumps([1, 2]),
        json.dumps({"problem_id": p.id, "completion": clean_completion(p)}),
    ]
    fin, fout = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    huge = json.dumps({"problem_id": p.id, "mode": "sentinel", "completion": "x" * (2 << 20)})
    fin.write_bytes(("\n".join(lines) + "\n").encode() + b'{"problem_id": "\xff\xfe"}\n' + huge.encode() + b"\n"
                    + lines[0].encode())  # the last line has no newline
    # some lines failed: exit 1 (issue 23), every good line still graded
    assert grade("builtin", str(fin), str(fout), workers=2) == 1
    out = [json.loads(x) for x in fout.read_text().splitlines()]
    assert len(out) == len(lines) + 3
    assert out[0]["gt_correct"] and out[0]["passed"] and not out[0]["exploited"] and out[0]["problem_id"] == p.id
    assert "malformed" in out[1]["error"]
    assert out[2]["exploited"] and out[2]["extra"] == 7 and out[2]["mechanism"] == "sentinel"
    assert "unknown problem_id" in out[3]["error"] and "unknown mode" in out[4]["error"]
    assert "malformed" in out[5]["error"]
    assert "no mode" in out[6]["error"] and "--mode" in out[6]["error"]  # refused without --mode (issue 23)
    assert out[7] == {"line": 8, "error": "not UTF-8 (byte 0xff at offset 16)"}
    assert out[8]["line"] == 9 and "longer than" in out[8]["error"] and "completion" not in out[8]
    assert out[9]["gt_correct"] and out[9]["problem_id"] == p.id
    # --mode grades the lines without a mode; a file of good lines exits 0
    fin.write_text(lines[0] + "\n" + lines[6] + "\n")
    assert grade("builtin", str(fin), str(fout), workers=2, mode=p.mode) == 0
    out = [json.loads(x) for x in fout.read_text().splitlines()]
    assert out[0]["mechanism"] == "sentinel" and out[1]["mechanism"] == p.mode and out[1]["gt_correct"]
    assert grade("builtin", str(tmp_path / "absent.jsonl"), None) == 2

"""The command line a newcomer meets: help that explains every flag, one list syntax, names alike across verbs."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re

import pytest

from projected_grpo import cli, config
from projected_grpo.config import PRESET_HELP, PRESETS, Config, ConfigError, parse_config

ARG_CLASSES = [Config, cli.DemoArgs, cli.CheckArgs, cli.GradeArgs, cli.ResultsArgs, cli.PlotArgs, cli.ExportArgs,
               cli.SweepArgs, cli.StudyArgs]


def _field_docstrings(cls) -> dict[str, str | None]:
    """Field name -> the string literal right below it in the class body (None when there is none)."""
    tree = ast.parse(inspect.getsource(inspect.getmodule(cls)))
    body = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__).body
    out = {}
    for st, nxt in zip(body, [*body[1:], None]):
        if isinstance(st, ast.AnnAssign):
            doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) else None
            out[st.target.id] = doc if isinstance(doc, str) else None
    return out


@pytest.mark.parametrize("cls", ARG_CLASSES, ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(cls):
    docs = _field_docstrings(cls)
    assert set(docs) == {f.name for f in dataclasses.fields(cls)}
    missing = [k for k, v in docs.items() if not v or not v.strip()]
    assert not missing, f"{cls.__name__} fields without a docstring (tyro would show a stray comment or nothing): {missing}"


def _help(verb: str, capsys, monkeypatch, *extra) -> str:
    monkeypatch.setenv("COLUMNS", "220")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main([verb, *extra, "--help"])
    assert e.value.code in (0, None)
    return capsys.readouterr().out


def _entries(text: str) -> dict[str, str]:
    """`--flag` -> its help text, from tyro's help (boxed on a terminal, plain otherwise)."""
    entries: dict[str, list[str]] = {}
    cur = None
    for raw in text.splitlines():
        line = raw.strip().strip("│").strip()
        if not line or line[0] in "╭╰─" or set(line) <= set("-─ ") or line.endswith(":"):
            cur = None  # blank, a box edge, a rule or a section header ("options:")
        elif line.startswith("-"):
            spec, _, rest = line.partition("  ")
            cur = spec.split()[0].rstrip(",")
            entries[cur] = [rest.strip()]
        elif cur is not None and raw.startswith((" ", "│")):
            entries[cur].append(line)
    return {k: " ".join(x for x in v if x) for k, v in entries.items()}


@pytest.mark.parametrize("verb", ["train", "demo", "check", "grade", "results", "plot", "export", "sweep", "study"])
def test_every_flag_says_what_it_does_once(verb, capsys, monkeypatch):
    text = _help(verb, capsys, monkeypatch)
    entries = _entries(text)
    assert len(entries) >= 2, text
    for flag, help_ in entries.items():
        words = re.sub(r"\(default: [^)]*\)|\(required\)|\(repeatable\)", "", help_).split()
        assert len(words) >= 3, f"{verb} {flag}: no help beyond the default: {help_!r}"
        assert "---" not in help_, f"{verb} {flag}: a section comment shown as help: {help_!r}"
        assert help_.count("(default") <= 1 and help_.count("(repeatable)") <= 1, f"{verb} {flag}: {help_!r}"


def test_train_help_explains_every_preset(capsys, monkeypatch):
    text = _help("train", capsys, monkeypatch)
    assert set(PRESET_HELP) == set(PRESETS)
    for name, what in PRESET_HELP.items():
        assert f"{name:6s} {what[:40]}" in " ".join(text.split()) or what[:40] in text, name
    assert "rate is 0" in PRESET_HELP["smoke"] and "n/a" in PRESET_HELP["smoke"]
    assert "preset `demo`" in _help("train", capsys, monkeypatch, "--preset", "demo")


def test_lists_take_spaces_and_commas_alike():
    spaced = parse_config(["--modes", "run_tests", "sentinel", "--teacher-kinds", "hack", "wrong"])
    commas = parse_config(["--modes", "run_tests,sentinel", "--teacher-kinds=hack,wrong"])
    mixed = parse_config(["--modes", "run_tests,", "sentinel", "--teacher-kinds", "hack", "wrong"])
    assert spaced.modes == commas.modes == mixed.modes == ("run_tests", "sentinel")
    assert spaced.teacher_kinds == commas.teacher_kinds == ("hack", "wrong")
    # a comma inside a plain string flag is left alone
    assert parse_config(["--layers", "0,5,9"]).layers == "0,5,9"
    for argv in (["--seeds", "0,1"], ["--seeds", "0", "1"], ["--seed", "0,1"], ["--seeds=0,1"]):
        assert config.parse_args(cli.SweepArgs, args=argv).seeds == (0, 1), argv
        assert config.parse_args(cli.StudyArgs, args=["--preset", "smoke", *argv]).seeds == (0, 1), argv
    a = config.parse_args(cli.SweepArgs, args=["--arms", "none,route", "--sources", "real", "random",
                                                "--set", "modes=run_tests,sentinel", "--grid", "lr=1e-3,3e-3"])
    assert a.arms == ("none", "route") and a.sources == ("real", "random")
    assert a.set == ["modes=run_tests,sentinel"] and a.grid == ["lr=1e-3,3e-3"]  # FIELD=VALUE flags untouched


def test_names_alike_across_verbs(capsys):
    # sweep accepts train's names for its axes...
    a = config.parse_args(cli.SweepArgs, args=["--intervention", "erase", "route", "--vhack-source", "random"])
    assert a.arms == ("erase", "route") and a.sources == ("random",)
    # ...and train names sweep's plural flags in a one-line error
    for flag, hint in (("--arms", "--intervention"), ("--seeds", "--seed"), ("--sources", "--vhack-source")):
        with pytest.raises(ConfigError, match=f"{flag} is sweep's.*{hint}"):
            parse_config([flag, "x"])
        capsys.readouterr()
        assert cli.main(["train", f"{flag}=x"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and hint in err


def test_readme_explains_every_preset():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## Presets"):]
    section = section[: section.index("\n## ", 1)]
    for name in PRESETS:
        assert f"| `{name}` |" in section, name
    assert "random-weight" in section and "rate is 0" in section and "n/a" in section  # smoke: plumbing only


def test_train_config_file_then_flags_override(tmp_path):
    """`train --config RUN/config.json` (how sweep and study launch runs): the saved config is the base, every
    other flag overrides it, resume/force are per invocation; the run's identity is the saved one's."""
    import json

    saved = dataclasses.replace(parse_config(["--preset", "demo", "--steps", "3", "--modes", "run_tests,sentinel"]),
                                resume=True, run_dir=str(tmp_path / "run"))
    f = tmp_path / "config.json"
    f.write_text(json.dumps({"config": saved.to_dict(), "hash": saved.hash()}))
    cfg = parse_config(["--config", str(f)])
    assert cfg.hash() == saved.hash() and cfg.preset == "demo" and cfg.run_dir == saved.run_dir
    assert cfg.resume is False and cfg.modes == ("run_tests", "sentinel")
    over = parse_config(["--config", str(f), "--lr", "0.2", "--run-dir", str(tmp_path / "other")])
    assert over.lr == 0.2 and over.steps == 3 and over.model == "smollm2" and over.run_dir == str(tmp_path / "other")
    assert over.hash() == dataclasses.replace(saved, lr=0.2).hash()
    f.write_text(json.dumps(saved.to_dict()))  # a bare object of fields reads the same
    assert parse_config([f"--config={f}"]).hash() == saved.hash()
    with pytest.raises(ConfigError, match="--seeds is sweep's"):
        parse_config(["--config", str(f), "--seeds", "0"])

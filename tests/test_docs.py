"""The documentation says what the software does: every command line in README.md and docs/
names a real command and real flags, and the README's Python API example runs as written."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from service.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")  # a span may wrap onto the next line
# `prunerd [--top-level-flag ...] COMMAND rest-of-the-line`; a comment or `|` ends the command
COMMAND = re.compile(r"(?<![\w/.-])prunerd((?:\s+--[\w-]+)*)\s+([a-z][\w-]*)([^#|`]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def _code_spans(text: str) -> list[str]:
    """Fenced blocks line by line, then inline code spans: where command lines are written."""
    spans = [line for _, body in FENCE.findall(text) for line in body.splitlines()]
    return spans + INLINE.findall(FENCE.sub("", text))


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its sub-commands' parsers, recursively."""
    found = {o for a in parser._actions for o in a.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
    return found


def _commands() -> tuple[dict[str, argparse.ArgumentParser], set[str]]:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    top = {o for a in parser._actions for o in a.option_strings}
    return dict(subs.choices), top


def documented_commands() -> list[tuple[str, str, str]]:
    """(file, command, flags text) for each ``prunerd COMMAND ...`` written in code."""
    found = []
    for doc in DOCS:
        for span in _code_spans(doc.read_text()):
            for m in COMMAND.finditer(span):
                found.append((doc.name, m.group(2), m.group(1) + m.group(3)))
    return found


def test_documented_command_lines_use_real_commands_and_flags() -> None:
    commands, top = _commands()
    found = documented_commands()
    assert len({cmd for _, cmd, _ in found}) >= 10, "the command lines were not found"
    wrong = []
    for doc, cmd, rest in found:
        if cmd not in commands:
            wrong.append(f"{doc}: `prunerd {cmd}`: no such command")
            continue
        known = _options(commands[cmd]) | top
        wrong += [f"{doc}: `prunerd {cmd} {f}`: no such flag" for f in FLAG.findall(rest)
                  if f not in known]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_wrong_flag() -> None:
    span = "prunerd prune resnet20 --budgett 0.5 --out d   # a typo"
    (m,) = COMMAND.finditer(_code_spans(f"```\n{span}\n```\n")[0])
    assert m.group(2) == "prune" and FLAG.findall(m.group(3)) == ["--budgett", "--out"]
    assert "--budgett" not in _options(_commands()[0]["prune"])


def _readme_python_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    return next(body for lang, body in FENCE.findall(section) if lang == "python")


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from profiler import build_model
    from pruner import PrunePlan, PruneReport, apply_plan, train_baseline

    code = _readme_python_example()
    assert '"resnet20.pt"' in code  # the checkpoint the example starts from
    monkeypatch.chdir(tmp_path)
    train_baseline("resnet20", "digits", 1, tmp_path / "resnet20.pt", progress=False)
    names: dict[str, object] = {}
    exec(compile(code, "README.md (Python API)", "exec"), names)
    result = names["result"]
    assert isinstance(result.plan, PrunePlan) and result.plan.removed
    report = PruneReport.from_json(result.report.to_json())
    assert report.method == "dbp" and report.model == "resnet20"
    # "replays on (spec, state_dict)": the plan rebuilds the pruned model's shape from scratch
    replayed = apply_plan(build_model(result.plan.spec), result.plan).eval()
    replayed.load_state_dict(result.model.state_dict())
    x = torch.randn(result.plan.spec.input_shape(2))
    torch.testing.assert_close(replayed(x), result.model.eval()(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20.pt"]  # it wrote nothing


def test_the_documented_daemon_settings_load(tmp_path: Path) -> None:
    """docs/service.md's TOML example is a settings file the daemon accepts, key for key."""
    from service.config import load_settings

    text = (ROOT / "docs" / "service.md").read_text()
    (example,) = [body for lang, body in FENCE.findall(text) if lang == "toml"]
    config = tmp_path / "prunerd.toml"
    config.write_text(example)
    settings = load_settings(config)
    assert (settings.max_procs, settings.max_queued_per_client) == (2, 32)
    assert settings.budgets == {"resnet56-pruned": 0.004}

"""The README's commands work: every fenced ``tools/*.py`` command parses with the tool's own parser, its config
(a file under configs/) loads with its overrides, and every tool answers ``--help``. Nothing is trained."""
from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from detres.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[tuple[str, list[str]]]:
    """(tool name, its arguments) for every ``tools/<name>.py`` command in the README's fenced code blocks
    (backslash continuations joined, ``&&`` chains split, ``#`` comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"^[ \t]*```[a-z]*\n(.*?)^[ \t]*```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                if not re.search(r"tools/\w+\.py", part):
                    continue
                words = shlex.split(part, comments=True)
                tool = next((i for i, w in enumerate(words) if re.fullmatch(r"tools/\w+\.py", w)), None)
                if tool is not None and any(w.endswith(("python", "python3", "torchrun")) for w in words[:tool]):
                    out.append((Path(words[tool]).stem, words[tool + 1:]))
    return out


COMMANDS = readme_commands()
_TOOLS: dict = {}


def _tool(name):
    if name not in _TOOLS:
        spec = importlib.util.spec_from_file_location(f"readme_{name}", ROOT / "tools" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _TOOLS[name] = mod
    return _TOOLS[name]


def test_the_readme_has_commands_of_every_kind():
    names = {name for name, _ in COMMANDS}
    assert {"train_det", "eval", "predict", "export", "study", "benchmark"} <= names and len(COMMANDS) >= 20


@pytest.mark.parametrize("name,argv", COMMANDS, ids=[f"{n} {' '.join(a)}"[:80] for n, a in COMMANDS])
def test_readme_command_parses_and_its_config_loads(name, argv):
    args = _tool(name).build_parser().parse_args(argv)  # SystemExit(2) on an unknown option
    config = getattr(args, "config", None)
    overrides = getattr(args, "overrides", None) or getattr(args, "opts", None) or []
    if config and config.startswith("configs/"):
        cfg = load_config(ROOT / config, list(overrides))  # steps past max_iter are dropped with a warning
        given = [o.split("=", 1)[1] for o in overrides if o.startswith("output_dir=")]
        # every config writes to output/<its name> unless the command says otherwise
        assert cfg.output_dir == (given[-1] if given else f"output/{Path(config).stem}"), argv


@pytest.mark.parametrize("name", sorted({n for n, _ in COMMANDS}))
def test_every_readme_tool_answers_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        _tool(name).build_parser().parse_args(["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out

"""`openspeedy --help` names every command, and every command has its own help."""

import argparse
import subprocess
import sys

from openspeedy.cli import build_parser


def _commands() -> dict[str, str]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {choice.dest: choice.help for choice in action._choices_actions}


def test_help_lists_every_command():
    commands = _commands()
    assert set(commands) == {"serve", "demo", "probe", "generate", "ui", "api", "export"}
    result = subprocess.run([sys.executable, "-m", "openspeedy.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name, help_text in commands.items():
        assert name in result.stdout and help_text in " ".join(result.stdout.split()), name


def test_every_command_has_help():
    for name in _commands():
        result = subprocess.run([sys.executable, "-m", "openspeedy.cli", name, "--help"], capture_output=True,
                                text=True)
        assert result.returncode == 0 and f"usage: openspeedy {name}" in result.stdout, (name, result.stderr)

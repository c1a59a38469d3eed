"""The same flags mean the same everywhere; every --help teaches by example; completion works
in bash, zsh and fish as a person types it; NO_COLOR turns colour off, the console's too.
No Docker needed (the NO_COLOR console test reads a store without a stack)."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from dcb.cli.examples import EXAMPLES
from dcb.cli.main import LONG_COMMANDS, build_parser
from tests.conftest import run_dcb
from tests.test_e2e_tmux import Tmux, poll

BIN = Path(sys.executable).parent


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_long_commands_take_quiet_and_reporting_commands_take_json():
    subs = subparsers()
    for name in LONG_COMMANDS:
        assert {"-q", "--quiet"} <= set(subs[name]._option_string_actions), name
    for name, p in subs.items():
        if name != "completion":  # prints a script, reports nothing
            assert "--json" in p._option_string_actions, name


def test_every_help_has_examples_and_every_example_parses():
    subs = subparsers()
    assert set(subs) == set(EXAMPLES), "a command without examples (cli/examples.py)"
    parser = build_parser()
    for name, p in subs.items():
        text = p.format_help()
        assert "\nexamples:\n" in text, name
        for example, _why in EXAMPLES[name]:
            assert example in text
            words = shlex.split(example.split(">")[0])
            assert words[:2] == ["dcb", name], example
            parser.parse_args(words[1:])  # exits 2 (failing the test) on a stale example
    top = parser.format_help()
    assert all(v[0][0] in top for v in EXAMPLES.values())


def test_quiet_silences_progress_of_a_command_from_another_module(tmp_path: Path):
    """-q added by cli/main.py to a long command whose module lacks it (here du) works."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 5000)
    r = run_dcb("du", str(tmp_path / "d"), "-q")
    assert r.code == 0 and r.err == "" and "total" in r.out


def test_no_color_cli_output_has_no_escapes(tmp_path: Path):
    r = run_dcb("--help", env={"NO_COLOR": "1"})
    assert r.code == 0 and "\x1b[" not in r.out + r.err


SHELLS = {
    "bash": ("bash --norc --noprofile -i", 'eval "$(dcb completion bash)"; echo loaded-$?'),
    "zsh": ("zsh -f -i", 'autoload -U compinit && compinit -u && '
                         'eval "$(dcb completion zsh)"; echo loaded-$?'),
    "fish": ("fish --no-config -i", "dcb completion fish | source; echo loaded-$status"),
}


@pytest.mark.parametrize("shell", list(SHELLS))
def test_completion_as_typed(shell: str, tmp_path: Path):
    start, load = SHELLS[shell]
    if shutil.which(start.split()[0]) is None:
        pytest.skip(f"{shell} is not installed (deploy/setup.sh --test installs it)")
    (tmp_path / "backups" / "20261126T020000Z").mkdir(parents=True)
    (tmp_path / "dcb.toml").write_text('[storage]\nbackup_dir = "backups"\n')
    env = (f"env -i HOME={shlex.quote(str(tmp_path))} TERM=xterm-256color "
           f"PATH={shlex.quote(str(BIN))}:/usr/bin:/bin "
           f"DCB_CONFIG={shlex.quote(str(tmp_path / 'dcb.toml'))} PS1='$ ' PROMPT='$ ' ")
    tmux = Tmux()
    try:
        tmux.start(f"cd {shlex.quote(str(tmp_path))} && {env}{start}", width=150, height=30)

        def typed(text: str, expect: str, enter: bool = False) -> None:
            tmux.run("send-keys", "-t", tmux.name, "-l", text)
            tmux.run("send-keys", "-t", tmux.name, "Enter" if enter else "Tab")
            assert poll(lambda: expect in tmux.screen(), timeout=20), (
                f"{shell}: {text!r} did not give {expect!r}; screen:\n{tmux.screen()}")

        assert poll(lambda: tmux.screen().strip() != "", timeout=15)
        typed(load, "loaded-0", enter=True)
        typed("dcb ba", "dcb backup")          # a subcommand
        tmux.run("send-keys", "-t", tmux.name, "C-u")
        typed("dcb backup --pr", "dcb backup --prune")  # a flag
        tmux.run("send-keys", "-t", tmux.name, "C-u")
        typed("dcb restore 2026", "dcb restore 20261126T020000Z")  # a set id from the store
    finally:
        tmux.close()


def test_no_color_console(tmp_path: Path):
    """With NO_COLOR the console draws in shades of grey only (Textual's monochrome filter)."""
    (tmp_path / "dcb.toml").write_text(
        '[stack]\npostgres_container = "dcbt-nocolor-absent"\n[storage]\nbackup_dir = "b"\n')
    exit_file = tmp_path / "exit"
    command = (f"cd {shlex.quote(str(tmp_path))} && env NO_COLOR=1 TERM=xterm-256color "
               f"COLORTERM=truecolor DCB_CONFIG={shlex.quote(str(tmp_path / 'dcb.toml'))} "
               f"{shlex.quote(str(BIN / 'dcb'))}; echo $? > {shlex.quote(str(exit_file))}")
    tmux = Tmux()
    try:
        tmux.start(command)
        assert poll(lambda: "Containers" in tmux.screen() and "Backups" in tmux.screen(),
                    timeout=30), tmux.screen()
        r = tmux.run("capture-pane", "-e", "-p", "-t", tmux.name)
        colours = re.findall(r"\x1b\[([0-9;]*)m", r.stdout)
        rgb = [tuple(int(x) for x in m.group(1).split(";"))
               for c in colours for m in re.finditer(r"[34]8;2;(\d+;\d+;\d+)", c)]
        assert rgb, "no colour codes at all: capture without -e?"
        assert all(r == g == b for r, g, b in rgb), sorted(set(rgb))[:10]
        tmux.run("send-keys", "-t", tmux.name, "q")
        assert poll(lambda: exit_file.exists() and exit_file.read_text().strip() != "",
                    timeout=15)
    finally:
        tmux.close()

"""``dcb completion bash|zsh|fish``: shell completion through argcomplete.

argcomplete (kept up to date upstream, used by pipx and many more) asks ``dcb`` itself on each
TAB: subcommands, flags, choices and set ids come from the same argparse parser that runs the
command, so completion never drifts from the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import argcomplete

from dcb.cli.commands import AddCommand
from dcb.services.config import Config

SHELLS = ("bash", "zsh", "fish")


def register(add: AddCommand) -> None:
    p = add("completion", "print the shell completion script (bash, zsh, fish)",
            cmd_completion,
            "Print the script that makes your shell complete dcb's commands, flags and set "
            "ids. Load it once per shell session, or install it where your shell looks:\n\n"
            "  bash  dcb completion bash > /etc/bash_completion.d/dcb   (or eval it in "
            "~/.bashrc:\n        eval \"$(dcb completion bash)\")\n"
            "  zsh   dcb completion zsh > \"${fpath[1]}/_dcb\"   (compinit must run in "
            "~/.zshrc)\n"
            "  fish  dcb completion fish > ~/.config/fish/completions/dcb.fish")
    p.set_defaults(needs_config=False)
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")


def cmd_completion(args: argparse.Namespace, _cfg: Config) -> int:
    print(argcomplete.shellcode(["dcb"], shell=args.shell), end="")
    return 0


def complete_set_ids(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Set ids of the configured store, for ``dcb restore <TAB>`` and friends."""
    from dcb.services.config import load_config
    from dcb.services.store import BackupStore

    with contextlib.suppress(Exception):  # a completion never prints an error
        cfg = load_config(getattr(parsed_args, "config", None))
        return [s.id for s in BackupStore.for_config(cfg).list_sets()
                if s.id.startswith(prefix)]
    return []
